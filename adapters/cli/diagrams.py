"""State diagrams generated from the engines' transition tables.

The engines stay free of ``transitions``' Graph extension (engine rule 3): this
module rebuilds each table on a ``GraphMachine`` and asks it for Mermaid and
Graphviz DOT text, plus SVG where a ``dot`` binary is installed. ``diagrams/``
is only ever written by :func:`write`; :func:`stale` tells whether it is current.
"""

from __future__ import annotations

import enum
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Literal

import click
from transitions.extensions import GraphMachine

from leanjoin.engine.client import session as client
from leanjoin.engine.server import session as server

ENGINES: Final[dict[str, ModuleType]] = {"client": client, "server": server}
# Relative to where the command runs (the repository root), like any output path.
DEFAULT_DIR: Final = Path("diagrams")


def _phases(module: ModuleType) -> type[enum.Enum]:
    phase_type: type[enum.Enum] = type(module.TRANSITIONS[0][1][0])
    return phase_type


def table_size(name: str) -> tuple[int, int]:
    """(states, edges) of an engine's table, one edge per (source, trigger)."""
    module = ENGINES[name]
    edges = sum(len(sources) for _trigger, sources, _dest, *_ in module.TRANSITIONS)
    return len(_phases(module)), edges


def _graph(name: str, engine: Literal["graphviz", "mermaid"]) -> Any:
    module = ENGINES[name]
    phases = _phases(module)

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
        title=f"leanjoin {name} engine",
    )
    for trigger, sources, dest, *_callbacks in module.TRANSITIONS:
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
    for name in ENGINES:
        rendered = render(name)
        files.update(rendered)
        states, edges = table_size(name)
        readme += [
            f"## {name} engine ({states} states, {edges} edges)",
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
        for name in ENGINES:
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


@click.command("diagrams")
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
