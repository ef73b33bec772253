"""The fault matrix: every row of ``specs/fault-matrix.md`` is one test.

The table is the source of truth: this module parses it (injection, expected
final state, expected events, expected retries) and runs each row with the
real client (``connect``) against the in-process reference server, its
LiveKit double and the real ``livekit.rtc`` client, on 127.0.0.1. Skipped and
merged rows become skipped tests carrying the table's reason; ``xfail: BUG-n``
rows are strict expected failures.

Each row is checked for: the exact events the user saw, the final state, the
number and timing of retries, nothing of a stale attempt, and afterwards no
client task, socket, file descriptor, server connection or LiveKit
participant left. Timeouts and retry delays are short (see the table's
preamble) so the whole module runs in well under a minute and a half.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import attrs
import numpy as np
import pytest
from client_helpers import WAIT, assert_nothing_left, rooms_of, until
from engine_script import Script, of_type
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from leanjoin.adapters import (
    ConnectFailed,
    ConnectionState,
    ErrorOccurred,
    Event,
    InitialStateAcked,
    QueuePositionChanged,
    RequestAcked,
    RequestError,
    RequestFailed,
    RetryPolicy,
    RetryScheduled,
    Session,
    SessionStarted,
    StateChanged,
    TestPattern,
    Timeouts,
    connect,
)
from leanjoin.adapters.client.png import encode_png
from leanjoin.adapters.server.reference import ReferenceServer
from leanjoin.engine.client.config import InitialState
from leanjoin.engine.client.inputs import ChangePrompt, RequestId
from leanjoin.engine.client.outputs import ErrorKind
from leanjoin.engine.server.knobs import AckDrop, FaultPhase, MediaFailurePhase, ServerKnobs

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.livekit]

MATRIX: Final = Path(__file__).resolve().parents[1] / "specs" / "fault-matrix.md"
SETTLE: Final = 0.4  # seconds of quiet after the expected events, to catch stray ones
HOLD: Final = 0.6  # seconds the blocker keeps the client queued
CELL_BOUND: Final = 30.0  # one row, end to end
EPSILON: Final = 0.02  # clock slack for "not earlier than"

SMALL_IMAGE: Final = encode_png(np.full((48, 64, 3), (180, 70, 150), dtype=np.uint8))
BIG_IMAGE: Final = encode_png(
    np.random.default_rng(6).integers(0, 256, (256, 256, 3), dtype=np.uint8)
)
DEFAULT_TIMEOUTS: Final = {
    "socket_open": 5.0,
    "room_info": 5.0,
    "media": 10.0,
    "initial_state_ack": 5.0,
    "request_ack": 5.0,
    "connect": 60.0,
}


# ---- the table ---------------------------------------------------------------------------------


@attrs.frozen
class Row:
    id: str
    fault: str
    phase: str
    injection: str
    final_state: str
    events: str
    retries: str
    notes: str

    @property
    def skip_reason(self) -> str | None:
        return None if self.injection else (self.notes or "no injection given")

    @property
    def bug(self) -> str | None:
        found = re.search(r"xfail: (BUG-\d+)", self.notes)
        return found.group(1) if found else None


def _cells(line: str) -> list[str]:
    return [cell.strip().replace("`", "") for cell in line.strip().strip("|").split("|")]


def load_matrix(path: Path = MATRIX) -> list[Row]:
    """The rows of the table under '## The matrix'."""
    lines = path.read_text(encoding="utf-8").splitlines()
    after = lines[lines.index("## The matrix") + 1 :]
    first = next(i for i, line in enumerate(after) if line.startswith("|"))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), after[first:]))
    header = _cells(table[0])
    names = [name.replace(" ", "_") for name in header]
    assert names == [field.name for field in attrs.fields(Row)], header
    rows = [Row(*_cells(line)) for line in table[2:]]
    assert len({row.id for row in rows}) == len(rows), "row ids must be unique"
    return rows


ROWS: Final = load_matrix()


def _params() -> Iterator[Any]:
    for row in ROWS:
        marks: list[pytest.MarkDecorator] = []
        if row.bug is not None and row.skip_reason is None:
            marks.append(pytest.mark.xfail(strict=True, reason=f"{row.bug}: see the matrix"))
        yield pytest.param(
            row, id=f"{row.id}-{row.fault}-{row.phase}".replace(" ", "_"), marks=marks
        )


# ---- what a row asks for -----------------------------------------------------------------------

_KNOB_FIELDS: Final = {field.name: field for field in attrs.fields(ServerKnobs)}
_TIMEOUT_FIELDS: Final = {field.name for field in attrs.fields(Timeouts)}


def _knob_value(name: str, text: str) -> object:
    default = _KNOB_FIELDS[name].default
    if name in ("error_at", "close_at"):
        return FaultPhase(text)
    if name == "media_failure_at":
        return MediaFailurePhase(text)
    if name == "drop_ack":
        return AckDrop(text)
    if name == "error_text":
        return text
    if isinstance(default, bool):
        return text == "true"
    if isinstance(default, int) or name in ("capacity", "fault_connections", "max_queue"):
        return int(text)
    return float(text)


@attrs.define
class Plan:
    knobs: dict[str, Any] = attrs.Factory(dict)
    timeouts: dict[str, float] = attrs.Factory(lambda: dict(DEFAULT_TIMEOUTS))
    max_retries: int = 2
    initial: str = "prompt"  # prompt | image | big image | passthrough
    blocker: bool = False
    actions: list[tuple[str, float]] = attrs.Factory(list)
    early_loss: str | None = None  # "join" | "publish": room loss during the first connect

    @classmethod
    def parse(cls, injection: str) -> Plan:
        plan = cls()
        for item in (part.strip() for part in injection.split(";")):
            name, _, value = item.partition("=")
            if name in _KNOB_FIELDS:
                plan.knobs[name] = _knob_value(name, value) if value else True
            elif name in _TIMEOUT_FIELDS:
                plan.timeouts[name] = float(value)
            elif name == "retries":
                plan.max_retries = int(value)
            elif name in ("image", "big image", "passthrough"):
                plan.initial = name
            elif name == "blocker":
                plan.blocker = True
            elif name in ("room loss on join", "room loss on publish"):
                plan.early_loss = name.rpartition(" ")[2]
            elif name in ("set_prompt", "set_image", "set_image big", "room loss", "wait"):
                plan.actions.append((name, float(value or 0)))
            else:
                raise AssertionError(f"unknown injection item {item!r}")
        return plan

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(max_retries=self.max_retries, initial_delay=0.05, max_delay=0.2)

    def connect_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.initial == "prompt":
            args["prompt"] = "matrix"
        elif self.initial == "image":
            args["image"] = SMALL_IMAGE
            args["prompt"] = "matrix"
        elif self.initial == "big image":
            args["image"] = BIG_IMAGE
        return args


@attrs.frozen
class Pattern:
    name: str
    kinds: frozenset[str] | None
    attempt: int

    def matches(self, token: Token) -> bool:
        if token.name != self.name or token.attempt != self.attempt:
            return False
        return self.kinds is None or token.kind in self.kinds


_TOKEN: Final = re.compile(r"^(\w+)(?::([\w/]+))?@(\d+)$")


def parse_events(text: str) -> list[list[Pattern]]:
    groups: list[list[Pattern]] = []
    for group in text.split("→"):
        patterns = []
        for item in (part.strip() for part in group.split(",")):
            found = _TOKEN.match(item)
            assert found is not None, f"bad event token {item!r}"
            name, kinds, attempt = found.groups()
            patterns.append(
                Pattern(name, None if kinds is None else frozenset(kinds.split("/")), int(attempt))
            )
        groups.append(patterns)
    return groups


# ---- what the user saw -------------------------------------------------------------------------


@attrs.frozen
class Token:
    name: str
    kind: str | None
    attempt: int
    at: float

    def __str__(self) -> str:
        kind = "" if self.kind is None else f":{self.kind}"
        return f"{self.name}{kind}@{self.attempt}"


def token_of(event: Event, at: float) -> Token | None:
    attempt = int(event.attempt)
    if isinstance(event, SessionStarted):
        return Token("started", None, attempt, at)
    if isinstance(event, InitialStateAcked):
        return Token("acked", None, attempt, at)
    if isinstance(event, QueuePositionChanged):
        return Token("queued", None, attempt, at)
    if isinstance(event, RetryScheduled):
        return Token("retry", event.kind.value, attempt, at)
    if isinstance(event, ErrorOccurred):
        return Token("fatal" if event.fatal else "error", event.kind.value, attempt, at)
    if isinstance(event, StateChanged) and event.state is ConnectionState.RECONNECTING:
        return Token("reconnecting", None, attempt, at)
    if isinstance(event, RequestAcked):
        return Token("request_acked", None, attempt, at)
    if isinstance(event, RequestFailed):
        return Token("request_failed", event.kind.value, attempt, at)
    return None


@attrs.define
class Recorder:
    events: list[tuple[float, Event]] = attrs.Factory(list)

    def __call__(self, event: Event) -> None:
        self.events.append((anyio.current_time(), event))

    def tokens(self, upto: int | None = None) -> list[Token]:
        out: list[Token] = []
        seen_queued: set[int] = set()
        for at, event in self.events[:upto]:
            token = token_of(event, at)
            if token is None:
                continue
            if token.name == "queued":  # one per attempt, however often the queue moved
                if token.attempt in seen_queued:
                    continue
                seen_queued.add(token.attempt)
            out.append(token)
        return out

    def state(self) -> ConnectionState:
        states = [e.state for _, e in self.events if isinstance(e, StateChanged)]
        return states[-1] if states else ConnectionState.DISCONNECTED

    def states_before_first_failure(self) -> list[ConnectionState]:
        """The user states until the first error, retry or reconnect showed ([]: none did)."""
        states = [ConnectionState.DISCONNECTED]
        for _, event in self.events:
            reconnect = (
                isinstance(event, StateChanged) and event.state is ConnectionState.RECONNECTING
            )
            if reconnect or isinstance(event, ErrorOccurred | RetryScheduled):
                return states
            if isinstance(event, StateChanged):
                states.append(event.state)
        return []


def match(
    groups: list[list[Pattern]], tokens: list[Token]
) -> tuple[dict[Pattern, int], list[Pattern]]:
    """Which token each expected pattern took (by index), and the patterns left unmatched."""
    used: set[int] = set()
    taken: dict[Pattern, int] = {}
    missing: list[Pattern] = []
    for group in groups:
        for pattern in group:
            index = next(
                (i for i, t in enumerate(tokens) if i not in used and pattern.matches(t)), None
            )
            if index is None:
                missing.append(pattern)
            else:
                used.add(index)
                taken[pattern] = index
    return taken, missing


def check_events(groups: list[list[Pattern]], tokens: list[Token]) -> None:
    taken, missing = match(groups, tokens)
    seen = [str(t) for t in tokens]
    assert not missing, f"expected events not seen: {missing}; seen {seen}"
    extra = [str(t) for i, t in enumerate(tokens) if i not in taken.values()]
    assert not extra, f"events the matrix does not allow: {extra}; seen {seen}"
    for earlier, later in itertools.pairwise(groups):
        last = max(taken[p] for p in earlier)
        first = min(taken[p] for p in later)
        assert last < first, f"order: {earlier} must all come before {later}; seen {seen}"


# ---- resources --------------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def live_tasks() -> int:
    return len(asyncio.all_tasks())


def double_sessions(server: ReferenceServer) -> int:
    sessions: set[object] = vars(server.livekit).get("_sessions", set())
    return len(sessions)


async def back_to(count: int, probe: Any, what: str) -> None:
    """Wait (bounded) until ``probe()`` is back at ``count``."""
    with anyio.move_on_after(WAIT):
        while probe() != count:
            await anyio.sleep(0.02)
    assert probe() == count, f"{what}: {probe()} now, {count} before"


@pytest.fixture(scope="module")
def warm_livekit() -> None:
    """One clean session first: the native LiveKit client opens its runtime's file
    descriptors and threads once per process, which no row must be blamed for."""

    async def warm() -> None:
        async with ReferenceServer() as server:
            with anyio.fail_after(CELL_BOUND):
                async with connect(server.url, **client_args(server, Plan(), Recorder())):
                    pass

    anyio.run(warm)


def client_args(server: ReferenceServer, plan: Plan, recorder: Recorder) -> dict[str, Any]:
    return {
        "api_key": server.api_key,
        "model": "echo",
        "camera": TestPattern(160, 120, fps=10),
        "timeouts": Timeouts(**plan.timeouts),
        "retry": plan.retry,
        "on_event": recorder,
        "shutdown_timeout": 5.0,
        **plan.connect_args(),
    }


# ---- the blocker: a raw client that holds the only slot -------------------------------------------


@asynccontextmanager
async def blocker(server: ReferenceServer) -> AsyncIterator[ClientConnection]:
    url = f"{server.url}?api_key={server.api_key}&model=echo"
    with anyio.fail_after(WAIT):
        socket = await ws_connect(url)
    try:
        with anyio.fail_after(WAIT):
            await socket.send('{"type":"livekit_join","passthrough":true}')
            while '"livekit_room_info"' not in str(await socket.recv()):
                pass
        yield socket
    finally:
        await socket.close()


async def release_blocker(
    socket: ClientConnection, recorder: Recorder, attempt: int, released: list[float]
) -> None:
    """Leave once ``attempt`` has been queued for HOLD seconds."""
    await until(lambda: any(t.name == "queued" and t.attempt == attempt for t in recorder.tokens()))
    await anyio.sleep(HOLD)
    released.append(anyio.current_time())
    await socket.close()


# ---- running a row ----------------------------------------------------------------------------


@attrs.define
class Outcome:
    tokens: list[Token]
    state: ConnectionState
    seen: int  # events recorded at the check; later ones come from leaving
    failed: ConnectFailed | None = None
    milestones: list[tuple[float, int, str]] = attrs.Factory(list)
    released: list[float] = attrs.Factory(list)
    request_outcomes: list[str] = attrs.Factory(list)
    sent_while: list[ConnectionState] = attrs.Factory(list)
    lost_at: list[float] = attrs.Factory(list)  # when an early room loss was done
    # The user states up to the first error, retry or reconnect (the last one: the state it hit).
    before_fault: list[ConnectionState] = attrs.Factory(list)


async def _request(session: Session, what: str, outcomes: list[str]) -> None:
    try:
        if what == "set_prompt":
            await session.set_prompt("changed at runtime")
        elif what == "set_image":
            await session.set_image(SMALL_IMAGE)
        else:
            await session.set_image(BIG_IMAGE)
        outcomes.append("acked")
    except RequestError as exc:
        outcomes.append(exc.kind.value)


async def _act(
    session: Session,
    row: Row,
    plan: Plan,
    outcome: Outcome,
    server: ReferenceServer,
    tg: anyio.abc.TaskGroup,
) -> None:
    if row.phase == "connected" and plan.actions:
        assert session.state is ConnectionState.CONNECTED, "the row's phase was not reached"
    elif row.phase == "generating":
        await until(lambda: session.state is ConnectionState.GENERATING)
    for action, value in plan.actions:
        if action == "wait":
            await anyio.sleep(value)
        elif action == "room loss":
            assert session.room_name is not None
            room = server.livekit.find_room(session.room_name)  # never re-create one
            assert room is not None, "the session's room is gone before the room loss"
            with anyio.fail_after(WAIT):
                await room.disconnect_participants("room_deleted")
        else:
            outcome.sent_while.append(session.state)
            tg.start_soon(_request, session, action, outcome.request_outcomes)


async def _lose_room_early(server: ReferenceServer, when: str, lost_at: list[float]) -> None:
    """Room loss in the first attempt's room while its client joins (the double
    attached it and holds the join answer) or publishes (the double got its
    ``add_track`` and holds the answer). Later attempts' rooms are left alone."""
    if when == "join":
        await until(lambda: any(room.participants for room in rooms_of(server)))
        room = next(room for room in rooms_of(server) if room.participants)
    else:
        await until(lambda: bool(rooms_of(server)))
        room = rooms_of(server)[0]
        with anyio.fail_after(WAIT):
            await room.wait_client_publishing()
    lost_at.append(anyio.current_time())
    with anyio.fail_after(WAIT):
        await room.disconnect_participants("room_deleted")


