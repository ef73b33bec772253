"""Observability events of a real session (issue #14): WebRTC stats, LiveKit's
connection quality, the connect breakdown, reconnects and video stalls, against
the ReferenceServer and its LiveKit double with the real ``livekit.rtc.Room``.

Every wait is bounded; no speed is asserted (durations are only checked to be
consistent with each other).
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, TypeVar

import anyio
import pytest
from client_helpers import LEANJOIN, frame_with_band, served, server_idle, session_args, until

from leanjoin.adapters import (
    ConnectBreakdown,
    ConnectionQuality,
    ConnectionQualityChanged,
    ErrorKind,
    Event,
    Reconnected,
    SessionStarted,
    VideoStall,
    VideoStallEnded,
    WebRtcStats,
    connect,
)
from leanjoin.adapters.server.reference import ReferenceServer

pytestmark = [pytest.mark.e2e, pytest.mark.livekit]

E = TypeVar("E")


def args(server: ReferenceServer, events: list[Event], **more: Any) -> dict[str, Any]:
    return {**session_args(server, events), **more}


def of(events: list[Event], kind: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, kind)]


@pytest.mark.anyio
async def test_webrtc_stats_events(server: ReferenceServer) -> None:
    events: list[Event] = []

    def flowing(stats: WebRtcStats) -> bool:
        out, inbound = stats.outbound_video, stats.inbound_video
        return bool(
            out is not None
            and (out.bytes_sent or 0) > 0
            and out.bitrate is not None
            and inbound is not None
            and (inbound.frames_decoded or 0) > 0
        )

    sampled = args(server, events, stats_interval=0.5)
    async with connect(server.url, prompt="measured", **sampled) as session:
        await until(lambda: any(flowing(s) for s in of(events, WebRtcStats)))
        room = session.room_name
    samples = of(events, WebRtcStats)
    sample = next(s for s in samples if flowing(s))
    out, inbound = sample.outbound_video, sample.inbound_video
    assert out is not None and inbound is not None
    assert out.frame_width == 320 and out.frame_height == 240
    assert out.bitrate is not None and out.bitrate > 0  # from two samples' bytes
    assert out.frames_encoded is not None and out.frames_encoded > 0
    assert inbound.bytes_received is not None and inbound.bytes_received > 0
    assert inbound.frame_width == 320 and inbound.packets_lost is not None
    assert sample.round_trip_time is not None and sample.round_trip_time >= 0
    assert samples == sorted(samples, key=lambda s: s.at)
    assert all(s.attempt == 1 for s in samples)
    await server_idle(server, room)


@pytest.mark.anyio
@pytest.mark.parametrize("off", [{"stats_interval": None}, {}], ids=["none", "default"])
async def test_no_stats_events_when_disabled(server: ReferenceServer, off: dict[str, Any]) -> None:
    # Off by default: see observability.DEFAULT_STATS_INTERVAL on the native abort.
    events: list[Event] = []
    async with connect(server.url, prompt="quiet", **args(server, events, **off)) as s:
        await frame_with_band(s, "quiet")
        await anyio.sleep(1.5)  # three intervals of the fastest sampling allowed
    assert of(events, SessionStarted) and not of(events, WebRtcStats)


@pytest.mark.anyio
async def test_connection_quality_events(server: ReferenceServer) -> None:
    events: list[Event] = []

    def qualities() -> list[ConnectionQuality]:
        return [e.quality for e in of(events, ConnectionQualityChanged)]

    async with connect(server.url, **args(server, events)) as session:
        await until(lambda: qualities() == [ConnectionQuality.EXCELLENT])
        assert session.room_name is not None
        room = server.livekit.find_room(session.room_name)
        assert room is not None
        await room.set_connection_quality("poor")
        await until(lambda: qualities()[-1:] == [ConnectionQuality.POOR])
    assert qualities() == [ConnectionQuality.EXCELLENT, ConnectionQuality.POOR]


@pytest.mark.anyio
async def test_connect_breakdown_event(server: ReferenceServer) -> None:
    events: list[Event] = []
    async with connect(server.url, prompt="timed", **args(server, events)) as session:
        await frame_with_band(session, "timed")
        await until(lambda: bool(of(events, ConnectBreakdown)))
    (breakdown,) = of(events, ConnectBreakdown)
    phases = [
        breakdown.socket_open,
        breakdown.room_info,
        breakdown.room_connect,
        breakdown.publish,
        breakdown.first_output_frame,
    ]
    assert breakdown.attempt == 1 and breakdown.queue_wait is None  # never queued
    assert all(p is not None and 0 <= p <= breakdown.total for p in phases)
    # The phases follow each other from the socket's opening to the first frame.
    assert sum(p for p in phases if p is not None) == pytest.approx(breakdown.total)
    started = next(i for i, e in enumerate(events) if isinstance(e, SessionStarted))
    assert events.index(breakdown) > started


@pytest.mark.anyio
async def test_reconnected_event(server: ReferenceServer) -> None:
    events: list[Event] = []
    async with connect(server.url, prompt="again", **args(server, events)) as session:
        await frame_with_band(session, "again")
        lost = session.room_name
        assert lost is not None
        lost_room = server.livekit.find_room(lost)
        assert lost_room is not None
        await lost_room.disconnect_participants("room_deleted")
        await until(lambda: bool(of(events, Reconnected)))
        await frame_with_band(session, "again")
        await until(lambda: len(of(events, ConnectBreakdown)) == 2)
        room = session.room_name
    (reconnected,) = of(events, Reconnected)
    assert reconnected.attempt == 2 and reconnected.tries == 1
    assert reconnected.reason is ErrorKind.ROOM_LOST
    assert "room_deleted" in reconnected.detail
    assert reconnected.downtime > 0
    # The session started again just before it: the event says it came back.
    assert isinstance(events[events.index(reconnected) - 1], SessionStarted)
    assert [b.attempt for b in of(events, ConnectBreakdown)] == [1, 2]
    await server_idle(server, lost, room)


@pytest.mark.anyio
async def test_video_stall_events(server: ReferenceServer) -> None:
    events: list[Event] = []
    threshold = 0.5
    async with connect(
        server.url, prompt="flowing", **args(server, events, stall_threshold=threshold)
    ) as session:
        await frame_with_band(session, "flowing")
        assert session.room_name is not None
        room = server.livekit.find_room(session.room_name)
        assert room is not None
        room.set_transform(None)  # the model publishes nothing
        await until(lambda: bool(of(events, VideoStall)))
        assert not of(events, VideoStallEnded)
        await session.set_prompt("resumed")  # the model is configured anew: frames again
        await frame_with_band(session, "resumed")
        await until(lambda: bool(of(events, VideoStallEnded)))
    (stall,) = of(events, VideoStall)
    (ended,) = of(events, VideoStallEnded)
    assert stall.attempt == ended.attempt == 1 and stall.threshold == threshold
    assert ended.duration >= threshold
    assert events.index(stall) < events.index(ended)


@pytest.mark.parametrize("stats", [True, False])
def test_cli_connect_prints_observability_events(stats: bool) -> None:
    key = "cli-observability-key"
    options = ["--prompt", "p", "--seconds", "2.5", *(["--stats"] if stats else [])]
    with served(key) as url:
        run = subprocess.run(
            [str(LEANJOIN), "connect", url, "--model", "echo", *options],
            env={**os.environ, "LEANJOIN_API_KEY": key, "COLUMNS": "80"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert any("connection quality: excellent" in line for line in lines)
    assert any(" connect took " in line and "first frame" in line for line in lines)
    stats_lines = [line for line in lines if " stats: " in line]
    if stats:
        # One line each, however wide the terminal: out, in and the round trip.
        assert any("out 640x360" in line and "in 640x360" in line for line in stats_lines)
        assert all("rtt" in line for line in stats_lines)
    else:
        assert stats_lines == []
