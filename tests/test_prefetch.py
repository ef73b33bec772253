"""The reference prefetch (:mod:`leanjoin.adapters.server.prefetch`) against the server's decoder.

The invariant everything here checks: a prefetch's swatch, when it gives one,
is exactly the server's (``mean_colour(decode_reference(png))``), and only for
exactly the bytes it decoded; everything it does not fully understand it
abandons (swatch ``None``), without raising.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from leanjoin.adapters.client.png import encode_png
from leanjoin.adapters.server.echo_model import decode_reference, mean_colour
from leanjoin.adapters.server.prefetch import HEAD_LIMIT, ReferencePrefetch
from leanjoin.engine.codec import Base64Text, encode
from leanjoin.engine.messages import Prompt, SetImage

Swatch = npt.NDArray[np.uint8]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
FRAGMENT = 256 * 1024  # what leanjoin's client sends


# ---- helpers ------------------------------------------------------------------------------


def server_swatch(png: bytes) -> Swatch | None:
    """What the server computes (``_reference_swatch``); None where it refuses the image."""
    try:
        return np.array([[mean_colour(decode_reference(png))]], dtype=np.uint8)
    except ValueError:
        return None


def same(swatch: Swatch | None, expected: Swatch | None) -> bool:
    """Both swatches there, and equal."""
    return swatch is not None and expected is not None and np.array_equal(swatch, expected)


def set_image_frame(png: bytes, prompt: str = "a fox", style: str = "codec") -> str:
    """A set_image frame: by leanjoin's codec, as ``json.dumps`` writes it
    (spaces after ':' and ','), or with image_data before type."""
    if style == "codec":
        return encode(SetImage(image_data=Base64Text(png), prompt=prompt))
    text = base64.b64encode(png).decode("ascii")
    if style == "spaced":
        return json.dumps({"type": "set_image", "image_data": text, "prompt": prompt})
    assert style == "data_first"
    return json.dumps({"image_data": text, "type": "set_image", "prompt": prompt})


def fragments(text: str, cuts: Sequence[int] = (), size: int | None = None) -> list[str]:
    """``text`` cut at ``cuts`` (any ints, taken modulo its length), or every ``size``."""
    if size is not None:
        return [text[i : i + size] for i in range(0, len(text), size)] or [""]
    points = sorted({cut % len(text) for cut in cuts} - {0})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


def prefetched(parts: Sequence[str], **kwargs: int) -> ReferencePrefetch | None:
    """A prefetch run as the server runs it: begin(first), feed the rest, finish."""
    prefetch = ReferencePrefetch.begin(parts[0], **kwargs)
    if prefetch is not None:
        for part in parts[1:]:
            prefetch.feed(part)
        prefetch.finish()
    return prefetch


def swatch_of(parts: Sequence[str], png: bytes, **kwargs: int) -> Swatch | None:
    prefetch = prefetched(parts, **kwargs)
    return None if prefetch is None else prefetch.swatch_for(png)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def chunks_of(png: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], len(SIGNATURE)
    while pos < len(png):
        (length,) = struct.unpack_from(">I", png, pos)
        out.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def assemble(chunks: Sequence[tuple[bytes, bytes]]) -> bytes:
    return SIGNATURE + b"".join(chunk(kind, data) for kind, data in chunks)


def raw_png(
    width: int,
    height: int,
    *,
    colour: int = 2,
    depth: int = 8,
    interlace: int = 0,
    rows: bytes | None = None,
) -> bytes:
    """A PNG made here, from unfiltered rows (zeros unless given)."""
    channels = {0: 1, 2: 3, 6: 4}[colour]
    if rows is None:
        rows = (b"\0" + bytes(width * channels * depth // 8)) * height
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return assemble([(b"IHDR", header), (b"IDAT", zlib.compress(rows)), (b"IEND", b"")])


def with_idat(png: bytes, idat: bytes) -> bytes:
    """``png`` with its image data replaced by one IDAT of ``idat``."""
    chunks = chunks_of(png)
    first = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    rest = [c for c in chunks[first:] if c[0] != b"IDAT"]
    return assemble([*chunks[:first], (b"IDAT", idat), *rest])


def idat_of(png: bytes) -> bytes:
    return b"".join(data for kind, data in chunks_of(png) if kind == b"IDAT")


def pillow_bytes(image: npt.NDArray[np.uint8], fmt: str, mode: str | None = None) -> bytes:
    picture = Image.fromarray(image)
    if mode is not None:
        picture = picture.convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, fmt)
    return buffer.getvalue()


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


images = st.tuples(st.integers(1, 24), st.integers(1, 24), st.sampled_from([3, 4])).flatmap(
    lambda shape: hnp.arrays(np.uint8, shape)
)
cut_lists = st.lists(st.integers(0, 1 << 20), max_size=8)


# ---- agreement ----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    image=images,
    prompt=st.text(max_size=20),
    style=st.sampled_from(["codec", "spaced", "data_first"]),
    cuts=cut_lists,
)
def test_prefetch_agrees_with_the_server_decode(
    image: npt.NDArray[np.uint8], prompt: str, style: str, cuts: list[int]
) -> None:
    """Any RGB/RGBA image, any prompt, any fragmentation: the prefetch's swatch is
    the server's; a frame whose type follows image_data is not speculated on."""
    png = encode_png(image)
    frame = set_image_frame(png, prompt, style)
    swatch = swatch_of(fragments(frame, cuts), png)
    event(f"{image.shape[2]} channels")
    if style == "data_first":
        event("abandoned: type after image_data")
        assert swatch is None
    else:
        event("speculated")
        expected = server_swatch(png)
        assert swatch is not None and expected is not None
        assert swatch.shape == (1, 1, 3) and swatch.dtype == np.uint8
        assert np.array_equal(swatch, expected)


