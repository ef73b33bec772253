"""Plausible bugs, reintroduced into the engines by test-only monkeypatches.

Each mutant is a function that patches a :class:`pytest.MonkeyPatch` (never
engine code) and may return a checker :class:`Model` to explore it with (a
client class the model must build). The catalogue is used by
``tests/test_checker.py`` (the checker must catch the checker's mutants with
a shortest counterexample) and by ``bench/mutants.py``, which runs the whole
engine test suite once per mutant and prints which tests kill it: every
mutant here must be killed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs
import pytest
from transitions import EventData

from leanjoin.engine.check import trace as trace_module
from leanjoin.engine.check.model import Bounds, Model
from leanjoin.engine.client import session as client_module
from leanjoin.engine.client.ack_watch import AckWatch, InitialStateWatch
from leanjoin.engine.client.attempt import Attempt, Deadline, PendingRequest
from leanjoin.engine.client.config import SessionConfig
from leanjoin.engine.client.inputs import (
    ChangeImage,
    Input,
    RoomConnected,
    SendFailed,
    TracksPublished,
)
from leanjoin.engine.client.outputs import ErrorKind, ErrorOccurred, Output
from leanjoin.engine.client.session import ClientSession, Phase
from leanjoin.engine.messages import Prompt, PromptAck, SetImageAck
from leanjoin.engine.server.session import ServerSession

Patch = Callable[[pytest.MonkeyPatch], Model | None]

NO_RIVAL: Final = Bounds(max_faults=2, max_connects=2, rival=False)
# An early ack needs a queue wait, a retry and the rival gone: deep, so the
# bounds are cut to what the path needs.
CARRY_BOUNDS: Final = Bounds(
    max_faults=1, max_connects=1, set_prompt=False, rival=True, max_stale=0
)


# ---- the seed's two review findings ------------------------------------------------


def finding_1_initial_state_send_failure_ignored(mp: pytest.MonkeyPatch) -> None:
    """Seed review finding 1: a failed initial-state send is ignored and the
    attempt goes on to connect."""
    original = client_module._HANDLERS[SendFailed]

    def on_send_failed(self: ClientSession, result: SendFailed) -> None:
        attempt = self._attempt
        if attempt is not None and result.send == attempt.initial_send:
            return
        original(self, result)

    mp.setitem(client_module._HANDLERS, SendFailed, on_send_failed)


class SessionLevelAckDeadline(ClientSession):
    """Seed review finding 2: the initial-state ack deadline kept at session
    level (not in the attempt's watch), so teardown does not clear it."""

    __slots__ = ("_ack_deadline",)

    def __init__(self, config: SessionConfig) -> None:
        super().__init__(config)
        self._ack_deadline: float | None = None

    def _watch(self, trigger: str, ack: SetImageAck | PromptAck | None = None) -> None:
        super()._watch(trigger, ack)
        watch = self._live().ack_watch
        if watch.deadline is not None:  # just armed: kept here instead
            self._ack_deadline, watch.deadline = watch.deadline, None
        elif watch.phase is not AckWatch.WATCHING:
            self._ack_deadline = None

    def get_timer(self) -> float | None:
        best, mine = super().get_timer(), self._ack_deadline
        return mine if best is None or (mine is not None and mine < best) else best

    def deadlines(self) -> dict[str, float]:
        armed = super().deadlines()
        if self._ack_deadline is not None:
            armed["initial_state_ack"] = self._ack_deadline
        return armed

    def handle_timer(self, now: float) -> list[Output]:
        if self._ack_deadline is not None and self._ack_deadline <= now:
            self._ack_deadline = None
            kind = ErrorKind.INITIAL_STATE_TIMEOUT
            self._emit(ErrorOccurred(self._last_attempt, kind, "no ack", fatal=False))
        return super().handle_timer(now)


def finding_2_ack_deadline_outlives_its_attempt(mp: pytest.MonkeyPatch) -> Model:
    mp.setattr(trace_module, "ClientSession", SessionLevelAckDeadline)  # for replay
    mp.setattr(client_module, "ClientSession", SessionLevelAckDeadline)  # for other suites
    return Model(bounds=NO_RIVAL, client_factory=SessionLevelAckDeadline)


class BufferedAckCarriedOver(ClientSession):
    """Seed review finding 2, the other way: an ack buffered before room_info
    outlives its attempt and is claimed by the next one."""

    __slots__ = ("_carried",)

    def __init__(self, config: SessionConfig) -> None:
        super().__init__(config)
        self._carried: SetImageAck | PromptAck | None = None

    def _end_attempt(self, event: EventData) -> None:
        attempt = self._attempt
        if attempt is not None and attempt.ack_watch.phase is AckWatch.BUFFERED:
            self._carried = attempt.ack_watch.buffered
        super()._end_attempt(event)

    def _send_join(self, event: EventData) -> None:
        super()._send_join(event)
        watch = self._live().ack_watch
        if self._carried is not None and watch.phase is AckWatch.AWAITING:
            watch.phase, watch.buffered = AckWatch.BUFFERED, self._carried
            self._carried = None


def finding_2_buffered_ack_claimed_by_the_next_attempt(mp: pytest.MonkeyPatch) -> Model:
    mp.setattr(trace_module, "ClientSession", BufferedAckCarriedOver)  # for replay
    mp.setattr(client_module, "ClientSession", BufferedAckCarriedOver)
    return Model(bounds=CARRY_BOUNDS, client_factory=BufferedAckCarriedOver)


# ---- deadlines -----------------------------------------------------------------------


def ack_deadline_armed_at_join(mp: pytest.MonkeyPatch) -> None:
    original = ClientSession._send_join

    def send_join(self: ClientSession, event: EventData) -> None:
        original(self, event)
        watch = self._live().ack_watch
        if watch.phase is AckWatch.AWAITING:
            watch.phase = AckWatch.WATCHING
            watch.deadline = self._now + self.config.timeouts.initial_state_ack

    mp.setattr(ClientSession, "_send_join", send_join)


def room_info_deadline_kept_while_queued(mp: pytest.MonkeyPatch) -> None:
    original = ClientSession._note_queue_position

    def note_queue_position(self: ClientSession, event: EventData) -> None:
        original(self, event)
        timeout = self.config.timeouts.room_info
        self._live().deadlines[Deadline.ROOM_INFO] = self._now + timeout

    mp.setattr(ClientSession, "_note_queue_position", note_queue_position)


def media_deadline_never_armed(mp: pytest.MonkeyPatch) -> None:
    original = ClientSession._connect_room

    def connect_room(self: ClientSession, event: EventData) -> None:
        original(self, event)
        self._live().deadlines.pop(Deadline.MEDIA, None)

    mp.setattr(ClientSession, "_connect_room", connect_room)


def connect_deadline_not_resumed_after_a_queue(mp: pytest.MonkeyPatch) -> None:
    """After a queued attempt fails, the connect budget stays paused: retries
    are no longer bounded by it."""
    mp.setattr(ClientSession, "_resume_connect_deadline", lambda self: None)


def max_queue_wait_rearmed_by_each_position(mp: pytest.MonkeyPatch) -> None:
    original = ClientSession._note_queue_position

    def note_queue_position(self: ClientSession, event: EventData) -> None:
        original(self, event)
        wait = self.config.timeouts.max_queue_wait
        if wait is not None:
            self._live().deadlines[Deadline.MAX_QUEUE_WAIT] = self._now + wait

    mp.setattr(ClientSession, "_note_queue_position", note_queue_position)


# ---- attempts and failures -------------------------------------------------------------


def stale_attempt_input_not_dropped(mp: pytest.MonkeyPatch) -> None:
    original = ClientSession.handle

    def handle(self: ClientSession, event: Input, now: float) -> list[Output]:
        attempt = getattr(event, "attempt", None)
        if attempt is not None and self._attempt is not None and attempt != self._attempt.id:
            stale: Any = event  # any transport result: all carry an attempt
            event = attrs.evolve(stale, attempt=self._attempt.id)
        return original(self, event, now)

    mp.setattr(ClientSession, "handle", handle)


def two_errors_for_one_failure(mp: pytest.MonkeyPatch) -> None:
    original = ClientSession._report_fatal

    def report_fatal(self: ClientSession, event: EventData) -> None:
        lost = ErrorOccurred(self._last_attempt, ErrorKind.CONNECTION_LOST, "lost", fatal=False)
        self._emit(lost)
        original(self, event)

    mp.setattr(ClientSession, "_report_fatal", report_fatal)


def permanent_error_retried(mp: pytest.MonkeyPatch) -> None:
    """A case-sensitive marker match: 'HTTP 401 Unauthorized' keeps '401' but
    the engine's check is bypassed altogether here."""
    mp.setattr(ClientSession, "_is_permanent", lambda self, text: False)


def permanent_failure_while_connected_reconnects(mp: pytest.MonkeyPatch) -> None:
    """A permanent failure of a connected session is treated as a lost
    connection: it reconnects instead of ending."""
    original = ClientSession._fail

    def fail(
        self: ClientSession, kind: ErrorKind, message: str, *, permanent: bool = False
    ) -> None:
        original(self, kind, message, permanent=permanent and not self._can("connection_lost"))

    mp.setattr(ClientSession, "_fail", fail)


def room_left_behind_while_connecting(mp: pytest.MonkeyPatch) -> None:
    """'Nothing to disconnect, it never connected': a room whose connect is
    still pending when the attempt ends is not disconnected (spec 6.6)."""
    original = ClientSession._end_attempt

    def end_attempt(self: ClientSession, event: EventData) -> None:
        attempt = self._attempt
        if attempt is not None and self.phase is Phase.ROOM_CONNECTING:
            attempt.room_requested = False
        original(self, event)

    mp.setattr(ClientSession, "_end_attempt", end_attempt)


def connected_waits_for_the_ack(mp: pytest.MonkeyPatch) -> None:
    original = client_module._HANDLERS[TracksPublished]

    def on_tracks_published(self: ClientSession, result: TracksPublished) -> None:
        attempt = self._attempt
        if attempt is not None and attempt.ack_watch.phase in (
            AckWatch.AWAITING,
            AckWatch.WATCHING,
        ):
            return  # waits for the initial-state ack before showing connected
        original(self, result)

    mp.setitem(client_module._HANDLERS, TracksPublished, on_tracks_published)


def connected_before_tracks_are_published(mp: pytest.MonkeyPatch) -> None:
    """Connected as soon as the room connects, before the camera is published."""
    original = client_module._HANDLERS[RoomConnected]

    def on_room_connected(self: ClientSession, result: RoomConnected) -> None:
        original(self, result)
        self._fire("tracks_published")

    mp.setitem(client_module._HANDLERS, RoomConnected, on_room_connected)


# ---- the initial-state ack and runtime requests -------------------------------------------


def early_ack_dropped(mp: pytest.MonkeyPatch) -> None:
    """An ack before room_info is thrown away instead of buffered."""
    original = InitialStateWatch.fire

    def fire(
        self: InitialStateWatch,
        trigger: str,
        now: float,
        ack: SetImageAck | PromptAck | None = None,
    ) -> list[Output]:
        if trigger == "ack" and self.phase is AckWatch.AWAITING:
            return []
        return original(self, trigger, now, ack)

    mp.setattr(InitialStateWatch, "fire", fire)


def early_ack_claimed_silently(mp: pytest.MonkeyPatch) -> None:
    """room_info claims the buffered ack but reports nothing."""

    def claim(self: InitialStateWatch, _event: EventData) -> None:
        self.buffered = None

    mp.setattr(InitialStateWatch, "_claim", claim)


def runtime_prompt_ack_taken_for_the_initial_prompts(mp: pytest.MonkeyPatch) -> None:
    """The watch takes any prompt_ack for the initial prompt's (no text match)."""
    original = InitialStateWatch.answers

    def answers(self: InitialStateWatch, ack: SetImageAck | PromptAck) -> bool:
        if isinstance(ack, PromptAck) and isinstance(self.frame, Prompt):
            return self.phase in (AckWatch.AWAITING, AckWatch.WATCHING, AckWatch.EXPIRED)
        return original(self, ack)

    mp.setattr(InitialStateWatch, "answers", answers)


def prompt_ack_matched_to_the_first_pending_prompt(mp: pytest.MonkeyPatch) -> None:
    def take_request(self: Attempt, ack: SetImageAck | PromptAck) -> PendingRequest | None:
        kind = "set_image" if isinstance(ack, SetImageAck) else "prompt"
        for index, pending in enumerate(self.requests):
            if pending.kind == kind:
                return self.requests.pop(index)
        return None

    mp.setattr(Attempt, "take_request", take_request)


def runtime_image_not_kept_for_the_replay(mp: pytest.MonkeyPatch) -> None:
    """A runtime set_image reaches the server but not the reconnect's replay."""
    original = client_module._HANDLERS[ChangeImage]

    def on_change_image(self: ClientSession, command: Any) -> None:
        before = self._initial
        original(self, command)
        self._initial = before

    mp.setitem(client_module._HANDLERS, ChangeImage, on_change_image)


def request_send_failure_never_answered(mp: pytest.MonkeyPatch) -> None:
    """A request whose send fails is forgotten: `await set_prompt()` would hang."""
    original = client_module._HANDLERS[SendFailed]

    def on_send_failed(self: ClientSession, result: SendFailed) -> None:
        attempt = self._attempt
        if attempt is not None and result.send in attempt.request_sends:
            request = attempt.request_sends[result.send]
            attempt.requests = [p for p in attempt.requests if p.request != request]
            return
        original(self, result)

    mp.setitem(client_module._HANDLERS, SendFailed, on_send_failed)


# ---- the server ----------------------------------------------------------------------------


def server_repeats_room_info(mp: pytest.MonkeyPatch) -> None:
    """A server-side bug: the composition catches the server engine too."""
    original = ServerSession._send_room_info

    def send_room_info(self: ServerSession, event: EventData) -> None:
        original(self, event)
        original(self, event)

    mp.setattr(ServerSession, "_send_room_info", send_room_info)


CATALOGUE: Final[dict[str, Patch]] = {
    patch.__name__: patch
    for patch in (
        finding_1_initial_state_send_failure_ignored,
        finding_2_ack_deadline_outlives_its_attempt,
        finding_2_buffered_ack_claimed_by_the_next_attempt,
        ack_deadline_armed_at_join,
        room_info_deadline_kept_while_queued,
        media_deadline_never_armed,
        connect_deadline_not_resumed_after_a_queue,
        max_queue_wait_rearmed_by_each_position,
        stale_attempt_input_not_dropped,
        two_errors_for_one_failure,
        permanent_error_retried,
        permanent_failure_while_connected_reconnects,
        room_left_behind_while_connecting,
        connected_waits_for_the_ack,
        connected_before_tracks_are_published,
        early_ack_dropped,
        early_ack_claimed_silently,
        runtime_prompt_ack_taken_for_the_initial_prompts,
        prompt_ack_matched_to_the_first_pending_prompt,
        runtime_image_not_kept_for_the_replay,
        request_send_failure_never_answered,
        server_repeats_room_info,
    )
}