async def _settled(
    recorder: Recorder, groups: list[list[Pattern]], final: str, session: Session | None
) -> None:
    def done() -> bool:
        _taken, missing = match(groups, recorder.tokens())
        if missing:
            return False
        if final == "disconnected":
            return session is None or session.closed
        return recorder.state().value == final

    with anyio.move_on_after(WAIT):
        while not done():
            await anyio.sleep(0.02)
    await anyio.sleep(SETTLE)


async def run_row(row: Row, plan: Plan, server: ReferenceServer) -> Outcome:
    recorder = Recorder()
    groups = parse_events(row.events)
    outcome = Outcome([], ConnectionState.DISCONNECTED, 0)
    async with contextlib.AsyncExitStack() as stack:
        outer = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(outer.cancel_scope.cancel)  # the blocker's watcher, if still waiting
        if plan.blocker:
            holder = await stack.enter_async_context(blocker(server))
            last_attempt = 1 + int(row.retries)
            outer.start_soon(release_blocker, holder, recorder, last_attempt, outcome.released)
        if plan.early_loss is not None:
            outer.start_soon(_lose_room_early, server, plan.early_loss, outcome.lost_at)
        try:
            async with (
                connect(server.url, **client_args(server, plan, recorder)) as session,
                anyio.create_task_group() as requests,
            ):
                await _act(session, row, plan, outcome, server, requests)
                await _settled(recorder, groups, row.final_state, session)
                outcome.seen = len(recorder.events)
                outcome.state = recorder.state()
                outcome.milestones = [(m.at, m.attempt, m.name) for m in session.timeline]
                # Rooms of stale attempts are gone by now: at most the live one is joined.
                await until(lambda: sum(r.participants > 0 for r in rooms_of(server)) <= 1)
                requests.cancel_scope.cancel()
        except ConnectFailed as failed:
            outcome.failed = failed
            outcome.seen = len(recorder.events)
            outcome.state = recorder.state()
    outcome.tokens = recorder.tokens(outcome.seen)
    outcome.before_fault = recorder.states_before_first_failure()
    after = [e for _, e in recorder.events[outcome.seen :]]
    assert not [e for e in after if isinstance(e, ErrorOccurred | RetryScheduled)], (
        f"leaving raised errors: {after}"
    )
    _check_consistency(recorder, plan)
    return outcome


