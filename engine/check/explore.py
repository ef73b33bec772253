"""Exhaustive protocol checker: breadth-first over the composed world of
:mod:`.checker_model`, to a depth bound (pure: no I/O, no clock, no randomness).

Every state is keyed canonically (:func:`world_key`) and explored once.
Every client step runs through the :class:`~.invariants.InvariantMonitor`;
every new state is also checked for bounded liveness
(:func:`~.invariants.settle_by_timers`). Because the search is breadth-first,
the first violation found has a shortest path;
:func:`~.checker_report.counterexample` turns a path into readable lines
and a replayable trace (the ``specs/traces`` format of :mod:`.trace`).
Reachability labels show that the model gets somewhere: every name in
:data:`TARGETS` must be reached, or the model is too weak.

The search is split into :meth:`Expander.expand` (one state to its
successors) and the bookkeeping of :class:`Search`, so that a process pool
outside the engine (``adapters/cli/check_parallel.py``) can expand frontier
partitions in parallel.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator
from typing import Final, Protocol

import attrs

from .invariants import InvariantViolation, settle_by_timers
from .model import Choice, Model, World, choices, initial_world
from .moves import SERVER_PUBLISHING, step
from .state import Snapshot, freeze

TARGETS: Final = (
    "connected",
    "generating",
    "queued",
    "reconnecting",
    "early_ack_claimed",
    "stale_input_dropped",
    SERVER_PUBLISHING,
)
"""Labels the model must reach; others (retrying, gave_up) are informative."""

ENGINE_RAISED: Final = "engine_raised"
LIVENESS: Final = "every_attempt_ends_within_its_deadlines"


@attrs.frozen
class Violation:
    name: str  # an invariant (engine/check/invariants.py, checker_moves.py) or ENGINE_RAISED
    detail: str
    path: tuple[Choice, ...]


@attrs.frozen
class Outcome:
    """What one move from a state gave: a new world and its key, or (key None)
    the violation the move itself caused. A new world may violate liveness."""

    choice: Choice
    world: World | None
    key: Hashable | None
    labels: frozenset[str]
    violation: tuple[str, str] | None = None


class Expander:
    """Expands states of one model; remembers which client states settle."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self._settles: dict[Hashable, str | None] = {}

    def key(self, world: World) -> Hashable:
        return world_key(world)

    def expand(self, world: World) -> Iterator[Outcome]:
        for choice in choices(world, self.model):
            child = world.fork()
            try:
                labels = frozenset(step(child, choice, self.model))
            except InvariantViolation as violation:
                yield Outcome(choice, None, None, frozenset(), (violation.name, violation.detail))
                continue
            except Exception as error:  # an engine raising on peer or adapter input is a bug
                detail = f"{type(error).__name__}: {error}"
                yield Outcome(choice, None, None, frozenset(), (ENGINE_RAISED, detail))
                continue
            key = self.key(child)
            stuck = self.liveness(child, key)
            yield Outcome(choice, child, key, labels, None if stuck is None else (LIVENESS, stuck))

    def liveness(self, world: World, key: Hashable) -> str | None:
        """Why the client would not settle on timers alone, or None (memoized by
        the client's part of the key: the other parts cannot reach it without input)."""
        assert isinstance(key, tuple)
        client_key = key[0]
        if client_key not in self._settles:
            try:
                settle_by_timers(world.client)
                self._settles[client_key] = None
            except InvariantViolation as violation:
                self._settles[client_key] = violation.detail
        return self._settles[client_key]


def world_key(world: World) -> Hashable:
    """Canonical key: the client with the monitor's memory of the newest
    attempt (it never consults older ones: an output of an older attempt is
    already a violation), the live link with its server session, the
    admission queue, then the clock, late inputs and budgets. The keys of
    the parts a world shares with its parent are the parent's."""
    keys = world.keys
    if keys[0] is None:
        monitor = world.monitor
        latest = int(world.client.latest_attempt)
        memory = (
            tuple(sorted((a, n) for a, n in monitor._initial_outcomes.items() if a >= latest)),
            latest in monitor._failed_by_send,
            latest in monitor._acks_received,
            latest in monitor._rooms,
        )
        keys[0] = Snapshot((freeze(world.client), memory))
    if keys[1] is None:
        keys[1] = Snapshot(freeze(world.link))
    if keys[2] is None:
        keys[2] = Snapshot(freeze(world.admission))
    rest = (
        world.now,
        tuple(world.stale),
        world.rival,
        world.faults,
        world.connects,
        world.prompts,
    )
    return (keys[0], keys[1], keys[2], rest)


