"""Observability events: what the adapters measure of a session's media.

The engine's events say what the protocol did; these say how the I/O is going:
WebRTC statistics, LiveKit's verdict on the connection, and diagnostics of the
connect, of reconnects and of the model's video (the JS client's ``stats``,
``connectionQuality`` and ``diagnostic`` events). They are facts of sockets,
rooms and clocks, so they are made here, never in the sans-IO engine, and go
out through the same ``Session.events()`` / ``on_event`` stream, in the order
they happen. Every one names the connect attempt it belongs to, as the
engine's events do; a stale attempt's are dropped (spec §6.7).

Durations and times are seconds on ``anyio.current_time()``'s clock. A
statistic the WebRTC stack did not report is None, never a guess.
"""

from __future__ import annotations

import enum
from typing import Final, TypeAlias

import attrs

from leanjoin.engine.client.inputs import AttemptId
from leanjoin.engine.client.outputs import ErrorKind
from leanjoin.engine.client.outputs import Event as EngineEvent

# As the JS client: a stats sample every second (it allows no less than 0.5 s).
# Sampling is off unless asked for (``connect(stats_interval=...)``): livekit
# 1.2.1's native client was seen to abort the whole process (a Rust panic on an
# "invalid number" in libwebrtc's stats JSON) when sampled around a room leave
# soon after connecting; leanjoin never leaves a room with a sample in flight,
# which made it rare, not impossible (tests/test_fault_matrix.py row C8, with
# stats on: about one run in three).
DEFAULT_STATS_INTERVAL: Final = 1.0
MIN_STATS_INTERVAL: Final = 0.5
# The JS client calls the video stalled below 0.5 decoded frames per second,
# sampled each second: no output frame for 2 s is the same bar.
DEFAULT_STALL_THRESHOLD: Final = 2.0


class ConnectionQuality(enum.Enum):
    """LiveKit's verdict on this client's connection (the media server judges it)."""

    EXCELLENT = "excellent"
    GOOD = "good"
    POOR = "poor"
    LOST = "lost"


@attrs.frozen
class ConnectionQualityChanged:
    """The media server judged this client's connection anew."""

    attempt: AttemptId
    quality: ConnectionQuality


@attrs.frozen
class OutboundVideoStats:
    """The camera as sent (summed over simulcast layers; size and rate of the largest)."""

    bytes_sent: int | None = None
    packets_sent: int | None = None
    frames_encoded: int | None = None
    frames_sent: int | None = None
    frames_per_second: float | None = None
    frame_width: int | None = None
    frame_height: int | None = None
    # Bits per second since the previous sample (None on the first one).
    bitrate: float | None = None
    target_bitrate: float | None = None
    # "none", "cpu", "bandwidth" or "other": why the encoder holds quality back.
    quality_limitation: str | None = None
    encoder: str | None = None


@attrs.frozen
class InboundVideoStats:
    """The model's video as received and decoded."""

    bytes_received: int | None = None
    packets_received: int | None = None
    packets_lost: int | None = None
    frames_received: int | None = None
    frames_decoded: int | None = None
    frames_dropped: int | None = None
    frames_per_second: float | None = None
    frame_width: int | None = None
    frame_height: int | None = None
    jitter: float | None = None  # seconds
    freeze_count: int | None = None
    total_freeze_duration: float | None = None  # seconds
    # Bits per second since the previous sample (None on the first one).
    bitrate: float | None = None
    decoder: str | None = None


@attrs.frozen
class WebRtcStats:
    """One sample of the room's WebRTC statistics (every ``stats_interval`` s)."""

    attempt: AttemptId
    at: float
    outbound_video: OutboundVideoStats | None
    inbound_video: InboundVideoStats | None
    round_trip_time: float | None  # seconds
    available_outgoing_bitrate: float | None  # bits per second, the sender's estimate


@attrs.frozen
class ConnectBreakdown:
    """Where the time of a successful connect went, phase by phase, once per
    connected attempt: at its first output frame, or when it ends without one.

    The phases follow each other, so they add up to ``total`` (from opening the
    socket to the last phase that happened); a phase that did not happen is
    None (``queue_wait`` when never queued, ``first_output_frame`` when the
    attempt ended before the model's video came)."""

    attempt: AttemptId
    socket_open: float | None
    room_info: float | None  # the join answered, the time queued left out
    queue_wait: float | None
    room_connect: float | None
    publish: float | None
    first_output_frame: float | None  # from publishing to the model's first frame
    total: float


@attrs.frozen
class Reconnected:
    """A connection lost while connected is back: ``attempt`` is the attempt that
    reconnected, ``tries`` how many attempts it took, ``reason`` why the
    connection was lost, ``downtime`` the seconds from the loss to connected."""

    attempt: AttemptId
    tries: int
    reason: ErrorKind
    detail: str
    downtime: float


@attrs.frozen
class VideoStall:
    """No model output frame for ``threshold`` seconds while connected and the
    model's video was flowing."""

    attempt: AttemptId
    threshold: float


@attrs.frozen
class VideoStallEnded:
    """The model's video flows again; ``duration`` is the whole gap between
    frames. A stall cut short by a reconnect or the session's end has none."""

    attempt: AttemptId
    duration: float


ObservabilityEvent: TypeAlias = (
    WebRtcStats
    | ConnectionQualityChanged
    | ConnectBreakdown
    | Reconnected
    | VideoStall
    | VideoStallEnded
)

# Everything a session delivers: the engine's events and these.
SessionEvent: TypeAlias = EngineEvent | ObservabilityEvent

OBSERVABILITY_EVENT_TYPES: Final = (
    WebRtcStats,
    ConnectionQualityChanged,
    ConnectBreakdown,
    Reconnected,
    VideoStall,
    VideoStallEnded,
)