def _check_consistency(recorder: Recorder, plan: Plan) -> None:
    attempts = [int(e.attempt) for _, e in recorder.events]
    assert attempts == sorted(attempts), f"an event of a stale attempt: attempts {attempts}"
    previous = ConnectionState.DISCONNECTED
    for _, event in recorder.events:
        if isinstance(event, StateChanged):
            assert event.previous is previous and event.state is not previous, event
            previous = event.state
    fatal = [e for _, e in recorder.events if isinstance(e, ErrorOccurred) and e.fatal]
    assert len(fatal) <= 1, fatal
    retries = [(at, e) for at, e in recorder.events if isinstance(e, RetryScheduled)]
    for number, (at, retry) in enumerate(retries, start=1):
        assert retry.retry == number and retry.delay == pytest.approx(plan.retry.delay(number))
        # The next attempt may not start before the policy's delay has passed.
        later = [t for t, e in recorder.events if int(e.attempt) > int(retry.attempt)]
        assert later, "a retry was scheduled but no later attempt showed"
        assert later[0] >= at + retry.delay - EPSILON, (later[0] - at, retry.delay)


def check_timing(row: Row, plan: Plan, outcome: Outcome) -> None:
    for token in outcome.tokens:
        if token.name in ("error", "fatal") and outcome.released:
            assert token.at >= outcome.released[0], f"{token} while the client was queued"
        if token.kind == "initial_state_timeout":
            room_info = [
                at
                for at, n, name in outcome.milestones
                if name == "room_info" and n == token.attempt
            ]
            assert room_info, "no room_info milestone for the timed-out attempt"
            waited = token.at - room_info[0]
            assert waited >= plan.timeouts["initial_state_ack"] - EPSILON, waited
    at_start = FaultPhase.GENERATING in [phase for _knob, phase in _phase_faults(plan)]
    if at_start and row.phase == "runtime request":
        # The fault is timed to generation start: the request must have gone out before it.
        assert outcome.sent_while == [ConnectionState.CONNECTED], outcome.sent_while
    check_fault_phase(row, plan, outcome)


