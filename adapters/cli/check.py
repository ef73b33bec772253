"""``leanjoin check``: the exhaustive protocol checker on the command line.

Explores the composed model (client engine, server engine, network; see
:mod:`leanjoin.engine.check.model`) breadth-first to ``--depth`` moves, on
every core (``--workers``), with a progress bar per level. Prints what it
explored and which reachability targets it reached.

Exit status: 0 when no invariant broke and every target was reached; 1 with
the shortest counterexample (printed, and saved as a replayable JSONL trace
under ``--save``) when an invariant broke; 3 when a target was never reached
(the model or the depth is too weak to show the check means anything).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Final

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from leanjoin.engine.check.explore import TARGETS, Result
from leanjoin.engine.check.model import Bounds, Model
from leanjoin.engine.check.report import counterexample

from .check_parallel import explore_parallel

EXIT_VIOLATION: Final = 1
EXIT_TOO_WEAK: Final = 3


def save_trace(records: list[dict[str, Any]], directory: Path, name: str) -> Path:
    """Write ``records`` as ``directory/name.jsonl`` (the specs/traces format)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.jsonl"
    path.write_text(
        "".join(json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n" for r in records)
    )
    return path


class _Bars:
    """A progress bar per BFS level (an Observer of the search)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None
        self._start = time.perf_counter()

    def level_start(self, depth: int, frontier: int) -> None:
        self._task = self._progress.add_task(f"depth {depth:>2}", total=frontier, note="")

    def advance(self, expanded: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, expanded)

    def level_end(self, depth: int, frontier: int, states: int) -> None:
        if self._task is not None:
            elapsed = time.perf_counter() - self._start
            note = f"{states:>9,} states  next frontier {frontier:>8,}  {elapsed:6.1f} s"
            self._progress.update(self._task, note=note)


def run_check(model: Model, depth: int, workers: int, console: Console) -> tuple[Result, float]:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
    )
    start = time.perf_counter()
    with progress:
        result = explore_parallel(model, depth, workers, _Bars(progress))
    return result, time.perf_counter() - start


def _report(result: Result, elapsed: float, console: Console) -> None:
    extent = "whole space" if result.complete else "bound reached"
    if result.violation is not None:
        extent = "stopped at a violation"
    rate = result.states / elapsed if elapsed > 0 else 0.0
    console.print(
        f"states {result.states:,}  transitions {result.transitions:,}  "
        f"depth {result.depth} ({extent})  time {elapsed:.1f} s  {rate:,.0f} states/s",
        highlight=False,
        soft_wrap=True,
    )
    shown = [f"{label}@{len(path)}" for label, path in sorted(result.reached.items())]
    console.print(f"reached: {' '.join(shown) or '-'}", highlight=False, soft_wrap=True)


@click.command(
    "check",
    epilog="\b\nExit status:\n  0  no invariant broke and every target was reached\n"
    "  1  an invariant broke (the shortest counterexample is printed and saved)\n"
    "  2  usage error\n  3  a target was never reached (the model or depth is too weak)",
)
@click.option(
    "--depth",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="Moves per run: the breadth-first depth bound.",
)
@click.option(
    "--save",
    "save_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the counterexample trace (JSONL, specs/traces format).",
)
@click.option(
    "--faults",
    type=click.IntRange(min=0),
    default=Bounds().max_faults,
    show_default=True,
    help="Fault moves per run.",
)
@click.option(
    "--connects",
    type=click.IntRange(min=1),
    default=Bounds().max_connects,
    show_default=True,
    help="User connects per run (a reconnect after a disconnect).",
)
@click.option(
    "--rival/--no-rival",
    default=Bounds().rival,
    show_default=True,
    help="Another client holds the only slot at first, so ours queues.",
)
@click.option(
    "--stale",
    type=click.IntRange(min=0),
    default=Bounds().max_stale,
    show_default=True,
    help="Late inputs kept from the newest superseded attempt.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=os.cpu_count() or 1,
    show_default=True,
    help="Processes expanding the frontier.",
)
def check(
    depth: int,
    save_dir: Path | None,
    faults: int,
    connects: int,
    rival: bool,
    stale: int,
    workers: int,
) -> None:
    """Exhaustively check the client and server engines against the protocol's invariants."""
    bounds = Bounds(max_faults=faults, max_connects=connects, rival=rival, max_stale=stale)
    model = Model(bounds=bounds)
    console = Console()
    result, elapsed = run_check(model, depth, workers, console)
    _report(result, elapsed, console)
    if result.violation is not None:
        violation = result.violation
        console.print(
            f"[bold red]violation[/bold red] after {len(violation.path)} moves "
            f"(a shortest counterexample):"
        )
        found = counterexample(model, violation, name=f"counterexample-{violation.name}")
        for line in found.lines:
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        if save_dir is not None:
            path = save_trace(found.records, save_dir, f"counterexample-{violation.name}")
            console.print(f"trace: {path}", highlight=False)
        sys.exit(EXIT_VIOLATION)
    if result.missing:
        console.print(
            f"[bold yellow]model too weak[/bold yellow] at depth {depth}: never reached "
            f"{', '.join(result.missing)} (of {', '.join(TARGETS)})"
        )
        sys.exit(EXIT_TOO_WEAK)
    console.print("[bold green]no violation[/bold green]; every reachability target reached")
