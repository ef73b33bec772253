"""A tiny PNG encoder (zlib only): reference images from arrays, saved frames,
the demo's contact sheet. Decoding is left to PyAV."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types by channel count: grey, grey+alpha, RGB, RGBA.
_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}


def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def encode_png(image: npt.NDArray[np.generic], *, level: int = 6) -> bytes:
    """PNG bytes of an HxW, HxWx1, HxWx2, HxWx3 or HxWx4 uint8 array."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in _COLOUR_TYPE or 0 in arr.shape:
        raise ValueError(f"expected a non-empty HxW(xC) image, got shape {arr.shape}")
    height, width, channels = arr.shape
    # Filter type 0 (none) on every row: simple, and zlib still does the work.
    rows = np.zeros((height, 1 + width * channels), dtype=np.uint8)
    rows[:, 1:] = np.ascontiguousarray(arr).reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPE[channels], 0, 0, 0)
    return b"".join(
        (
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)),
            _chunk(b"IEND", b""),
        )
    )


def write_png(path: str | Path, image: npt.NDArray[np.generic]) -> Path:
    """Write ``image`` as PNG to ``path`` (parent directories are created)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(encode_png(image))
    return target