# The user state a fault injected at a server phase hits: `connecting` up to `publishing`.
# A close while generating comes after `generation_ended` (§9.5), so in `connected`; a
# media failure while generating comes after `generation_started` (the server sends
# the frames it output before the fault first).
_STATE_AT_FAULT: Final = {
    ("error_at", FaultPhase.CLIENT_VIDEO): ConnectionState.CONNECTED,
    ("close_at", FaultPhase.CLIENT_VIDEO): ConnectionState.CONNECTED,
    ("media_failure_at", FaultPhase.CLIENT_VIDEO): ConnectionState.CONNECTED,
    ("error_at", FaultPhase.GENERATING): ConnectionState.GENERATING,
    ("close_at", FaultPhase.GENERATING): ConnectionState.CONNECTED,
    ("media_failure_at", FaultPhase.GENERATING): ConnectionState.GENERATING,
}


def _phase_faults(plan: Plan) -> list[tuple[str, FaultPhase]]:
    """The row's faults fired at a server phase, as (knob, phase)."""
    faults: list[tuple[str, FaultPhase]] = [
        (k, plan.knobs[k]) for k in ("error_at", "close_at") if k in plan.knobs
    ]
    media: MediaFailurePhase | None = plan.knobs.get("media_failure_at")
    if media is not None:
        faults.append(("media_failure_at", media.phase))
    return faults


