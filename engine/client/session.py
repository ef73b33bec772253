"""The client side of the lean-join handshake: one table, one session object.

Rules of this module (they are the engine's rules; specs/protocol.md is the
normative text, and this table is the part of it you can execute):

1. No I/O, no clock, no threads, no async library. Time comes in as ``now``;
   timers go out as one absolute deadline (``get_timer()``) and come back as
   ``handle_timer(now)``, the way aioquic's QuicConnection does it.
2. Inputs are frozen attrs classes (``leanjoin.engine.client.inputs``); outputs are
   effects and events (``leanjoin.engine.client.outputs``). Every transport input
   and every output names its connect attempt. Input of any attempt but the
   live one is dropped, so nothing of a stale attempt reaches the user.
3. Phases and transitions are tables run by shared ``transitions``
   machines (no auto transitions, bound callbacks, no Graph/Async/Timeout
   variants): the session's ``TRANSITIONS`` below, and each attempt's
   initial-state ack watch, ``ACK_WATCH_TRANSITIONS`` in ``ack_watch.py``.
   A table's sources are the only legality check: a handler asks whether
   the table has a row (``_can``), never which phase it is in. Callbacks
   only update fields and append outputs; they never fire another trigger.
4. Misuse of the API (or an adapter reporting something it was never asked
   to do) raises :class:`~leanjoin.engine.sansio.UsageError`. Nothing a peer
   sends raises: bad or hostile input becomes a typed error event or a
   failed attempt.
5. The same inputs at the same times always give the same outputs.

Everything an attempt owns (deadlines, the ack watch, pending requests) lives
in its :class:`~leanjoin.engine.client.attempt.Attempt` record, dropped at teardown.
"""

from __future__ import annotations

import base64
import enum
import json
from collections.abc import Callable
from typing import Any, Final

import attrs
from transitions import EventData

