"""The double's marker-completing video jitter buffer (adapters/server/lkdouble/jitter.py).

Unit and property tests feed synthetic RTP packets carrying ``_data``, as aiortc's
receiver sets it after depayloading; the last tests install the buffer on a real
``ClientMedia`` publisher receiver over an aiortc-to-aiortc loopback pair.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import VideoStreamTrack
from aiortc.rtp import RtpPacket
from hypothesis import given
from hypothesis import strategies as st

from leanjoin.adapters.server.lkdouble import ice, jitter
from leanjoin.adapters.server.lkdouble.jitter import MarkerJitterBuffer
from leanjoin.adapters.server.lkdouble.peer import ClientMedia

Frame = npt.NDArray[np.uint8]
TICKS_PER_FRAME = 3000  # 30 fps on the 90 kHz video clock


def _packet(seq: int, timestamp: int, data: bytes, *, marker: bool) -> RtpPacket:
    packet = RtpPacket(
        payload_type=96,
        marker=int(marker),
        sequence_number=seq % 65536,
        timestamp=timestamp % 2**32,
        payload=data,
    )
    packet._data = data  # type: ignore[attr-defined]
    return packet


def _frame(first_seq: int, timestamp: int, payloads: list[bytes]) -> list[RtpPacket]:
    """One video frame's packets; the last carries the marker."""
    last = len(payloads) - 1
    return [
        _packet(first_seq + i, timestamp, data, marker=i == last) for i, data in enumerate(payloads)
    ]


def _feed(buffer: JitterBuffer, packets: list[RtpPacket]) -> list[JitterFrame | None]:
    return [buffer.add(packet)[1] for packet in packets]


# --- examples ----------------------------------------------------------------------


def test_frame_is_complete_at_its_marker_packet_with_payloads_joined_in_order() -> None:
    buffer = MarkerJitterBuffer()
    out = _feed(buffer, _frame(100, 9000, [b"ab", b"cd", b"ef"]))
    assert out[:2] == [None, None]
    frame = out[2]
    assert frame is not None and frame.data == b"abcdef" and frame.timestamp == 9000


def test_stock_aiortc_buffer_completes_the_same_frame_one_frame_later() -> None:
    # The latency this module removes: aiortc waits for the next frame's first packet.
    stock = JitterBuffer(capacity=512, is_video=True)
    assert _feed(stock, _frame(100, 9000, [b"ab", b"cd"])) == [None, None]
    frame = stock.add(_packet(102, 12000, b"x", marker=False))[1]
    assert frame is not None and frame.data == b"abcd"


def test_frame_missing_a_middle_packet_is_not_complete_at_its_marker_but_when_it_arrives() -> None:
    buffer, stock = MarkerJitterBuffer(), JitterBuffer(capacity=512, is_video=True)
    a = _frame(0, 0, [b"a0", b"a1", b"a2"])
    b = _frame(3, TICKS_PER_FRAME, [b"b0", b"b1"])
    arrivals = [a[0], a[2], b[0], b[1], a[1]]  # a1 lost, then retransmitted
    ours, theirs = _feed(buffer, arrivals), _feed(stock, arrivals)
    assert ours[:4] == [None] * 4 and theirs[:4] == [None] * 4
    # Both complete frame a once the gap is filled, with a1 in its place.
    for done in (ours[4], theirs[4]):
        assert done is not None and done.data == b"a0a1a2"
    # b was complete already; like aiortc, one frame per packet, so it waits for the next.
    c0 = _packet(5, 2 * TICKS_PER_FRAME, b"c0", marker=False)
    later = buffer.add(c0)[1]
    assert later is not None and later.data == b"b0b1"


def test_a_gap_that_never_fills_never_completes_the_frame() -> None:
    buffer = MarkerJitterBuffer()
    a = _frame(0, 0, [b"a0", b"a1", b"a2"])
    assert _feed(buffer, [a[0], a[2]]) == [None, None]


def test_next_frame_completes_at_its_own_marker_after_a_marker_completion() -> None:
    buffer = MarkerJitterBuffer()
    a = _frame(65534, 0, [b"a0", b"a1"])  # the sequence number wraps inside frame b
    b = _frame(0, TICKS_PER_FRAME, [b"b0", b"b1", b"b2"])
    out = _feed(buffer, a + b)
    assert [f.data if f else None for f in out] == [None, b"a0a1", None, None, b"b0b1b2"]