def _first(milestones: list[tuple[float, int, str]], attempt: int, name: str) -> float | None:
    return min((at for at, n, m in milestones if n == attempt and m == name), default=None)


def _in_window(row_phase: str, milestones: list[tuple[float, int, str]], at: float) -> None:
    """``at`` fell inside attempt 1's room connect or its publish, by its milestones."""
    room_info = _first(milestones, 1, "room_info")
    connected = _first(milestones, 1, "room_connected")
    published = _first(milestones, 1, "tracks_published")
    seen = f"at {at:.3f}; attempt 1's milestones {[m for m in milestones if m[1] == 1]}"
    if row_phase == "during room connect":
        assert room_info is not None and room_info <= at, f"before room_info: {seen}"
        assert connected is None or connected > at, f"after the room connected: {seen}"
    else:
        assert connected is not None and connected <= at, f"before the room connected: {seen}"
        assert published is None or published > at, f"after the publication: {seen}"


def check_fault_phase(row: Row, plan: Plan, outcome: Outcome) -> None:
    """The fault hit the client in the row's phase, not merely somewhere."""
    knob, phase = next(iter(_phase_faults(plan)), (None, None))
    if knob is not None or plan.early_loss is not None:
        expected = ConnectionState.CONNECTING
        if knob is not None and phase is not None:
            expected = _STATE_AT_FAULT.get((knob, phase), expected)
        states = outcome.before_fault
        assert states, "no failure showed"
        assert states[-1] is expected, f"the fault hit while {states[-1]}, not {expected}"
        if phase is FaultPhase.CLIENT_VIDEO:
            assert ConnectionState.GENERATING not in states, f"generated before the fault: {states}"
    windowed = row.phase in ("during room connect", "during publish")
    if not windowed or row.final_state == "disconnected":  # a failed connect has no timeline
        return
    if plan.early_loss is not None:
        assert outcome.lost_at, "the room was never lost"
        _in_window(row.phase, outcome.milestones, outcome.lost_at[0])
    failed = [t.at for t in outcome.tokens if t.name in ("retry", "fatal") and t.attempt == 1]
    if failed:
        _in_window(row.phase, outcome.milestones, failed[0])


