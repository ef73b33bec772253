"""The client engine's safety invariants, defined once.

The Hypothesis state machine and the exhaustive checker both wrap a session in
an :class:`InvariantMonitor` and feed every step through it; a broken rule
raises :class:`InvariantViolation` naming the invariant. Each name matches a
rule of specs/protocol.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

import attrs

from .attempt import AckWatch
from .client import ClientSession, Phase
from .inputs import Disconnect, Input, SendFailed, TracksPublished
from .outputs import (
    ConnectionState,
    ConnectRoom,
    ErrorKind,
    ErrorOccurred,
    FramePurpose,
    InitialStateAcked,
    Output,
    SendFrame,
    StateChanged,
)

NAMES: Final = (
    "no_stale_emission",
    "ack_timer_never_armed_before_room_info",
    "initial_state_frame_right_after_join_iff_not_passthrough",
    "connected_never_waits_for_ack",
    "no_deadline_survives_its_attempt",
    "at_most_one_error_per_failure",
    "early_ack_claimed_once_by_its_own_attempt",
    "send_failure_fails_the_attempt",
)

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

    def step(self, event: Input | None, now: float) -> list[Output]:
        """Feed ``event`` (or the timer, when None) and check the result."""
        session = self.session
        before_phase = session.phase
        before_attempt = session._attempt
        before_watch = session.ack_watch
        latest_before = session.latest_attempt
        handshake_send_failed = (
            isinstance(event, SendFailed)
            and before_attempt is not None
            and event.attempt == before_attempt.id
            and event.send in (before_attempt.join_send, before_attempt.initial_send)
        )
        outputs = session.handle_timer(now) if event is None else session.handle(event, now)
        self._check_outputs(event, outputs, latest_before)
        self._check_deadlines()
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
        if attempt is not None and attempt.room_info is None and attempt.watch is AckWatch.WATCHING:
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
