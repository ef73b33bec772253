"""Decode a ``set_image`` frame's reference image while the frame is still arriving.

Why: a reference image travels as base64 in one JSON text message of ~10 MB,
sent in 256 KiB fragments over an uplink that takes seconds to carry them. The
server parsed the whole frame after its last byte and only then decoded the
PNG (~180 ms for 8 MB), all of it between the last byte and the first styled
frame. :class:`ReferencePrefetch` decodes the PNG from the fragments as they
come, so that after the last byte only the tail is left.

It is speculation and nothing more: the server still parses and validates the
whole frame itself and asks :meth:`ReferencePrefetch.swatch_for` with the
image bytes it decoded; the answer is the echo model's swatch of the pixels
(:func:`~leanjoin.adapters.server.echo_model.swatch`: what the model keeps of a
reference; this module only hands it the pixels) when this prefetch decoded
exactly those bytes and judged them safe, else ``None`` and the server decodes
the image as before. So the scanner below may be naive about JSON: whatever it
misreads ends in ``None``, never in a wrong swatch.

It speculates only where Pillow's pixels are known to equal those of the
server's decoder (PyAV/FFmpeg, :func:`~leanjoin.adapters.server.echo_model.decode_reference`),
and abandons (for good; the server decodes) on anything else:

* a message that does not start with ``{``, whose ``"type":"set_image"`` does
  not come before ``"image_data"``, or whose ``image_data`` string does not
  begin within the first :data:`HEAD_LIMIT` characters;
* a value that is not plain standard base64: a ``\\`` escape, a ``data:`` URL
  (``:`` is no base64 digit), padding before the end;
* anything but a PNG of 8-bit RGB or RGBA (alpha is dropped, as the server's
  decoder drops it), non-interlaced: no JPEG, palette, grey, 16-bit,
  interlaced or animated (APNG) image;
* more than ``max_pixels`` pixels (checked on the header, before a pixel is
  allocated), or a size FFmpeg itself refuses;
* any PNG structure short of the plain one: IHDR first, contiguous IDATs, IEND
  last with nothing after it, no critical chunk besides those three; an
  ``iCCP`` or ``eXIf`` chunk, or ``pHYs`` after the image data, which FFmpeg
  refuses the whole image over when they are malformed;
* a zlib stream that is not complete and valid (Adler-32 checked), or that
  inflates to more or fewer bytes than the image needs, or rows Pillow refuses.

Pillow's ``ImageFile.Parser`` does not decode a PNG incrementally (its PNG
loader has custom load code, so the parser only buffers and decodes
everything in ``close()``); the incremental part is done here instead: the
chunks are walked here and the IDAT bytes go to Pillow's PNG row decoder
(``zip_decoder``, which unfilters and unpacks rows as its input arrives: what
Pillow's own PNG loader runs) as they arrive. Pillow stops reading at the last
row, before the stream's Adler-32, so a ``zlib.decompressobj`` checks the
stream alongside: FFmpeg refuses a bad checksum, and so must this.

No ``Image.open`` is involved, so Pillow's decompression-bomb check is never
reached (no warning, no error): ``max_pixels`` is the guard, checked on the
header before anything is allocated.

Image data never appears in a repr, a log or an exception of this module.
"""

from __future__ import annotations

import contextlib
import enum
import re
import struct
import zlib
from typing import Any, Final, Protocol, cast

import numpy as np
import pybase64
from PIL import Image

from .echo_model import MAX_PIXELS, Swatch, swatch

DEFAULT_MAX_PIXELS: Final = MAX_PIXELS
"""Largest image (width x height) speculated on: the decoder's own limit."""

HEAD_LIMIT: Final = 4096
"""``image_data``'s string must begin within this many characters of the message."""

_WS: Final = "[ \t\n\r]*"  # JSON whitespace
_TYPE: Final = re.compile(f'"type"{_WS}:{_WS}"([^"\\\\]*)"')
# Up to the first character of the value: a '"' opens the string we want.
_IMAGE_KEY: Final = re.compile(f'"image_data"{_WS}:{_WS}[^ \t\n\r]')

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_APNG_CHUNKS: Final = frozenset({b"acTL", b"fcTL", b"fdAT"})
# Ancillary chunks FFmpeg's PNG decoder parses and refuses the image over when
# they are malformed (found by the differential test in tests/test_prefetch.py):
# a speculation cannot know FFmpeg's verdict on them, so it gives up.
_CHECKED_BY_FFMPEG: Final = frozenset({b"iCCP", b"eXIf"})
_INT_MAX: Final = 2**31 - 1
# Inflate at most this much at a time: a few KB of zlib can claim gigabytes.
_INFLATE_STEP: Final = 1 << 20