# Damage that leaves a decodable PNG, and damage that may not.
_VALID = ("split IDAT", "recompressed")
_DAMAGE = ("flip byte", "flip IDAT byte, CRC fixed", "truncate", "append", "insert chunk")
_INSERTED = (
    b"tEXt", b"gAMA", b"sRGB", b"tRNS", b"iCCP", b"eXIf", b"pHYs", b"zzZz", b"PLTE", b"acTL", b"ZZZZ",
)  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "after_idat"),
    [(b"iCCP", False), (b"iCCP", True), (b"eXIf", False), (b"eXIf", True), (b"pHYs", True)],
)
def test_no_speculation_on_a_chunk_ffmpeg_may_refuse_the_image_over(
    kind: bytes, after_idat: bool
) -> None:
    """Found by the differential test below: FFmpeg refuses a PNG whose iCCP or
    eXIf chunk is malformed, or with pHYs after its data, where Pillow's rows
    decode fine; the prefetch must not style the output from such an image."""
    png = encode_png(np.zeros((1, 1, 3), np.uint8))
    chunks = chunks_of(png)
    at = len(chunks) - 1 if after_idat else 1
    damaged = assemble([*chunks[:at], (kind, b"\x00" * 4), *chunks[at:]])
    assert server_swatch(damaged) is None
    assert swatch_of(fragments(set_image_frame(damaged), []), damaged) is None


@pytest.mark.parametrize("kind", _VALID + _DAMAGE)
@settings(max_examples=100, deadline=None)
@given(
    image=images,
    where=st.integers(0, 1 << 20),
    junk=st.binary(min_size=1, max_size=40),
    inserted=st.sampled_from(_INSERTED),
    level=st.integers(0, 9),
    cuts=cut_lists,
)
def test_prefetch_never_disagrees_with_the_server_on_damaged_pngs(
    image: npt.NDArray[np.uint8],
    kind: str,
    where: int,
    junk: bytes,
    inserted: bytes,
    level: int,
    cuts: list[int],
) -> None:
    """Differential: for a damaged or reshaped PNG, a prefetch either abandons or
    gives the server's swatch; never one where the server refuses the image."""
    png = encode_png(image)
    idat = idat_of(png)
    if kind == "split IDAT":
        step = 1 + where % 97
        pieces = [(b"IDAT", idat[i : i + step]) for i in range(0, len(idat), step)]
        chunks = chunks_of(png)
        damaged = assemble([chunks[0], *pieces, (b"IEND", b"")])
    elif kind == "recompressed":
        damaged = with_idat(png, zlib.compress(zlib.decompress(idat), level))
    elif kind == "flip byte":
        at = where % len(png)
        damaged = png[:at] + bytes([png[at] ^ (1 + junk[0] % 255)]) + png[at + 1 :]
    elif kind == "flip IDAT byte, CRC fixed":
        at = where % len(idat)
        damaged = with_idat(
            png, idat[:at] + bytes([idat[at] ^ (1 + junk[0] % 255)]) + idat[at + 1 :]
        )
    elif kind == "truncate":
        damaged = png[: where % len(png)]
    elif kind == "append":
        damaged = png + junk
    else:
        chunks = chunks_of(png)
        at = 1 + where % (len(chunks) - 1)
        damaged = assemble([*chunks[:at], (inserted, junk), *chunks[at:]])
    swatch = swatch_of(fragments(set_image_frame(damaged), cuts), damaged)
    expected = server_swatch(damaged)
    event(f"{kind}: {'speculated' if swatch is not None else 'abandoned'}")
    if swatch is not None:
        assert expected is not None, "speculated on an image the server refuses"
        assert np.array_equal(swatch, expected)
    if kind in _VALID:
        assert swatch is not None, "a plain PNG with its data split or recompressed"


