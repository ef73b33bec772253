"""Unit tests of the pure-numpy echo model (no network)."""

from __future__ import annotations

import io

import av
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from leanjoin.adapters.server.echo_model import (
    colours_close,
    decode_reference,
    echo_transform,
    mean_colour,
    output_bands,
    prompt_colour,
    swatch,
)

Frame = npt.NDArray[np.uint8]


def _camera(height: int = 8, width: int = 12) -> Frame:
    # Left half red-ish, right half blue-ish: mirroring swaps them.
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    frame[:, : width // 2] = (200, 40, 40)
    frame[:, width // 2 :] = (40, 40, 200)
    return frame


def _encode(image: Frame, codec: str) -> bytes:
    buf = io.BytesIO()
    fmt = "image2pipe"
    with av.open(buf, mode="w", format=fmt) as container:
        stream = container.add_stream(codec)
        assert isinstance(stream, av.VideoStream)
        stream.width = image.shape[1]
        stream.height = image.shape[0]
        stream.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def test_passthrough_without_state_returns_the_camera_frame() -> None:
    frame = _camera()
    out = echo_transform(frame, prompt=None, reference=None, passthrough=True)
    assert out is not None
    assert np.array_equal(out, frame)


def test_no_output_until_state_is_applied() -> None:
    assert echo_transform(_camera(), prompt=None, reference=None, passthrough=False) is None


@pytest.mark.parametrize("passthrough", [True, False])
def test_prompt_band_and_mirror(passthrough: bool) -> None:
    frame = _camera()
    out = echo_transform(frame, prompt="a red fox", reference=None, passthrough=passthrough)
    assert out is not None
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert np.all(out[:2] == prompt_colour("a red fox"))
    # Below the band the frame is mirrored left-right, bottom rows included.
    assert np.array_equal(out[2:], frame[2:, ::-1])
    assert np.array_equal(frame, _camera()), "input must not be modified"


def test_reference_band_is_its_mean_colour() -> None:
    reference = np.zeros((4, 4, 3), dtype=np.uint8)
    reference[:2] = (100, 0, 50)
    reference[2:] = (0, 200, 50)
    out = echo_transform(_camera(), prompt="p", reference=reference, passthrough=False)
    assert out is not None
    assert mean_colour(reference) == (50, 100, 50)
    assert np.all(out[-2:] == (50, 100, 50))
    assert np.all(out[:2] == prompt_colour("p"))
    assert np.array_equal(out[2:6], _camera()[2:6, ::-1])


def test_reference_alone_is_applied() -> None:
    reference = np.full((3, 3, 3), 90, dtype=np.uint8)
    out = echo_transform(_camera(), prompt=None, reference=reference, passthrough=False)
    assert out is not None
    assert np.all(out[-2:] == 90)
    assert np.array_equal(out[:6], _camera()[:6, ::-1])


@given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 16), st.integers(1, 16), st.just(4))))
def test_a_swatch_paints_the_band_its_image_would(rgba: Frame) -> None:
    """What the model keeps of a reference (a 1x1 image of its mean colour)
    styles a frame exactly as the whole image does; a strided view will do."""
    image = np.ascontiguousarray(rgba[:, :, :3])
    kept = swatch(image)
    assert kept.shape == (1, 1, 3) and kept.dtype == np.uint8
    assert tuple(kept[0, 0]) == mean_colour(image)
    assert np.array_equal(swatch(rgba[:, :, :3]), kept)
    whole = echo_transform(_camera(), prompt="p", reference=image, passthrough=False)
    kept_only = echo_transform(_camera(), prompt="p", reference=kept, passthrough=False)
    assert whole is not None and kept_only is not None
    assert np.array_equal(kept_only, whole)


def test_prompt_colour_is_deterministic_and_distinct() -> None:
    assert prompt_colour("hello") == prompt_colour("hello")
    assert prompt_colour("hello") != prompt_colour("hello!")


@given(st.text())
def test_prompt_colour_channels_survive_compression(prompt: str) -> None:
    colour = prompt_colour(prompt)
    assert len(colour) == 3
    assert all(32 <= channel <= 223 for channel in colour)


@given(
    hnp.arrays(
        np.uint8,
        st.tuples(st.integers(1, 16), st.integers(1, 16), st.just(3)),
    ),
    st.one_of(st.none(), st.text(max_size=20)),
)
def test_output_keeps_shape_and_dtype(frame: Frame, prompt: str | None) -> None:
    out = echo_transform(frame, prompt=prompt, reference=None, passthrough=True)
    assert out is not None
    assert out.shape == frame.shape and out.dtype == np.uint8


def test_bad_frames_and_images_are_rejected() -> None:
    with pytest.raises(ValueError):
        echo_transform(np.zeros((4, 4), np.uint8), prompt="p", reference=None, passthrough=True)
    with pytest.raises(ValueError):
        mean_colour(np.zeros((0, 4, 3), np.uint8))


@pytest.mark.parametrize("codec", ["png", "mjpeg"])
def test_decode_reference(codec: str) -> None:
    image = np.zeros((16, 24, 3), dtype=np.uint8)
    image[:] = (180, 90, 60)
    decoded = decode_reference(_encode(image, codec))
    assert decoded.shape == (16, 24, 3) and decoded.dtype == np.uint8
    tolerance = 0 if codec == "png" else 8
    assert all(
        abs(a - b) <= tolerance for a, b in zip(mean_colour(decoded), (180, 90, 60), strict=True)
    )


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_decode_reference_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValueError, match="reference image"):
        decode_reference(data)


def test_output_bands_read_back_what_the_model_drew() -> None:
    camera = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    reference = np.full((8, 8, 3), (200, 100, 50), dtype=np.uint8)
    out = echo_transform(camera, prompt="ink", reference=reference, passthrough=False)
    assert out is not None
    assert output_bands(out) == (prompt_colour("ink"), (200, 100, 50))
    assert colours_close((10, 20, 30), (14, 16, 30), 4)
    assert not colours_close((10, 20, 30), (15, 20, 30), 4)
