"""State diagrams generated from the engines' transition tables.

The engines stay free of ``transitions``' Graph extension (engine rule 3): this
module rebuilds each table (the client session's, the client's initial-state
ack watch, the server session's) on a ``GraphMachine`` and asks it for Mermaid and
Graphviz DOT text, plus SVG where a ``dot`` binary is installed. ``diagrams/``
is only ever written by :func:`write`; :func:`stale` tells whether it is current.
"""

from __future__ import annotations

import enum
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

import click
from transitions.extensions import GraphMachine

from leanjoin.engine.client import ack_watch, session
from leanjoin.engine.server import session as server
from leanjoin.engine.table import Row

# Each drawn table: its rows and the diagram's title.
TABLES: Final[dict[str, tuple[tuple[Row[Any], ...], str]]] = {
    "client": (session.TRANSITIONS, "leanjoin client engine"),
    "ack_watch": (ack_watch.ACK_WATCH_TRANSITIONS, "leanjoin client: initial-state ack watch"),
    "server": (server.TRANSITIONS, "leanjoin server engine"),
}
# Relative to where the command runs (the repository root), like any output path.
DEFAULT_DIR: Final = Path("diagrams")


def _phases(name: str) -> type[enum.Enum]:
    phase_type: type[enum.Enum] = type(TABLES[name][0][0][1][0])
    return phase_type


def table_size(name: str) -> tuple[int, int]:
    """(states, edges) of a table, one edge per (source, trigger)."""
    edges = sum(len(sources) for _trigger, sources, _dest, *_ in TABLES[name][0])
    return len(_phases(name)), edges


def _graph(name: str, engine: Literal["graphviz", "mermaid"]) -> Any:
    table, title = TABLES[name]
    phases = _phases(name)

    class Model:
        pass

    model = Model()
    # A fresh machine whose current state is the initial one (styled "active").
    machine = GraphMachine(
        model=model,
        states=[phase.value for phase in phases],
        initial=next(iter(phases)).value,
        auto_transitions=False,
        graph_engine=engine,
        title=title,
    )
    for trigger, sources, dest, *_callbacks in table:
        target = None if dest is None else dest.value
        machine.add_transition(trigger, [s.value for s in sources], target)
    return model.get_graph()  # type: ignore[attr-defined]


def render(name: str) -> dict[str, str]:
    """The generated files of one engine, by file name."""
    mermaid: str = _graph(name, "mermaid").draw(None)
    dot: str = _graph(name, "graphviz").source
    return {f"{name}.mmd": mermaid.rstrip() + "\n", f"{name}.dot": dot.rstrip() + "\n"}


def render_all() -> dict[str, str]:
    files: dict[str, str] = {}
    readme = [
        "# State diagrams",
        "",
        "Generated from the engines' transition tables by `leanjoin diagrams`;",
        "never edit by hand. `leanjoin diagrams --check` fails when they are stale.",
        "",
    ]
    for name, (_table, title) in TABLES.items():
        rendered = render(name)
        files.update(rendered)
        states, edges = table_size(name)
        readme += [
            f"## {title.removeprefix('leanjoin ')} ({states} states, {edges} edges)",
            "",
            "```mermaid",
            rendered[f"{name}.mmd"].rstrip(),
            "```",
            "",
        ]
    files["README.md"] = "\n".join(readme)
    return files


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, text in render_all().items():
        path = directory / file_name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    dot = shutil.which("dot")
    if dot is not None:  # SVG only where Graphviz itself is installed
        for name in TABLES:
            svg = directory / f"{name}.svg"
            subprocess.run(
                [dot, "-Tsvg", str(directory / f"{name}.dot"), "-o", str(svg)], check=True
            )
            written.append(svg)
    return written


def stale(directory: Path = DEFAULT_DIR) -> list[str]:
    """Names of generated files that are missing or differ from the tables."""
    out = []
    for file_name, text in render_all().items():
        path = directory / file_name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            out.append(file_name)
    return out


@click.command(
    "diagrams",
    epilog="\b\nExit status:\n  0  written, or (--check) current\n"
    "  1  (--check) a diagram differs from the engines' tables, or writing failed\n"
    "  2  usage error",
)
@click.option("--check", is_flag=True, help="Fail if diagrams/ differs from the engines' tables.")
@click.option(
    "--dir", "directory", type=click.Path(path_type=Path), default=DEFAULT_DIR, show_default=True
)
def diagrams(check: bool, directory: Path) -> None:
    """Generate the state diagrams (Mermaid, DOT, SVG if `dot` exists)."""
    if check:
        outdated: Sequence[str] = stale(directory)
        if outdated:
            raise click.ClickException(f"stale: {', '.join(outdated)}; run 'leanjoin diagrams'")
        click.echo(f"diagrams in {directory} are current")
        return
    for path in write(directory):
        click.echo(f"wrote {path}")