@settings(max_examples=100, deadline=None)
@given(image=images, other=images, where=st.integers(0, 1 << 20), flip=st.integers(1, 255))
def test_swatch_only_for_exactly_the_decoded_bytes(
    image: npt.NDArray[np.uint8], other: npt.NDArray[np.uint8], where: int, flip: int
) -> None:
    """swatch_for answers for the decoded bytes and nothing else: not another
    image, not a prefix, not the image with one byte changed."""
    png = encode_png(image)
    prefetch = prefetched(fragments(set_image_frame(png), size=97))
    assert prefetch is not None and prefetch.swatch_for(png) is not None
    other_png = encode_png(other)
    if other_png != png:
        assert prefetch.swatch_for(other_png) is None
    assert prefetch.swatch_for(png[: where % len(png)]) is None
    at = where % len(png)
    assert prefetch.swatch_for(png[:at] + bytes([png[at] ^ flip]) + png[at + 1 :]) is None
    assert prefetch.swatch_for(png + b"\0") is None


def test_a_large_noise_png_in_256_kib_fragments() -> None:
    """A ~2 MB incompressible PNG in the client's 256 KiB fragments: the server's swatch."""
    png = encode_png(noise(680, 1024))
    assert len(png) > 2_000_000
    parts = fragments(set_image_frame(png), size=FRAGMENT)
    assert len(parts) > 8
    prefetch = prefetched(parts)
    assert prefetch is not None and prefetch.state == "done", prefetch
    swatch = prefetch.swatch_for(png)
    expected = server_swatch(png)
    assert swatch is not None and expected is not None
    assert np.array_equal(swatch, expected)


# ---- the interface ------------------------------------------------------------------------


def test_begin_takes_the_first_fragment_and_leaves_the_decoding_to_feed() -> None:
    """begin only looks (cheap, for the event loop); the first feed decodes its fragment."""
    png = encode_png(noise(40, 50))
    parts = fragments(set_image_frame(png), size=1000)
    prefetch = ReferencePrefetch.begin(parts[0])
    assert prefetch is not None
    assert prefetch.state == "streaming" and "0 bytes" in repr(prefetch)
    prefetch.feed(parts[1])
    assert f"{len(parts[0]) + len(parts[1])} chars" in repr(prefetch)
    assert "0 bytes" not in repr(prefetch)


def test_a_message_in_one_fragment() -> None:
    """begin(whole message), then finish: decoded by finish."""
    png = encode_png(noise(9, 7, 4))
    prefetch = prefetched([set_image_frame(png)])
    assert prefetch is not None and prefetch.state == "done"
    assert same(prefetch.swatch_for(png), server_swatch(png))


def test_a_constructed_prefetch_is_fed_every_fragment() -> None:
    """ReferencePrefetch() (no begin) scans from the first fragment on."""
    png = encode_png(noise(9, 7))
    prefetch = ReferencePrefetch()
    for part in fragments(set_image_frame(png, style="spaced"), size=5):
        prefetch.feed(part)
    prefetch.finish()
    assert same(prefetch.swatch_for(png), server_swatch(png))


def test_feed_and_finish_change_nothing_once_done_or_abandoned() -> None:
    png = encode_png(noise(5, 6))
    done = prefetched(fragments(set_image_frame(png), size=50))
    assert done is not None and done.state == "done"
    done.feed('garbage"}')
    done.finish()
    assert done.state == "done" and done.swatch_for(png) is not None

    frame = set_image_frame(png)
    broken = ReferencePrefetch.begin(frame[:60])
    assert broken is not None
    broken.feed("!!!!")  # not base64
    assert broken.state == "abandoned"
    broken.feed(frame[60:])
    broken.finish()
    assert broken.state == "abandoned" and broken.swatch_for(png) is None


def test_swatch_for_before_finish_is_none() -> None:
    png = encode_png(noise(5, 6))
    parts = fragments(set_image_frame(png), size=50)
    prefetch = ReferencePrefetch.begin(parts[0])
    assert prefetch is not None
    for part in parts[1:]:
        prefetch.feed(part)
    assert prefetch.state == "closed"
    assert prefetch.swatch_for(png) is None
    prefetch.finish()
    assert prefetch.swatch_for(png) is not None