# ---- the test --------------------------------------------------------------------------------


@pytest.mark.parametrize("row", list(_params()))
async def test_fault_matrix_row(row: Row, warm_livekit: None) -> None:
    if row.skip_reason is not None:
        pytest.skip(f"{row.id}: {row.skip_reason}")
    plan = Plan.parse(row.injection)
    fds, tasks = open_fds(), live_tasks()
    with anyio.fail_after(CELL_BOUND):
        async with ReferenceServer(knobs=ServerKnobs(**plan.knobs)) as server:
            outcome = await run_row(row, plan, server)
            await assert_nothing_left(server.livekit, *(room.name for room in rooms_of(server)))
            await until(lambda: server.connections == 0 and double_sessions(server) == 0)
    await back_to(tasks, live_tasks, "asyncio tasks")
    await back_to(fds, open_fds, "open file descriptors")

    check_events(parse_events(row.events), outcome.tokens)
    retries = sum(t.name == "retry" for t in outcome.tokens)
    assert retries == int(row.retries), f"{retries} retries, the matrix says {row.retries}"
    assert outcome.state.value == row.final_state, (
        f"ended {outcome.state.value}, expected {row.final_state}"
    )
    assert (outcome.failed is not None) == (row.final_state == "disconnected"), outcome.failed
    requests_failed = sorted(t.kind or "" for t in outcome.tokens if t.name == "request_failed")
    assert sorted(o for o in outcome.request_outcomes if o != "acked") == requests_failed
    check_timing(row, plan, outcome)