from ..codec import FrameProblem, IgnoredFrame, encode, parse_server_frame
from ..errors import InvalidArgument
from ..messages import (
    ABSENT,
    Error,
    GenerationEnded,
    GenerationStarted,
    GenerationTick,
    LiveKitJoin,
    LiveKitRoomInfo,
    Prompt,
    PromptAck,
    QueuePosition,
    ServerMessage,
    SetImage,
    SetImageAck,
)
from ..sansio import SansIOEngine, UsageError, clip, trigger_arg
from ..table import Row, build_machine, sources_by_trigger
from .ack_watch import AckWatch, InitialStateWatch
from .attempt import Attempt, Deadline, PendingRequest
from .config import InitialState, SessionConfig
from .inputs import (
    AttemptId,
    ChangeImage,
    ChangePrompt,
    Connect,
    Disconnect,
    FrameReceived,
    Input,
    PublishFailed,
    RemoteTrackReceived,
    RequestId,
    RoomConnected,
    RoomConnectFailed,
    RoomDisconnected,
    SendFailed,
    SocketClosed,
    SocketOpened,
    SocketOpenFailed,
    TracksPublished,
)
from .outputs import (
    CloseSocket,
    ConnectionState,
    ConnectRoom,
    DisconnectRoom,
    ErrorKind,
    ErrorOccurred,
    FramePurpose,
    GenerationStopped,
    GenerationTicked,
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

__all__ = ["ClientSession", "NotConnectedError", "Phase", "UsageError"]


class NotConnectedError(UsageError):
    """A runtime request while the session is not connected."""


class Phase(enum.Enum):
    DISCONNECTED = "disconnected"
    OPENING = "opening"  # OpenSocket issued
    JOINING = "joining"  # join (and initial state) sent; awaiting livekit_room_info
    QUEUED = "queued"  # queue_position seen: the room_info deadline is suspended
    ROOM_CONNECTING = "room_connecting"  # ConnectRoom issued
    PUBLISHING = "publishing"  # PublishTracks issued
    CONNECTED = "connected"
    GENERATING = "generating"
    BACKOFF = "backoff"  # an attempt failed; the next one starts at the retry deadline


P = Phase
ATTEMPT_PHASES: Final = (P.OPENING, P.JOINING, P.QUEUED, P.ROOM_CONNECTING, P.PUBLISHING)
LIVE_PHASES: Final = (P.CONNECTED, P.GENERATING)
MEDIA_PHASES: Final = (P.ROOM_CONNECTING, P.PUBLISHING)  # room_info in, not yet connected
GIVE_UP_PHASES: Final = (*ATTEMPT_PHASES, *LIVE_PHASES, P.BACKOFF)
ACTIVE_PHASES: Final = tuple(p for p in Phase if p is not P.DISCONNECTED)
MODEL_PARTICIPANT_PREFIX: Final = "inference-server-"

# The client table. Each row: trigger, source phases, destination (None: stay,
# an internal transition), callbacks before the change, callbacks after it.
# A (phase, trigger) pair missing here is misuse when the adapter or the user
# reports it, and an unexpected frame when the server sends it.
# fmt: off
TRANSITIONS: Final[tuple[Row[Phase], ...]] = (
    # trigger              sources                     dest                before                                   after
    ("connect",            (P.DISCONNECTED,),          P.OPENING,          ("_begin_connect",),                     ()),
    ("socket_opened",      (P.OPENING,),               P.JOINING,          ("_send_join",),                         ()),
    ("queue_position",     (P.JOINING,),               P.QUEUED,           ("_note_queue_position",),               ()),
    ("queue_position",     (P.QUEUED,),                None,               ("_note_queue_position",),               ()),
    ("room_info",          (P.JOINING, P.QUEUED),      P.ROOM_CONNECTING,  ("_connect_room",),                      ()),
    ("room_connected",     (P.ROOM_CONNECTING,),       P.PUBLISHING,       ("_publish_tracks",),                    ()),
    ("tracks_published",   (P.PUBLISHING,),            P.CONNECTED,        ("_mark_connected",),                    ("_start_session",)),
    ("generation_started", (P.CONNECTED,),             P.GENERATING,       (),                                      ()),
    ("generation_started", MEDIA_PHASES,               None,               ("_note_generation",),                   ()),
    ("generation_started", (P.GENERATING,),            None,               (),                                      ()),
    ("generation_ended",   (P.GENERATING,),            P.CONNECTED,        ("_forget_generation",),                 ()),
    ("generation_ended",   (*MEDIA_PHASES, P.CONNECTED), None,             ("_forget_generation",),                 ()),
    ("send_request",       LIVE_PHASES,                None,               ("_send_request",),                      ()),
    ("server_error",       LIVE_PHASES,                None,               ("_end_waits",),                         ()),
    ("attempt_failed",     ATTEMPT_PHASES,             P.BACKOFF,          ("_end_attempt", "_schedule_retry"),     ()),
    ("connection_lost",    LIVE_PHASES,                P.OPENING,          ("_end_attempt", "_begin_reconnect"),    ()),
    ("retry_due",          (P.BACKOFF,),               P.OPENING,          (),                                      ()),
    ("give_up",            GIVE_UP_PHASES,             P.DISCONNECTED,     ("_end_attempt", "_report_fatal"),       ()),
    ("disconnect",         ACTIVE_PHASES,              P.DISCONNECTED,     ("_end_attempt", "_end_session"),        ()),
)
# fmt: on

# Entering a phase: OPENING starts a fresh attempt before the state is shown,
# so the StateChanged that announces it already carries the new attempt id.
ON_ENTER: Final[dict[Phase, tuple[str, ...]]] = {
    P.OPENING: ("_start_attempt", "_publish_state"),
}


# One machine for every session: sessions are its models without being
# registered (registration would keep every session alive forever).
MACHINE: Final = build_machine(
    Phase,
    TRANSITIONS,
    initial=P.DISCONNECTED,
    on_enter=ON_ENTER,
    default_on_enter=("_publish_state",),
)
SOURCES: Final = sources_by_trigger(TRANSITIONS)

_USER_STATE: Final = {
    P.DISCONNECTED: ConnectionState.DISCONNECTED,
    P.CONNECTED: ConnectionState.CONNECTED,
    P.GENERATING: ConnectionState.GENERATING,
}


def subscribe_token(room_name: str) -> str:
    """base64 of the JSON ``{"room_name": …}``, as public clients build it."""
    return base64.b64encode(
        json.dumps({"room_name": room_name}, separators=(",", ":")).encode()
    ).decode()


class NotASubscribeToken(InvalidArgument):
    """The text is no subscribe token at all (not base64 of a JSON object)."""


def room_of_subscribe_token(token: str) -> str:
    """The room a subscribe token names (what :func:`subscribe_token` wrote).

    Standard or URL-safe base64 (the Python SDK writes the latter), padding
    optional. Refusals are :class:`InvalidArgument` and never quote the token.
    """
    text = token.strip() if isinstance(token, str) else ""
    if not text:
        raise InvalidArgument("subscribe token is empty")
    standard = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
    try:
        payload = json.loads(base64.b64decode(standard, validate=True))
    # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors;
    # RecursionError: JSON nested deeper than the parser goes.
    except (ValueError, RecursionError):
        raise NotASubscribeToken(
            'subscribe token is not base64 of a JSON object {"room_name": ...}'
        ) from None
    room = payload.get("room_name") if isinstance(payload, dict) else None
    if not isinstance(room, str) or not room:
        raise InvalidArgument("subscribe token names no room (room_name missing or empty)")
    return room


@attrs.frozen
class _Failure:
    kind: ErrorKind
    message: str


_Due = tuple[Deadline, RequestId | None]


class ClientSession(SansIOEngine[Output, _Due]):
    """One user session; inside it, at most one live connect attempt."""

    __slots__ = (
        "_attempt",
        "_connect_deadline",
        "_connect_paused",
        "_initial",
        "_last_attempt",
        "_last_request",
        "_passthrough_override",
        "_reconnecting",
        "_retries",
        "_retry_deadline",
        "_user_state",
        "config",
    )

    MACHINE = MACHINE
    SOURCES = SOURCES
    phase: Phase

    def __init__(self, config: SessionConfig) -> None:
        super().__init__(P.DISCONNECTED)
        self.config = config
        self._attempt: Attempt | None = None
        self._last_attempt = AttemptId(0)
        self._last_request = 0
        self._initial = InitialState()
        self._passthrough_override: bool | None = None
        self._reconnecting = False
        self._retries = 0
        self._connect_deadline: float | None = None
        self._connect_paused: float | None = None  # budget left while queued
        self._retry_deadline: float | None = None
        self._user_state = ConnectionState.DISCONNECTED

    # ---- public API ---------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._user_state

    @property
    def attempt(self) -> AttemptId | None:
        """The live attempt, if any."""
        return None if self._attempt is None else self._attempt.id

    @property
    def latest_attempt(self) -> AttemptId:
        """The newest attempt ever started (0 before the first)."""
        return self._last_attempt

    @property
    def replay_state(self) -> InitialState:
        """What a reconnect sends: the initial state, updated by runtime requests."""
        return self._initial

    def handle(self, event: Input, now: float) -> list[Output]:
        """Feed one input; returns the effects and events it caused, in order."""
        self._advance(now)
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise UsageError(f"not an engine input: {type(event).__name__}")
        attempt = getattr(event, "attempt", None)
        if attempt is not None and (self._attempt is None or attempt != self._attempt.id):
            if attempt > self._last_attempt:
                raise UsageError(f"input for attempt {attempt}, which was never started")
            return []  # a stale attempt's result: dropped, never seen by the user
        handler(self, event)
        return self._flush()

    def get_timer(self) -> float | None:
        """The earliest armed deadline, or None."""
        best = self._connect_deadline
        if self._retry_deadline is not None and (best is None or self._retry_deadline < best):
            best = self._retry_deadline
        attempt = self._attempt
        if attempt is not None:
            for when in attempt.deadlines.values():
                if best is None or when < best:
                    best = when
            ack_due = attempt.ack_watch.deadline
            if ack_due is not None and (best is None or ack_due < best):
                best = ack_due
            for pending in attempt.requests:
                if not pending.expired and (best is None or pending.deadline < best):
                    best = pending.deadline
        return best

    def deadlines(self) -> dict[str, float]:
        """Every armed deadline by name (for tests, tracing and the checker)."""
        armed: dict[str, float] = {}
        if self._connect_deadline is not None:
            armed["connect"] = self._connect_deadline
        if self._retry_deadline is not None:
            armed["retry"] = self._retry_deadline
        if self._attempt is not None:
            for kind, when in self._attempt.deadlines.items():
                armed[kind.name.lower()] = when
            if self._attempt.ack_watch.deadline is not None:
                armed["initial_state_ack"] = self._attempt.ack_watch.deadline
            for pending in self._attempt.live_requests():
                armed[f"request:{pending.request}"] = pending.deadline
        return armed

    @property
    def ack_watch(self) -> AckWatch:
        """Where the live attempt's initial-state ack watch stands."""
        return AckWatch.NONE if self._attempt is None else self._attempt.ack_watch.phase

    # ---- plumbing -------------------------------------------------------------------

    def _watch(self, trigger: str, ack: SetImageAck | PromptAck | None = None) -> None:
        """Drive the live attempt's ack watch; its events go out with ours."""
        self._out.extend(self._live().ack_watch.fire(trigger, self._now, ack))

    def _live(self) -> Attempt:
        assert self._attempt is not None, "engine bug: no live attempt"
        return self._attempt

    def _fail(self, kind: ErrorKind, message: str, *, permanent: bool = False) -> None:
        """The live attempt failed: reconnect, retry or give up, per policy."""
        failure = _Failure(kind, message)
        if permanent:
            self._fire("give_up", failure)
        elif self._can("connection_lost"):
            self._fire("connection_lost", failure)
        elif self._retries >= self.config.retry.max_retries:
            retries = self.config.retry.max_retries
            self._fire("give_up", _Failure(kind, f"{message} (gave up after {retries} retries)"))
        else:
            self._fire("attempt_failed", failure)

    def _is_permanent(self, text: str) -> bool:
        return self.config.retry.is_permanent(text)

    def _unexpected(self, what: str) -> None:
        self._emit(ErrorOccurred(self._last_attempt, ErrorKind.UNEXPECTED_FRAME, what, fatal=False))

    # ---- transition callbacks (bound by name in TRANSITIONS) ---------------------------

    def _publish_state(self, _event: EventData) -> None:
        state = _USER_STATE.get(self.phase)
        if state is None:
            state = (
                ConnectionState.RECONNECTING if self._reconnecting else ConnectionState.CONNECTING
            )
        if state is not self._user_state:
            self._emit(StateChanged(self._last_attempt, state, self._user_state))
            self._user_state = state

    def _begin_connect(self, event: EventData) -> None:
        command: Connect = trigger_arg(event)
        self._initial = command.initial
        self._passthrough_override = command.passthrough
        self._retries = 0
        self._reconnecting = False
        self._connect_deadline = self._now + self.config.timeouts.connect

    def _begin_reconnect(self, _event: EventData) -> None:
        self._retries = 0
        self._reconnecting = True
        self._connect_deadline = self._now + self.config.timeouts.connect

    def _start_attempt(self, _event: EventData) -> None:
        self._retry_deadline = None
        self._last_attempt = AttemptId(self._last_attempt + 1)
        # As the JS client (spec §3.1, §3.2): an override sets the join's
        # passthrough only; the state, if any, is sent whatever it says.
        override = self._passthrough_override
        passthrough = (not self._initial.has_reference) if override is None else override
        attempt = Attempt(
            id=self._last_attempt,
            passthrough=passthrough,
            ack_watch=InitialStateWatch(
                self._last_attempt,
                self._initial.frame(),
                self.config.timeouts.initial_state_ack,
            ),
        )
        self._attempt = attempt
        attempt.deadlines[Deadline.SOCKET_OPEN] = self._now + self.config.timeouts.socket_open
        self._emit(
            OpenSocket(attempt.id, self.config.socket_url(), self.config.redacted_socket_url())
        )

    def _send_join(self, _event: EventData) -> None:
        attempt = self._live()
        attempt.socket_open = True
        del attempt.deadlines[Deadline.SOCKET_OPEN]
        join = LiveKitJoin(
            passthrough=attempt.passthrough, client_capabilities=self.config.client_capabilities
        )
        attempt.join_send = attempt.new_send()
        self._emit(SendFrame(attempt.id, attempt.join_send, FramePurpose.JOIN, encode(join)))
        if attempt.initial_frame is not None:
            # Right behind the join, without waiting for anything (rule 1).
            attempt.initial_send = attempt.new_send()
            frame = encode(attempt.initial_frame)
            self._emit(
                SendFrame(attempt.id, attempt.initial_send, FramePurpose.INITIAL_STATE, frame)
            )
            self._watch("frame_sent")
        attempt.deadlines[Deadline.ROOM_INFO] = self._now + self.config.timeouts.room_info

    def _note_queue_position(self, event: EventData) -> None:
        message: QueuePosition = trigger_arg(event)
        attempt = self._live()
        timeouts = self.config.timeouts
        attempt.deadlines.pop(Deadline.ROOM_INFO, None)  # a queued user may wait minutes
        if timeouts.queue_silence is not None:
            attempt.deadlines[Deadline.QUEUE_SILENCE] = self._now + timeouts.queue_silence
        if not attempt.queued:
            attempt.queued = True
            if timeouts.max_queue_wait is not None:
                attempt.deadlines[Deadline.MAX_QUEUE_WAIT] = self._now + timeouts.max_queue_wait
            self._pause_connect_deadline()
        self._emit(QueuePositionChanged(attempt.id, message.position, message.queue_size))

    def _connect_room(self, event: EventData) -> None:
        info: LiveKitRoomInfo = trigger_arg(event)
        attempt = self._live()
        attempt.room_info = info
        attempt.deadlines.pop(Deadline.ROOM_INFO, None)
        attempt.deadlines.pop(Deadline.QUEUE_SILENCE, None)
        attempt.deadlines.pop(Deadline.MAX_QUEUE_WAIT, None)
        self._resume_connect_deadline()
        attempt.room_requested = True
        attempt.deadlines[Deadline.MEDIA] = self._now + self.config.timeouts.media
        self._emit(ConnectRoom(attempt.id, info.livekit_url, info.token))
        self._watch("room_info")  # its deadline starts only now, never while queued

    def _publish_tracks(self, _event: EventData) -> None:
        self._emit(PublishTracks(self._live().id))

    def _mark_connected(self, _event: EventData) -> None:
        attempt = self._live()
        attempt.deadlines.pop(Deadline.MEDIA, None)
        self._connect_deadline = None
        self._retries = 0
        self._reconnecting = False

    def _start_session(self, _event: EventData) -> None:
        attempt = self._live()
        info = attempt.room_info
        assert info is not None
        self._emit(
            SessionStarted(
                attempt.id,
                info.session_id,
                info.room_name,
                subscribe_token(info.room_name) if info.room_name else "",  # spec §2.3
            )
        )

    def _end_attempt(self, event: EventData) -> None:
        attempt = self._attempt
        if attempt is None:
            return
        self._attempt = None  # with it go its deadlines, buffered ack and requests
        self._resume_connect_deadline()  # a retry after a queue wait is bounded again
        user_quit = event.event is not None and event.event.name == "disconnect"
        if user_quit:
            self._emit(CloseSocket(attempt.id, 1000, "client disconnect"))
        else:
            self._emit(CloseSocket(attempt.id, 1001, "attempt ended"))
        if attempt.room_requested:
            self._emit(DisconnectRoom(attempt.id))
        kind = ErrorKind.DISCONNECTED if user_quit else ErrorKind.CONNECTION_LOST
        for pending in attempt.live_requests():
            self._emit(
                RequestFailed(attempt.id, pending.request, kind, f"request abandoned: {kind.value}")
            )

    def _schedule_retry(self, event: EventData) -> None:
        failure: _Failure = trigger_arg(event)
        self._retries += 1
        delay = self.config.retry.delay(self._retries)
        self._retry_deadline = self._now + delay
        self._emit(
            RetryScheduled(self._last_attempt, self._retries, delay, failure.kind, failure.message)
        )

    def _report_fatal(self, event: EventData) -> None:
        failure: _Failure = trigger_arg(event)
        self._connect_deadline = None
        self._connect_paused = None
        self._retry_deadline = None
        self._emit(ErrorOccurred(self._last_attempt, failure.kind, failure.message, fatal=True))

    def _pause_connect_deadline(self) -> None:
        if self._connect_deadline is not None:
            self._connect_paused = self._connect_deadline - self._now
            self._connect_deadline = None

    def _resume_connect_deadline(self) -> None:
        if self._connect_paused is not None:
            self._connect_deadline = self._now + self._connect_paused
            self._connect_paused = None

    def _end_session(self, _event: EventData) -> None:
        self._connect_deadline = None
        self._retry_deadline = None
        self._reconnecting = False

    # ---- acks: the initial state's (out of band, ack_watch.py), then requests' -------

    def _on_ack(self, ack: SetImageAck | PromptAck) -> None:
        attempt = self._live()
        if attempt.ack_watch.answers(ack):
            self._watch("ack", ack)
            return
        pending = attempt.take_request(ack)
        if pending is None:
            self._unexpected(f"{ack.type} matches no pending request")
        elif pending.expired:
            pass  # the late ack of a request that already timed out
        elif ack.success:
            self._emit(RequestAcked(attempt.id, pending.request))
        else:
            reason = ack.error if isinstance(ack.error, str) else "no reason given"
            self._emit(
                RequestFailed(attempt.id, pending.request, ErrorKind.REQUEST_REJECTED, clip(reason))
            )

    # ---- deadlines ---------------------------------------------------------------------

    def _next_due(self, now: float) -> _Due | None:
        best: tuple[float, Deadline, RequestId | None] | None = None
        candidates: list[tuple[float, Deadline, RequestId | None]] = []
        if self._connect_deadline is not None:
            candidates.append((self._connect_deadline, Deadline.CONNECT, None))
        if self._retry_deadline is not None:
            candidates.append((self._retry_deadline, Deadline.RETRY, None))
        attempt = self._attempt
        if attempt is not None:
            candidates.extend((when, kind, None) for kind, when in attempt.deadlines.items())
            if attempt.ack_watch.deadline is not None:
                candidates.append((attempt.ack_watch.deadline, Deadline.INITIAL_STATE_ACK, None))
            candidates.extend(
                (p.deadline, Deadline.REQUEST, p.request) for p in attempt.requests if not p.expired
            )
        for candidate in candidates:
            if candidate[0] <= now and (best is None or candidate[:2] < best[:2]):
                best = candidate
        return None if best is None else (best[1], best[2])

    def _fire_deadline(self, due: _Due) -> None:
        kind, request = due
        timeouts = self.config.timeouts
        if kind is Deadline.CONNECT:
            self._connect_deadline = None
            failure = _Failure(
                ErrorKind.CONNECT_TIMEOUT, f"not connected within {timeouts.connect:g} s"
            )
            self._fire("give_up", failure)
        elif kind is Deadline.RETRY:
            self._fire("retry_due")
        elif kind is Deadline.REQUEST:
            attempt = self._live()
            for pending in attempt.requests:
                if pending.request == request and not pending.expired:
                    pending.expired = True
                    attempt.drop_excess_tombstones()
                    message = f"no ack within {pending.timeout:g} s"
                    self._emit(
                        RequestFailed(
                            attempt.id, pending.request, ErrorKind.REQUEST_TIMEOUT, message
                        )
                    )
                    break
        elif kind is Deadline.INITIAL_STATE_ACK:
            self._watch("deadline")
        else:
            attempt = self._live()
            del attempt.deadlines[kind]
            if kind is Deadline.SOCKET_OPEN:
                self._fail(
                    ErrorKind.SOCKET_OPEN_TIMEOUT,
                    f"socket not open within {timeouts.socket_open:g} s",
                )
            elif kind is Deadline.ROOM_INFO:
                self._fail(
                    ErrorKind.ROOM_INFO_TIMEOUT,
                    f"no livekit_room_info within {timeouts.room_info:g} s",
                )
            elif kind is Deadline.QUEUE_SILENCE:
                message = f"queued, but the server said nothing for {timeouts.queue_silence:g} s"
                self._fail(ErrorKind.ROOM_INFO_TIMEOUT, message)
            elif kind is Deadline.MAX_QUEUE_WAIT:
                # The user's own bound on queueing: retrying would queue again.
                message = f"still queued after {timeouts.max_queue_wait:g} s"
                self._fail(ErrorKind.QUEUE_TIMEOUT, message, permanent=True)
            elif kind is Deadline.MEDIA:
                self._fail(
                    ErrorKind.MEDIA_TIMEOUT,
                    f"room not joined and published within {timeouts.media:g} s",
                )

    # ---- input handlers ------------------------------------------------------------------

    def _on_connect(self, command: Connect) -> None:
        if not self._can("connect"):
            raise UsageError(f"connect while {self._user_state.value}: disconnect first")
        self._fire("connect", command)

    def _on_disconnect(self, _command: Disconnect) -> None:
        if self._can("disconnect"):
            self._fire("disconnect")

    def _require_connected(self, what: str) -> None:
        if not self._can("send_request"):
            raise NotConnectedError(
                f"{what} needs a connected session; the session is {self._user_state.value}"
            )

    def _next_request(self, request: RequestId) -> None:
        if request <= self._last_request:
            raise UsageError(f"request ids must increase: {request} after {self._last_request}")
        self._last_request = request

    def _send_request(self, event: EventData) -> None:
        command: ChangePrompt | ChangeImage
        message: Prompt | SetImage
        command, message = event.args
        attempt = self._live()
        send = attempt.new_send()
        attempt.request_sends[send] = command.request
        # The call's own ack deadline, carried by its input (spec §4.3).
        timeout = self.config.timeouts.request_ack if command.timeout is None else command.timeout
        prompt = message.prompt if isinstance(message, Prompt) else None
        attempt.requests.append(
            PendingRequest(command.request, message.type, prompt, self._now + timeout, timeout)
        )
        self._emit(SendFrame(attempt.id, send, FramePurpose.REQUEST, encode(message)))

    def _on_change_prompt(self, command: ChangePrompt) -> None:
        self._require_connected("set_prompt")
        self._next_request(command.request)
        self._initial = attrs.evolve(
            self._initial, prompt=command.prompt, enhance_prompt=command.enhance_prompt
        )
        message = Prompt(command.prompt, command.enhance_prompt)
        self._fire("send_request", command, message)

    def _on_change_image(self, command: ChangeImage) -> None:
        self._require_connected("set_image")
        self._next_request(command.request)
        # The image is replaced, or cleared (neither given): a reconnect replays that.
        changes: dict[str, Any] = {"image_data": command.image_data, "image_ref": command.image_ref}
        if command.prompt is not None:
            changes["prompt"] = command.prompt
        if command.enhance_prompt is not None:
            changes["enhance_prompt"] = command.enhance_prompt
        self._initial = attrs.evolve(self._initial, **changes)
        # As sent by the JS client's setImage/set: prompt and enhance_prompt
        # only when given; no image at all is image_data: null.
        message = SetImage(
            image_data=command.image_data if command.image_ref is None else ABSENT,
            image_ref=ABSENT if command.image_ref is None else command.image_ref,
            prompt=ABSENT if command.prompt is None else command.prompt,
            enhance_prompt=ABSENT if command.enhance_prompt is None else command.enhance_prompt,
        )
        self._fire("send_request", command, message)

    def _on_socket_opened(self, _result: SocketOpened) -> None:
        if not self._can("socket_opened"):
            raise UsageError("SocketOpened reported twice")
        self._fire("socket_opened")

    def _on_socket_open_failed(self, result: SocketOpenFailed) -> None:
        if self._live().socket_open:
            raise UsageError("SocketOpenFailed after SocketOpened")
        self._fail(
            ErrorKind.SOCKET_OPEN_FAILED,
            f"socket open failed: {clip(result.reason)}",
            permanent=result.permanent or self._is_permanent(result.reason),
        )

    def _on_socket_closed(self, result: SocketClosed) -> None:
        self._fail(
            ErrorKind.SOCKET_CLOSED,
            f"socket closed (code {result.code}): {clip(result.reason) or 'no reason'}",
            permanent=result.permanent or self._is_permanent(result.reason),
        )

    def _on_send_failed(self, result: SendFailed) -> None:
        attempt = self._live()
        if result.send in (attempt.join_send, attempt.initial_send):
            # Without its join or initial state the server would wait forever:
            # this attempt must not go on to connect (seed review finding 1).
            what = "join" if result.send == attempt.join_send else "initial-state frame"
            self._fail(
                ErrorKind.SEND_FAILED,
                f"could not send the {what}: {clip(result.reason)}",
                permanent=result.permanent,
            )
            return
        request = attempt.request_sends.get(result.send)
        if request is None:
            raise UsageError(f"SendFailed for send {result.send}, which was never issued")
        for index, pending in enumerate(attempt.requests):
            if pending.request == request:
                del attempt.requests[index]
                if not pending.expired:
                    message = f"could not send: {clip(result.reason)}"
                    self._emit(RequestFailed(attempt.id, request, ErrorKind.SEND_FAILED, message))
                break

    def _on_frame(self, result: FrameReceived) -> None:
        attempt = self._live()
        if not attempt.socket_open:
            raise UsageError("FrameReceived before SocketOpened")
        message = parse_server_frame(result.frame, self.config.max_frame_bytes)
        if isinstance(message, FrameProblem):
            text = f"dropped a malformed frame: {message.detail}"
            self._emit(ErrorOccurred(attempt.id, ErrorKind.MALFORMED_FRAME, text, fatal=False))
        elif not isinstance(message, IgnoredFrame):
            handler = _MESSAGE_HANDLERS.get(type(message))
            if handler is not None:
                handler(self, message)

    def _on_queue_position(self, message: QueuePosition) -> None:
        if self._can("queue_position"):
            self._fire("queue_position", message)
        else:
            self._unexpected(f"queue_position while {self.phase.value}")

    def _on_room_info(self, message: LiveKitRoomInfo) -> None:
        if self._can("room_info"):
            self._fire("room_info", message)
        else:
            self._unexpected(f"livekit_room_info while {self.phase.value}")

    def _on_server_error(self, message: Error) -> None:
        text = f"server error: {clip(message.error) or 'no reason given'}"
        permanent = self._is_permanent(message.error)
        if permanent or not self._can("server_error"):
            # Before connected, a refusal a retry would repeat ends the connect too.
            futile = permanent or self.config.retry.is_futile(message.error)
            self._fail(ErrorKind.SERVER_ERROR, text, permanent=futile)
        else:
            self._fire("server_error", text)

    def _end_waits(self, event: EventData) -> None:
        # Connected: one error event; the waits it fails end without another.
        # They stay as tombstones, so that acks still on their way are absorbed
        # rather than reported as unexpected or taken for newer requests.
        text: str = trigger_arg(event)
        attempt = self._live()
        self._emit(ErrorOccurred(attempt.id, ErrorKind.SERVER_ERROR, text, fatal=False))
        self._watch("server_error")
        for pending in attempt.live_requests():
            pending.expired = True
            self._emit(RequestFailed(attempt.id, pending.request, ErrorKind.SERVER_ERROR, text))
        attempt.drop_excess_tombstones()

    def _note_generation(self, _event: EventData) -> None:
        self._live().generation_seen = True  # shown as generating once connected

    def _forget_generation(self, _event: EventData) -> None:
        self._live().generation_seen = False

    def _on_generation_started(self, _message: GenerationStarted) -> None:
        if self._can("generation_started"):
            self._fire("generation_started")
        else:
            self._unexpected("generation_started before livekit_room_info")

    def _on_generation_tick(self, message: GenerationTick) -> None:
        if not self._can("generation_started"):
            self._unexpected("generation_tick before livekit_room_info")
            return
        self._fire("generation_started")  # a tick shows generation has begun
        self._emit(GenerationTicked(self._live().id, message.seconds))

    def _on_generation_ended(self, message: GenerationEnded) -> None:
        if not self._can("generation_ended"):
            self._unexpected("generation_ended before livekit_room_info")
            return
        self._fire("generation_ended")
        seconds = None if message.seconds is ABSENT else message.seconds
        reason = clip(message.reason) or "no reason given"
        self._emit(GenerationStopped(self._live().id, seconds, reason))

    def _require_room(self, what: str) -> Attempt:
        attempt = self._live()
        if not attempt.room_requested:
            raise UsageError(f"{what} reported, but no ConnectRoom was issued")
        return attempt

    def _on_room_connected(self, _result: RoomConnected) -> None:
        self._require_room("RoomConnected")
        if not self._can("room_connected"):
            raise UsageError("RoomConnected reported twice")
        self._fire("room_connected")

    def _on_room_connect_failed(self, result: RoomConnectFailed) -> None:
        self._require_room("RoomConnectFailed")
        if not self._can("room_connected"):  # the room's connect is no longer awaited
            raise UsageError("RoomConnectFailed after RoomConnected")
        self._fail(
            ErrorKind.MEDIA_FAILED,
            f"room connect failed: {clip(result.reason)}",
            permanent=self._is_permanent(result.reason),
        )

    def _on_tracks_published(self, _result: TracksPublished) -> None:
        attempt = self._require_room("TracksPublished")
        if not self._can("tracks_published"):
            raise UsageError("TracksPublished without PublishTracks")
        self._fire("tracks_published")
        if attempt.generation_seen:  # the server began before we were connected
            self._fire("generation_started")

    def _on_publish_failed(self, result: PublishFailed) -> None:
        self._require_room("PublishFailed")
        if not self._can("tracks_published"):  # the publish is no longer awaited
            raise UsageError("PublishFailed without PublishTracks")
        self._fail(ErrorKind.MEDIA_FAILED, f"publish failed: {clip(result.reason)}")

    def _on_remote_track(self, result: RemoteTrackReceived) -> None:
        attempt = self._require_room("RemoteTrackReceived")
        if result.participant.startswith(MODEL_PARTICIPANT_PREFIX):
            self._emit(RemoteStream(attempt.id, result.participant, result.track_sid, result.kind))

    def _on_room_disconnected(self, result: RoomDisconnected) -> None:
        self._require_room("RoomDisconnected")
        self._fail(ErrorKind.ROOM_LOST, f"room disconnected: {clip(result.reason)}")


_HANDLERS: Final[dict[type, Callable[[ClientSession, Any], None]]] = {
    Connect: ClientSession._on_connect,
    Disconnect: ClientSession._on_disconnect,
    ChangePrompt: ClientSession._on_change_prompt,
    ChangeImage: ClientSession._on_change_image,
    SocketOpened: ClientSession._on_socket_opened,
    SocketOpenFailed: ClientSession._on_socket_open_failed,
    SocketClosed: ClientSession._on_socket_closed,
    SendFailed: ClientSession._on_send_failed,
    FrameReceived: ClientSession._on_frame,
    RoomConnected: ClientSession._on_room_connected,
    RoomConnectFailed: ClientSession._on_room_connect_failed,
    TracksPublished: ClientSession._on_tracks_published,
    PublishFailed: ClientSession._on_publish_failed,
    RemoteTrackReceived: ClientSession._on_remote_track,
    RoomDisconnected: ClientSession._on_room_disconnected,
}

_MESSAGE_HANDLERS: Final[dict[type[ServerMessage], Callable[[ClientSession, Any], None]]] = {
    QueuePosition: ClientSession._on_queue_position,
    LiveKitRoomInfo: ClientSession._on_room_info,
    SetImageAck: ClientSession._on_ack,
    PromptAck: ClientSession._on_ack,
    Error: ClientSession._on_server_error,
    GenerationStarted: ClientSession._on_generation_started,
    GenerationTick: ClientSession._on_generation_tick,
    GenerationEnded: ClientSession._on_generation_ended,
}