def test_the_swatch_returned_is_a_copy() -> None:
    png = encode_png(noise(5, 6))
    prefetch = prefetched([set_image_frame(png)])
    assert prefetch is not None
    first = prefetch.swatch_for(png)
    assert first is not None
    first[...] = 0
    assert same(prefetch.swatch_for(png), server_swatch(png))


def test_no_image_data_in_reprs_or_reasons() -> None:
    """A repr states stage, sizes and a fixed reason: never the image's base64."""
    png = encode_png(noise(30, 30))
    frame = set_image_frame(png)
    text = base64.b64encode(png).decode("ascii")
    samples = [text[i : i + 12] for i in range(0, len(text) - 12, 97)]
    seen = []
    prefetch = ReferencePrefetch.begin(frame[:700])
    assert prefetch is not None
    seen.append(repr(prefetch))
    prefetch.feed(frame[700:1500])
    seen.append(repr(prefetch))
    prefetch.feed(frame[1500:])
    prefetch.finish()
    seen.append(repr(prefetch))
    broken = prefetched([frame[:900] + "*" + frame[901:]])
    assert broken is not None and broken.abandoned_because == "not plain base64"
    seen += [repr(broken), broken.abandoned_because]
    for shown in seen:
        assert len(shown) < 150
        assert not any(sample in shown for sample in samples), shown


# ---- what is refused ----------------------------------------------------------------------


def test_other_frames_are_not_speculated_on() -> None:
    """begin says None for what is plainly no set_image with image_data."""
    png = encode_png(noise(4, 4))
    text = base64.b64encode(png).decode("ascii")
    refused = [
        encode(Prompt(prompt="a fox")),
        '{"type":"livekit_join","initial_state":{"image_data":"' + text + '"}}',
        '{"type":"set_image","image_data":null,"prompt":"x"}',
        '["set_image","' + text + '"]',
        "not json",
        set_image_frame(png, prompt="p" * HEAD_LIMIT, style="data_first"),
        json.dumps({"type": "set_image", "prompt": "p" * HEAD_LIMIT, "image_data": text}),
    ]
    for frame in refused:
        assert ReferencePrefetch.begin(frame) is None, frame[:60]
    # Too short to tell at once (image_data might follow): abandoned at the end.
    undecided = prefetched(['{"type":"set_image","image_ref":"file-1"}'])
    assert undecided is not None and undecided.state == "abandoned"


def test_image_data_must_begin_in_the_head() -> None:
    """Fragments too small to tell at once: scanning gives up past HEAD_LIMIT."""
    png = encode_png(noise(4, 4))
    text = base64.b64encode(png).decode("ascii")
    late = json.dumps({"type": "set_image", "prompt": "p" * HEAD_LIMIT, "image_data": text})
    prefetch = prefetched(fragments(late, size=100))
    assert prefetch is not None and prefetch.state == "abandoned"
    assert prefetch.swatch_for(png) is None
    early = json.dumps({"type": "set_image", "prompt": "p" * 4000, "image_data": text})
    assert same(swatch_of(fragments(early, size=100), png), server_swatch(png))
    spaced = ' \n\t{ "type" :\t"set_image" ,\n "image_data" :  "' + text + '" }'
    assert same(swatch_of(fragments(spaced, size=3), png), server_swatch(png))