@attrs.define
class Search:
    """Breadth-first bookkeeping: seen keys, parent pointers, labels reached."""

    model: Model
    seen: set[Hashable] = attrs.Factory(set)
    parents: list[int] = attrs.Factory(list)  # node -> parent node (-1: the root)
    moves: list[Choice] = attrs.Factory(list)  # node -> the choice that made it
    reached: dict[str, tuple[int, Choice]] = attrs.Factory(dict)  # label -> (parent, choice)
    used: Counter[str] = attrs.Factory(Counter)  # transitions per kind of move
    transitions: int = 0
    violation: Violation | None = None

    def path(self, node: int, last: Choice | None = None) -> tuple[Choice, ...]:
        moves: list[Choice] = [] if last is None else [last]
        while node > 0:
            moves.append(self.moves[node])
            node = self.parents[node]
        return tuple(reversed(moves))

    def add_root(self, key: Hashable) -> None:
        self.seen.add(key)
        self.parents.append(-1)
        self.moves.append(())

    def offer(self, parent: int, outcome: Outcome) -> int | None:
        """Account for one outcome; the new node's number if its state is new."""
        self.transitions += 1
        self.used[outcome.choice[0]] += 1
        for label in outcome.labels:
            self.reached.setdefault(label, (parent, outcome.choice))
        if outcome.key is None:  # the move itself broke an invariant or raised
            if outcome.violation is not None:
                self._violate(parent, outcome.choice, outcome.violation)
            return None
        if outcome.key in self.seen:
            return None
        self.seen.add(outcome.key)
        self.parents.append(parent)
        self.moves.append(outcome.choice)
        node = len(self.parents) - 1
        if outcome.violation is not None:
            self._violate(parent, outcome.choice, outcome.violation)
        return node

    def _violate(self, parent: int, choice: Choice, found: tuple[str, str]) -> None:
        if self.violation is None:
            self.violation = Violation(found[0], found[1], self.path(parent, choice))

    def witness(self, label: str) -> tuple[Choice, ...] | None:
        found = self.reached.get(label)
        return None if found is None else self.path(*found)


@attrs.frozen
class Result:
    states: int
    transitions: int
    depth: int  # levels fully explored
    complete: bool  # no new state was left at the bound: the whole space was seen
    violation: Violation | None
    reached: dict[str, tuple[Choice, ...]]  # label -> a shortest path reaching it
    used: dict[str, int]  # kind of move -> transitions made with it

    @property
    def missing(self) -> list[str]:
        """Targets never reached: the model (or the depth) is too weak for them."""
        return [label for label in TARGETS if label not in self.reached]


class Observer(Protocol):
    """Progress of a search, level by level (for a progress display)."""

    def level_start(self, depth: int, frontier: int) -> None: ...

    def advance(self, expanded: int) -> None: ...

    def level_end(self, depth: int, frontier: int, states: int) -> None: ...


class Quiet:
    """An :class:`Observer` that shows nothing."""

    def level_start(self, depth: int, frontier: int) -> None:
        pass

    def advance(self, expanded: int) -> None:
        pass

    def level_end(self, depth: int, frontier: int, states: int) -> None:
        pass


ADVANCE_EVERY: Final = 256  # expanded states between two Observer.advance calls


def explore(model: Model, depth: int, observer: Observer | None = None) -> Result:
    """Every state within ``depth`` moves, breadth-first; stops at the first
    violation (one of the shortest)."""
    observer = observer or Quiet()
    expander = Expander(model)
    search = Search(model)
    root = initial_world(model)
    search.add_root(expander.key(root))
    frontier: list[tuple[int, World]] = [(0, root)]
    level = 0
    while frontier and level < depth and search.violation is None:
        observer.level_start(level + 1, len(frontier))
        following: list[tuple[int, World]] = []
        for done, (parent, world) in enumerate(frontier, start=1):
            for outcome in expander.expand(world):
                node = search.offer(parent, outcome)
                if node is not None and outcome.world is not None:
                    following.append((node, outcome.world))
            if search.violation is not None:
                break
            if done % ADVANCE_EVERY == 0:
                observer.advance(ADVANCE_EVERY)
        observer.advance(len(frontier) % ADVANCE_EVERY)
        level += 1
        frontier = following
        observer.level_end(level, len(frontier), len(search.parents))
    return result_of(search, level, not frontier)


def result_of(search: Search, level: int, complete: bool) -> Result:
    reached = {label: path for label in search.reached if (path := search.witness(label))}
    return Result(
        states=len(search.parents),
        transitions=search.transitions,
        depth=level,
        complete=complete and search.violation is None,
        violation=search.violation,
        reached=reached,
        used=dict(search.used),
    )