def test_the_matrix_covers_every_fault_and_phase() -> None:
    faults = {
        "error frame",
        "socket close",
        "dropped ack",
        "rejected reference",
        "refused media",
        "room loss",
        "slow uplink",
    }
    phases = {
        "before join",
        "queued",
        "before room_info",
        "during room connect",
        "during publish",
        "connected",
        "generating",
        "runtime request",
    }
    cells = {(row.fault, row.phase) for row in ROWS}
    assert {(f, p) for f in faults for p in phases} <= cells
    for row in ROWS:
        if row.skip_reason is None:
            Plan.parse(row.injection)
            parse_events(row.events)
            assert row.final_state in {s.value for s in ConnectionState}, row
            assert row.retries.isdigit(), row
        else:
            assert re.match(r"(skipped|merged into)", row.notes), row


# ---- BUG-1 at the engine level (fixed: failed waits stay as tombstones) ---------------------


def test_bug1_acks_that_arrive_after_a_server_error_are_absorbed() -> None:
    """§3.8: a server error while connected fails the pending waits "without further
    error events"; the server carries on, so their acks may still arrive."""
    script = Script()
    script.to_connected(InitialState(prompt="first"))
    script.feed(ChangePrompt(RequestId(1), "second"))
    out = script.server(type="error", error="transient")
    assert [o.kind for o in of_type(out, ErrorOccurred)] == [ErrorKind.SERVER_ERROR]
    assert [o.kind for o in of_type(out, RequestFailed)] == [ErrorKind.SERVER_ERROR]
    late = script.server(type="prompt_ack", prompt="first", success=True)
    late += script.server(type="prompt_ack", prompt="second", success=True)
    assert of_type(late, ErrorOccurred) == []


# ---- BUG-4 (open, upstream): what the client shows instead of L4's failed attempt -----------


async def test_bug4_a_room_lost_during_the_room_connect_goes_unseen(
    warm_livekit: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Row L4 as it runs today: the room is lost while the double holds the client's
    join answer, and the LiveKit client joins the same room again inside the same
    ``Room.connect`` with no room event, so attempt 1 connects. When BUG-4 is
    fixed, L4 passes (its strict xfail fails) and this test fails: delete it then."""
    caplog.set_level(logging.INFO, logger="leanjoin.adapters.server.lkdouble")
    seen = "acked@1, started@1"
    row = attrs.evolve(next(r for r in ROWS if r.id == "L4"), events=seen, retries="0")
    plan = Plan.parse(row.injection)
    with anyio.fail_after(CELL_BOUND):
        async with ReferenceServer(knobs=ServerKnobs(**plan.knobs)) as server:
            outcome = await run_row(row, plan, server)
            await assert_nothing_left(server.livekit, *(room.name for room in rooms_of(server)))
    check_events(parse_events(seen), outcome.tokens)
    assert outcome.state is ConnectionState.GENERATING and outcome.failed is None
    connected = _first(outcome.milestones, 1, "room_connected")
    assert outcome.lost_at and connected is not None
    assert outcome.lost_at[0] < connected, "the loss must come while attempt 1 connects its room"
    joins = [r.args for r in caplog.records if "joins room" in r.getMessage()]
    assert len(joins) == 2 and joins[0] == joins[1], f"one client, one room, joined twice: {joins}"