class _Stage(enum.Enum):
    SCANNING = "scanning"  # looking for image_data in the message's head
    STREAMING = "streaming"  # inside image_data's string
    CLOSED = "closed"  # the string ended; waiting for finish()
    DONE = "done"  # decoded; swatch_for can answer
    ABANDONED = "abandoned"  # for good


class _Abandon(Exception):
    """Unwinds to the one place that abandons; ``reason`` is a fixed phrase."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _RowDecoder(Protocol):
    """What is used of Pillow's C decoder objects (untyped in Pillow)."""

    def setimage(self, im: Any, extents: tuple[int, int, int, int]) -> None: ...
    def decode(self, data: bytes) -> tuple[int, int]: ...
    def cleanup(self) -> None: ...


def _ffmpeg_takes_size(width: int, height: int) -> bool:
    """Whether FFmpeg would allocate a ``width`` x ``height`` picture.

    Its frame allocator refuses one when (8 * align(width, 64) + 1024) *
    (height + 128) >= INT_MAX (``av_image_check_size2`` on the aligned width),
    so a 1 x 1,400,000 image fails the server's decoder (1 x 1,390,000 does
    not). Half that bound: builds may align otherwise, and no real reference
    is near it (a 6000 x 6000 image is at an eighth of it).
    """
    aligned = -(-width // 64) * 64
    return (8 * aligned + 1024) * (height + 128) < _INT_MAX // 2


def _value_start(head: str) -> int | None:
    """Where image_data's string begins in ``head`` (the message's first
    characters), -1 when ``head`` shows nothing to speculate on, ``None`` when
    it cannot tell yet."""
    body = head.lstrip(" \t\n\r")
    if body and body[0] != "{":
        return -1
    key = _IMAGE_KEY.search(head)
    if key is None:
        kind = _TYPE.search(head)
        return -1 if kind is not None and kind[1] != "set_image" else None
    if head[key.end() - 1] != '"':
        return -1  # null or not a string: nothing to decode
    kind = _TYPE.search(head, 0, key.start())
    return key.end() if kind is not None and kind[1] == "set_image" else -1


class ReferencePrefetch:
    """Speculatively decodes the reference image of one ``set_image`` message
    from its text fragments, and keeps the echo model's swatch of it.

    Use: ``p = ReferencePrefetch.begin(first)`` (``None``: nothing to do), then
    ``p.feed(fragment)`` for every *later* fragment, in order, then
    ``p.finish()``, then ``p.swatch_for(data)`` with the bytes the server
    decoded from the complete frame. :meth:`begin` takes the first fragment:
    do not feed it again.

    :meth:`begin` only looks at the first :data:`HEAD_LIMIT` characters (it is
    meant for the event loop); the decoding work is done by :meth:`feed` and
    :meth:`finish` (meant for a worker thread). No locking: ``feed`` and
    ``finish`` must be called by one thread at a time, in order (the next call
    after the previous returned), and ``swatch_for`` only after ``finish``
    returned. None of them raises.
    """

    __slots__ = (
        "_carry",
        "_chars",
        "_chunk_end",
        "_chunk_type",
        "_data",
        "_decoder",
        "_expected",
        "_head",
        "_idat_over",
        "_idat_seen",
        "_iend",
        "_image",
        "_inflated",
        "_max_pixels",
        "_padded",
        "_payload_end",
        "_pending",
        "_pillow_done",
        "_pillow_rest",
        "_pos",
        "_reason",
        "_size",
        "_stage",
        "_swatch",
        "_zlib",
    )

    def __init__(self, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        """A prefetch that has seen nothing: feed it every fragment, the first
        included. :meth:`begin` is the usual way in (it refuses at once what
        this one would abandon after its first :meth:`feed`)."""
        self._max_pixels = max_pixels
        self._stage = _Stage.SCANNING
        self._reason: str | None = None
        self._chars = 0  # of the message, fed so far
        self._head = ""  # the message so far, while scanning
        self._pending: tuple[str, int] | None = None  # begin's fragment, value offset
        # Base64: a partial quantum carried to the next fragment.
        self._carry = ""
        self._padded = False
        # The PNG bytes so far (swatch_for compares them) and the chunk walk.
        self._data = bytearray()
        self._pos = 0  # first byte not yet walked
        self._chunk_type: bytes | None = None  # the chunk being walked, if inside one
        self._payload_end = 0
        self._chunk_end = 0
        self._idat_seen = False
        self._idat_over = False  # a chunk followed the IDATs: no IDAT may come
        self._iend = False
        # Pixels: size, the zlib check, Pillow's row decoder and its image.
        self._size: tuple[int, int, str] | None = None
        self._expected = 0  # inflated bytes the image needs
        self._inflated = 0
        self._zlib: Any = None  # zlib.decompressobj (its type is not importable)
        self._decoder: _RowDecoder | None = None
        self._image: Image.Image | None = None
        self._pillow_rest = b""  # input Pillow's decoder did not consume yet
        self._pillow_done = False
        self._swatch: Swatch | None = None

    @classmethod
    def begin(
        cls, first_fragment: str, *, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> ReferencePrefetch | None:
        """A prefetch for a message whose first fragment looks like a set_image
        frame carrying image_data; None when it does not (then nothing is speculated).

        The prefetch takes ``first_fragment``: feed only the fragments after it.
        Cheap (a look at its first :data:`HEAD_LIMIT` characters); its decoding
        is left to the first :meth:`feed` or :meth:`finish`. Never raises.
        """
        try:
            start = _value_start(first_fragment[:HEAD_LIMIT])
            if start == -1 or (start is None and len(first_fragment) >= HEAD_LIMIT):
                return None
            prefetch = cls(max_pixels=max_pixels)
            prefetch._chars = len(first_fragment)
            if start is None:
                prefetch._head = first_fragment
            else:
                prefetch._stage = _Stage.STREAMING
                prefetch._pending = (first_fragment, start)
            return prefetch
        except Exception:
            return None

    @property
    def state(self) -> str:
        """``scanning``, ``streaming``, ``closed``, ``done`` or ``abandoned``."""
        return self._stage.value

    @property
    def abandoned_because(self) -> str | None:
        """Why it was abandoned (a fixed phrase, no data), or None."""
        return self._reason

    def feed(self, fragment: str) -> None:
        """The next fragment of the same message (call in order; may run in a
        worker thread; never raises; cheap no-op once abandoned or finished)."""
        if self._stage not in (_Stage.SCANNING, _Stage.STREAMING):
            return
        try:
            self._chars += len(fragment)
            self._take_pending()
            if self._stage is _Stage.SCANNING:
                self._scan(fragment)
            elif self._stage is _Stage.STREAMING:
                self._value(fragment, 0)
        except _Abandon as stop:
            self._abandon(stop.reason)
        except Exception as exc:  # a bug or Pillow/zlib/memory: never the caller's problem
            self._abandon(f"unexpected {type(exc).__name__}")

    def finish(self) -> None:
        """The message is complete (no more fragments). Never raises.

        Checks the image is complete and has the echo model derive its swatch
        from the pixels: the tail cost (about 20 ms for 8 MB of pixels).
        """
        if self._stage in (_Stage.DONE, _Stage.ABANDONED):
            return
        try:
            self._take_pending()
            if self._stage is not _Stage.CLOSED:
                raise _Abandon("message ended before image_data did")
            if self._carry:
                raise _Abandon("base64 length not a multiple of 4")
            if not self._iend:
                raise _Abandon("PNG has no IEND")
            if not (self._zlib is not None and self._zlib.eof):
                raise _Abandon("zlib stream incomplete")
            if self._inflated != self._expected or not self._pillow_done:
                raise _Abandon("fewer pixel bytes than the image needs")
            if self._image is None:
                raise _Abandon("no image")
            # The pixels as the server's decoder gives them: RGB (a view, alpha left out).
            self._swatch = swatch(np.asarray(self._image)[:, :, :3])
            self._stage = _Stage.DONE
        except _Abandon as stop:
            self._abandon(stop.reason)
        except Exception as exc:
            self._abandon(f"unexpected {type(exc).__name__}")
        finally:
            self._release_pixels()

    def swatch_for(self, data: bytes) -> Swatch | None:
        """The swatch (a copy) of the image whose bytes are exactly ``data``, if
        this prefetch decoded exactly those bytes successfully; else None.

        Compares the bytes themselves (length first, then a memcmp: about a
        millisecond for 8 MB), rather than hashes: a hash of ``data`` would cost
        more on this, the latency-critical side, and equality needs no argument.
        """
        try:
            if self._stage is not _Stage.DONE or self._swatch is None:
                return None
            if len(data) != len(self._data) or data != self._data:
                return None
            return self._swatch.copy()
        except Exception:
            return None

    def __repr__(self) -> str:
        size = "" if self._size is None else f", {self._size[0]}x{self._size[1]} {self._size[2]}"
        why = "" if self._reason is None else f" ({self._reason})"
        return (
            f"<ReferencePrefetch {self._stage.value}{why}: "
            f"{self._chars} chars, {len(self._data)} bytes{size}>"
        )

    # ---- the message: head, then image_data's string -----------------------------------

    def _take_pending(self) -> None:
        # begin's fragment, decoded here: off the event loop.
        if self._pending is not None:
            text, start = self._pending
            self._pending = None
            self._value(text, start)

    def _scan(self, fragment: str) -> None:
        head = self._head + fragment[: HEAD_LIMIT - len(self._head)]
        start = _value_start(head)
        if start == -1 or (start is None and len(head) >= HEAD_LIMIT):
            raise _Abandon("no set_image image_data at the start")
        if start is None:
            self._head = head
            return
        offset = start - len(self._head)  # > 0: the old head held no whole key
        self._head = ""
        self._stage = _Stage.STREAMING
        self._value(fragment, offset)

    def _value(self, text: str, start: int) -> None:
        # The string ends at the next '"' (base64 has no escapes to skip): what
        # follows it is the server's to parse.
        end = text.find('"', start)
        self._base64(text[start:] if end < 0 else text[start:end])
        if end >= 0:
            self._stage = _Stage.CLOSED

    def _base64(self, text: str) -> None:
        if not text:
            return
        if self._padded:
            raise _Abandon("base64 continues after padding")
        text = self._carry + text
        usable = len(text) - len(text) % 4
        self._carry = text[usable:]
        if usable:
            try:
                # validate=True refuses anything outside the alphabet: a backslash, ':', spaces.
                data = pybase64.b64decode(text[:usable], validate=True)
            except ValueError:  # binascii.Error included
                raise _Abandon("not plain base64") from None
            self._padded = text[usable - 1] == "="
            self._data += data
            self._walk()

    # ---- the PNG: chunk by chunk, pixels to zlib and Pillow --------------------------------

    def _walk(self) -> None:
        data = self._data
        while True:
            if self._iend:
                if len(data) > self._pos:
                    raise _Abandon("bytes after IEND")
                return
            if self._chunk_type is None:
                if not self._start_chunk():
                    return
                continue
            if self._chunk_type == b"IDAT":
                stop = min(len(data), self._payload_end)
                if stop > self._pos:
                    # A copy (the bytearray grows: no view of it may outlive this line).
                    self._pixels(bytes(memoryview(data)[self._pos : stop]))
                    self._pos = stop
            if len(data) < self._chunk_end:
                return
            if self._chunk_type == b"IHDR":
                self._header(self._payload_end - 13)
            elif self._chunk_type == b"IEND":
                self._iend = True
            self._pos = self._chunk_end
            self._chunk_type = None

    def _start_chunk(self) -> bool:
        """Read the next chunk's length and type (False: not all here yet)."""
        data, pos = self._data, self._pos
        if pos == 0:
            if len(data) < len(_PNG_SIGNATURE):
                return False
            if data[: len(_PNG_SIGNATURE)] != _PNG_SIGNATURE:
                raise _Abandon("not a PNG")
            self._pos = len(_PNG_SIGNATURE)
            return True
        if len(data) - pos < 8:
            return False
        length, kind = struct.unpack_from(">I4s", data, pos)
        if length > _INT_MAX or not kind.isalpha():
            raise _Abandon("malformed PNG chunk")
        if self._size is None and (kind != b"IHDR" or length != 13):
            raise _Abandon("PNG does not start with its header")
        if kind == b"IDAT":
            if self._idat_over:
                raise _Abandon("PNG image data not contiguous")
            self._idat_seen = True
        elif self._idat_seen:
            self._idat_over = True
        if kind == b"IEND" and (length or not self._idat_seen):
            raise _Abandon("PNG ends early")
        if kind == b"IHDR" and self._size is not None:
            raise _Abandon("second PNG header")
        if kind[0] & 0x20 == 0 and kind not in (b"IHDR", b"IDAT", b"IEND"):
            raise _Abandon("PNG has an unsupported critical chunk")
        if kind in _APNG_CHUNKS:
            raise _Abandon("animated PNG")
        if kind in _CHECKED_BY_FFMPEG or (kind == b"pHYs" and self._idat_seen):
            raise _Abandon("PNG has a chunk the server's decoder may refuse")
        self._chunk_type = kind
        self._pos = pos + 8
        self._payload_end = self._pos + length
        self._chunk_end = self._payload_end + 4  # the CRC: neither decoder checks it
        return True

    def _header(self, at: int) -> None:
        width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(
            ">IIBBBBB", self._data, at
        )
        if not (0 < width <= _INT_MAX and 0 < height <= _INT_MAX):
            raise _Abandon("invalid PNG size")
        if depth != 8 or colour not in (2, 6):
            raise _Abandon("not an 8-bit RGB or RGBA PNG")
        if compression or filtering:
            raise _Abandon("unknown PNG compression or filter method")
        if interlace:
            raise _Abandon("interlaced PNG")
        if width * height > self._max_pixels:
            raise _Abandon("more pixels than allowed")
        if not _ffmpeg_takes_size(width, height):
            raise _Abandon("a size FFmpeg refuses")
        mode = "RGB" if colour == 2 else "RGBA"
        self._size = (width, height, mode)
        self._expected = height * (1 + width * len(mode))  # a filter byte per row
        self._zlib = zlib.decompressobj()
        # Allocated now, not at the tail; zeroed by Pillow, filled row by row.
        self._image = Image.new(mode, (width, height))
        # Pillow's PNG loader gets its row decoder so: "zip", raw mode = mode.
        decoder = cast(_RowDecoder, Image._getdecoder(mode, "zip", mode))
        decoder.setimage(self._image.im, (0, 0, width, height))
        self._decoder = decoder

    def _pixels(self, payload: bytes) -> None:
        """IDAT bytes: checked by zlib, decoded by Pillow."""
        if self._zlib is None or self._decoder is None:
            raise _Abandon("PNG image data before its header")
        # The check: the bytes form one zlib stream, its checksum right, that
        # inflates to exactly the image's rows (output discarded, in steps).
        if self._zlib.eof:
            raise _Abandon("data after the zlib stream")
        tail = payload
        while True:
            out = self._zlib.decompress(tail, _INFLATE_STEP)
            self._inflated += len(out)
            if self._inflated > self._expected:
                raise _Abandon("more pixel bytes than the image needs")
            if self._zlib.eof:  # reached only with a right Adler-32
                if self._zlib.unconsumed_tail or self._zlib.unused_data:
                    raise _Abandon("data after the zlib stream")
                break
            tail = self._zlib.unconsumed_tail
            if not tail and len(out) < _INFLATE_STEP:
                break  # all input taken, no output held back
        # The pixels: Pillow inflates again, unfilters and unpacks the rows.
        if self._pillow_done:
            return
        chunk = self._pillow_rest + payload if self._pillow_rest else payload
        used, error = self._decoder.decode(chunk)
        if used < 0:
            if error < 0:
                raise _Abandon("Pillow refused the pixel data")
            self._pillow_done = True  # every row decoded
            self._pillow_rest = b""
        else:
            self._pillow_rest = chunk[used:]

    # ---- the end ------------------------------------------------------------------------

    def _release_pixels(self) -> None:
        decoder, self._decoder = self._decoder, None
        self._image = self._zlib = None
        self._pillow_rest = b""
        if decoder is not None:
            with contextlib.suppress(Exception):
                decoder.cleanup()  # frees zlib's state now, not at garbage collection

    def _abandon(self, reason: str) -> None:
        self._stage = _Stage.ABANDONED
        self._reason = reason
        self._head = self._carry = ""
        self._pending = None
        self._data = bytearray()
        self._swatch = None
        self._release_pixels()
