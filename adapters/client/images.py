"""Turn what a caller calls "an image" into what the engine sends: base64
without a ``data:`` prefix.

Accepted: bytes, a local file path (``str`` or ``PathLike``), a ``data:`` URL,
raw base64 text, or a uint8 numpy array (encoded as PNG). Nothing is ever
fetched: ``http:``, ``https:``, ``file:`` and every other URL scheme is refused,
so an untrusted string cannot make the client reach out anywhere.

A string that is an uploaded file's id (:func:`file_ref`: ``file_`` and an
id) is no image data: ``connect`` and ``set_image`` send it as ``image_ref``.

Error messages name the kind of input and its size, never its content: image
data is user content and may be private.
"""

from __future__ import annotations

import binascii
import os
import re
from pathlib import Path
from typing import TypeAlias
from urllib.parse import unquote_to_bytes

import numpy as np
import numpy.typing as npt

from leanjoin.engine.codec import Base64Text, decode_base64

from .errors import ImageError, UnsupportedImageSource
from .png import encode_png

ImageInput: TypeAlias = (
    "bytes | bytearray | memoryview | str | os.PathLike[str] | npt.NDArray[np.uint8]"
)

# Reference images are sent in one WebSocket frame; beyond this something is wrong.
MAX_IMAGE_BYTES = 20 * 1024 * 1024

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
# The official clients' isFileRefId is "a string starting with file_"; here the
# rest must look like an id, so that a local file_photo.png stays a file.
_FILE_REF = re.compile(r"file_[A-Za-z0-9_-]+")
_WHITESPACE = re.compile(r"\s+")


def file_ref(image: ImageInput) -> str | None:
    """``image`` itself when it is an uploaded file's id (a ``str``: ``file_``,
    then letters, digits, ``_`` or ``-``), to be sent as ``image_ref``; else None."""
    if isinstance(image, str) and _FILE_REF.fullmatch(image):
        return image
    return None


def image_to_base64(image: ImageInput, *, max_bytes: int = MAX_IMAGE_BYTES) -> Base64Text:
    """Standard base64 (no prefix, no newlines) of the image bytes ``image`` names.

    What this returns (a :class:`Base64Text`) is returned as it is: an image is
    converted once, however many layers hand it on."""
    if isinstance(image, Base64Text):
        _check_size(len(image) // 4 * 3, max_bytes)
        return image
    if isinstance(image, np.ndarray):
        try:
            png = encode_png(image)
        except ValueError as exc:  # its shape or type, never its pixels
            raise ImageError(f"the image array cannot be encoded: {exc}") from None
        return _encode(png, max_bytes)
    if isinstance(image, bytes | bytearray | memoryview):
        return _encode(bytes(image), max_bytes)
    if isinstance(image, os.PathLike):
        return _encode(_read_file(Path(image), max_bytes), max_bytes)
    if file_ref(image) is not None:
        raise ImageError(
            "the image is an uploaded file's id (file_...), not image data: pass it as "
            "image= to connect() or set_image(), which send it as image_ref"
        )
    if isinstance(image, str):
        return _from_text(image, max_bytes)
    raise ImageError(
        f"unsupported image type {type(image).__name__}: pass bytes, a path, "
        "a data: URL, base64 text or a uint8 array"
    )


def _encode(data: bytes, max_bytes: int) -> Base64Text:
    _check_size(len(data), max_bytes)
    return Base64Text(data)


def _check_size(size: int, max_bytes: int) -> None:
    if not size:
        raise ImageError("the image is empty")
    if size > max_bytes:
        raise ImageError(f"the image is {size} bytes, more than the {max_bytes} allowed")


def _is_file(text: str) -> bool:
    """Whether ``text`` names an existing file. Never raises: a text the OS
    refuses as a path (a part over 255 bytes, a NUL) names no file, and the
    OS's error would quote the text, which may be image data."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(
                f"image file {path} is {size} bytes, more than the {max_bytes} allowed"
            )
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"image file not found: {path}") from None
    except IsADirectoryError:
        raise ImageError(f"image path is a directory: {path}") from None
    except OSError as exc:
        raise ImageError(f"cannot read image file {path}: {exc.strerror}") from None


def _from_text(text: str, max_bytes: int) -> Base64Text:
    stripped = text.strip()
    if not stripped:
        raise ImageError("the image string is empty")
    if stripped[:5].lower() == "data:":
        return _from_data_url(stripped, max_bytes)
    # Base64 has no ':' and paths rarely do, so a scheme-like prefix is a URL
    # unless it names an existing file (a Linux file name may contain ':').
    scheme = _SCHEME.match(stripped)
    if scheme and len(scheme.group(1)) > 1 and not _is_file(stripped):
        raise UnsupportedImageSource(
            f"{scheme.group(1).lower()}: URLs are not fetched; pass the image bytes, "
            "a local file path, a data: URL or base64"
        )
    if len(stripped) < 4096 and _is_file(stripped):
        return _encode(_read_file(Path(stripped), max_bytes), max_bytes)
    decoded = _decode_base64(stripped)
    if decoded is None:
        raise ImageError(
            f"the image string ({len(stripped)} chars) is neither an existing file, "
            "a data: URL nor base64"
        )
    return _encode(decoded, max_bytes)


def _decode_base64(text: str) -> bytes | None:
    compact = _WHITESPACE.sub("", text)
    compact += "=" * (-len(compact) % 4)  # tolerate stripped padding
    for altchars in (None, b"-_"):
        try:
            return decode_base64(compact, altchars)
        except (binascii.Error, ValueError):
            continue
    return None


def _from_data_url(url: str, max_bytes: int) -> Base64Text:
    header, comma, payload = url.partition(",")
    if not comma:
        raise ImageError("malformed data: URL (no comma)")
    params = [p.strip().lower() for p in header[5:].split(";")]
    media_type = params[0] if params and params[0] else "text/plain"
    if not media_type.startswith("image/"):
        raise ImageError(f"data: URL holds {media_type}, not an image")
    if "base64" in params[1:]:
        decoded = _decode_base64(payload)
        if decoded is None:
            raise ImageError("data: URL payload is not valid base64")
    else:
        decoded = unquote_to_bytes(payload)
    return _encode(decoded, max_bytes)
