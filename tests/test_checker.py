"""The exhaustive checker (engine/check/explore.py): a small exhaustive run of the
composed model passes and reaches every target; bugs reintroduced into the
client engine by test-only mutants (monkeypatches here, never in engine code)
are each caught with a shortest counterexample; a saved counterexample
replays through ``leanjoin.engine.check.trace.replay``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mutants import (
    CARRY_BOUNDS,
    NO_RIVAL,
    Patch,
    ack_deadline_armed_at_join,
    connect_deadline_not_resumed_after_a_queue,
    connected_before_tracks_are_published,
    connected_waits_for_the_ack,
    early_ack_claimed_silently,
    early_ack_dropped,
    finding_1_initial_state_send_failure_ignored,
    finding_2_ack_deadline_outlives_its_attempt,
    finding_2_buffered_ack_claimed_by_the_next_attempt,
    media_deadline_never_armed,
    permanent_error_retried,
    permanent_failure_while_connected_reconnects,
    request_send_failure_never_answered,
    room_info_deadline_kept_while_queued,
    room_left_behind_while_connecting,
    server_repeats_room_info,
    stale_attempt_input_not_dropped,
    two_errors_for_one_failure,
)

from leanjoin.adapters.cli.check import check, save_trace
from leanjoin.adapters.cli.check_parallel import explore_parallel
from leanjoin.engine.check.explore import (
    LIVENESS,
    TARGETS,
    Expander,
    Result,
    explore,
    world_key,
)
from leanjoin.engine.check.invariants import NAMES
from leanjoin.engine.check.model import (
    QUEUE_CAPPED,
    Bounds,
    Model,
    Room,
    World,
    initial_world,
)
from leanjoin.engine.check.moves import (
    SERVER_NEVER_SURPRISES_THE_CLIENT,
    SERVER_PUBLISHING,
    step,
)
from leanjoin.engine.check.report import counterexample
from leanjoin.engine.check.trace import replay
from leanjoin.engine.server import session as server_module
from leanjoin.engine.server.events import ClientVideoArrived, SessionPhase
from leanjoin.engine.server.session import ServerSession

SMALL = Bounds(max_faults=2, max_connects=2, rival=True)


def test_a_small_exhaustive_run_passes_and_reaches_every_target() -> None:
    result = explore(Model(bounds=SMALL), depth=9)
    assert result.violation is None
    assert result.missing == [], f"model too weak: never reached {result.missing}"
    assert set(TARGETS) <= set(result.reached)
    assert result.depth == 9 and result.states > 10_000
    # No move of the model is dead code.
    assert set(result.used) == {
        "connect", "set_prompt", "disconnect", "socket_opened", "socket_open_failed",
        "deliver_c2s", "deliver_s2c", "send_failed", "socket_lost", "server_shutdown",
        "server_error", "room_connected", "room_connect_failed", "tracks_published",
        "publish_failed", "room_lost", "video_arrives", "deliver_stale", "rival_leaves", "time",
    }  # fmt: skip
    # Each witness path replays to a world where its label holds.
    for label, path in result.reached.items():
        world = initial_world(Model(bounds=SMALL))
        labels: set[str] = set()
        for choice in path:
            labels = step(world, choice, Model(bounds=SMALL))
        assert label in labels


def test_the_server_hears_of_the_publication_before_the_video(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server goes in_room, publishing (the client asked to publish),
    streaming: its video never arrives while it is still in_room."""
    seen: set[SessionPhase] = set()
    original = server_module._HANDLERS[ClientVideoArrived]

    def on_video(self: ServerSession, arrived: ClientVideoArrived) -> None:
        seen.add(self.phase)
        original(self, arrived)

    monkeypatch.setitem(server_module._HANDLERS, ClientVideoArrived, on_video)
    model = Model(bounds=NO_RIVAL)
    result = explore(model, depth=9)
    assert result.violation is None
    assert seen == {SessionPhase.PUBLISHING}
    world = initial_world(model)
    for choice in result.reached[SERVER_PUBLISHING]:
        step(world, choice, model)
    assert world.link is not None and world.link.server is not None
    assert (world.link.room, world.link.server.phase) == (Room.PUBLISHING, SessionPhase.PUBLISHING)


