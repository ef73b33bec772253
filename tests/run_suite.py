"""The whole test suite, with each module that runs the real LiveKit client in
a pytest process of its own (``./dev test`` without arguments runs this).

The LiveKit client's native library (libwebrtc) runs threads of its own; a
native crash in one of them takes its whole process down, and in a shared
process it would sink whatever test happened to run then. So the modules
marked ``pytest.mark.livekit`` each get a process, the rest share one, and a
process that dies by a signal is reported with the module it was running.
The last line sums every process up as ``N passed, N failed``.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Final

TESTS: Final = Path(__file__).resolve().parent
MARK: Final = re.compile(r"pytest\.mark\.livekit\b")
COUNT: Final = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?|deselected)\b")


def livekit_modules() -> list[str]:
    """Test modules marked as running the real LiveKit client, by path."""
    return sorted(
        f"tests/{path.name}"
        for path in TESTS.glob("test_*.py")
        if MARK.search(path.read_text(encoding="utf-8"))
    )


def run(label: str, args: list[str], totals: Counter[str]) -> str | None:
    """One pytest process, its output passed through; a problem, if any."""
    print(f"\n==== {label}", flush=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", *args],
        cwd=TESTS.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    last_counts: dict[str, int] = {}
    for line in process.stdout:
        sys.stdout.write(line)
        found = {
            kind.rstrip("s") if kind == "errors" else kind: int(n)
            for n, kind in COUNT.findall(line)
        }
        if found and (" in " in line):  # pytest's closing line: "3 passed, 1 skipped in 2.1s"
            last_counts = found
    code = process.wait()
    sys.stdout.flush()
    totals.update(last_counts)
    if code < 0:
        name = signal.Signals(-code).name
        return f"CRASHED: {label} died with {name} (see the faulthandler traceback above)"
    if code not in (0, 5):  # 5: a module whose tests were all deselected
        return f"FAILED: {label} (pytest exit {code})"
    return None


def main(extra: list[str]) -> int:
    modules = livekit_modules()
    totals: Counter[str] = Counter()
    problems = [
        run("everything but the LiveKit modules", ["-m", "not livekit", *extra], totals),
        *(run(module, [module, *extra], totals) for module in modules),
    ]
    problems = [p for p in problems if p is not None]
    print("\n==== summary")
    for problem in problems:
        print(problem)
    others = ", ".join(f"{totals[k]} {k}" for k in ("xfailed", "xpassed", "error") if totals[k])
    if others:
        print(others)
    print(f"{totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
    return 1 if problems or totals["failed"] or totals["error"] else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
