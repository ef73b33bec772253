"""Every committed conformance trace replays exactly on a fresh engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trace_scenarios import SCENARIOS, TRACES, build, dump

from leanjoin.engine.check.trace import replay

TRACE_FILES = sorted(TRACES.glob("*.jsonl"))


@pytest.mark.parametrize("path", TRACE_FILES, ids=[p.stem for p in TRACE_FILES])
def test_trace_replays(path: Path) -> None:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert replay(records) == []


def test_every_scenario_has_its_committed_trace() -> None:
    assert {p.stem for p in TRACE_FILES} == set(SCENARIOS)
    for name in SCENARIOS:
        assert (TRACES / f"{name}.jsonl").read_text() == dump(build(name)), f"regenerate {name}"


def test_a_changed_expectation_is_caught() -> None:
    records = [
        json.loads(line)
        for line in (TRACES / "lean_join_with_image_and_prompt.jsonl").read_text().splitlines()
    ]
    records[2]["expect"] = records[2]["expect"][:1]  # drop the initial-state frame
    (mismatch,) = replay(records)
    assert mismatch.step == 2
