"""The initial-state ack watch (engine/client/ack_watch.py) on its own: every
(phase, trigger) pair does what its table says and nothing else, and whatever
order the server and the clock pick, one watch reports at most once."""

from __future__ import annotations

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from leanjoin.engine.client.ack_watch import (
    ACK_WATCH_TRANSITIONS,
    AckWatch,
    InitialStateWatch,
)
from leanjoin.engine.client.inputs import AttemptId
from leanjoin.engine.client.outputs import ErrorKind, ErrorOccurred, InitialStateAcked, Output
from leanjoin.engine.messages import Prompt, PromptAck, SetImage, SetImageAck

TRIGGERS = sorted({row[0] for row in ACK_WATCH_TRANSITIONS})
ROWS = {
    (trigger, source): dest
    for trigger, sources, dest, *_ in ACK_WATCH_TRANSITIONS
    for source in sources
}
FRAME = SetImage(image_data="iVBORw0KGgo=", prompt="a cat")
ACK = SetImageAck(success=True)


def _watch(phase: AckWatch) -> InitialStateWatch:
    watch = InitialStateWatch(AttemptId(3), FRAME, timeout=30.0)
    watch.phase = phase
    if phase is AckWatch.BUFFERED:
        watch.buffered = ACK
    if phase is AckWatch.WATCHING:
        watch.deadline = 40.0
    return watch


@pytest.mark.parametrize("phase", list(AckWatch), ids=lambda p: p.value)
@pytest.mark.parametrize("trigger", TRIGGERS)
def test_every_phase_and_trigger_follow_the_table(phase: AckWatch, trigger: str) -> None:
    """A pair with a row moves where the row says; a pair without one changes
    nothing and reports nothing (it does not concern the watch)."""
    watch = _watch(phase)
    out = watch.fire(trigger, 10.0, ACK)
    if (trigger, phase) not in ROWS:
        assert (watch.phase, out) == (phase, [])
        return
    dest = ROWS[trigger, phase]
    assert watch.phase is (phase if dest is None else dest)
    assert (watch.deadline is not None) == (watch.phase is AckWatch.WATCHING)
    assert all(o.attempt == AttemptId(3) for o in out)
    assert len(out) <= 1


def test_the_deadline_runs_from_room_info_not_from_the_send() -> None:
    watch = InitialStateWatch(AttemptId(1), FRAME, timeout=30.0)
    watch.fire("frame_sent", 0.0)
    assert watch.deadline is None  # a queue wait of any length cannot trip it
    watch.fire("room_info", 95.0)
    assert watch.deadline == 125.0


def test_an_ack_is_the_initial_states_only_while_one_is_awaited() -> None:
    prompt_watch = InitialStateWatch(AttemptId(1), Prompt("a cat", True), timeout=30.0)
    assert not prompt_watch.answers(PromptAck("a cat", True))  # not sent yet
    prompt_watch.fire("frame_sent", 0.0)
    assert prompt_watch.answers(PromptAck("a cat", True))
    assert not prompt_watch.answers(PromptAck("a dog", True))  # by its text
    assert not prompt_watch.answers(SetImageAck(True))  # by its kind
    prompt_watch.fire("ack", 1.0, PromptAck("a cat", True))
    assert not prompt_watch.answers(PromptAck("a cat", True))  # the next is a request's


ACKS = st.sampled_from(
    [SetImageAck(success=True), SetImageAck(success=False, error="not an image")]
)
STEPS = st.lists(
    st.tuples(st.sampled_from(["ack", "room_info", "deadline", "server_error"]), ACKS),
    max_size=8,
)


@given(steps=STEPS)
def test_one_watch_reports_at_most_once(steps: list[tuple[str, SetImageAck]]) -> None:
    """at_most_one_initial_state_event, ack_timer_never_armed_before_room_info,
    buffered_ack_claimed_once: whatever the order of acks, room_info, the
    deadline and server errors, a watch reports once at most, never arms its
    deadline before room_info, and a buffered ack is reported exactly when
    room_info claims it."""
    watch = InitialStateWatch(AttemptId(7), FRAME, timeout=30.0)
    watch.fire("frame_sent", 0.0)
    out: list[Output] = []
    room_info_seen = False
    for now, (trigger, ack) in enumerate(steps, start=1):
        if trigger == "deadline" and watch.deadline is None:
            continue  # the session fires it only when it is armed
        if trigger == "room_info" and room_info_seen:
            continue  # one room_info per attempt
        claims = trigger == "room_info" and watch.phase is AckWatch.BUFFERED
        got = watch.fire(trigger, float(now), ack)
        if claims:
            assert len(got) == 1, "a buffered ack is reported when room_info claims it"
        out += got
        room_info_seen = room_info_seen or trigger == "room_info"
        if not room_info_seen:
            assert watch.deadline is None and watch.phase is not AckWatch.WATCHING
    reports = [
        o
        for o in out
        if isinstance(o, InitialStateAcked)
        or (
            isinstance(o, ErrorOccurred)
            and o.kind in (ErrorKind.INITIAL_STATE_REJECTED, ErrorKind.INITIAL_STATE_TIMEOUT)
        )
    ]
    assert len(reports) <= 1 and reports == out
    assert all(o.attempt == AttemptId(7) for o in out)
    event(f"ends {watch.phase.value}, {len(reports)} report(s)")
