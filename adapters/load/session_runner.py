"""One load-test session: a greenlet that owns one engine, its timer and its effects.

The gevent twin of ``adapters/client/driver.py``, without asyncio. Socket
greenlets post their results into the runner's inbox (a gevent queue); only
the runner's greenlet touches the engine. It waits on the inbox until the
engine's deadline (``get_timer()``) or its own next step (a runtime prompt,
the end of the session), whichever comes first, then does aioquic's three
steps: feed the engine (``handle`` for an input, ``handle_timer(now)`` once
the deadline has passed), perform the effects, report the events. ``now`` is
``time.monotonic()``.

Signaling only by default: no media is sent. The adapter reports the room
step itself: ``ConnectRoom`` is answered with ``RoomConnected`` and
``PublishTracks`` with ``TracksPublished``, fed at once, before anything else
reaches the engine. With ``rooms`` (``media.MediaRooms``) the room step is
real: the LiveKit room is joined, a test pattern published, the model's video
decoded, and the time to its first frame measured.

What it measures (one :class:`Measure` each, reported through ``report``):
time to ``livekit_room_info`` and to connected (from the connect, or from the
start of a reconnect), the queue wait (first ``queue_position`` to room_info,
for attempts that queued), the initial-state ack latency (initial-state frame
issued to its ack's arrival, even when the engine holds an early ack until
room_info), each runtime prompt's ack latency, the first output frame (with
media; from the connect or the reconnect), and the session
(connect to disconnect). A failed attempt is one failure of the milestone it
was waiting for (room_info, or connected once room_info came), with the
engine's :class:`~leanjoin.engine.client.outputs.ErrorKind`; a session lost
or ended by a fatal error is one failure of ``session``.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

import attrs
import gevent
import gevent.queue

from leanjoin.engine.client.ack_watch import AckWatch
from leanjoin.engine.client.config import InitialState, SessionConfig
from leanjoin.engine.client.inputs import (
    AttemptId,
    ChangePrompt,
    Connect,
    Disconnect,
    Input,
    RequestId,
    RoomConnected,
    SendFailed,
    TracksPublished,
)
from leanjoin.engine.client.outputs import (
    CloseSocket,
    ConnectionState,
    ConnectRoom,
    DisconnectRoom,
    ErrorKind,
    ErrorOccurred,
    FramePurpose,
    InitialStateAcked,
    OpenSocket,
    Output,
    PublishTracks,
    QueuePositionChanged,
    RemoteStream,
    RequestAcked,
    RequestFailed,
    RetryScheduled,
    SendFrame,
    SessionStarted,
    StateChanged,
)
from leanjoin.engine.client.session import ClientSession

from .signal_socket import GeventSignalSocket, GeventSocketOptions

log = logging.getLogger(__name__)

_LIVE: Final = (ConnectionState.CONNECTED, ConnectionState.GENERATING)
_INITIAL_STATE_FAILURES: Final = (ErrorKind.INITIAL_STATE_REJECTED, ErrorKind.INITIAL_STATE_TIMEOUT)
DEFAULT_PROMPT: Final = "a watercolour cat"
_DEFAULT_INITIAL: Final = InitialState(prompt=DEFAULT_PROMPT)
_DEFAULT_SOCKET: Final = GeventSocketOptions()


class Measure(enum.Enum):
    """What a session reports; each is a Locust request type."""

    QUEUE_WAIT = "queue_wait"
    ROOM_INFO = "room_info"
    CONNECTED = "connected"
    INITIAL_STATE_ACK = "initial_state_ack"
    PROMPT_ACK = "prompt_ack"
    FIRST_FRAME = "first_frame"  # with media only
    SESSION = "session"
    ERROR = "error"  # a non-fatal error of no phase (a malformed frame, a server error)


Report = Callable[[Measure, float, ErrorKind | None], None]
"""``report(measure, seconds, failure)``: ``failure`` is None for a success."""


class Rooms(Protocol):
    """The real room step (``media.MediaRooms``): one room per attempt."""

    def connect(self, effect: ConnectRoom) -> None: ...

    def publish(self, attempt: AttemptId) -> None: ...

    def watch(self, attempt: AttemptId, track_sid: str) -> None: ...

    def disconnect(self, attempt: AttemptId) -> None: ...

    def close(self) -> None: ...


RoomsFactory = Callable[[Callable[[Input], None], Callable[[AttemptId], None]], Rooms]
"""``factory(post, first_frame)``: rooms that post their results and say when
an attempt's first output frame arrived (both called in the session's thread)."""


@attrs.frozen
class SessionPlan:
    """What one session does: connect with ``initial``, stay connected
    ``length`` seconds, sending ``prompts`` runtime prompts spread evenly over
    that time (``prompt`` with its number), then disconnect once every prompt
    is answered (acked, rejected or timed out by the engine)."""

    initial: InitialState = _DEFAULT_INITIAL
    prompts: int = attrs.field(default=2, validator=attrs.validators.ge(0))
    length: float = attrs.field(default=5.0, validator=attrs.validators.ge(0.0))
    prompt: str = DEFAULT_PROMPT

    def prompt_due(self, connected_at: float, index: int) -> float:
        return connected_at + self.length * (index + 1) / (self.prompts + 1)


class SessionRunner:
    """Runs one session in the calling greenlet (:meth:`run` returns when it is over)."""

    def __init__(
        self,
        config: SessionConfig,
        plan: SessionPlan,
        report: Report,
        socket_options: GeventSocketOptions = _DEFAULT_SOCKET,
        clock: Callable[[], float] = time.monotonic,
        rooms: RoomsFactory | None = None,
    ) -> None:
        self._engine = ClientSession(config)
        self._plan = plan
        self._report = report
        if socket_options.user_agent is None:  # the header names the client as the URL does
            socket_options = attrs.evolve(socket_options, user_agent=config.user_agent)
        self._socket_options = socket_options
        self._clock = clock
        self._inbox: gevent.queue.Queue[Input] = gevent.queue.Queue()
        self._soon: deque[Input] = deque()  # the room step's answers, fed before the inbox
        self._sockets: dict[AttemptId, GeventSignalSocket] = {}
        self._began = 0.0  # the session's connect
        self._started = 0.0  # this connect's or reconnect's start
        self._live = False  # connected (or generating) right now
        self._queued_at: float | None = None  # the live attempt's first queue position
        self._got_room_info = False  # the live (or last failed) attempt reached room_info
        self._initial_sent_at: float | None = None
        self._ack_buffered_at: float | None = None  # its ack came before room_info
        self._connected_at: float | None = None  # the first time connected
        self._prompts_sent = 0
        self._pending: dict[RequestId, float] = {}
        self._failure: ErrorKind | None = None  # why the session was not clean
        self._quitting = False  # our own Disconnect: its request failures are not failures
        self._over = False
        self._rooms = None if rooms is None else rooms(self._inbox.put, self._first_frame)

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Connect, hold the session for its length, disconnect. Killed (Locust
        stopping the user), it still disconnects and closes its socket."""
        try:
            now = self._clock()
            self._began = self._started = now
            self._feed(Connect(self._plan.initial), now)
            while not self._over:
                self._step()
        finally:
            self._close()

    def _step(self) -> None:
        deadline = self._next_deadline()
        timeout = None if deadline is None else max(0.0, deadline - self._clock())
        try:
            item: Input | None = self._inbox.get(timeout=timeout)
        except gevent.queue.Empty:
            item = None
        now = self._clock()
        if item is not None:
            self._feed(item, now)
        timer = self._engine.get_timer()
        if timer is not None and timer <= now:
            self._perform(self._engine.handle_timer(now), now)
            self._feed_soon(now)
        if not self._over:
            self._act(now)

    def _next_deadline(self) -> float | None:
        due = [self._engine.get_timer()]
        if self._connected_at is not None:
            if self._prompts_sent < self._plan.prompts and self._live:
                due.append(self._plan.prompt_due(self._connected_at, self._prompts_sent))
            if not self._pending:
                due.append(self._connected_at + self._plan.length)
        known = [when for when in due if when is not None]
        return min(known) if known else None

    def _feed(self, item: Input, now: float) -> None:
        self._perform(self._engine.handle(item, now), now)
        if self._ack_buffered_at is None and self._engine.ack_watch is AckWatch.BUFFERED:
            # The engine reports an early ack at room_info; its latency ends here.
            self._ack_buffered_at = now
        self._feed_soon(now)

    def _feed_soon(self, now: float) -> None:
        while self._soon and not self._over:
            self._perform(self._engine.handle(self._soon.popleft(), now), now)

    def _act(self, now: float) -> None:
        """The session's own steps: runtime prompts, then the end."""
        connected_at = self._connected_at
        if connected_at is None:
            return
        plan = self._plan
        while (
            self._live
            and self._prompts_sent < plan.prompts
            and now >= plan.prompt_due(connected_at, self._prompts_sent)
        ):
            self._prompts_sent += 1
            request = RequestId(self._prompts_sent)
            self._pending[request] = now
            text = f"{plan.prompt} ({self._prompts_sent})"
            self._feed(ChangePrompt(request, text), now)
        if now >= connected_at + plan.length and not self._pending and not self._over:
            self._quitting = True
            self._feed(Disconnect(), now)
            self._finish(now)

    def _finish(self, now: float) -> None:
        self._over = True
        self._report(Measure.SESSION, now - self._began, self._failure)

    def _close(self) -> None:
        """Disconnect if still connected, then wait (bounded) for the sockets to close."""
        if self._engine.state is not ConnectionState.DISCONNECTED:
            self._quitting = True
            self._over = True  # interrupted: no session sample
            try:
                now = self._clock()
                self._perform(self._engine.handle(Disconnect(), now), now)
            except Exception:
                log.exception("disconnecting an interrupted session failed")
        for socket in self._sockets.values():
            socket.join(timeout=self._socket_options.close_timeout + 1.0)
        self._sockets.clear()
        if self._rooms is not None:
            self._rooms.close()

    # ---- effects and events ----------------------------------------------------------------

    def _perform(self, outputs: list[Output], now: float) -> None:
        for output in outputs:
            if isinstance(output, OpenSocket):
                self._open(output)
            elif isinstance(output, SendFrame):
                self._send(output, now)
            elif isinstance(output, CloseSocket):
                if (socket := self._sockets.get(output.attempt)) is not None:
                    socket.close(output.code, output.reason)
            elif isinstance(output, ConnectRoom):
                self._room_info(output, now)
            elif isinstance(output, PublishTracks):
                if self._rooms is None:
                    self._soon.append(TracksPublished(output.attempt))  # nothing to publish
                else:
                    self._rooms.publish(output.attempt)
            elif isinstance(output, DisconnectRoom):
                if self._rooms is not None:  # signaling only: no room was joined
                    self._rooms.disconnect(output.attempt)
            else:
                rooms = self._rooms
                if (
                    rooms is not None
                    and isinstance(output, RemoteStream)
                    and output.kind == "video"
                ):
                    rooms.watch(output.attempt, output.track_sid)
                self._event(output, now)

    def _open(self, effect: OpenSocket) -> None:
        # A fresh attempt: what was measured of the last one is gone with it.
        self._queued_at = None
        self._got_room_info = False
        self._initial_sent_at = None
        self._ack_buffered_at = None
        for attempt in [a for a, s in self._sockets.items() if s.done]:
            del self._sockets[attempt]
        socket = GeventSignalSocket(effect, self._inbox.put, self._socket_options)
        self._sockets[effect.attempt] = socket
        socket.start()

    def _send(self, effect: SendFrame, now: float) -> None:
        if effect.purpose is FramePurpose.INITIAL_STATE:
            self._initial_sent_at = now
        socket = self._sockets.get(effect.attempt)
        if socket is None:
            self._inbox.put(SendFailed(effect.attempt, effect.send, "socket is closed"))
        else:
            socket.send(effect)

    def _room_info(self, effect: ConnectRoom, now: float) -> None:
        self._got_room_info = True
        self._report(Measure.ROOM_INFO, now - self._started, None)
        if self._queued_at is not None:
            self._report(Measure.QUEUE_WAIT, now - self._queued_at, None)
        if self._rooms is None:
            self._soon.append(RoomConnected(effect.attempt))  # signaling only: no room to join
        else:
            self._rooms.connect(effect)

    def _first_frame(self, attempt: AttemptId) -> None:
        if attempt == self._engine.attempt and not self._over:
            self._report(Measure.FIRST_FRAME, self._clock() - self._started, None)

    def _milestone_failed(self, kind: ErrorKind, now: float) -> None:
        """An attempt failed before connected: a failure of what it waited for."""
        measure = Measure.CONNECTED if self._got_room_info else Measure.ROOM_INFO
        self._report(measure, now - self._started, kind)

    def _ack_latency(self, now: float) -> float:
        """From the initial-state frame to its ack's arrival (or to now)."""
        sent = self._initial_sent_at if self._initial_sent_at is not None else now
        arrived = self._ack_buffered_at if self._ack_buffered_at is not None else now
        return max(0.0, arrived - sent)

    def _event(self, event: Output, now: float) -> None:
        if isinstance(event, QueuePositionChanged):
            if self._queued_at is None:
                self._queued_at = now
        elif isinstance(event, SessionStarted):
            self._live = True
            self._report(Measure.CONNECTED, now - self._started, None)
            if self._connected_at is None:
                self._connected_at = now
        elif isinstance(event, InitialStateAcked):
            self._report(Measure.INITIAL_STATE_ACK, self._ack_latency(now), None)
        elif isinstance(event, RequestAcked):
            sent = self._pending.pop(event.request, now)
            self._report(Measure.PROMPT_ACK, now - sent, None)
        elif isinstance(event, RequestFailed):
            sent = self._pending.pop(event.request, now)
            if not (self._quitting and event.kind is ErrorKind.DISCONNECTED):
                self._report(Measure.PROMPT_ACK, now - sent, event.kind)
        elif isinstance(event, StateChanged):
            if event.state is ConnectionState.RECONNECTING and event.previous in _LIVE:
                self._failure = self._failure or ErrorKind.CONNECTION_LOST
                self._started = now  # a reconnect is measured from its own start
            self._live = event.state in _LIVE
        elif isinstance(event, RetryScheduled):
            self._milestone_failed(event.kind, now)
        elif isinstance(event, ErrorOccurred):
            if event.fatal:
                if not self._live:
                    self._milestone_failed(event.kind, now)
                self._live = False
                self._failure = self._failure or event.kind
                if not self._over:
                    self._finish(now)
            elif event.kind in _INITIAL_STATE_FAILURES:
                self._report(Measure.INITIAL_STATE_ACK, self._ack_latency(now), event.kind)
            else:
                self._report(Measure.ERROR, 0.0, event.kind)
