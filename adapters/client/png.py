"""PNG bytes from arrays (reference images, saved frames, the demo's contact
sheet), encoded by PyAV's PNG codec: the library that also decodes them."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

# PyAV frame formats by channel count; grey+alpha goes through RGBA (same image).
_FORMAT = {1: "gray", 3: "rgb24", 4: "rgba"}


def encode_png(image: npt.NDArray[np.generic]) -> bytes:
    """PNG bytes of an HxW, HxWx1, HxWx2, HxWx3 or HxWx4 uint8 array."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or 0 in arr.shape:
        raise ValueError(f"expected a non-empty HxW(xC) image, got shape {arr.shape}")
    if arr.shape[2] == 2:
        grey, alpha = arr[:, :, :1], arr[:, :, 1:]
        arr = np.concatenate([grey, grey, grey, alpha], axis=2)
    height, width, channels = arr.shape
    pixels = np.ascontiguousarray(arr[:, :, 0] if channels == 1 else arr)
    frame = av.VideoFrame.from_ndarray(pixels, format=_FORMAT[channels])
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, frame.format.name
    packets = [*codec.encode(frame), *codec.encode(None)]
    return b"".join(bytes(packet) for packet in packets)


def write_png(path: str | Path, image: npt.NDArray[np.generic]) -> Path:
    """Write ``image`` as PNG to ``path`` (parent directories are created)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(encode_png(image))
    return target
