"""The server side of the lean-join handshake: one table, one object per connection.

Rules of this module (the same as ``client.py``'s, seen from the other end):

1. No I/O, no clock, no threads, no async library, no randomness. Time comes
   in as ``now``; timers go out as one absolute deadline (``get_timer()``)
   and come back as ``handle_timer(now)``. Room names, tokens and decoded
   images belong to the adapter, which answers the effects that ask for them.
2. Inputs and outputs are the frozen classes of :mod:`.server_io`. The
   admission queue shared by all connections is :mod:`.admission`; this
   object only asks it for a slot and hears back through the adapter.
3. Phases and transitions are the ``TRANSITIONS`` table below, run by one
   shared ``transitions.Machine``. Its sources are the only legality check: a
   handler asks whether the table has a row (``_can``), never which phase it
   is in. Callbacks only update fields and append outputs; they never fire
   another trigger. Handlers fire triggers, then run what may follow a phase
   change (injected faults, the start of generation).
4. Misuse by the adapter raises :class:`~leanjoin.engine.sansio.UsageError`. Nothing a peer sends
   raises: a bad frame gets an ``error`` frame naming the problem, and abuse
   (a flood, many bad frames, too many pending requests) a close with a reason.
5. Once the session is closed every input is dropped.
6. The same inputs at the same times always give the same outputs.

Requests (``set_image``, ``prompt``) are handled strictly one at a time in
arrival order, so acks leave in the order the client sent the requests,
which is how the client matches ``set_image_ack``.
"""

from __future__ import annotations

import enum
import hmac
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import attrs
from transitions import EventData

from ..codec import FrameProblem, IgnoredFrame, encode, parse_client_frame
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
from .events import (
    ClientPublishing,
    ClientVideoArrived,
    CloseConnection,
    ConfigureModel,
    CreateRoom,
    DecodeReference,
    FailMedia,
    FrameIn,
    FrameOut,
    LoadReference,
    Opened,
    PeerClosed,
    PhaseChanged,
    ProblemNoted,
    QueueFull,
    QueueMoved,
    ReferenceDecoded,
    ReferenceMissing,
    ReferenceUndecodable,
    ReleaseSlot,
    RequestNumber,
    RequestSlot,
    RoomFailed,
    RoomReady,
    ServerOutput,
    SessionPhase,
    Shutdown,
    SlotGranted,
    StopModel,
)
from .knobs import AckDrop, FaultPhase, ServerKnobs
from .request_queue import Request, Stage, ack_for, bundled_initial

UNAUTHORIZED: Final = "unauthorized: invalid api key"

# WebSocket close codes (RFC 6455 and the IANA registry).
CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_INTERNAL: Final = 1011
CLOSE_TRY_LATER: Final = 1013


__all__ = ["ServerSession", "UsageError"]


P = SessionPhase
OPEN_PHASES: Final = tuple(p for p in SessionPhase if p is not P.CLOSED)
WAITING_PHASES: Final = (P.JOINED, P.QUEUED)  # for a slot in the admission queue
BEFORE_VIDEO: Final = (P.IN_ROOM, P.PUBLISHING)

# The server table. Each row: trigger, source phases, destination (None: stay,
# an internal transition), callbacks before the change, callbacks after it.
# fmt: off
TRANSITIONS: Final[tuple[Row[SessionPhase], ...]] = (
    # trigger             sources             dest             before                    after
    ("open",              (P.NEW,),           P.AWAITING_JOIN, ("_accept_open",),        ()),
    ("refuse",            (P.NEW,),           P.CLOSED,        ("_end_connection",),     ()),
    ("join",              (P.AWAITING_JOIN,), P.JOINED,        ("_accept_join",),        ("_request_slot",)),
    ("queue_moved",       (P.JOINED,),        P.QUEUED,        ("_send_queue_position",), ()),
    ("queue_moved",       (P.QUEUED,),        None,            ("_send_queue_position",), ()),
    ("admit",             WAITING_PHASES,     P.ADMITTED,      (),                       ("_prepare_room",)),
    ("room_ready",        (P.ADMITTED,),      P.IN_ROOM,       ("_send_room_info",),     ()),
    ("client_publishing", (P.IN_ROOM,),       P.PUBLISHING,    (),                       ()),
    ("client_video",      BEFORE_VIDEO,       P.STREAMING,     (),                       ()),
    ("start_generation",  (P.STREAMING,),     P.GENERATING,    ("_start_generation",),   ()),
    ("close",             OPEN_PHASES,        P.CLOSED,        ("_end_connection",),     ()),
    ("peer_closed",       OPEN_PHASES,        P.CLOSED,        ("_note_peer_closed",),   ()),
)
# fmt: on

