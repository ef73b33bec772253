"""diagrams/ is generated from the engines' tables and must stay current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from leanjoin.adapters.cli import diagrams
from leanjoin.engine.client import session as client

DIAGRAMS = Path(__file__).resolve().parents[1] / "diagrams"


def test_committed_diagrams_are_current() -> None:
    assert diagrams.stale(DIAGRAMS) == [], "run 'leanjoin diagrams' and commit diagrams/"


@pytest.mark.parametrize("name", sorted(diagrams.ENGINES))
def test_mermaid_nodes_and_edges_match_the_table(name: str) -> None:
    states, edges = diagrams.table_size(name)
    text = (DIAGRAMS / f"{name}.mmd").read_text()
    assert len(re.findall(r'^\s*state "', text, re.M)) == states
    labels = re.findall(r"^\s*(\w+) --> (\w+): (.+)$", text, re.M)
    # GraphMachine merges triggers sharing a source and destination: count labels.
    assert sum(len(label.split(" | ")) for _src, _dst, label in labels) == edges


@pytest.mark.parametrize("name", sorted(diagrams.ENGINES))
def test_dot_nodes_and_edges_match_the_table(name: str) -> None:
    states, edges = diagrams.table_size(name)
    text = (DIAGRAMS / f"{name}.dot").read_text()
    assert len(re.findall(r"^\t\w+ \[label=", text, re.M)) == states
    labels = re.findall(r'^\t\w+ -> \w+ \[label="?([^"\]]+)"?', text, re.M)
    assert sum(len(label.split(" | ")) for label in labels) == edges


def test_client_table_in_the_spec_matches_the_engine() -> None:
    spec = (Path(__file__).resolve().parents[1] / "specs" / "protocol.md").read_text()
    triggers = {row[0] for row in client.TRANSITIONS}
    rows = set(re.findall(r"^\| (\w+) \| [^|]+ \| [^|]+ \|$", spec, re.M)) - {"trigger"}
    assert triggers <= rows, f"spec §8 lacks {triggers - rows}"


def test_check_fails_when_stale(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(diagrams.diagrams, ["--check", "--dir", str(tmp_path)])
    assert result.exit_code != 0 and "stale" in result.output
    assert runner.invoke(diagrams.diagrams, ["--dir", str(tmp_path)]).exit_code == 0
    assert runner.invoke(diagrams.diagrams, ["--check", "--dir", str(tmp_path)]).exit_code == 0
