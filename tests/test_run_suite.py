"""The suite runner (tests/run_suite.py): the real-LiveKit modules run apart,
and a process that dies natively is reported with its module, not lost."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import run_suite


def test_every_module_that_runs_the_real_livekit_client_runs_apart() -> None:
    modules = set(run_suite.livekit_modules())
    assert {
        "tests/test_client_adapters.py",
        "tests/test_e2e.py",
        "tests/test_fault_matrix.py",
        "tests/test_livekit_double.py",
        "tests/test_secrets.py",
    } <= modules
    # Any module that makes a real rtc.Room is among them.
    needle = "rtc.Room" + "("  # not written whole, or this module would match
    for path in sorted(run_suite.TESTS.glob("test_*.py")):
        if needle in path.read_text(encoding="utf-8"):
            assert f"tests/{path.name}" in modules, path.name


def test_a_native_crash_is_reported_with_its_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crashing = tmp_path / "test_crashes.py"
    crashing.write_text(
        "import ctypes\n\n"
        "def test_passes():\n    pass\n\n"
        "def test_dies():\n    ctypes.string_at(0)\n"
    )
    totals: Counter[str] = Counter()
    problem = run_suite.run("test_crashes.py", [str(crashing), "-p", "no:cacheprovider"], totals)
    assert problem is not None and problem.startswith("CRASHED: test_crashes.py died with SIGSEGV")
    assert "test_dies" in capsys.readouterr().out  # faulthandler names the test


def test_counts_are_summed_over_the_processes(tmp_path: Path) -> None:
    module = tmp_path / "test_some.py"
    module.write_text(
        "import pytest\n\ndef test_a():\n    pass\n\n@pytest.mark.skip\ndef test_b():\n    pass\n"
    )
    totals: Counter[str] = Counter()
    assert run_suite.run("one", [str(module), "-p", "no:cacheprovider"], totals) is None
    assert run_suite.run("two", [str(module), "-p", "no:cacheprovider"], totals) is None
    assert (totals["passed"], totals["skipped"], totals["failed"]) == (2, 2, 0)
