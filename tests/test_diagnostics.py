"""The observability events' own logic, without a room (issue #14): the connect
breakdown and reconnects from milestones and engine events, the stall watch on
anyio's clock, WebRTC stats from LiveKit's protobuf reports (fields missing
included), their one-line and JSON forms, and ``connect()``'s new arguments.
The real session's events are tested in ``test_observability.py``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import anyio
import attrs
import pytest
from livekit import rtc
from livekit.rtc._proto import stats_pb2

from leanjoin.adapters import (
    ConnectBreakdown,
    ConnectionQuality,
    ConnectionQualityChanged,
    ConnectionState,
    ErrorKind,
    InvalidArgument,
    ObservabilityEvent,
    Reconnected,
    SessionStarted,
    StateChanged,
    VideoStall,
    VideoStallEnded,
    WebRtcStats,
    connect,
)
from leanjoin.adapters.cli.display import describe, event_json
from leanjoin.adapters.client.diagnostics import (
    ConnectDiagnostics,
    StallWatch,
    breakdown,
    loss_cause,
)
from leanjoin.adapters.client.rtc_stats import StatsSampler
from leanjoin.engine.client.inputs import (
    AttemptId,
    RoomDisconnected,
    SendFailed,
    SendId,
    SocketClosed,
    SocketOpened,
)
from leanjoin.engine.client.session import subscribe_token

A1, A2, A3 = AttemptId(1), AttemptId(2), AttemptId(3)
C, G, R = ConnectionState.CONNECTED, ConnectionState.GENERATING, ConnectionState.RECONNECTING
CONNECT_MILESTONES = [
    ("socket_opening", 0.0),
    ("socket_opened", 0.1),
    ("join_sent", 0.1),  # not a phase boundary: ignored
    ("room_info", 0.3),
    ("room_connected", 0.8),
    ("tracks_published", 1.0),
]


# ---- the connect breakdown ---------------------------------------------------------------


def test_breakdown_phases_follow_each_other_and_add_up() -> None:
    marks = dict(CONNECT_MILESTONES) | {"queued": 0.2, "first_output_frame": 1.5}
    b = breakdown(A1, marks)
    assert (b.socket_open, b.room_info, b.queue_wait) == pytest.approx((0.1, 0.1, 0.1))
    assert (b.room_connect, b.publish, b.first_output_frame) == pytest.approx((0.5, 0.2, 0.5))
    assert b.total == pytest.approx(1.5)


def test_breakdown_leaves_out_what_did_not_happen_and_never_goes_negative() -> None:
    # Never queued; the first frame decoded a moment before the publish was confirmed.
    marks = dict(CONNECT_MILESTONES) | {"first_output_frame": 0.95}
    b = breakdown(A1, marks)
    assert b.queue_wait is None and b.room_info == pytest.approx(0.2)
    assert b.first_output_frame == 0
    phases = [b.socket_open, b.room_info, b.room_connect, b.publish, b.first_output_frame]
    assert sum(p for p in phases if p is not None) == pytest.approx(b.total) == 1.0
    ended_early = breakdown(A1, dict(CONNECT_MILESTONES))
    assert ended_early.first_output_frame is None and ended_early.total == 1.0


def _connect(diagnostics: ConnectDiagnostics, attempt: AttemptId, start: float) -> None:
    for name, at in CONNECT_MILESTONES:
        diagnostics.milestone(attempt, name, start + at)


def test_a_breakdown_per_connected_attempt_at_its_first_frame_or_its_end() -> None:
    seen: list[ObservabilityEvent] = []
    diagnostics = ConnectDiagnostics(seen.append)
    _connect(diagnostics, A1, 0.0)
    diagnostics.after(SessionStarted(A1, "s", "r", "t"), 1.1)
    assert seen == []  # waits for the model's first frame
    diagnostics.milestone(A1, "first_output_frame", 1.4)
    (first,) = seen
    assert isinstance(first, ConnectBreakdown) and first.first_output_frame == pytest.approx(0.4)
    diagnostics.milestone(A1, "first_output_frame", 9.0)  # only the first counts, once
    assert len(seen) == 1
    # Attempt 2 connects, then the user leaves before any frame: broken down at the end.
    _connect(diagnostics, A2, 10.0)
    diagnostics.after(SessionStarted(A2, "s", "r", "t"), 11.1)
    left = StateChanged(A2, ConnectionState.DISCONNECTED, C)
    diagnostics.before(left, 12.0, loss_cause(None))
    second = seen[-1]
    assert isinstance(second, ConnectBreakdown) and second.attempt == A2
    assert second.first_output_frame is None and second.total == pytest.approx(1.0)
    assert not any(isinstance(e, Reconnected) for e in seen)  # a user leave is no loss


def test_a_failed_attempt_is_never_broken_down() -> None:
    seen: list[ObservabilityEvent] = []
    diagnostics = ConnectDiagnostics(seen.append)
    diagnostics.milestone(A1, "socket_opening", 0.0)
    diagnostics.milestone(A1, "socket_opened", 0.1)
    _connect(diagnostics, A2, 1.0)
    diagnostics.after(SessionStarted(A2, "s", "r", "t"), 2.1)
    diagnostics.milestone(A2, "first_output_frame", 2.5)
    assert [e.attempt for e in seen] == [A2]


def test_reconnected_says_why_how_often_and_how_long() -> None:
    seen: list[ObservabilityEvent] = []
    diagnostics = ConnectDiagnostics(seen.append)
    _connect(diagnostics, A1, 0.0)
    diagnostics.after(SessionStarted(A1, "s", "r", "t"), 1.1)
    diagnostics.milestone(A1, "first_output_frame", 1.2)
    lost = RoomDisconnected(A1, "room_deleted")
    diagnostics.before(StateChanged(A2, R, G), 5.0, loss_cause(lost))
    diagnostics.milestone(A2, "socket_opening", 5.0)  # attempt 2 fails; 3 connects
    _connect(diagnostics, A3, 6.0)
    started = SessionStarted(A3, "s", "r", "t")
    diagnostics.after(StateChanged(A3, C, R), 7.0)
    diagnostics.after(started, 7.5)
    reconnected = seen[-1]
    assert reconnected == Reconnected(
        A3, 2, ErrorKind.ROOM_LOST, "room disconnected: room_deleted", 2.5
    )
    diagnostics.after(SessionStarted(A3, "s", "r", "t"), 8.0)
    assert sum(isinstance(e, Reconnected) for e in seen) == 1  # one per loss


def test_the_cause_of_a_loss_is_the_report_the_engine_was_handling() -> None:
    assert loss_cause(SocketClosed(A1, 1011, "server going away"))[0] is ErrorKind.SOCKET_CLOSED
    assert loss_cause(SendFailed(A1, SendId(1), "broken pipe"))[0] is ErrorKind.SEND_FAILED
    assert loss_cause(SocketOpened(A1))[0] is ErrorKind.CONNECTION_LOST
    assert loss_cause(None) == (ErrorKind.CONNECTION_LOST, "connection lost")


# ---- the stall watch ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_stall_watch_reports_a_stall_and_its_end() -> None:
    seen: list[ObservabilityEvent] = []
    watch = StallWatch(0.2, seen.append)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch.run)
        await anyio.sleep(0.4)
        assert seen == []  # no frame yet: nothing flows, nothing stalls
        watch.frame(A1, anyio.current_time())
        with anyio.fail_after(5):
            while not seen:
                await anyio.sleep(0.01)
        assert seen == [VideoStall(A1, 0.2)]
        watch.frame(A1, anyio.current_time())
        (_, ended) = seen
        assert isinstance(ended, VideoStallEnded) and ended.duration >= 0.2
        # A stall cut short by leaving the connected states has no end, nor a new stall.
        with anyio.fail_after(5):
            while len(seen) < 3:
                await anyio.sleep(0.01)
        watch.stop()
        watch.frame(A2, anyio.current_time())
        assert not isinstance(seen[-1], VideoStallEnded)
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_stall_watch_is_off_without_a_threshold() -> None:
    seen: list[ObservabilityEvent] = []
    watch = StallWatch(None, seen.append)
    with anyio.fail_after(1):
        await watch.run()  # returns at once
    watch.frame(A1, 0.0)
    assert seen == []


# ---- WebRTC stats from LiveKit's reports --------------------------------------------------


def _outbound(bytes_sent: int, width: int, fps: float) -> stats_pb2.RtcStats:
    return stats_pb2.RtcStats(
        outbound_rtp=stats_pb2.RtcStats.OutboundRtp(
            stream=stats_pb2.RtpStreamStats(kind="video"),
            sent=stats_pb2.SentRtpStreamStats(bytes_sent=bytes_sent, packets_sent=10),
            outbound=stats_pb2.OutboundRtpStreamStats(
                frame_width=width,
                frame_height=width * 3 // 4,
                frames_per_second=fps,
                quality_limitation_reason=stats_pb2.LIMITATION_BANDWIDTH,
            ),
        )
    )


def _inbound(bytes_received: int, kind: str = "video") -> stats_pb2.RtcStats:
    return stats_pb2.RtcStats(
        inbound_rtp=stats_pb2.RtcStats.InboundRtp(
            stream=stats_pb2.RtpStreamStats(kind=kind),
            received=stats_pb2.ReceivedRtpStreamStats(packets_lost=3, jitter=0.004),
            inbound=stats_pb2.InboundRtpStreamStats(
                bytes_received=bytes_received, frames_decoded=40, freeze_count=1
            ),
        )
    )


def _pair(rtt: float, nominated: bool = True) -> stats_pb2.RtcStats:
    return stats_pb2.RtcStats(
        candidate_pair=stats_pb2.RtcStats.CandidatePair(
            candidate_pair=stats_pb2.CandidatePairStats(
                state=stats_pb2.PAIR_SUCCEEDED, nominated=nominated, current_round_trip_time=rtt
            )
        )
    )


def test_stats_samples_sum_layers_and_compute_bitrates_from_deltas() -> None:
    sampler = StatsSampler()
    layers = [_outbound(1000, 320, 15.0), _outbound(3000, 640, 30.0)]
    subscriber = [_inbound(100, kind="audio"), _inbound(5000), _pair(0.5, nominated=False)]
    first = sampler.sample(A1, 10.0, rtc.RtcStats([*layers, _pair(0.02)], subscriber))
    out, inbound = first.outbound_video, first.inbound_video
    assert out is not None and inbound is not None
    assert (out.bytes_sent, out.packets_sent) == (4000, 20)  # the layers summed
    assert (out.frame_width, out.frame_height, out.frames_per_second) == (640, 480, 30.0)
    assert out.quality_limitation == "bandwidth"
    assert out.bitrate is None and inbound.bitrate is None  # nothing to compare with yet
    assert (inbound.bytes_received, inbound.packets_lost, inbound.jitter) == (5000, 3, 0.004)
    assert (inbound.frames_decoded, inbound.freeze_count) == (40, 1)
    assert first.round_trip_time == 0.02  # the nominated pair's
    later = [_outbound(2000, 320, 15.0), _outbound(6000, 640, 30.0)]
    second = sampler.sample(A1, 12.0, rtc.RtcStats(later, [_inbound(7000)]))
    assert second.outbound_video is not None and second.inbound_video is not None
    assert second.outbound_video.bitrate == pytest.approx(4000 * 8 / 2)
    assert second.inbound_video.bitrate == pytest.approx(2000 * 8 / 2)


def test_stats_fields_the_stack_did_not_report_are_none() -> None:
    sampler = StatsSampler()
    bare_out = stats_pb2.RtcStats(
        outbound_rtp=stats_pb2.RtcStats.OutboundRtp(stream=stats_pb2.RtpStreamStats(kind="video"))
    )
    bare_in = stats_pb2.RtcStats(
        inbound_rtp=stats_pb2.RtcStats.InboundRtp(stream=stats_pb2.RtpStreamStats(kind="video"))
    )
    sample = sampler.sample(A1, 1.0, rtc.RtcStats([bare_out], [bare_in]))
    assert sample.outbound_video is not None and sample.inbound_video is not None
    assert set(attrs.astuple(sample.outbound_video)) == {None}
    assert set(attrs.astuple(sample.inbound_video)) == {None}
    assert sample.round_trip_time is None and sample.available_outgoing_bitrate is None
    again = sampler.sample(A1, 2.0, rtc.RtcStats([bare_out], [bare_in]))
    assert again.outbound_video is not None and again.outbound_video.bitrate is None
    empty = sampler.sample(A1, 3.0, rtc.RtcStats([], []))
    assert (empty.outbound_video, empty.inbound_video, empty.round_trip_time) == (None, None, None)


# ---- how they are shown ------------------------------------------------------------------


def test_observability_events_read_as_one_line_and_as_json() -> None:
    sample = StatsSampler().sample(
        A1, 1.0, rtc.RtcStats([_outbound(1000, 320, 15.0), _pair(0.012)], [_inbound(10)])
    )
    line = describe(sample)
    assert line.startswith("stats: out 320x240, 15 fps") and "in " in line
    assert "3 packets lost" in line and line.endswith("rtt 12 ms") and "\n" not in line
    assert describe(WebRtcStats(A1, 1.0, None, None, None, None)) == ("stats: nothing measured yet")
    quality = ConnectionQualityChanged(A1, ConnectionQuality.POOR)
    assert describe(quality) == "connection quality: poor"
    b = breakdown(A1, dict(CONNECT_MILESTONES) | {"first_output_frame": 2.5})
    assert describe(b) == (
        "connect took 2.50 s: socket 100 ms, room info 200 ms, room 500 ms, "
        "publish 200 ms, first frame 1.50 s"
    )
    reconnected = Reconnected(A2, 1, ErrorKind.ROOM_LOST, "room disconnected: x", 0.25)
    assert describe(reconnected) == (
        "reconnected after 250 ms (1 try); lost by room_lost: room disconnected: x"
    )
    assert describe(VideoStall(A1, 2.0)) == "video stalled: no model frame for 2 s"
    assert "3.00 s" in describe(VideoStallEnded(A1, 3.0))
    body = json.loads(event_json(sample, 1.5))
    assert body["event"] == "web_rtc_stats" and body["t"] == 1.5
    assert body["outbound_video"]["bytes_sent"] == 1000
    assert body["inbound_video"]["frames_decoded"] == 40
    assert json.loads(event_json(quality))["quality"] == "poor"
    assert json.loads(event_json(reconnected))["reason"] == "room_lost"


# ---- connect()'s arguments ---------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("stats_interval", 0.1),
        ("stats_interval", 0.0),
        ("stats_interval", math.inf),
        ("stall_threshold", 0.0),
        ("stall_threshold", -1.0),
        ("stall_threshold", math.nan),
    ],
)
async def test_bad_observability_arguments_are_refused_before_connecting(
    argument: str, value: float
) -> None:
    options: dict[str, Any] = {argument: value}
    with pytest.raises(InvalidArgument, match=argument):
        async with connect("ws://127.0.0.1:9/v1/stream", api_key="k", model="echo", **options):
            raise AssertionError("must not connect")


def test_the_session_started_line_says_how_viewers_join() -> None:
    # What `leanjoin watch --subscribe-token` takes is printed where the user looks.
    started = SessionStarted(A1, "s-1", "leanjoin-1", subscribe_token("leanjoin-1"))
    assert describe(started) == (
        f"session started: s-1 (room leanjoin-1; viewers: --subscribe-token "
        f"{subscribe_token('leanjoin-1')})"
    )
    assert describe(attrs.evolve(started, subscribe_token="")) == (
        "session started: s-1 (room leanjoin-1)"
    )