def test_padding_after_a_marker_does_not_become_an_empty_frame() -> None:
    # libwebrtc may pad with empty packets carrying the last frame's timestamp.
    buffer = MarkerJitterBuffer()
    a = _frame(10, 0, [b"a0", b"a1"])
    padding = _packet(12, 0, b"", marker=False)
    b = _frame(13, TICKS_PER_FRAME, [b"b0", b"b1"])
    out = _feed(buffer, [*a, padding, *b])
    assert [f.data if f else None for f in out] == [None, b"a0a1", None, None, b"b0b1"]


def test_without_markers_aiortcs_next_timestamp_completion_still_applies() -> None:
    buffer = MarkerJitterBuffer()
    a = [_packet(7, 0, b"a0", marker=False), _packet(8, 0, b"a1", marker=False)]
    b0 = _packet(9, TICKS_PER_FRAME, b"b0", marker=False)
    out = _feed(buffer, [*a, b0])
    assert out[:2] == [None, None]
    assert out[2] is not None and out[2].data == b"a0a1"


def test_large_misorder_still_resets_and_asks_for_a_keyframe() -> None:
    buffer = MarkerJitterBuffer()
    _feed(buffer, _frame(1000, 0, [b"a0", b"a1"]))
    pli, frame = buffer.add(_packet(1000 + 30000, 9 * TICKS_PER_FRAME, b"z", marker=True))
    assert pli is True  # aiortc's reset on a jump; the marker still completes the packet
    assert frame is not None and frame.data == b"z"


# --- properties --------------------------------------------------------------------


@dataclass
class _Stream:
    frames: list[list[RtpPacket]]
    arrivals: list[RtpPacket]


_payloads = st.lists(st.binary(min_size=1, max_size=6), min_size=1, max_size=8)


@st.composite
def _streams(draw: st.DrawFn, *, reorder: str) -> _Stream:
    """Frames of 1..8 packets, from a random sequence number and timestamp.

    ``reorder``: "none", "within" (each frame's packets shuffled, frames in order) or
    "any" (packets swapped with neighbours up to 5 apart, across frame boundaries).
    The stream's first packet always arrives first: it fixes the buffer's origin, and
    aiortc drops anything older.
    """
    seq = draw(st.integers(0, 65535))
    timestamp = draw(st.integers(0, 2**32 - 1))
    frames: list[list[RtpPacket]] = []
    for payloads in draw(st.lists(_payloads, min_size=1, max_size=12)):
        frames.append(_frame(seq, timestamp, payloads))
        seq += len(payloads)
        timestamp += TICKS_PER_FRAME
    arrivals: list[RtpPacket] = []
    if reorder == "within":
        for i, frame in enumerate(frames):
            head, rest = (frame[:1], frame[1:]) if i == 0 else ([], frame)
            arrivals += head + draw(st.permutations(rest))
    else:
        arrivals = [p for f in frames for p in f]
    if reorder == "any":
        for i in range(1, len(arrivals)):
            j = draw(st.integers(max(1, i - 5), i))
            arrivals[i], arrivals[j] = arrivals[j], arrivals[i]
    return _Stream(frames, arrivals)


def _completions(buffer: JitterBuffer, stream: _Stream) -> list[tuple[int, JitterFrame]]:
    """(arrival index, frame) of every frame the buffer returned."""
    return [(i, f) for i, f in enumerate(_feed(buffer, stream.arrivals)) if f is not None]


def _check_each_is_one_sent_frame_in_order(stream: _Stream, done: list[JitterFrame]) -> list[int]:
    indices = []
    for frame in done:
        matches = [
            i
            for i, sent in enumerate(stream.frames)
            if sent[0].timestamp == frame.timestamp
            and b"".join(p._data for p in sent) == frame.data  # type: ignore[attr-defined]
        ]
        assert len(matches) == 1, "a completed frame is not exactly one sent frame"
        indices += matches
    assert indices == sorted(set(indices)), "frames out of order or repeated"
    return indices