def test_a_capped_queue_wait_gives_up_and_breaks_nothing() -> None:
    """The user's maximum queue wait (shorter than the queue's silence here)
    ends a queued session once, permanently, with every invariant holding."""
    result = explore(Model(config=QUEUE_CAPPED, bounds=SMALL), depth=8)
    assert result.violation is None
    assert "queue_wait_capped" in result.reached


def test_two_runtime_prompts_are_explored() -> None:
    """Two runtime prompts, the first repeating the initial prompt's text, are
    sent and acked: the monitor's request ledger checks that each ack answers
    its own request (request_ack_matches_oldest_pending) along the path, and
    the exploration around it holds every invariant."""
    model = Model(bounds=Bounds(max_faults=0, max_connects=1, rival=False))
    assert explore(model, depth=12).violation is None
    world = initial_world(model)
    path: list[tuple[str, ...]] = [("connect", "prompt"), ("socket_opened",)]
    path += [("deliver_c2s",)] * 2 + [("deliver_s2c",)] * 2  # join, prompt; room_info, ack
    path += [("room_connected",), ("tracks_published",), ("set_prompt",), ("set_prompt",)]
    path += [("deliver_c2s",)] * 2 + [("deliver_s2c",)] * 2  # both prompts, both acks
    for choice in path:
        step(world, choice, model)
    assert world.prompts == 2 and world.link is not None and not world.link.s2c


def test_two_workers_explore_the_same_space() -> None:
    serial = explore(Model(bounds=SMALL), depth=7)
    parallel = explore_parallel(Model(bounds=SMALL), depth=7, workers=2)
    assert (parallel.states, parallel.transitions) == (serial.states, serial.transitions)
    assert parallel.reached.keys() == serial.reached.keys()


def test_forked_worlds_copy_on_write() -> None:
    """A move never changes the world it was forked from (nor its key)."""
    model = Model(bounds=SMALL)
    expander = Expander(model)
    frontier = [initial_world(model)]
    for _ in range(6):
        following: list[World] = []
        for world in frontier:
            before = world_key(_uncached(world))
            following.extend(o.world for o in expander.expand(world) if o.world is not None)
            assert world_key(_uncached(world)) == before
        frontier = following[:200]


def _uncached(world: World) -> World:
    world = world.fork()
    world.keys = [None, None, None]
    return world


def test_every_invariant_has_one_name() -> None:
    assert LIVENESS in NAMES and len(set(NAMES)) == len(NAMES)


# ---- mutants (tests/mutants.py): each reintroduces one bug; the checker must catch it -------

# mutant, bounds, depth, the invariant it must break, the shortest counterexample's length
MUTANTS: list[tuple[Patch, Bounds, int, str, int]] = [
    (finding_1_initial_state_send_failure_ignored, NO_RIVAL, 4, "send_failure_fails_the_attempt", 3),
    (finding_2_ack_deadline_outlives_its_attempt, NO_RIVAL, 6, "no_deadline_survives_its_attempt", 5),
    (finding_2_buffered_ack_claimed_by_the_next_attempt, CARRY_BOUNDS, 12, "early_ack_claimed_once_by_its_own_attempt", 12),
    (ack_deadline_armed_at_join, NO_RIVAL, 3, "no_deadline_survives_its_attempt", 2),
    (stale_attempt_input_not_dropped, NO_RIVAL, 5, "stale_input_dropped", 4),
    (room_info_deadline_kept_while_queued, SMALL, 5, "no_deadline_survives_its_attempt", 4),
    (two_errors_for_one_failure, NO_RIVAL, 3, "at_most_one_error_per_failure", 2),
    (permanent_error_retried, NO_RIVAL, 3, "permanent_failure_is_not_retried", 2),
    (connected_waits_for_the_ack, NO_RIVAL, 7, "connected_never_waits_for_ack", 6),
    (media_deadline_never_armed, NO_RIVAL, 5, "every_phase_arms_its_deadlines", 4),
    (room_left_behind_while_connecting, NO_RIVAL, 6, "every_ended_attempt_is_closed", 5),
    (server_repeats_room_info, NO_RIVAL, 6, SERVER_NEVER_SURPRISES_THE_CLIENT, 5),
    (connect_deadline_not_resumed_after_a_queue, SMALL, 5, "every_phase_arms_its_deadlines", 5),
    (permanent_failure_while_connected_reconnects, NO_RIVAL, 8, "permanent_failure_is_not_retried", 8),
    (connected_before_tracks_are_published, NO_RIVAL, 5, "connected_only_after_tracks_published", 5),
    (request_send_failure_never_answered, NO_RIVAL, 8, "request_ack_matches_oldest_pending", 8),
    (early_ack_claimed_silently, CARRY_BOUNDS, 8, "every_initial_ack_reported_once", 8),
    (early_ack_dropped, CARRY_BOUNDS, 8, "every_initial_ack_reported_once", 8),
]  # fmt: skip


