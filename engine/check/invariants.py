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
from ..client.inputs import (
    Disconnect,
    FrameReceived,
    Input,
    SendFailed,
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
    RetryScheduled,
    SendFrame,
    StateChanged,
)
from ..client.session import ATTEMPT_PHASES, LIVE_PHASES, ClientSession, Phase
from ..codec import parse_server_frame
from ..messages import Error, PromptAck, SetImageAck

NAMES: Final = (
    "no_stale_emission",
    "ack_timer_never_armed_before_room_info",
    "initial_state_frame_right_after_join_iff_not_passthrough",
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

_INITIAL_STATE_OUTCOMES: Final = (ErrorKind.INITIAL_STATE_REJECTED, ErrorKind.INITIAL_STATE_TIMEOUT)


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
        permanent = live_input and self._observe_live_input(event, before_phase)
        outputs = session.handle_timer(now) if event is None else session.handle(event, now)
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
        self._check_deadlines()
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

    def _observe_live_input(self, event: Input | None, phase: Phase) -> bool:
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
            return (
                isinstance(message, Error)
                and phase not in LIVE_PHASES
                and is_permanent(message.error)
            )
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
        name = "initial_state_frame_right_after_join_iff_not_passthrough"
        if join.purpose is not FramePurpose.JOIN or join.send != 1:
            raise InvariantViolation(name, "the first frame of an attempt is not the join")
        passthrough = json.loads(join.frame)["passthrough"]
        if (
            passthrough != (not self.session.replay_state.has_reference)
            and self.session._passthrough_override is None
        ):
            raise InvariantViolation(name, f"passthrough={passthrough} for the given initial state")
        following = sends[1:]
        if passthrough and following:
            raise InvariantViolation(name, "an initial-state frame followed a passthrough join")
        if not passthrough:
            if len(following) != 1 or following[0].purpose is not FramePurpose.INITIAL_STATE:
                raise InvariantViolation(
                    name,
                    "a non-passthrough join was not followed by exactly one initial-state frame",
                )
            position = outputs.index(join)
            if outputs[position + 1] is not following[0]:
                raise InvariantViolation(
                    name, "something came between the join and the initial-state frame"
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
