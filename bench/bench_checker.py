"""Exhaustive checker benchmark: the composed model (client engine, server
engine, network) explored breadth-first to a depth bound on every core, and
the cost of the three ways to copy a world the search could use.

    .venv/bin/python bench/bench_checker.py                # depth 12, all cores
    .venv/bin/python bench/bench_checker.py --depth 13

Prints markdown table rows (with their headers): the exhaustive run, then the
copy costs (``copy.deepcopy``, the structural ``clone``, replaying the path
from the initial world), per world, on a sample of the frontier at depth 8.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time

from leanjoin.adapters.cli.check_parallel import explore_parallel
from leanjoin.engine.check.explore import Expander, Search, result_of
from leanjoin.engine.check.model import Model, World, initial_world
from leanjoin.engine.check.moves import step as make_move
from leanjoin.engine.check.state import clone


def _frontier(model: Model, depth: int) -> list[tuple[World, tuple[tuple[str, ...], ...]]]:
    """Worlds at ``depth`` with their paths (a plain BFS, deduplicated)."""
    expander = Expander(model)
    search = Search(model)
    root = initial_world(model)
    search.add_root(expander.key(root))
    frontier: list[tuple[int, World]] = [(0, root)]
    for _ in range(depth):
        following: list[tuple[int, World]] = []
        for parent, world in frontier:
            for outcome in expander.expand(world):
                node = search.offer(parent, outcome)
                if node is not None and outcome.world is not None:
                    following.append((node, outcome.world))
        frontier = following
    result_of(search, depth, False)
    return [(world, search.path(node)) for node, world in frontier]


def _copy_costs(model: Model, sample: int = 300) -> list[tuple[str, float]]:
    worlds = _frontier(model, 8)[:sample]
    # deepcopy shares the frozen configuration too, as clone does
    shared = {id(model.config): model.config, id(model.knobs): model.knobs}
    costs: list[tuple[str, float]] = []
    start = time.perf_counter()
    for world, _path in worlds:
        copy.deepcopy(world, dict(shared))
    costs.append(("copy.deepcopy", time.perf_counter() - start))
    start = time.perf_counter()
    for world, _path in worlds:
        clone(world)
    costs.append(("structural clone", time.perf_counter() - start))
    start = time.perf_counter()
    for _world, path in worlds:
        replayed = initial_world(model)
        for choice in path:
            make_move(replayed, choice, model)
    costs.append(("replay the path (8 moves)", time.perf_counter() - start))
    return [(name, seconds / len(worlds) * 1e6) for name, seconds in costs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    model = Model()
    start = time.perf_counter()
    result = explore_parallel(model, args.depth, args.workers)
    elapsed = time.perf_counter() - start
    if result.violation is not None:
        print(f"violation: {result.violation.name}: {result.violation.detail}", file=sys.stderr)
        sys.exit(1)
    command = (
        f"`.venv/bin/python bench/bench_checker.py --depth {args.depth} --workers {args.workers}`"
    )
    cpus = os.cpu_count()
    print(
        "| command | depth | states | transitions | time | states/s | transitions/s | missed targets | machine |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {command} | {result.depth} | {result.states:,} | {result.transitions:,} | "
        f"{elapsed:.1f} s | {result.states / elapsed:,.0f} | {result.transitions / elapsed:,.0f} | "
        f"{', '.join(result.missing) or 'none'} | {cpus} cores, Python {platform.python_version()} |"
    )
    print()
    print("| copy of one world (frontier at depth 8) | µs |")
    print("|---|---|")
    for name, micros in _copy_costs(model):
        print(f"| {name} | {micros:,.0f} |")


if __name__ == "__main__":
    main()