def _run_mutant(
    mp: pytest.MonkeyPatch, patch: Patch, bounds: Bounds, depth: int
) -> tuple[Model, Result]:
    model = patch(mp) or Model(bounds=bounds)
    return model, explore(model, depth)


@pytest.mark.parametrize(
    ("patch", "bounds", "depth", "invariant", "length"),
    MUTANTS,
    ids=[m[0].__name__ for m in MUTANTS],
)
def test_a_mutant_is_caught_with_a_shortest_counterexample(
    monkeypatch: pytest.MonkeyPatch,
    patch: Patch,
    bounds: Bounds,
    depth: int,
    invariant: str,
    length: int,
) -> None:
    model, result = _run_mutant(monkeypatch, patch, bounds, depth)
    violation = result.violation
    assert violation is not None, f"{patch.__name__} survived {result.states} states"
    assert (violation.name, len(violation.path)) == (invariant, length), violation
    found = counterexample(model, violation)
    assert len([line for line in found.lines if line[:4].strip().rstrip(".").isdigit()]) == length
    assert found.lines[-1].startswith(f"violated: {invariant}")
    # The trace replays exactly while the mutant is in place.
    assert replay(found.records) == []


def test_the_unmutated_engine_passes_where_each_mutant_fails() -> None:
    for patch, bounds, depth, _invariant, _length in MUTANTS:
        assert explore(Model(bounds=bounds), depth).violation is None, patch.__name__


def test_a_saved_counterexample_replays_and_shows_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model, result = _run_mutant(
        monkeypatch, finding_1_initial_state_send_failure_ignored, NO_RIVAL, 4
    )
    assert result.violation is not None
    found = counterexample(model, result.violation, name="finding-1")
    path = save_trace(found.records, tmp_path, "finding-1")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[0]["trace"] == "finding-1"
    assert [r["input"]["type"] for r in records[1:]] == ["Connect", "SocketOpened", "SendFailed"]
    assert replay(records) == []  # the mutant does what the trace says
    monkeypatch.undo()
    (mismatch,) = replay(records)  # the real engine fails the attempt instead
    assert mismatch.step == 3
    kinds = [o["type"] for o in mismatch.actual]
    assert "RetryScheduled" in kinds and "CloseSocket" in kinds


def test_the_command_prints_the_counterexample_and_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    finding_1_initial_state_send_failure_ignored(monkeypatch)
    runner = CliRunner()
    outcome = runner.invoke(
        check, ["--depth", "4", "--no-rival", "--workers", "1", "--save", str(tmp_path)]
    )
    assert outcome.exit_code == 1, outcome.output
    assert "send_failure_fails_the_attempt" in outcome.output
    assert "send_failed 2" in outcome.output
    (saved,) = tmp_path.glob("*.jsonl")
    assert replay([json.loads(line) for line in saved.read_text().splitlines()]) == []


def test_the_command_passes_and_reports_what_it_explored() -> None:
    from click.testing import CliRunner

    outcome = CliRunner().invoke(check, ["--depth", "9", "--workers", "2"])
    assert outcome.exit_code == 0, outcome.output
    assert "states" in outcome.output and "states/s" in outcome.output
    assert "no violation" in outcome.output


def test_a_too_shallow_run_says_which_targets_it_missed() -> None:
    from click.testing import CliRunner

    outcome = CliRunner().invoke(check, ["--depth", "3", "--workers", "1"])
    assert outcome.exit_code == 3
    assert "generating" in outcome.output