def _refusals() -> list[tuple[str, str, bytes, str, dict[str, int]]]:
    """(case, frame, image bytes, the reason, begin's keywords)."""
    rgb = noise(20, 20)
    png = encode_png(rgb)
    text = base64.b64encode(png).decode("ascii")
    chunks = chunks_of(png)
    header = bytearray(chunks[0][1])
    header[12] = 1
    interlaced = assemble([(b"IHDR", bytes(header)), *chunks[1:]])
    idat = idat_of(png)
    bad_adler = with_idat(png, idat[:-4] + bytes(a ^ 0xFF for a in idat[-4:]))
    huge = assemble([(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))])
    huge += chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    idat_split = assemble(
        [chunks[0], (b"IDAT", idat[:30]), (b"tEXt", b"a\0b"), (b"IDAT", idat[30:]), chunks[-1]]
    )
    animated = assemble([chunks[0], (b"acTL", bytes(8)), *chunks[1:]])
    palette_in_rgb = assemble([chunks[0], (b"PLTE", bytes(6)), *chunks[1:]])
    padded = base64.b64encode(png[:1]).decode() + base64.b64encode(png[1:]).decode()

    def frame(data: bytes) -> str:
        return set_image_frame(data)

    def raw(value: str) -> str:
        return '{"type":"set_image","image_data":"' + value + '","prompt":"p"}'

    cases: list[tuple[str, str, bytes, str, dict[str, int]]] = [
        ("data: URL", raw("data:image/png;base64," + text), png, "not plain base64", {}),
        ("bad base64", raw(text[:40] + "!" + text[41:]), png, "not plain base64", {}),
        ("escaped slash", raw(text[:40] + "\\/" + text[40:]), png, "not plain base64", {}),
        ("padding inside", raw(padded), png, "base64", {}),
        ("length not 4n", raw(text[:-1]), png, "base64 length not a multiple of 4", {}),
        ("JPEG", frame(pillow_bytes(rgb, "JPEG")), b"", "not a PNG", {}),
        ("palette", frame(pillow_bytes(rgb, "PNG", "P")), b"", "not an 8-bit RGB", {}),
        ("grey", frame(encode_png(rgb[:, :, 0])), b"", "not an 8-bit RGB", {}),
        ("16-bit", frame(raw_png(3, 2, depth=16)), b"", "not an 8-bit RGB", {}),
        ("interlaced", frame(interlaced), interlaced, "interlaced PNG", {}),
        ("too many pixels", frame(huge), huge, "more pixels than allowed", {}),
        ("over max_pixels", frame(png), png, "more pixels than allowed", {"max_pixels": 399}),
        ("FFmpeg's size", frame(raw_png(1, 1_400_000)), b"", "a size FFmpeg refuses", {}),
        ("truncated PNG", frame(png[:-30]), png[:-30], "", {}),
        ("garbage after header", frame(png[:33] + bytes(range(200))), b"", "", {}),
        ("bytes after IEND", frame(png + b"\0"), png + b"\0", "bytes after IEND", {}),
        ("bad Adler-32", frame(bad_adler), bad_adler, "", {}),
        ("data after zlib", frame(with_idat(png, idat + b"xx")), b"", "after the zlib", {}),
        ("IDAT, tEXt, IDAT", frame(idat_split), idat_split, "not contiguous", {}),
        ("APNG", frame(animated), animated, "animated PNG", {}),
        ("PLTE in RGB", frame(palette_in_rgb), palette_in_rgb, "critical chunk", {}),
        ("no IEND", frame(png[:-12]), png[:-12], "PNG has no IEND", {}),
        ("message cut", frame(png)[:-200], png, "message ended before image_data", {}),
    ]
    return cases


@pytest.mark.parametrize(
    ("frame", "image", "reason", "kwargs"),
    [case[1:] for case in _refusals()],
    ids=[case[0] for case in _refusals()],
)
@pytest.mark.parametrize("size", [1, 7, 1000, FRAGMENT])
def test_refused_images_are_abandoned_without_raising(
    frame: str, image: bytes, reason: str, kwargs: dict[str, int], size: int
) -> None:
    """Each refusal, at any fragment size: abandoned (for its reason), no swatch."""
    prefetch = prefetched(fragments(frame, size=size), **kwargs)
    assert prefetch is not None and prefetch.state == "abandoned", prefetch
    assert reason in (prefetch.abandoned_because or ""), prefetch
    assert prefetch.swatch_for(image) is None
    if image:
        assert prefetch.swatch_for(image[:-1]) is None


def test_max_pixels_is_inclusive() -> None:
    png = encode_png(noise(20, 20))
    frame = set_image_frame(png)
    assert swatch_of([frame], png, max_pixels=400) is not None
    assert swatch_of([frame], png, max_pixels=399) is None


def test_ffmpeg_size_limit_is_mirrored() -> None:
    """A 1 x 1,400,000 PNG the server cannot decode is abandoned; a 1 x 600,000
    one (inside the halved bound) is speculated, and agrees."""
    refused = raw_png(1, 1_400_000)
    assert server_swatch(refused) is None
    assert swatch_of([set_image_frame(refused)], refused) is None
    tall = raw_png(1, 600_000, rows=b"\0\x10\x80\xf0" * 600_000)
    assert same(swatch_of([set_image_frame(tall)], tall), server_swatch(tall))


def test_a_bad_adler_32_is_caught_at_every_cut() -> None:
    """Pillow stops at the last row and never reads the checksum: whichever
    fragment the checksum arrives in, the zlib check abandons (as FFmpeg refuses)."""
    png = encode_png(noise(12, 9))
    idat = idat_of(png)
    bad = with_idat(png, idat[:-4] + bytes(a ^ 0x5A for a in idat[-4:]))
    assert server_swatch(bad) is None
    frame = set_image_frame(bad)
    end = frame.index('"', frame.index('"image_data":"') + 14)
    for cut in range(end - 40, end + 1):
        assert swatch_of([frame[:cut], frame[cut:]], bad) is None
