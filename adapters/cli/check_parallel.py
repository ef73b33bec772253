"""The exhaustive checker on several cores: level-synchronous breadth-first
search over worker processes that keep their part of the frontier.

Each worker expands its own frontier with :class:`~leanjoin.engine.check.explore.Expander`
and keeps the new worlds; only small records cross process boundaries: the
parent node, the choice, a 64-bit hash of the child's canonical key, the
labels and any violation. The coordinator deduplicates the hashes in a fixed
order (worker 0 first), numbers the new nodes, tells each worker which of its
children to keep, and moves worlds between workers when their frontiers
drift apart. Worlds are therefore pickled only to rebalance.

Keys are compared by ``hash()``: workers are forked, so they share the
interpreter's hash seed. Two distinct states would have to collide in 64
bits to be merged (odds about 3e-8 for a million states); the serial
:func:`~leanjoin.engine.check.explore.explore` compares full keys.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import traceback
from multiprocessing.connection import Connection
from typing import Any, TypeAlias

from leanjoin.engine.check.explore import (
    ADVANCE_EVERY,
    Expander,
    Observer,
    Outcome,
    Quiet,
    Result,
    Search,
    explore,
    result_of,
)
from leanjoin.engine.check.model import Choice, Model, World, initial_world

# parent node, choice, key hash (None: the move itself failed), labels, violation, kept index
Row: TypeAlias = tuple[int, Choice, int | None, frozenset[str], tuple[str, str] | None, int]


def _worker(conn: Connection, model: Model) -> None:
    try:
        _serve(conn, Expander(model))
    except BaseException:
        # Reported, not raised: the coordinator would otherwise wait forever.
        conn.send(("failed", traceback.format_exc()))
    finally:
        conn.close()


def _serve(conn: Connection, expander: Expander) -> None:
    frontier: list[tuple[int, World]] = []
    children: list[World] = []
    while True:
        command, argument = conn.recv()
        if command == "expand":
            rows: list[Row] = []
            children = []
            for done, (parent, world) in enumerate(frontier, start=1):
                for outcome in expander.expand(world):
                    kept = -1
                    if outcome.world is not None:
                        kept = len(children)
                        children.append(outcome.world)
                    key = None if outcome.key is None else hash(outcome.key)
                    rows.append(
                        (parent, outcome.choice, key, outcome.labels, outcome.violation, kept)
                    )
                if done % ADVANCE_EVERY == 0:
                    conn.send(("tick", ADVANCE_EVERY))
            conn.send(("rows", (rows, len(frontier) % ADVANCE_EVERY)))
        elif command == "keep":
            frontier = [(node, children[index]) for index, node in argument]
            children = []
        elif command == "give":
            given, frontier = frontier[:argument], frontier[argument:]
            conn.send(("worlds", given))
        elif command == "take":
            frontier.extend(argument)
        elif command == "stop":
            return


class WorkerFailed(RuntimeError):
    """A worker process raised; its traceback is the message."""


def _receive(conn: Connection) -> tuple[str, Any]:
    kind, payload = conn.recv()
    if kind == "failed":
        raise WorkerFailed(payload)
    return kind, payload


class _Pool:
    def __init__(self, model: Model, workers: int) -> None:
        context = multiprocessing.get_context("fork")
        self.conns: list[Connection] = []
        self.processes: list[Any] = []
        for _ in range(workers):
            mine, theirs = context.Pipe()
            process = context.Process(target=_worker, args=(theirs, model), daemon=True)
            process.start()
            theirs.close()
            self.conns.append(mine)
            self.processes.append(process)

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):  # a worker that failed has hung up
                conn.send(("stop", None))
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()  # only our own child, by its handle


def explore_parallel(
    model: Model, depth: int, workers: int, observer: Observer | None = None
) -> Result:
    """:func:`~leanjoin.engine.check.explore.explore` on ``workers`` processes."""
    observer = observer or Quiet()
    if workers <= 1:
        return explore(model, depth, observer)
    search = Search(model)
    root = initial_world(model)
    search.add_root(hash(Expander(model).key(root)))
    pool = _Pool(model, workers)
    sizes = [1] + [0] * (workers - 1)
    try:
        pool.conns[0].send(("take", [(0, root)]))
        level = 0
        while sum(sizes) and level < depth and search.violation is None:
            observer.level_start(level + 1, sum(sizes))
            for conn in pool.conns:
                conn.send(("expand", None))
            keeps: list[list[tuple[int, int]]] = []
            for conn in pool.conns:
                keeps.append(_collect(conn, search, observer))
            for conn, keep in zip(pool.conns, keeps, strict=True):
                conn.send(("keep", keep))
            sizes = [len(keep) for keep in keeps]
            _rebalance(pool, sizes)
            level += 1
            observer.level_end(level, sum(sizes), len(search.parents))
        return result_of(search, level, not sum(sizes))
    finally:
        pool.close()


def _collect(conn: Connection, search: Search, observer: Observer) -> list[tuple[int, int]]:
    """One worker's rows of this level, deduplicated against everything seen."""
    while True:
        kind, payload = _receive(conn)
        if kind == "tick":
            observer.advance(payload)
            continue
        rows, rest = payload
        observer.advance(rest)
        keep: list[tuple[int, int]] = []
        for parent, choice, key, labels, violation, kept in rows:
            outcome = Outcome(choice, None, key, labels, violation)
            node = search.offer(parent, outcome)
            if node is not None and kept >= 0:
                keep.append((kept, node))
        return keep


def _rebalance(pool: _Pool, sizes: list[int]) -> None:
    """Move worlds from the fullest worker to the emptiest while they differ by
    more than a tenth (and by enough worlds to be worth a pickle)."""
    while True:
        big = max(range(len(sizes)), key=sizes.__getitem__)
        small = min(range(len(sizes)), key=sizes.__getitem__)
        gap = sizes[big] - sizes[small]
        if gap < 64 or gap * 10 < sizes[big]:
            return
        count = gap // 2
        pool.conns[big].send(("give", count))
        kind, worlds = _receive(pool.conns[big])
        assert kind == "worlds"
        pool.conns[small].send(("take", worlds))
        sizes[big] -= count
        sizes[small] += count
