"""The README's Python examples run as written, against the reference server
(the URL and key they name are pointed at a server on a free port)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from client_helpers import served

from leanjoin.adapters.client.png import encode_png

README = Path(__file__).resolve().parents[1] / "README.md"
KEY = "readme-example-key"


def example(name: str) -> str:
    """The ```python block right after ``<!-- readme-example: name -->``."""
    match = re.search(
        rf"<!-- readme-example: {re.escape(name)} -->\s*```python\n(.*?)```",
        README.read_text(),
        re.S,
    )
    assert match is not None, f"README has no example {name!r}"
    return match.group(1)


def test_the_first_steps_python_example_runs(tmp_path: Path) -> None:
    code = example("python-first-steps")
    (tmp_path / "cat.png").write_bytes(
        encode_png(np.full((64, 64, 3), (200, 120, 40), dtype=np.uint8))
    )
    with served(KEY) as url:
        script = code.replace("ws://127.0.0.1:8765/v1/stream", url).replace("dev-key", KEY)
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("connected: ") and lines[0] != "connected: None"
    assert re.fullmatch(r"output frame \(\d+, \d+, 3\)", lines[-1]), done.stdout


def feature_rows() -> list[list[str]]:
    """The rows of the README's feature table (cells, stripped)."""
    text = README.read_text()
    section = text.split("## Features against the official clients", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]


def test_every_feature_row_names_a_test_that_exists() -> None:
    rows = feature_rows()
    assert len(rows) >= 20
    for row in rows:
        assert len(row) == 5, row
        node = row[4].strip("`")
        path, _, name = node.partition("::")
        module = README.parent / path
        assert module.is_file(), f"{row[0]}: no {path}"
        function = name.split("[", 1)[0]
        assert re.search(rf"^(async )?def {re.escape(function)}\(", module.read_text(), re.M), (
            f"{row[0]}: {path} has no test {function}"
        )