# Entering CLOSED gives back everything the session held, then says so.
ON_ENTER: Final[dict[SessionPhase, tuple[str, ...]]] = {
    P.CLOSED: ("_release", "_publish_phase"),
}

FAULT_PHASES: Final = {
    P.AWAITING_JOIN: FaultPhase.BEFORE_JOIN,
    P.QUEUED: FaultPhase.QUEUED,
    P.ADMITTED: FaultPhase.BEFORE_ROOM_INFO,
    P.IN_ROOM: FaultPhase.AFTER_ROOM_INFO,
    P.PUBLISHING: FaultPhase.PUBLISHING,
    P.STREAMING: FaultPhase.CLIENT_VIDEO,
    P.GENERATING: FaultPhase.GENERATING,
}


# One machine for every connection; sessions are its unregistered models.
MACHINE: Final = build_machine(
    SessionPhase,
    TRANSITIONS,
    initial=P.NEW,
    on_enter=ON_ENTER,
    default_on_enter=("_publish_phase",),
)
SOURCES: Final = sources_by_trigger(TRANSITIONS)


class _Deadline(enum.IntEnum):
    """Deadline kinds, in the order they fire when due at the same instant."""

    INITIAL_STATE = 0
    ROOM_INFO = 1
    PROCESSING = 2
    ACK = 3
    TICK = 4


@attrs.frozen
class _Closing:
    code: int
    reason: str
    error: str | None  # sent as an error frame first, if set


