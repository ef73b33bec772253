"""The client engine's safety invariants, defined once.

The Hypothesis state machine and the exhaustive checker both wrap a session in
an :class:`InvariantMonitor` and feed every step through it; a broken rule
raises :class:`InvariantViolation` naming the invariant. Each name matches a
rule of specs/protocol.md.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Final

import attrs

from ..client.ack_watch import AckWatch
from ..client.config import InitialState
from ..client.inputs import (
    ChangeImage,
    ChangePrompt,
    Connect,
    Disconnect,
    FrameReceived,
    Input,
    RequestId,
    SendFailed,
    SendId,
    SocketClosed,
    SocketOpenFailed,
    TracksPublished,
)
from ..client.outputs import (
    CloseSocket,
    ConnectionState,
    ConnectRoom,
    DisconnectRoom,
    ErrorKind,
    ErrorOccurred,
    FramePurpose,
    InitialStateAcked,
    Output,
    RequestAcked,
    RequestFailed,
    RetryScheduled,
    SendFrame,
    StateChanged,
)
from ..client.session import ATTEMPT_PHASES, LIVE_PHASES, ClientSession, Phase
from ..codec import encode, parse_server_frame
from ..messages import Error, PromptAck, SetImageAck

NAMES: Final = (
    "no_stale_emission",
    "ack_timer_never_armed_before_room_info",
    "initial_state_frame_right_after_join_iff_state_given",
    "connected_never_waits_for_ack",
    "no_deadline_survives_its_attempt",
    "at_most_one_error_per_failure",
    "early_ack_claimed_once_by_its_own_attempt",
    "send_failure_fails_the_attempt",
    "stale_input_dropped",
    "permanent_failure_is_not_retried",
    "every_attempt_has_a_deadline",
    "every_attempt_ends_within_its_deadlines",
    "every_ended_attempt_is_closed",
    "replay_holds_what_the_user_last_set",
    "every_phase_arms_its_deadlines",
    "every_request_answered_once",
    "request_ack_matches_oldest_pending",
    "max_queue_wait_armed_once",
    "connected_only_after_tracks_published",
    "every_initial_ack_reported_once",
)

# Phases in which an attempt is pending: it must end (connected, failed or
# superseded) by a deadline if nothing else happens.
PENDING_PHASES: Final = (*ATTEMPT_PHASES, Phase.BACKOFF)

# Which deadlines may be armed in each phase (beyond per-request deadlines).
_ALLOWED_DEADLINES: Final[dict[Phase, frozenset[str]]] = {
    Phase.DISCONNECTED: frozenset(),
    Phase.OPENING: frozenset({"connect", "socket_open"}),
    Phase.JOINING: frozenset({"connect", "room_info"}),
    Phase.QUEUED: frozenset({"queue_silence", "max_queue_wait"}),
    Phase.ROOM_CONNECTING: frozenset({"connect", "media", "initial_state_ack"}),
    Phase.PUBLISHING: frozenset({"connect", "media", "initial_state_ack"}),
    Phase.CONNECTED: frozenset({"initial_state_ack"}),
    Phase.GENERATING: frozenset({"initial_state_ack"}),
    Phase.BACKOFF: frozenset({"connect", "retry"}),
}

# Which deadlines must be armed in each phase, whatever else is (spec §5):
# every pending phase is bounded, and the connect budget runs outside a queue.
_REQUIRED_DEADLINES: Final[dict[Phase, frozenset[str]]] = {
    Phase.OPENING: frozenset({"connect", "socket_open"}),
    Phase.JOINING: frozenset({"connect", "room_info"}),
    Phase.ROOM_CONNECTING: frozenset({"connect", "media"}),
    Phase.PUBLISHING: frozenset({"connect", "media"}),
    Phase.BACKOFF: frozenset({"connect", "retry"}),
}

_INITIAL_STATE_OUTCOMES: Final = (ErrorKind.INITIAL_STATE_REJECTED, ErrorKind.INITIAL_STATE_TIMEOUT)


@attrs.define
class _Sent:
    """A frame the server will ack, as the monitor saw it leave (shadow model)."""

    kind: str  # "prompt" | "set_image"
    text: str | None  # a prompt frame's text: prompt_ack is matched by it
    request: RequestId | None  # None: the attempt's initial-state frame
    send: SendId


class InvariantViolation(AssertionError):
    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail


@attrs.define
class InvariantMonitor:
    """Observes one session step by step and checks every invariant."""

    session: ClientSession
    # attempt id -> how many initial-state outcomes it produced
    _initial_outcomes: dict[int, int] = attrs.Factory(dict)
    _failed_by_send: set[int] = attrs.Factory(set)
    # attempts that received an ack frame: only they may settle an initial state by ack
    _acks_received: set[int] = attrs.Factory(set)
    # attempts that asked for a room (ConnectRoom): only they, and all of them, disconnect it
    _rooms: set[int] = attrs.Factory(set)
    # What a reconnect must send: the monitor's own account of what the user set.
    _replay: InitialState = attrs.Factory(InitialState)
    _override: bool | None = None
    # The live attempt's frames awaiting an ack, oldest first (acks match the
    # oldest of their kind, a prompt_ack the oldest with its text).
    _awaiting_ack: list[_Sent] = attrs.Factory(list)
    _ledger_attempt: int = 0
    # request id -> (its attempt, how many answers it got)
    _answers: dict[int, tuple[int, int]] = attrs.Factory(dict)
    # the live attempt's initial-state ack: received, and whether room_info came
    _initial_ack: SetImageAck | PromptAck | None = None
    _initial_done: bool = False  # reported, timed out or ended by a server error
    _room_info_seen: bool = False
    _max_queue_wait: tuple[int, float] | None = None

    def step(self, event: Input | None, now: float) -> list[Output]:
        """Feed ``event`` (or the timer, when None) and check the result."""
        session = self.session
        before_phase = session.phase
        before_state = session.state
        before_attempt = session._attempt
        before_watch = session.ack_watch
        latest_before = session.latest_attempt
        handshake_send_failed = (
            isinstance(event, SendFailed)
            and before_attempt is not None
            and event.attempt == before_attempt.id
            and event.send in (before_attempt.join_send, before_attempt.initial_send)
        )
        event_attempt = getattr(event, "attempt", None)
        live_input = (
            event_attempt is not None
            and before_attempt is not None
            and event_attempt == before_attempt.id
        )
        permanent = live_input and self._observe_live_input(event)
        outputs = session.handle_timer(now) if event is None else session.handle(event, now)
        self._observe_user(event)
        # Spec 6.7: input of any attempt but the live one changes nothing.
        if (
            event_attempt is not None
            and not live_input
            and (outputs or session.phase is not before_phase or session.state is not before_state)
        ):
            raise InvariantViolation(
                "stale_input_dropped",
                f"{type(event).__name__} of attempt {event_attempt} (live: "
                f"{None if before_attempt is None else before_attempt.id}) gave "
                f"{[type(o).__name__ for o in outputs]}",
            )
        if permanent:
            self._check_permanent(outputs)
        self._rooms.update(o.attempt for o in outputs if isinstance(o, ConnectRoom))
        if before_attempt is not None and session._attempt is not before_attempt:
            self._check_closed(before_attempt.id, outputs)
        self._check_outputs(event, outputs, latest_before)
        self._check_requests(event, live_input, before_attempt, outputs)
        self._check_deadlines()
        self._check_required_deadlines()
        self._check_connected(event, live_input, outputs)
        self._check_pending_has_deadline()
        self._check_initial_frames(outputs)
        if (
            isinstance(event, TracksPublished)
            and before_phase is Phase.PUBLISHING
            and before_attempt is not None
            and event.attempt == before_attempt.id
            and session.phase not in (Phase.CONNECTED, Phase.GENERATING)
        ):
            raise InvariantViolation(
                "connected_never_waits_for_ack",
                f"TracksPublished left the session {session.phase.value} (ack watch {before_watch.value})",
            )
        if handshake_send_failed:
            assert isinstance(event, SendFailed)
            self._failed_by_send.add(event.attempt)
            if session.attempt == event.attempt:
                raise InvariantViolation(
                    "send_failure_fails_the_attempt", "the attempt survived a failed handshake send"
                )
        for output in outputs:
            if isinstance(output, ConnectRoom) and output.attempt in self._failed_by_send:
                raise InvariantViolation(
                    "send_failure_fails_the_attempt", "ConnectRoom after a failed handshake send"
                )
        return outputs

    def _observe_live_input(self, event: Input | None) -> bool:
        """Notes an ack frame for the live attempt; returns whether ``event``
        fails the attempt with a permanent text (spec 6.3: an error frame
        before connected, a close reason, an open failure)."""
        is_permanent = self.session.config.retry.is_permanent
        if isinstance(event, SocketOpenFailed | SocketClosed):
            return is_permanent(event.reason)
        if isinstance(event, FrameReceived):
            message = parse_server_frame(event.frame, self.session.config.max_frame_bytes)
            if isinstance(message, SetImageAck | PromptAck):
                self._acks_received.add(event.attempt)
            # Spec 6.3: a permanent error ends the session, connected or not.
            return isinstance(message, Error) and is_permanent(message.error)
        return False

    def _check_permanent(self, outputs: Sequence[Output]) -> None:
        name = "permanent_failure_is_not_retried"
        if any(isinstance(o, RetryScheduled) for o in outputs):
            raise InvariantViolation(name, "a permanent failure scheduled a retry")
        if self.session.phase is not Phase.DISCONNECTED:
            raise InvariantViolation(
                name, f"a permanent failure left the session {self.session.phase.value}"
            )
        if not any(isinstance(o, ErrorOccurred) and o.fatal for o in outputs):
            raise InvariantViolation(name, "a permanent failure raised no fatal error")

    def _check_closed(self, ended: int, outputs: Sequence[Output]) -> None:
        """Spec 6.6: an ended attempt gets CloseSocket, and DisconnectRoom iff it
        asked for a room (LiveKit's connect is not cancellation-safe)."""
        closes = sum(1 for o in outputs if isinstance(o, CloseSocket) and o.attempt == ended)
        rooms = sum(1 for o in outputs if isinstance(o, DisconnectRoom) and o.attempt == ended)
        requested = ended in self._rooms
        if closes != 1 or rooms != (1 if requested else 0):
            raise InvariantViolation(
                "every_ended_attempt_is_closed",
                f"attempt {ended} ended with {closes} CloseSocket and {rooms} DisconnectRoom "
                f"(room {'requested' if requested else 'never requested'})",
            )

    def _check_pending_has_deadline(self) -> None:
        session = self.session
        if session.phase not in PENDING_PHASES or session.get_timer() is not None:
            return
        timeouts = session.config.timeouts
        if (
            session.phase is Phase.QUEUED
            and timeouts.queue_silence is None
            and timeouts.max_queue_wait is None
        ):
            return  # configured to wait in the queue for as long as the server keeps it
        raise InvariantViolation(
            "every_attempt_has_a_deadline", f"no deadline armed while {session.phase.value}"
        )

    def _check_outputs(
        self, event: Input | None, outputs: Sequence[Output], latest_before: int
    ) -> None:
        session = self.session
        latest = session.latest_attempt
        errors = [o for o in outputs if isinstance(o, ErrorOccurred)]
        for output in outputs:
            # Everything emitted belongs to the newest attempt at its emission:
            # an attempt id lower than one already announced is stale.
            if output.attempt < latest_before or output.attempt > latest:
                raise InvariantViolation(
                    "no_stale_emission", f"{type(output).__name__} of attempt {output.attempt}"
                )
        fatal = [e for e in errors if e.fatal]
        if (
            len(fatal) > 1
            or len([e for e in errors if e.kind is not ErrorKind.UNEXPECTED_FRAME]) > 1
        ):
            raise InvariantViolation(
                "at_most_one_error_per_failure", f"{len(errors)} errors for one input"
            )
        if isinstance(event, Disconnect) and errors:
            raise InvariantViolation(
                "at_most_one_error_per_failure", "a user disconnect raised an error"
            )
        for output in outputs:
            if isinstance(output, InitialStateAcked) or (
                isinstance(output, ErrorOccurred) and output.kind in _INITIAL_STATE_OUTCOMES
            ):
                count = self._initial_outcomes.get(output.attempt, 0) + 1
                self._initial_outcomes[output.attempt] = count
                by_ack = not isinstance(output, ErrorOccurred) or (
                    output.kind is ErrorKind.INITIAL_STATE_REJECTED
                )
                if by_ack and output.attempt not in self._acks_received:
                    raise InvariantViolation(
                        "early_ack_claimed_once_by_its_own_attempt",
                        f"attempt {output.attempt} settled its initial state by an ack it never received",
                    )
                if count > 1:
                    raise InvariantViolation(
                        "early_ack_claimed_once_by_its_own_attempt",
                        f"attempt {output.attempt} settled its initial state {count} times",
                    )
        if session.state is ConnectionState.DISCONNECTED and session.get_timer() is not None:
            raise InvariantViolation(
                "no_deadline_survives_its_attempt", "a deadline is armed while disconnected"
            )
        for output in outputs:
            if isinstance(output, StateChanged) and output.state is output.previous:
                raise InvariantViolation("no_stale_emission", "a StateChanged that changed nothing")

    def _check_deadlines(self) -> None:
        session = self.session
        armed = {name for name in session.deadlines() if not name.startswith("request:")}
        allowed = _ALLOWED_DEADLINES[session.phase]
        if not armed <= allowed:
            raise InvariantViolation(
                "no_deadline_survives_its_attempt",
                f"{sorted(armed - allowed)} armed while {session.phase.value}",
            )
        attempt = session._attempt
        if "initial_state_ack" in armed and (attempt is None or attempt.room_info is None):
            raise InvariantViolation(
                "ack_timer_never_armed_before_room_info", "ack deadline armed without room_info"
            )
        if (
            attempt is not None
            and attempt.room_info is None
            and attempt.ack_watch.phase is AckWatch.WATCHING
        ):
            raise InvariantViolation(
                "ack_timer_never_armed_before_room_info", "ack watch running before room_info"
            )
        if attempt is None and any(name.startswith("request:") for name in session.deadlines()):
            raise InvariantViolation(
                "no_deadline_survives_its_attempt", "request deadline without an attempt"
            )

    def _check_initial_frames(self, outputs: Sequence[Output]) -> None:
        sends = [
            o for o in outputs if isinstance(o, SendFrame) and o.purpose is not FramePurpose.REQUEST
        ]
        if not sends:
            return
        join = sends[0]
        name = "initial_state_frame_right_after_join_iff_state_given"
        if join.purpose is not FramePurpose.JOIN or join.send != 1:
            raise InvariantViolation(name, "the first frame of an attempt is not the join")
        # Spec 3.1/3.2: passthrough is derived unless overridden; the override
        # changes the join only, and the state goes out whenever there is one.
        passthrough = json.loads(join.frame)["passthrough"]
        expected = (not self._replay.has_reference) if self._override is None else self._override
        if passthrough != expected:
            raise InvariantViolation(name, f"passthrough={passthrough} for the given initial state")
        following = sends[1:]
        if not self._replay.has_reference and following:
            raise InvariantViolation(name, "an initial-state frame followed a join with no state")
        if self._replay.has_reference:
            if len(following) != 1 or following[0].purpose is not FramePurpose.INITIAL_STATE:
                raise InvariantViolation(
                    name, "a join with a state was not followed by exactly one initial-state frame"
                )
            position = outputs.index(join)
            if outputs[position + 1] is not following[0]:
                raise InvariantViolation(
                    name, "something came between the join and the initial-state frame"
                )
            # Spec 4.4: what the user last set, not what the first connect carried.
            wanted = self._replay.frame()
            if wanted is not None and json.loads(following[0].frame) != json.loads(encode(wanted)):
                raise InvariantViolation(
                    "replay_holds_what_the_user_last_set",
                    f"attempt {join.attempt} sent an initial state other than the last one set",
                )

    # ---- the user's side: what a reconnect must replay ----------------------------------

    def _observe_user(self, event: Input | None) -> None:
        """Spec 4.4, restated: a connect sets the replay state, an accepted
        runtime request updates it (only reached when the engine took it)."""
        if isinstance(event, Connect):
            self._replay, self._override = event.initial, event.passthrough
        elif isinstance(event, ChangePrompt):
            self._replay = attrs.evolve(
                self._replay, prompt=event.prompt, enhance_prompt=event.enhance_prompt
            )
        elif isinstance(event, ChangeImage):
            self._replay = attrs.evolve(
                self._replay,
                image_data=event.image_data,
                image_ref=event.image_ref,
                prompt=self._replay.prompt if event.prompt is None else event.prompt,
                enhance_prompt=(
                    self._replay.enhance_prompt
                    if event.enhance_prompt is None
                    else event.enhance_prompt
                ),
            )

    # ---- requests: every one answered once, acks matched oldest first ---------------------

    def _check_requests(
        self,
        event: Input | None,
        live_input: bool,
        before: object,
        outputs: Sequence[Output],
    ) -> None:
        session = self.session
        answers = [o for o in outputs if isinstance(o, RequestAcked | RequestFailed)]
        expected: set[int] | None = None  # the requests this step must answer, if known
        if live_input and isinstance(event, FrameReceived):
            message = parse_server_frame(event.frame, session.config.max_frame_bytes)
            if isinstance(message, SetImageAck | PromptAck):
                expected = self._match_ack(message, outputs)
            elif isinstance(message, Error) and session.phase in LIVE_PHASES:
                self._initial_done = True  # the waits it ended absorb their late acks
        elif live_input and isinstance(event, SendFailed):
            lost = [s for s in self._awaiting_ack if s.send == event.send]
            for sent in lost:  # it never reached the server: no ack will come
                self._awaiting_ack.remove(sent)
            expected = {
                s.request for s in lost if s.request is not None and not self._answers[s.request][1]
            }
        for answer in answers:
            attempt, count = self._answers.get(answer.request, (answer.attempt, 0))
            if count or attempt != answer.attempt or answer.request not in self._answers:
                raise InvariantViolation(
                    "every_request_answered_once",
                    f"request {answer.request} answered again or never sent: {answer!r}",
                )
            self._answers[answer.request] = (attempt, 1)
        # An attempt that ended in this step answers all it had: checked at its end.
        ended = session._attempt is not before
        if not ended and expected is not None and {a.request for a in answers} != expected:
            raise InvariantViolation(
                "request_ack_matches_oldest_pending",
                f"{type(event).__name__} answered {sorted(a.request for a in answers)}, "
                f"expected {sorted(expected)}",
            )
        if any(
            isinstance(o, ErrorOccurred) and o.kind is ErrorKind.INITIAL_STATE_TIMEOUT
            for o in outputs
        ):
            self._initial_done = True
        if session._attempt is not before or session.latest_attempt != self._ledger_attempt:
            self._end_ledger()
        if session._attempt is not None and session.latest_attempt != self._ledger_attempt:
            self._ledger_attempt = session.latest_attempt
        self._note_sends(event, outputs)
        self._check_initial_ack(event, live_input, outputs)

    def _note_sends(self, event: Input | None, outputs: Sequence[Output]) -> None:
        for output in outputs:
            if not isinstance(output, SendFrame) or output.purpose is FramePurpose.JOIN:
                continue
            frame = json.loads(output.frame)
            request: RequestId | None = None
            if output.purpose is FramePurpose.REQUEST:
                assert isinstance(event, ChangePrompt | ChangeImage)
                request = event.request
                self._answers[request] = (output.attempt, 0)
            self._awaiting_ack.append(
                _Sent(frame["type"], frame.get("prompt"), request, output.send)
            )

    def _match_ack(self, ack: SetImageAck | PromptAck, outputs: Sequence[Output]) -> set[int]:
        """Which request this ack must answer (none for the initial state's,
        a tombstone's or an unmatched one), per the shadow's queue."""
        for sent in self._awaiting_ack:
            if (isinstance(ack, SetImageAck) and sent.kind == "set_image") or (
                isinstance(ack, PromptAck) and sent.kind == "prompt" and sent.text == ack.prompt
            ):
                self._awaiting_ack.remove(sent)
                if sent.request is None:
                    self._initial_ack = ack
                    return set()
                if self._answers[sent.request][1]:
                    return set()  # timed out or failed already: its late ack is absorbed
                wanted = RequestAcked if ack.success else RequestFailed
                if not any(isinstance(o, wanted) for o in outputs):
                    raise InvariantViolation(
                        "request_ack_matches_oldest_pending",
                        f"the ack of request {sent.request} did not give {wanted.__name__}",
                    )
                return {sent.request}
        return set()

    def _end_ledger(self) -> None:
        """The attempt ended: every request it sent has had exactly one answer."""
        for request, (attempt, count) in self._answers.items():
            if attempt == self._ledger_attempt and count != 1:
                raise InvariantViolation(
                    "every_request_answered_once",
                    f"request {request} of ended attempt {attempt} got {count} answers",
                )
        self._answers = {r: v for r, v in self._answers.items() if v[0] != self._ledger_attempt}
        self._awaiting_ack = []
        self._initial_ack, self._initial_done, self._room_info_seen = None, False, False
        self._max_queue_wait = None

    def _check_initial_ack(
        self, event: Input | None, live_input: bool, outputs: Sequence[Output]
    ) -> None:
        """The initial state's ack is reported once, as it says: when it
        arrives if room_info came first, else when room_info claims it."""
        name = "every_initial_ack_reported_once"
        reports = [
            o
            for o in outputs
            if isinstance(o, InitialStateAcked)
            or (isinstance(o, ErrorOccurred) and o.kind is ErrorKind.INITIAL_STATE_REJECTED)
        ]
        room_info_now = (
            live_input
            and isinstance(event, FrameReceived)
            and any(isinstance(o, ConnectRoom) for o in outputs)
        )
        self._room_info_seen = self._room_info_seen or room_info_now
        ack = self._initial_ack
        due = ack is not None and self._room_info_seen and not self._initial_done
        if not due:
            if reports:
                raise InvariantViolation(
                    name, f"an initial-state report with no ack due: {reports}"
                )
            return
        assert ack is not None
        wanted = InitialStateAcked if ack.success else ErrorOccurred
        if len(reports) != 1 or not isinstance(reports[0], wanted):
            raise InvariantViolation(
                name, f"the initial state's ack (success={ack.success}) gave {reports}"
            )
        self._initial_done = True

    # ---- deadlines that must run, and the connected state ----------------------------------

    def _check_required_deadlines(self) -> None:
        session = self.session
        armed = set(session.deadlines())
        required = set(_REQUIRED_DEADLINES.get(session.phase, ()))
        timeouts = session.config.timeouts
        if session.phase is Phase.QUEUED:
            if timeouts.queue_silence is not None:
                required.add("queue_silence")
            if timeouts.max_queue_wait is not None:
                required.add("max_queue_wait")
        if session.ack_watch is AckWatch.WATCHING:
            required.add("initial_state_ack")
        if not required <= armed:
            raise InvariantViolation(
                "every_phase_arms_its_deadlines",
                f"{sorted(required - armed)} not armed while {session.phase.value}",
            )
        wait = session.deadlines().get("max_queue_wait")
        if wait is not None:
            if self._max_queue_wait is not None and self._max_queue_wait != (
                session.latest_attempt,
                wait,
            ):
                raise InvariantViolation(
                    "max_queue_wait_armed_once", "the maximum queue wait was armed again"
                )
            self._max_queue_wait = (session.latest_attempt, wait)

    def _check_connected(
        self, event: Input | None, live_input: bool, outputs: Sequence[Output]
    ) -> None:
        for output in outputs:
            if (
                isinstance(output, StateChanged)
                and output.state is ConnectionState.CONNECTED
                and output.previous is not ConnectionState.GENERATING
                and not (live_input and isinstance(event, TracksPublished))
            ):
                raise InvariantViolation(
                    "connected_only_after_tracks_published",
                    f"connected on {type(event).__name__}, before the tracks were published",
                )


def _phase_limit(session: ClientSession) -> float | None:
    """How long the session may stay in its current pending phase: the
    deadline armed on entering it (None: unbounded by configuration)."""
    timeouts = session.config.timeouts
    phase = session.phase
    if phase is Phase.OPENING:
        return timeouts.socket_open
    if phase is Phase.JOINING:
        return timeouts.room_info
    if phase is Phase.QUEUED:
        silence = timeouts.queue_silence
        return silence if silence is not None else timeouts.max_queue_wait
    if phase in (Phase.ROOM_CONNECTING, Phase.PUBLISHING):
        return timeouts.media
    return session.config.retry.max_delay  # backoff


def settle_by_timers(session: ClientSession, max_firings: int = 64) -> list[float]:
    """Bounded liveness (spec 5, 6.2, 6.4): with no input but the passing of
    time, every pending attempt ends (connected, failed or superseded) by the
    deadline of the phase it is in (socket open, room_info, queue silence,
    media, retry), and the session leaves its pending phases within the
    connect budget plus one queue wait. Runs on a copy; returns the instants
    at which the timer fired, so that a caller can extend a trace with them."""
    name = "every_attempt_ends_within_its_deadlines"
    # The configuration is frozen and shared: copying it would only cost time.
    probe = copy.deepcopy(session, {id(session.config): session.config})
    timeouts = probe.config.timeouts
    queue_wait = _phase_limit(probe) if probe.phase is Phase.QUEUED else None
    start = probe._now if probe._now > float("-inf") else 0.0
    # Without input nothing queues anew: one queue wait at most, then the connect budget.
    bound = start + (queue_wait or 0.0) + timeouts.connect
    fired: list[float] = []
    seen = (probe.phase, probe.attempt, start)  # phase, attempt, first seen at
    while probe.phase in PENDING_PHASES:
        when = probe.get_timer()
        limit = _phase_limit(probe)
        if when is None:
            if limit is None:
                return fired  # an unbounded queue wait is what the caller configured
            raise InvariantViolation(name, f"{probe.phase.value} with no deadline: waits forever")
        if when > bound or len(fired) >= max_firings:
            raise InvariantViolation(
                name,
                f"still {probe.phase.value} at {when:g} s after {len(fired)} timer firings "
                f"(bound {bound:g} s)",
            )
        now = max(when, probe._now)
        probe.handle_timer(now)
        fired.append(now)
        if (probe.phase, probe.attempt) != seen[:2]:
            # The phase was armed no later than first seen: it must have ended by then + limit.
            if limit is not None and now > seen[2] + limit:
                raise InvariantViolation(
                    name,
                    f"{seen[0].value} (attempt {seen[1]}) seen at {seen[2]:g} s lasted "
                    f"until {now:g} s, past its {limit:g} s deadline",
                )
            seen = (probe.phase, probe.attempt, now)
    return fired
