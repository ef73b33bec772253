"""The README's engine example runs as written."""

from __future__ import annotations

import re
from pathlib import Path


def test_readme_engine_example_runs() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (example,) = [
        block
        for block in re.findall(r"```python\n(.*?)```", readme, re.S)
        if "ClientSession" in block
    ]
    namespace: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["session"].get_timer() is not None  # type: ignore[attr-defined]