class ServerSession(SansIOEngine[ServerOutput, _Deadline]):
    """One signaling connection, from the accepted socket to its close."""

    __slots__ = (
        "__api_key",
        "_acks",
        "_applied",
        "_bad_frames",
        "_closing",
        "_deadlines",
        "_expect_initial",
        "_join_kind",
        "_last_request",
        "_model",
        "_model_running",
        "_passthrough",
        "_prompt",
        "_queue",
        "_reference",
        "_room",
        "_room_requested",
        "_shown",
        "_slot",
        "_started_at",
        "_tokens",
        "_tokens_at",
        "_user_agent",
        "_work",
        "faults",
        "knobs",
    )

    MACHINE = MACHINE
    SOURCES = SOURCES
    phase: SessionPhase

    def __init__(self, knobs: ServerKnobs, api_key: str, *, faults: bool = True) -> None:
        super().__init__(P.NEW)
        self.knobs = knobs
        self.faults = faults  # False: the injected-fault knobs do not apply here
        self.__api_key = api_key.encode()
        self._shown = P.NEW
        self._deadlines: dict[_Deadline, float] = {}
        self._acks: deque[tuple[float, SetImageAck | PromptAck]] = deque()
        self._tokens = float(knobs.frame_burst)
        self._tokens_at = float("-inf")
        self._bad_frames = 0
        self._model: str | None = None
        self._user_agent: str | None = None
        self._join_kind = ""
        self._passthrough = False
        self._expect_initial = False
        self._slot = False
        self._queue = (0, 0)
        self._room_requested = False
        self._room: RoomReady | None = None
        self._applied = False
        self._prompt: str | None = None
        self._reference: RequestNumber | None = None
        self._model_running = False
        self._started_at = 0.0
        self._last_request = 0
        self._work: deque[Request] = deque()
        self._closing = ""

    def __repr__(self) -> str:
        return f"<ServerSession {self.phase.value}>"

    # ---- public API -------------------------------------------------------------------

    @property
    def passthrough(self) -> bool:
        return self._passthrough

    @property
    def model_state(self) -> tuple[str | None, RequestNumber | None]:
        """The applied prompt and reference (by request number)."""
        return self._prompt, self._reference

    def handle(self, event: object, now: float) -> list[ServerOutput]:
        """Feed one input; returns the effects and events it caused, in order."""
        self._advance(now)
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise UsageError(f"not a server engine input: {type(event).__name__}")
        if self.phase is P.CLOSED:
            return []  # the connection is gone: late results are dropped
        handler(self, event)
        return self._flush()

    def get_timer(self) -> float | None:
        """The earliest armed deadline, or None."""
        due = self._due_times()
        return min(due.values()) if due else None

    def deadlines(self) -> dict[str, float]:
        """Every armed deadline by name (for tests and tracing)."""
        return {kind.name.lower(): when for kind, when in self._due_times().items()}

    # ---- plumbing -----------------------------------------------------------------------

    def _send(self, message: ServerMessage) -> None:
        self._emit(FrameOut(message.type, encode(message)))

    def _fire(self, trigger: str, *args: Any) -> None:
        before = self.phase
        super()._fire(trigger, *args)
        if self.phase is not before:
            self._inject_faults()

    def _close(self, code: int, reason: str, error: str | None = None) -> None:
        if self._can("close"):
            self._fire("close", _Closing(code, reason, error))

    def _inject_faults(self) -> None:
        fault = FAULT_PHASES.get(self.phase)
        if fault is None or not self.faults:
            return
        if self.knobs.error_at is fault:
            self._send(Error(self.knobs.error_text))
        media = self.knobs.media_failure_at
        if media is not None and media.phase is fault:
            self._emit(FailMedia())
        if self.knobs.close_at is fault:
            self._close(CLOSE_INTERNAL, f"injected close at {fault.value}")

    # ---- transition callbacks (bound by name in TRANSITIONS) --------------------------------

    def _publish_phase(self, _event: EventData) -> None:
        self._emit(PhaseChanged(self.phase, self._shown, self._phase_detail()))
        self._shown = self.phase

    def _phase_detail(self) -> str:
        phase = self.phase
        if phase is P.AWAITING_JOIN:
            agent = clip(self._user_agent or "-", 120)
            return f"model {clip(self._model or '-', 64)!r}, user agent {agent!r}"
        if phase is P.JOINED:
            return f"{self._join_kind}, passthrough={str(self._passthrough).lower()}"
        if phase is P.QUEUED:
            return f"position {self._queue[0]} of {self._queue[1]}"
        if phase is P.IN_ROOM and self._room is not None:
            return f"room {self._room.room_name}, session {self._room.session_id}"
        if phase is P.STREAMING and not self._state_ready():
            return "waiting for the initial state"
        if phase is P.GENERATING:
            return "passthrough" if self._passthrough else "state applied"
        if phase is P.CLOSED:
            return self._closing
        return ""

    def _accept_open(self, event: EventData) -> None:
        opened: Opened = trigger_arg(event)
        self._model = opened.model
        self._user_agent = opened.user_agent

    def _accept_join(self, event: EventData) -> None:
        join: LiveKitJoin = trigger_arg(event)
        if join.initial_state is not ABSENT:
            # The bundled join of an earlier design: its state counts as the initial frame.
            initial = bundled_initial(join.initial_state)
            self._join_kind = "legacy bundled join"
            self._passthrough = initial is None and join.passthrough is not False
            if initial is not None:
                self._enqueue(initial, initial=True)
        elif join.passthrough is ABSENT:
            # The bare join of old clients: output starts from the camera; any
            # set_image or prompt that follows is an ordinary request.
            self._join_kind = "legacy bare join"
            self._passthrough = True
        else:
            self._join_kind = "lean join"
            self._passthrough = join.passthrough
            if not join.passthrough:
                self._expect_initial = True
                self._deadlines[_Deadline.INITIAL_STATE] = (
                    self._now + self.knobs.initial_state_timeout
                )

    def _request_slot(self, _event: EventData) -> None:
        self._slot = True
        self._emit(RequestSlot())

    def _send_queue_position(self, event: EventData) -> None:
        moved: QueueMoved = trigger_arg(event)
        self._queue = (moved.position, moved.queue_size)
        self._send(QueuePosition(moved.position, moved.queue_size))

    def _prepare_room(self, _event: EventData) -> None:
        if self.knobs.room_info_delay > 0:
            self._deadlines[_Deadline.ROOM_INFO] = self._now + self.knobs.room_info_delay
        else:
            self._create_room()

    def _send_room_info(self, event: EventData) -> None:
        room: RoomReady = trigger_arg(event)
        self._room = room
        self._send(LiveKitRoomInfo(room.livekit_url, room.token, room.room_name, room.session_id))

    def _start_generation(self, _event: EventData) -> None:
        self._started_at = self._now
        self._deadlines[_Deadline.TICK] = self._now + self.knobs.tick_interval
        self._send(GenerationStarted())
        self._configure_model()

    def _end_connection(self, event: EventData) -> None:
        closing: _Closing = trigger_arg(event)
        self._closing = closing.reason
        if closing.error is not None:
            self._send(Error(closing.error))
        if self.phase is P.GENERATING:
            self._send(GenerationEnded(self._seconds(), closing.reason))
        self._emit(CloseConnection(closing.code, closing.reason))

    def _note_peer_closed(self, event: EventData) -> None:
        closed: PeerClosed = trigger_arg(event)
        why = clip(closed.reason, 80) or "no reason"
        self._closing = f"client closed the connection ({closed.code}: {why})"

    def _release(self, _event: EventData) -> None:
        self._deadlines.clear()
        self._acks.clear()
        self._work.clear()
        if self._slot:
            self._slot = False
            self._emit(ReleaseSlot())
        if self._model_running:
            self._model_running = False
            self._emit(StopModel())

    # ---- requests: one at a time, in arrival order ------------------------------------------

    def _enqueue(self, message: SetImage | Prompt, *, initial: bool) -> None:
        self._last_request += 1
        self._work.append(
            Request.judge(
                RequestNumber(self._last_request),
                message,
                initial=initial,
                max_bytes=self.knobs.max_reference_bytes,
                reject_images=self.faults and self.knobs.reject_reference,
            )
        )

    def _advance_work(self) -> None:
        """Take requests off the pipeline until one must wait; then see
        whether the state applied so far lets generation start."""
        while self._work and self.phase is not P.CLOSED:
            head = self._work[0]
            if head.stage is not Stage.WAITING:
                break  # the adapter or the processing time has it
            if head.rejection is not None:
                self._finish(head.rejection)
            elif head.data is not None:
                data, head.data = head.data, None
                head.stage = Stage.DECODING
                self._emit(DecodeReference(head.id, data))
                break
            elif head.file_id is not None:
                head.stage = Stage.DECODING
                self._emit(LoadReference(head.id, head.file_id))
                break
            else:
                self._finish(None)
        self._maybe_start_generation()

    def _finish(self, error: str | None) -> None:
        request = self._work.popleft()
        if error is None:
            self._apply(request)
        else:
            self._emit(ProblemNoted(f"{request.message.type} rejected: {error}"))
        drop = self.knobs.drop_ack
        if self.faults and (drop is AckDrop.ALL or (drop is AckDrop.INITIAL and request.initial)):
            return
        ack = ack_for(request.message, error)
        if self.knobs.ack_delay > 0:
            self._acks.append((self._now + self.knobs.ack_delay, ack))
        else:
            self._send(ack)

    def _apply(self, request: Request) -> None:
        message = request.message
        if isinstance(message, Prompt):
            self._prompt = message.prompt
        else:
            if isinstance(message.image_data, str) or message.image_ref is not ABSENT:
                self._reference = request.id
            elif message.image_data is None:
                self._reference = None  # an explicit null clears the reference
            if message.prompt is not ABSENT:
                self._prompt = message.prompt
        if not request.no_state:  # a bare clear is nothing generation can start from
            self._applied = True
        if self.phase is P.GENERATING:
            self._configure_model()

    def _configure_model(self) -> None:
        self._model_running = True
        self._emit(ConfigureModel(self._prompt, self._reference, self._passthrough))

    # ---- the rest of the session ---------------------------------------------------------

    def _create_room(self) -> None:
        self._room_requested = True
        self._emit(CreateRoom())

    def _state_ready(self) -> bool:
        # The model has a state to apply (a passthrough session needs none).
        return self._passthrough or self._applied

    def _maybe_start_generation(self) -> None:
        # Output starts once the client's video is in and the model has a state.
        if self._can("start_generation") and self._state_ready():
            self._fire("start_generation")

    def _seconds(self) -> float:
        return round(self._now - self._started_at, 3)

    def _refuse_frame(self, problem: str) -> None:
        self._bad_frames += 1
        self._emit(ProblemNoted(problem))
        if self._bad_frames > self.knobs.max_bad_frames:
            self._close(
                CLOSE_POLICY, "too many bad frames", f"{problem}; closing: too many bad frames"
            )
        else:
            self._send(Error(problem))

    def _take_frame_token(self) -> bool:
        knobs = self.knobs
        elapsed = self._now - self._tokens_at if self._tokens_at > float("-inf") else 0.0
        self._tokens = min(float(knobs.frame_burst), self._tokens + elapsed * knobs.frame_rate)
        self._tokens_at = self._now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    # ---- deadlines --------------------------------------------------------------------------

    def _due_times(self) -> dict[_Deadline, float]:
        due = dict(self._deadlines)
        if self._acks:
            due[_Deadline.ACK] = self._acks[0][0]
        return due

    def _next_due(self, now: float) -> _Deadline | None:
        due = [(when, kind) for kind, when in self._due_times().items() if when <= now]
        return min(due)[1] if due else None

    def _fire_deadline(self, kind: _Deadline) -> None:
        if kind is _Deadline.ACK:
            _when, ack = self._acks.popleft()
            self._send(ack)
            return
        when = self._deadlines.pop(kind)
        if kind is _Deadline.INITIAL_STATE:
            timeout = self.knobs.initial_state_timeout
            self._close(
                CLOSE_POLICY,
                "no initial state",
                "no initial state: livekit_join had passthrough=false, but no set_image or "
                f"prompt followed within {timeout:g} s",
            )
        elif kind is _Deadline.ROOM_INFO:
            self._create_room()
        elif kind is _Deadline.PROCESSING:
            self._finish(None)
            self._advance_work()
        elif kind is _Deadline.TICK:
            self._send(GenerationTick(self._seconds()))
            # Keep the tick grid; after a stall, skip the missed ticks rather than burst.
            follow = when + self.knobs.tick_interval
            if follow <= self._now:
                follow = self._now + self.knobs.tick_interval
            self._deadlines[_Deadline.TICK] = follow

    # ---- input handlers -----------------------------------------------------------------------

    def _on_opened(self, opened: Opened) -> None:
        if not self._can("open"):
            raise UsageError("Opened reported twice")
        given = (opened.api_key or "").encode()
        if opened.api_key is not None and hmac.compare_digest(given, self.__api_key):
            self._fire("open", opened)
        else:
            self._fire("refuse", _Closing(CLOSE_POLICY, "unauthorized", UNAUTHORIZED))

    def _on_frame(self, event: FrameIn) -> None:
        if self._can("open"):
            raise UsageError("FrameIn before Opened")
        if not self._take_frame_token():
            rate = self.knobs.frame_rate
            problem = f"too many frames: more than {rate:g} per second"
            self._emit(ProblemNoted(problem))
            self._close(CLOSE_POLICY, "too many frames", problem)
            return
        message = parse_client_frame(event.frame, self.knobs.max_frame_bytes)
        if isinstance(message, FrameProblem):
            self._refuse_frame(f"bad frame: {message.detail}")
        elif isinstance(message, IgnoredFrame):
            pass  # unknown types are ignored, as every peer of this protocol does
        elif isinstance(message, LiveKitJoin):
            self._on_join(message)
        else:
            self._on_request(message)

    def _on_join(self, join: LiveKitJoin) -> None:
        if not self._can("join"):
            self._refuse_frame("unexpected livekit_join: this connection already joined")
            return
        self._fire("join", join)
        self._advance_work()  # a bundled join carries its initial state

    def _on_request(self, message: SetImage | Prompt) -> None:
        if self._can("join"):  # requests follow the join, never precede it
            self._refuse_frame(f"{message.type} before livekit_join: send livekit_join first")
            return
        if len(self._work) >= self.knobs.max_pending_requests:
            limit = self.knobs.max_pending_requests
            problem = f"too many requests awaiting their ack (limit {limit})"
            self._emit(ProblemNoted(problem))
            self._close(CLOSE_POLICY, "too many pending requests", problem)
            return
        null_bootstrap = isinstance(message, SetImage) and message.is_null_bootstrap
        initial = self._expect_initial and not null_bootstrap
        if initial:
            self._expect_initial = False
            self._deadlines.pop(_Deadline.INITIAL_STATE, None)
        self._enqueue(message, initial=initial)
        self._advance_work()

    def _on_peer_closed(self, closed: PeerClosed) -> None:
        self._fire("peer_closed", closed)

    def _on_shutdown(self, shutdown: Shutdown) -> None:
        self._close(CLOSE_GOING_AWAY, clip(shutdown.reason))

    def _require_waiting(self, what: str) -> None:
        if not self._can("admit"):
            raise UsageError(f"{what} while {self.phase.value}: no slot was waited for")

    def _on_slot_granted(self, _granted: SlotGranted) -> None:
        self._require_waiting("SlotGranted")
        self._fire("admit")

    def _on_queue_moved(self, moved: QueueMoved) -> None:
        self._require_waiting("QueueMoved")
        self._fire("queue_moved", moved)

    def _on_queue_full(self, full: QueueFull) -> None:
        self._require_waiting("QueueFull")
        self._slot = False  # never got a place, so there is none to give back
        self._close(CLOSE_TRY_LATER, "server at capacity", clip(full.reason))

    def _require_room_request(self, what: str) -> None:
        if not self._room_requested:
            raise UsageError(f"{what} reported, but no CreateRoom was issued")

    def _on_room_ready(self, room: RoomReady) -> None:
        self._require_room_request("RoomReady")
        if not self._can("room_ready"):
            raise UsageError("RoomReady reported twice")
        self._fire("room_ready", room)

    def _on_room_failed(self, failed: RoomFailed) -> None:
        self._require_room_request("RoomFailed")
        if not self._can("room_ready"):  # the room is no longer awaited
            raise UsageError("RoomFailed after RoomReady")
        problem = f"could not prepare a room: {clip(failed.reason)}"
        self._close(CLOSE_INTERNAL, "room unavailable", problem)

    def _require_room(self, what: str) -> None:
        if self._room is None:
            raise UsageError(f"{what} reported, but no room is ready (no RoomReady)")

    def _on_publishing(self, _publishing: ClientPublishing) -> None:
        self._require_room("ClientPublishing")
        if self._can("client_publishing"):
            self._fire("client_publishing")
        # Later (video in already, or a further publication): nothing changes.

    def _on_video(self, _arrived: ClientVideoArrived) -> None:
        self._require_room("ClientVideoArrived")
        if self._can("client_video"):  # later: the first frame was reported already
            self._fire("client_video")
            self._maybe_start_generation()

    def _decoding(self, request: RequestNumber, what: str) -> None:
        head = self._work[0] if self._work else None
        if head is None or head.id != request or head.stage is not Stage.DECODING:
            raise UsageError(f"{what} for request {request}, which is not being decoded")

    def _on_decoded(self, decoded: ReferenceDecoded) -> None:
        self._decoding(decoded.request, "ReferenceDecoded")
        processing = self.knobs.reference_processing_time
        if processing > 0:
            self._work[0].stage = Stage.PROCESSING
            self._deadlines[_Deadline.PROCESSING] = self._now + processing
            return
        self._finish(None)
        self._advance_work()

    def _on_undecodable(self, failed: ReferenceUndecodable) -> None:
        self._decoding(failed.request, "ReferenceUndecodable")
        self._finish(f"reference image is not a decodable image ({clip(failed.reason, 120)})")
        self._advance_work()

    def _on_missing(self, missing: ReferenceMissing) -> None:
        self._decoding(missing.request, "ReferenceMissing")
        self._finish(
            f"image_ref {clip(missing.file_id, 64)!r} names no stored file "
            "(never uploaded, deleted or expired)"
        )
        self._advance_work()


_HANDLERS: Final[dict[type, Callable[[ServerSession, Any], None]]] = {
    Opened: ServerSession._on_opened,
    FrameIn: ServerSession._on_frame,
    PeerClosed: ServerSession._on_peer_closed,
    Shutdown: ServerSession._on_shutdown,
    SlotGranted: ServerSession._on_slot_granted,
    QueueMoved: ServerSession._on_queue_moved,
    QueueFull: ServerSession._on_queue_full,
    RoomReady: ServerSession._on_room_ready,
    RoomFailed: ServerSession._on_room_failed,
    ClientPublishing: ServerSession._on_publishing,
    ClientVideoArrived: ServerSession._on_video,
    ReferenceDecoded: ServerSession._on_decoded,
    ReferenceUndecodable: ServerSession._on_undecodable,
    ReferenceMissing: ServerSession._on_missing,
}
