"""diagrams/ is generated from the engines' tables and must stay current."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from leanjoin.adapters.cli import diagrams
from leanjoin.engine.client import ack_watch
from leanjoin.engine.client import session as client
from leanjoin.engine.table import Row

DIAGRAMS = Path(__file__).resolve().parents[1] / "diagrams"


def test_committed_diagrams_are_current() -> None:
    assert diagrams.stale(DIAGRAMS) == [], "run 'leanjoin diagrams' and commit diagrams/"


@pytest.mark.parametrize("name", sorted(diagrams.TABLES))
def test_mermaid_nodes_and_edges_match_the_table(name: str) -> None:
    states, edges = diagrams.table_size(name)
    text = (DIAGRAMS / f"{name}.mmd").read_text()
    assert len(re.findall(r'^\s*state "', text, re.M)) == states
    labels = re.findall(r"^\s*(\w+) --> (\w+): (.+)$", text, re.M)
    # GraphMachine merges triggers sharing a source and destination: count labels.
    assert sum(len(label.split(" | ")) for _src, _dst, label in labels) == edges


@pytest.mark.parametrize("name", sorted(diagrams.TABLES))
def test_dot_nodes_and_edges_match_the_table(name: str) -> None:
    states, edges = diagrams.table_size(name)
    text = (DIAGRAMS / f"{name}.dot").read_text()
    assert len(re.findall(r"^\t\w+ \[label=", text, re.M)) == states
    labels = re.findall(r'^\t\w+ -> \w+ \[label=(?:"([^"]+)"|(\w+))', text, re.M)
    labels = [quoted or bare for quoted, bare in labels]
    assert sum(len(label.split(" | ")) for label in labels) == edges


def _spec_rows() -> set[tuple[str, str]]:
    """(trigger, source phase) pairs of the spec's tables (§8, §8.1)."""
    spec = (Path(__file__).resolve().parents[1] / "specs" / "protocol.md").read_text()
    pairs: set[tuple[str, str]] = set()
    for trigger, sources in re.findall(r"^\| (\w+) \| ([^|]+) \| [^|]+ \|$", spec, re.M):
        pairs.update((trigger, s.strip()) for s in sources.split(","))
    return pairs


@pytest.mark.parametrize(
    "table", [client.TRANSITIONS, ack_watch.ACK_WATCH_TRANSITIONS], ids=["client", "ack_watch"]
)
def test_client_tables_in_the_spec_match_the_engine(table: tuple[Row[Any], ...]) -> None:
    """Every (trigger, source) row of the engine is written in the spec, apart
    from the spec's shorthands for long source lists."""
    rows = _spec_rows()
    shorthand = {"opening … publishing", "every phase but disconnected"}
    missing = {
        (trigger, source.value)
        for trigger, sources, *_ in table
        for source in sources
        if (trigger, source.value) not in rows
        and not any((trigger, short) in rows for short in shorthand)
    }
    assert not missing, f"spec §8 lacks {sorted(missing)}"


def test_check_fails_when_stale(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(diagrams.diagrams, ["--check", "--dir", str(tmp_path)])
    assert result.exit_code != 0 and "stale" in result.output
    assert runner.invoke(diagrams.diagrams, ["--dir", str(tmp_path)]).exit_code == 0
    assert runner.invoke(diagrams.diagrams, ["--check", "--dir", str(tmp_path)]).exit_code == 0
