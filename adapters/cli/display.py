"""How the command line shows a session: one-line event texts, JSON lines, and
a live status line with a progress bar while queued (``rich``).

Events carry no secrets (the engine keeps tokens, keys and image data out of
them), so everything here may be printed as is.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any

import attrs
from rich.console import Group, RenderableType
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.text import Text

from leanjoin.engine.client.outputs import (
    ConnectionState,
    ErrorOccurred,
    Event,
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


def event_name(event: Event) -> str:
    """``QueuePositionChanged`` -> ``queue_position_changed``."""
    return _CAMEL.sub("_", type(event).__name__).lower()


def _plain(_inst: type, _field: attrs.Attribute[Any] | None, value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def event_json(event: Event, at: float | None = None) -> str:
    """One JSON object for ``event``: its name, its fields, optionally ``t`` (seconds)."""
    body: dict[str, Any] = {"event": event_name(event)}
    if at is not None:
        body["t"] = round(at, 3)
    body.update(attrs.asdict(event, value_serializer=_plain))
    return json.dumps(body, separators=(",", ":"), sort_keys=False)


def describe(event: Event) -> str:
    """A short human sentence for ``event``."""
    if isinstance(event, StateChanged):
        return f"state: {event.previous.value} -> {event.state.value}"
    if isinstance(event, QueuePositionChanged):
        return f"queued: position {event.position} of {event.queue_size}"
    if isinstance(event, SessionStarted):
        return f"session started: {event.session_id} (room {event.room_name})"
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

    def update(self, event: Event) -> None:
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