@given(_streams(reorder="none"))
def test_in_order_every_frame_is_complete_at_its_marker_packet(stream: _Stream) -> None:
    """Invariants: each completion is exactly one sent frame; order kept; no frame-interval latency."""
    completions = _completions(MarkerJitterBuffer(), stream)
    indices = _check_each_is_one_sent_frame_in_order(stream, [f for _, f in completions])
    assert indices == list(range(len(stream.frames))), "every frame completes"
    for at, frame in completions:
        arrived = stream.arrivals[at]
        assert arrived.marker and arrived.timestamp == frame.timestamp, "completed at its marker"


@given(_streams(reorder="within"))
def test_reordered_within_frames_every_frame_is_complete_at_its_last_arrival(
    stream: _Stream,
) -> None:
    """Invariants: exactly one sent frame each, in order, completed by the packet that finished it."""
    completions = _completions(MarkerJitterBuffer(), stream)
    indices = _check_each_is_one_sent_frame_in_order(stream, [f for _, f in completions])
    assert indices == list(range(len(stream.frames)))
    for at, frame in completions:
        # Completed by one of its own packets, and none of them arrives after it.
        assert stream.arrivals[at].timestamp == frame.timestamp
        assert all(p.timestamp != frame.timestamp for p in stream.arrivals[at + 1 :])


@given(_streams(reorder="any"))
def test_any_reordering_yields_sent_frames_in_order_never_later_than_aiortc(
    stream: _Stream,
) -> None:
    """Invariants: exactly one sent frame each, in order; each frame aiortc completes, this
    buffer completes at the same packet or earlier."""
    ours = _completions(MarkerJitterBuffer(), stream)
    theirs = _completions(JitterBuffer(capacity=512, is_video=True), stream)
    _check_each_is_one_sent_frame_in_order(stream, [f for _, f in ours])
    ours_at = {f.timestamp: at for at, f in ours}
    for at, frame in theirs:
        assert frame.timestamp in ours_at and ours_at[frame.timestamp] <= at


# --- installed on a real ClientMedia -------------------------------------------------


class _Decoding:
    """A real ``ClientMedia`` that counts the client frames it decoded."""

    def __init__(self) -> None:
        self.frames = 0
        self.media = ClientMedia(
            on_frame=self._count, model_participant_sid="PA_m", model_track_sid="TR_m"
        )

    def _count(self, frame: Frame) -> None:
        self.frames += 1

    def buffer(self) -> object:
        (receiver,) = self.media.publisher.getReceivers()
        assert isinstance(receiver, RTCRtpReceiver)
        return getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)

    async def receive_video(self, frames: int) -> None:
        """Publish a video track from a loopback-only aiortc peer until ``frames`` decoded."""
        ice.confine_to_loopback()  # this test's task and those it starts gather 127.0.0.1 only
        camera = RTCPeerConnection(ice.rtc_configuration())
        try:
            camera.addTrack(VideoStreamTrack())
            await camera.setLocalDescription(await camera.createOffer())
            answer = await self.media.publisher_answer(camera.localDescription.sdp)
            await camera.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            with anyio.fail_after(20):
                while self.frames < frames:
                    await anyio.sleep(0.02)
        finally:
            await camera.close()


@pytest.mark.anyio
async def test_client_media_installs_the_marker_buffer_on_its_video_receiver() -> None:
    decoding = _Decoding()
    try:
        await decoding.receive_video(frames=3)
        assert isinstance(decoding.buffer(), MarkerJitterBuffer)
    finally:
        await decoding.media.close()


@pytest.mark.anyio
async def test_without_the_private_buffer_one_warning_and_aiortcs_buffer_still_decodes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Another aiortc version: the private attribute is not where 1.16.0 keeps it.
    monkeypatch.setattr(jitter, "_RECEIVER_BUFFER", "_RTCRtpReceiver__no_such_buffer")
    caplog.set_level(logging.WARNING, logger=jitter.__name__)
    decoding = _Decoding()
    try:
        await decoding.receive_video(frames=3)
        buffer = decoding.buffer()
        assert isinstance(buffer, JitterBuffer) and not isinstance(buffer, MarkerJitterBuffer)
        warnings = [r for r in caplog.records if r.name == jitter.__name__]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    finally:
        await decoding.media.close()
