"""A deterministic stand-in for a realtime video model, in pure numpy.

The echo model makes the effect of each input visible in decoded pixels, so an
end-to-end test can tell from a received video frame which prompt and which
reference image the "model" was given:

* the camera frame is mirrored left-right;
* the top quarter becomes a solid band of :func:`prompt_colour` of the prompt;
* the bottom quarter becomes a solid band of :func:`mean_colour` of the reference.

The server keeps of a reference only what the model uses, its :func:`swatch`,
derived once from the decoded pixels (by the server's decode or by the
reference prefetch, which hands over the pixels and knows nothing more).

Colours are kept in 32..223 per channel so they survive lossy video coding.
"""

from __future__ import annotations

import hashlib
import io
from typing import Final

import av
import numpy as np
import numpy.typing as npt

Frame = npt.NDArray[np.uint8]
Colour = tuple[int, int, int]
Swatch = npt.NDArray[np.uint8]
"""What the model keeps of a reference image (:func:`swatch`)."""

# Channel range kept away from 0 and 255: codecs clip and blur near the extremes.
_LOW = 32
_HIGH = 223


def prompt_colour(prompt: str) -> Colour:
    """The band colour for ``prompt``: derived from its SHA-256, stable across runs."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    span = _HIGH - _LOW + 1
    r, g, b = (_LOW + digest[i] % span for i in range(3))
    return (r, g, b)


def mean_colour(img: npt.NDArray[np.generic]) -> Colour:
    """The mean RGB colour of an HxWx3 (or HxWx4, alpha ignored) image, rounded."""
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"expected a non-empty HxWx3 image, got shape {arr.shape}")
    # Channel by channel: no float64 copy of the image (6x faster on an 8 MB reference).
    r, g, b = (round(float(arr[:, :, c].mean(dtype=np.float64))) for c in range(3))
    return (r, g, b)


def swatch(pixels: Frame) -> Swatch:
    """What the model derives from a reference image: its :func:`mean_colour`
    as a 1x1x3 uint8 image, which :func:`echo_transform` takes as ``reference``
    and paints exactly as it would the whole image. Derived once per reference
    instead of on every camera frame (about 90 ms a frame for an 8 MB image),
    and megabytes lighter to keep.

    ``pixels``: the image as :func:`decode_reference` gives it, HxWx3 RGB (a
    strided view will do: nothing is copied).
    """
    return np.array([[mean_colour(pixels)]], dtype=np.uint8)


def output_bands(frame: Frame) -> tuple[Colour, Colour]:
    """The colours an output frame shows in its top (prompt) and bottom
    (reference) bands: medians, which ignore codec ringing at the edges."""
    band = frame.shape[0] // 4

    def median(region: npt.NDArray[np.uint8]) -> Colour:
        r, g, b = (int(v) for v in np.median(region.reshape(-1, 3), axis=0))
        return (r, g, b)

    return median(frame[:band]), median(frame[frame.shape[0] - band :])


def colours_close(a: Colour, b: Colour, tolerance: int) -> bool:
    """Whether two colours differ by at most ``tolerance`` in every channel."""
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= tolerance


def echo_transform(
    frame: Frame,
    *,
    prompt: str | None,
    reference: npt.NDArray[np.uint8] | None,
    passthrough: bool,
) -> Frame | None:
    """Apply the echo model to one HxWx3 uint8 RGB camera frame.

    Returns the frame unchanged when ``passthrough`` is set and nothing was applied
    yet, ``None`` (no output) when neither passthrough nor any state is set, and
    otherwise the mirrored frame with the prompt and reference bands.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 frame, got {frame.shape} {frame.dtype}")
    if prompt is None and reference is None:
        return frame if passthrough else None
    out = np.ascontiguousarray(frame[:, ::-1, :])
    band = frame.shape[0] // 4
    if prompt is not None and band > 0:
        out[:band, :, :] = prompt_colour(prompt)
    if reference is not None and band > 0:
        out[frame.shape[0] - band :, :, :] = mean_colour(reference)
    return out


class _TooLarge(ValueError):
    """An image whose header claims more pixels than may be decoded."""


MAX_PIXELS: Final = 40_000_000
"""Largest reference image (width x height) decoded: 160 MB of RGBA at most.
A few kilobytes of PNG can claim far more (a decompression bomb)."""


def decode_reference(data: bytes, max_pixels: int = MAX_PIXELS) -> Frame:
    """Decode PNG or JPEG bytes into an HxWx3 uint8 RGB array.

    Raises ``ValueError`` when the bytes hold no decodable image, or one of
    more than ``max_pixels`` pixels (judged from its header, before decoding).
    """
    if not data:
        raise ValueError("reference image is empty")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            if stream.width * stream.height > max_pixels:
                raise _TooLarge(
                    f"reference image is {stream.width}x{stream.height}: over the "
                    f"{max_pixels:,}-pixel limit"
                )
            for frame in container.decode(video=0):
                return np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
    except _TooLarge:
        raise
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise ValueError(f"reference image could not be decoded: {type(exc).__name__}") from exc
    raise ValueError("reference image holds no picture")
