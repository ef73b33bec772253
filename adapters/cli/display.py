"""How the command line shows a session: one-line event texts, JSON lines, and
a live status line with a progress bar while queued (``rich``).

Events carry no secrets (the engine keeps tokens, keys and image data out of
them), so everything here may be printed as is.
"""

from __future__ import annotations

import enum
import json
import math
import re
from typing import Any

import attrs
from rich.console import Group, RenderableType
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.text import Text

from leanjoin.adapters.client.observability import (
    ConnectBreakdown,
    ConnectionQualityChanged,
    InboundVideoStats,
    OutboundVideoStats,
    Reconnected,
    SessionEvent,
    VideoStall,
    VideoStallEnded,
    WebRtcStats,
)
from leanjoin.engine.client.outputs import (
    ConnectionState,
    ErrorOccurred,
    GenerationStopped,
    GenerationTicked,
    InitialStateAcked,
    QueuePositionChanged,
    RemoteStream,
    RequestAcked,
    RequestFailed,
    RetryScheduled,
    SessionStarted,
    StateChanged,
)

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def event_name(event: SessionEvent) -> str:
    """``QueuePositionChanged`` -> ``queue_position_changed``."""
    return _CAMEL.sub("_", type(event).__name__).lower()


def _plain(_inst: type, _field: attrs.Attribute[Any] | None, value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity; unmeasurable is as unmeasured
    return value.value if isinstance(value, enum.Enum) else value


def event_json(event: SessionEvent, at: float | None = None) -> str:
    """One JSON object for ``event``: its name, its fields, optionally ``t`` (seconds)."""
    body: dict[str, Any] = {"event": event_name(event)}
    if at is not None:
        body["t"] = round(at, 3)
    body.update(attrs.asdict(event, value_serializer=_plain))
    return json.dumps(body, separators=(",", ":"), sort_keys=False, allow_nan=False)


def describe(event: SessionEvent) -> str:
    """A short human sentence for ``event``."""
    observed = _describe_observation(event)
    if observed is not None:
        return observed
    if isinstance(event, StateChanged):
        return f"state: {event.previous.value} -> {event.state.value}"
    if isinstance(event, QueuePositionChanged):
        return f"queued: position {event.position} of {event.queue_size}"
    if isinstance(event, SessionStarted):
        watch = (
            f"; viewers: --subscribe-token {event.subscribe_token}" if event.subscribe_token else ""
        )
        return f"session started: {event.session_id} (room {event.room_name}{watch})"
    if isinstance(event, RemoteStream):
        return f"model {event.kind} track from {event.participant}"
    if isinstance(event, InitialStateAcked):
        return "initial state acknowledged"
    if isinstance(event, GenerationTicked):
        return f"generating: {event.seconds:.0f} s"
    if isinstance(event, GenerationStopped):
        if event.seconds is None:
            return f"generation ended: {event.reason}"
        return f"generation ended after {event.seconds:.0f} s: {event.reason}"
    if isinstance(event, RequestAcked):
        return f"request {event.request} acknowledged"
    if isinstance(event, RequestFailed):
        return f"request {event.request} failed ({event.kind.value}): {event.message}"
    if isinstance(event, RetryScheduled):
        return (
            f"attempt failed ({event.kind.value}: {event.message}); "
            f"retry {event.retry} in {event.delay:g} s"
        )
    if isinstance(event, ErrorOccurred):
        severity = "fatal error" if event.fatal else "error"
        return f"{severity} ({event.kind.value}): {event.message}"
    return event_name(event)


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _bits(per_second: float | None) -> str | None:
    return None if per_second is None else f"{per_second / 1000:.0f} kbit/s"


def _video(stats: OutboundVideoStats | InboundVideoStats) -> list[str | None]:
    size = None
    if stats.frame_width is not None and stats.frame_height is not None:
        size = f"{stats.frame_width}x{stats.frame_height}"
    fps = None if stats.frames_per_second is None else f"{stats.frames_per_second:.0f} fps"
    return [size, fps, _bits(stats.bitrate)]


def _counted(pairs: list[tuple[int | None, str]]) -> list[str | None]:
    return [None if value is None else f"{value:g} {what}" for value, what in pairs]


def _stats_line(event: WebRtcStats) -> str:
    """One line: what is sent, what is received, the round trip (unknowns left out)."""
    parts: list[str] = []
    out = event.outbound_video
    if out is not None:
        fields = [*_video(out), *_counted([(out.frames_sent, "frames sent")])]
        parts.append("out " + ", ".join(f for f in fields if f))
    inbound = event.inbound_video
    if inbound is not None:
        jitter = None if inbound.jitter is None else f"jitter {_duration(inbound.jitter)}"
        counts = [
            (inbound.frames_decoded, "decoded"),
            (inbound.frames_dropped, "dropped"),
            (inbound.packets_lost, "packets lost"),
            (inbound.freeze_count, "freezes"),
        ]
        fields = [*_video(inbound), *_counted(counts), jitter]
        parts.append("in " + ", ".join(f for f in fields if f))
    if event.round_trip_time is not None:
        parts.append(f"rtt {_duration(event.round_trip_time)}")
    return "stats: " + ("; ".join(parts) if parts else "nothing measured yet")


def _breakdown_line(event: ConnectBreakdown) -> str:
    phases = [
        ("socket", event.socket_open),
        ("room info", event.room_info),
        ("queued", event.queue_wait),
        ("room", event.room_connect),
        ("publish", event.publish),
        ("first frame", event.first_output_frame),
    ]
    spent = ", ".join(f"{name} {_duration(t)}" for name, t in phases if t is not None)
    return f"connect took {_duration(event.total)}: {spent}"


def _describe_observation(event: SessionEvent) -> str | None:
    if isinstance(event, WebRtcStats):
        return _stats_line(event)
    if isinstance(event, ConnectionQualityChanged):
        return f"connection quality: {event.quality.value}"
    if isinstance(event, ConnectBreakdown):
        return _breakdown_line(event)
    if isinstance(event, Reconnected):
        tries = "1 try" if event.tries == 1 else f"{event.tries} tries"
        return (
            f"reconnected after {_duration(event.downtime)} ({tries}); "
            f"lost by {event.reason.value}: {event.detail}"
        )
    if isinstance(event, VideoStall):
        return f"video stalled: no model frame for {event.threshold:g} s"
    if isinstance(event, VideoStallEnded):
        return f"video flows again after {_duration(event.duration)} without frames"
    return None


class StatusView:
    """A live status: one line with the state, plus a bar while queued."""

    def __init__(self) -> None:
        self._state = ConnectionState.CONNECTING
        self._detail = ""
        self._progress = Progress(
            TextColumn("[cyan]queue"),
            BarColumn(bar_width=30),
            TextColumn("{task.description}"),
            auto_refresh=False,  # drawn by the caller's Live, never by a thread of its own
        )
        self._queue_task: TaskID | None = None
        self._queue_start = 1

    def update(self, event: SessionEvent) -> None:
        if isinstance(event, StateChanged):
            self._state = event.state
            if event.state is not ConnectionState.CONNECTING:
                self._leave_queue()
        elif isinstance(event, QueuePositionChanged):
            # The bar shows how far the queue moved since we joined it.
            text = f"position {event.position} of {event.queue_size}"
            if self._queue_task is None:
                self._queue_start = max(event.position, 1)
                self._queue_task = self._progress.add_task(text, total=self._queue_start)
            moved = max(0, self._queue_start - event.position)
            self._progress.update(self._queue_task, description=text, completed=moved)
            self._detail = "waiting for capacity"
        elif isinstance(event, SessionStarted):
            self._leave_queue()
            self._detail = f"session {event.session_id}"
        elif isinstance(event, GenerationTicked):
            self._detail = f"generating for {event.seconds:.0f} s"
        elif isinstance(event, RetryScheduled):
            self._leave_queue()
            self._detail = f"retry {event.retry} in {event.delay:g} s"

    def _leave_queue(self) -> None:
        if self._queue_task is not None:
            self._progress.remove_task(self._queue_task)
            self._queue_task = None
            self._detail = ""

    def __rich__(self) -> RenderableType:
        colour = {
            ConnectionState.CONNECTED: "green",
            ConnectionState.GENERATING: "green",
            ConnectionState.RECONNECTING: "yellow",
            ConnectionState.DISCONNECTED: "red",
        }.get(self._state, "cyan")
        line = Text.assemble((f"● {self._state.value}", f"bold {colour}"), f"  {self._detail}")
        if self._queue_task is None:
            return line
        return Group(line, self._progress)
