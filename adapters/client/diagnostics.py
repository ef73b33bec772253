"""Diagnostics of a session: the connect breakdown, reconnects, video stalls.

:class:`ConnectDiagnostics` reads the connect timeline's milestones and the
engine's events as they happen (synchronously, in the engine's task, the time
passed in) and makes :class:`ConnectBreakdown` and :class:`Reconnected`.
:class:`StallWatch` judges the model's video on anyio's clock in a task of its
own and makes :class:`VideoStall` / :class:`VideoStallEnded`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

import anyio
import attrs

from leanjoin.engine.client.inputs import (
    AttemptId,
    Input,
    RoomDisconnected,
    SendFailed,
    SocketClosed,
)
from leanjoin.engine.client.outputs import ConnectionState, ErrorKind, SessionStarted, StateChanged
from leanjoin.engine.client.outputs import Event as EngineEvent

from .observability import (
    ConnectBreakdown,
    ObservabilityEvent,
    Reconnected,
    VideoStall,
    VideoStallEnded,
)

Emit = Callable[[ObservabilityEvent], None]

LIVE_STATES: Final = (ConnectionState.CONNECTED, ConnectionState.GENERATING)

# The milestones of a connect, in the order they happen (api.Session and the
# transports note them); each phase runs from one to the next.
_SEQUENCE: Final = (
    "socket_opening",
    "socket_opened",
    "queued",
    "room_info",
    "room_connected",
    "tracks_published",
    "first_output_frame",
)


def loss_cause(handled: Input | None) -> tuple[ErrorKind, str]:
    """Why a connected session lost its connection, from the transport report the
    engine was handling: the engine reconnects without an error event (spec
    §6.5), and its handlers map these reports to these kinds."""
    if isinstance(handled, RoomDisconnected):
        return ErrorKind.ROOM_LOST, f"room disconnected: {handled.reason}"
    if isinstance(handled, SocketClosed):
        return ErrorKind.SOCKET_CLOSED, f"socket closed (code {handled.code}): {handled.reason}"
    if isinstance(handled, SendFailed):
        return ErrorKind.SEND_FAILED, f"send failed: {handled.reason}"
    return ErrorKind.CONNECTION_LOST, "connection lost"


def breakdown(attempt: AttemptId, marks: dict[str, float]) -> ConnectBreakdown:
    """The phases between ``marks`` (milestone name -> time). Times are made
    non-decreasing in :data:`_SEQUENCE` order (a first frame decoded a moment
    before the publish was confirmed counts as 0 s), so the phases add up."""
    times: dict[str, float] = {}
    latest = -math.inf
    for name in _SEQUENCE:
        if name in marks:
            latest = times[name] = max(marks[name], latest)

    def span(start: str, end: str) -> float | None:
        return times[end] - times[start] if start in times and end in times else None

    queued = "queued" in times
    present = [times[name] for name in _SEQUENCE if name in times]
    return ConnectBreakdown(
        attempt,
        socket_open=span("socket_opening", "socket_opened"),
        room_info=span("socket_opened", "queued" if queued else "room_info"),
        queue_wait=span("queued", "room_info") if queued else None,
        room_connect=span("room_info", "room_connected"),
        publish=span("room_connected", "tracks_published"),
        first_output_frame=span("tracks_published", "first_output_frame"),
        total=present[-1] - present[0] if present else 0.0,
    )


@attrs.define
class _Loss:
    attempt: AttemptId  # the attempt that was connected
    at: float
    reason: ErrorKind
    detail: str


class ConnectDiagnostics:
    """Breakdowns of connected attempts and reconnects, from milestones and events."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._marks: dict[AttemptId, dict[str, float]] = {}
        self._connected: set[AttemptId] = set()  # connected, breakdown not yet emitted
        self._live: AttemptId | None = None  # the attempt the session is connected with
        self._loss: _Loss | None = None

    def milestone(self, attempt: AttemptId, name: str, at: float) -> None:
        if name not in _SEQUENCE:
            return
        if name == "socket_opening":
            # A new attempt: the failed ones before it will never be broken down.
            for old in [a for a in self._marks if a < attempt and a not in self._connected]:
                del self._marks[old]
        self._marks.setdefault(attempt, {}).setdefault(name, at)
        if name == "first_output_frame" and attempt in self._connected:
            self._flush(attempt)

    def before(self, event: EngineEvent, at: float, cause: tuple[ErrorKind, str]) -> None:
        """Called before the engine's ``event`` is delivered: what ends with it."""
        if not isinstance(event, StateChanged) or event.previous not in LIVE_STATES:
            return
        if event.state in LIVE_STATES:
            return
        lost, self._live = self._live, None
        for attempt in sorted(self._connected):
            self._flush(attempt)
        if event.state is ConnectionState.RECONNECTING and lost is not None:
            self._loss = _Loss(lost, at, *cause)

    def after(self, event: EngineEvent, at: float) -> None:
        """Called after the engine's ``event`` was delivered: what it completes."""
        if not isinstance(event, SessionStarted):
            return
        attempt = event.attempt
        self._marks.setdefault(attempt, {})
        self._connected.add(attempt)
        self._live = attempt
        loss, self._loss = self._loss, None
        if loss is not None:
            tries = attempt - loss.attempt
            self._emit(Reconnected(attempt, tries, loss.reason, loss.detail, at - loss.at))
        if "first_output_frame" in self._marks[attempt]:
            self._flush(attempt)

    def _flush(self, attempt: AttemptId) -> None:
        self._connected.discard(attempt)
        self._emit(breakdown(attempt, self._marks.pop(attempt, {})))


class StallWatch:
    """Judges the model's video: :class:`VideoStall` after ``threshold`` seconds
    without an output frame while connected and flowing; :class:`VideoStallEnded`
    at the next frame. Feed it frames (:meth:`frame`) and :meth:`stop` it when
    the session leaves the connected states; run :meth:`run` in a task."""

    def __init__(self, threshold: float | None, emit: Emit) -> None:
        self._threshold = threshold
        self._emit = emit
        self._attempt = AttemptId(0)
        self._last = 0.0
        self._flowing = False
        self._stalled = False
        self._wakeup = anyio.Event()

    def frame(self, attempt: AttemptId, at: float) -> None:
        """An output frame of the connected session's live attempt."""
        if self._stalled:
            self._emit(VideoStallEnded(attempt, at - self._last))
        resume = self._stalled or not self._flowing
        self._attempt, self._last = attempt, at
        self._flowing, self._stalled = True, False
        if resume:
            self._wakeup.set()

    def stop(self) -> None:
        """Not connected any more: no stall until frames flow again (a stall in
        progress ends without VideoStallEnded, as the JS client's reset does)."""
        self._flowing = self._stalled = False

    async def run(self) -> None:
        threshold = self._threshold
        if threshold is None:
            return
        while True:
            if not self._flowing or self._stalled:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            due = self._last + threshold
            if anyio.current_time() < due:
                await anyio.sleep_until(due)
                continue
            self._stalled = True
            self._emit(VideoStall(self._attempt, threshold))
