"""The one task that owns the engine.

Everything reaches the engine through one anyio memory object stream (the
inbox): transport results posted by the socket and room tasks, user commands
(with a reply slot), and ticks of the single timer. At every entry point the
driver does aioquic's three steps: feed the engine, drain its outputs, perform
the effects (and hand the events on), then re-arm the timer from
``get_timer()``.

The timer is one task sleeping in one cancel scope whose deadline is the
engine's earliest deadline (``anyio.current_time()`` clock); re-arming moves
that deadline. When it expires the timer posts a tick into the inbox rather
than interrupting the driver's ``receive()``: a receive cancelled by a deadline
can lose an item that was handed over in the same instant, and an input must
never be lost.

Effects are performed synchronously (no await): sockets and rooms get their
work through non-blocking calls and run in tasks of their own, so one slow
write or room connect never stalls signaling.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
from collections.abc import Callable

import anyio
import anyio.abc
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from leanjoin.engine.client.inputs import AttemptId, Input, SendFailed, UserCommand
from leanjoin.engine.client.outputs import (
    EFFECT_TYPES,
    CloseSocket,
    ConnectRoom,
    DisconnectRoom,
    Event,
    OpenSocket,
    Output,
    PublishTracks,
    RemoteStream,
    SendFrame,
)
from leanjoin.engine.client.session import ClientSession, UsageError

from .errors import SessionClosed
from .room_audio import AudioFeed
from .room_transport import AudioSink, CameraFeed, MediaOptions, Observe, RoomAttempt
from .video_sources import Frame
from .ws_transport import SignalSocket, SocketOptions

log = logging.getLogger(__name__)

Trace = Callable[[AttemptId, str], None]


class _Tick(enum.Enum):
    TICK = "tick"


_TICK = _Tick.TICK


@attrs.define(eq=False)
class _Call:
    """A user command and the slot its outcome comes back in."""

    command: UserCommand
    done: anyio.Event = attrs.Factory(anyio.Event)
    error: Exception | None = None


_Item = Input | _Call | _Tick


class Driver:
    """Runs the engine; performs its effects with :class:`SignalSocket` and
    :class:`RoomAttempt`; passes events to ``on_event`` (called in this task)."""

    def __init__(
        self,
        engine: ClientSession,
        *,
        camera: CameraFeed,
        on_event: Callable[[Event], None],
        on_frame: Callable[[AttemptId, Frame], None],
        trace: Trace,
        socket_options: SocketOptions,
        media_options: MediaOptions,
        audio: AudioFeed | None = None,
        on_audio: AudioSink | None = None,
        observe: Observe | None = None,
        stats_interval: float | None = None,
    ) -> None:
        self._engine = engine
        self._camera = camera
        self._on_event = on_event
        self._on_frame = on_frame
        self._trace = trace
        self._socket_options = socket_options
        self._media_options = media_options
        self._audio = audio
        self._on_audio = on_audio
        self._observe = observe
        self._stats_interval = stats_interval
        streams: tuple[MemoryObjectSendStream[_Item], MemoryObjectReceiveStream[_Item]] = (
            anyio.create_memory_object_stream(math.inf)
        )
        self._inbox_send, self._inbox_recv = streams
        self._sockets: dict[AttemptId, SignalSocket] = {}
        self._rooms: dict[AttemptId, RoomAttempt] = {}
        self._io_idle = anyio.Event()
        self._io_idle.set()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._deadline = math.inf
        self._timer_scope: anyio.CancelScope | None = None
        self._pending_calls: set[_Call] = set()
        self._stopped = False
        self.live_attempt: AttemptId | None = None
        # The input the engine is handling while its events are handed on (None: a
        # user command or a tick): diagnostics read why a connection was lost.
        self.handling: Input | None = None

    # ---- entry points for other tasks ---------------------------------------------------

    def post(self, item: Input) -> None:
        """Hand a transport result to the engine (never blocks, never raises)."""
        self._put(item)

    def _put(self, item: _Item) -> None:
        # After the session is over, late results have nobody to go to.
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._inbox_send.send_nowait(item)

    async def call(self, command: UserCommand) -> None:
        """Run a user command in the engine's task; re-raises the engine's UsageError."""
        call = _Call(command)
        if self._stopped:
            raise SessionClosed("the session is closed")
        self._pending_calls.add(call)
        try:
            self._inbox_send.send_nowait(call)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._pending_calls.discard(call)
            raise SessionClosed("the session is closed") from None
        await call.done.wait()
        if call.error is not None:
            raise call.error

    def abandon_all(self) -> None:
        """Close every socket and leave every room still running (idempotent)."""
        for socket in list(self._sockets.values()):
            socket.close(1001, "client going away")
        for room in list(self._rooms.values()):
            room.disconnect()

    async def camera_applied(self, version: int) -> None:
        """Return once the live attempt's room publishes camera ``version`` (see
        :meth:`RoomAttempt.camera_applied`); at once without a live room."""
        room = None if self.live_attempt is None else self._rooms.get(self.live_attempt)
        if room is not None:
            await room.camera_applied(version)

    async def wait_io_idle(self) -> None:
        """Return once no socket or room task is left."""
        await self._io_idle.wait()

    # ---- the task ------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                tg.start_soon(self._timer)
                task_status.started()
                async for item in self._inbox_recv:
                    self._step(item)
        finally:
            self._stopped = True
            self._task_group = None
            self._inbox_send.close()
            self._inbox_recv.close()
            for call in self._pending_calls:
                call.error = SessionClosed("the session is closed")
                call.done.set()
            self._pending_calls.clear()

    def _step(self, item: _Item) -> None:
        now = anyio.current_time()
        if item is _TICK:
            outputs = self._engine.handle_timer(now)
        elif isinstance(item, _Call):
            self._pending_calls.discard(item)
            try:
                outputs = self._engine.handle(item.command, now)
            except UsageError as exc:  # the caller's misuse: it goes back to the caller
                item.error = exc
                outputs = []
            finally:
                item.done.set()
        else:
            # A UsageError here is an adapter bug: let it end the session loudly.
            outputs = self._engine.handle(item, now)
        self.handling = item if not isinstance(item, _Call | _Tick) else None
        self._perform(outputs)
        self.live_attempt = self._engine.attempt
        self._arm(self._engine.get_timer())

    # ---- the single timer -------------------------------------------------------------

    def _arm(self, deadline: float | None) -> None:
        self._deadline = math.inf if deadline is None else deadline
        if self._timer_scope is not None:
            self._timer_scope.deadline = self._deadline

    async def _timer(self) -> None:
        while True:
            with anyio.CancelScope(deadline=self._deadline) as scope:
                self._timer_scope = scope
                await anyio.sleep_forever()
            self._timer_scope = None
            if anyio.current_time() >= self._deadline:
                # Disarmed until the driver has handled the tick and re-armed.
                self._deadline = math.inf
                self._put(_TICK)

    # ---- effects and events ------------------------------------------------------------

    def _perform(self, outputs: list[Output]) -> None:
        for output in outputs:
            if isinstance(output, EFFECT_TYPES):
                self._effect(output)  # type: ignore[arg-type]  # narrowed by EFFECT_TYPES
            else:
                if isinstance(output, RemoteStream):
                    room = self._rooms.get(output.attempt)
                    if room is not None:
                        room.watch(output.track_sid)
                self._on_event(output)  # type: ignore[arg-type]  # not an effect: an event

    def _effect(
        self,
        effect: OpenSocket | SendFrame | CloseSocket | ConnectRoom | PublishTracks | DisconnectRoom,
    ) -> None:
        attempt = effect.attempt
        if isinstance(effect, OpenSocket):
            socket = SignalSocket(effect, self.post, self._socket_options, self._trace)
            self._trace(attempt, "socket_opening")
            self._sockets[attempt] = socket
            self._start(socket)
        elif isinstance(effect, SendFrame):
            existing = self._sockets.get(attempt)
            if existing is not None:
                existing.send(effect)
            else:
                self.post(SendFailed(attempt, effect.send, "socket is closed"))
        elif isinstance(effect, CloseSocket):
            existing = self._sockets.get(attempt)
            if existing is not None:
                existing.close(effect.code, effect.reason)
        elif isinstance(effect, ConnectRoom):
            self._trace(attempt, "room_info")
            room = RoomAttempt(
                effect,
                self.post,
                self._camera,
                self._on_frame,
                self._media_options,
                self._trace,
                audio=self._audio,
                on_audio=self._on_audio,
                observe=self._observe,
                stats_interval=self._stats_interval,
            )
            self._rooms[attempt] = room
            self._start(room)
        elif isinstance(effect, PublishTracks):
            if (target := self._rooms.get(attempt)) is not None:
                target.publish()
        elif (
            isinstance(effect, DisconnectRoom) and (target := self._rooms.get(attempt)) is not None
        ):
            target.disconnect()

    def _start(self, io: SignalSocket | RoomAttempt) -> None:
        assert self._task_group is not None, "effects are performed only while running"
        self._io_idle = anyio.Event()
        self._task_group.start_soon(self._run_io, io)

    async def _run_io(self, io: SignalSocket | RoomAttempt) -> None:
        # A transport task that raises is a bug: it ends the session (see Session).
        try:
            await io.run()
        finally:
            registry: dict[AttemptId, SignalSocket] | dict[AttemptId, RoomAttempt]
            registry = self._sockets if isinstance(io, SignalSocket) else self._rooms
            if registry.get(io.attempt) is io:
                del registry[io.attempt]
            if not self._sockets and not self._rooms:
                self._io_idle.set()
