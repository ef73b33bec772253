"""Which tests kill each mutant of tests/mutants.py (run on demand).

Runs the engine's test files once per mutant, in a fresh pytest process with
the mutant applied before any test module is imported (this file is also the
pytest plugin that applies it), and prints which tests fail: each mutant must
be killed by at least one. Exit status 1 if any survives.

    .venv/bin/python bench/mutation.py                 # every mutant, 2 at a time
    .venv/bin/python bench/mutation.py early_ack_dropped --show 20
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
ENGINE_TESTS: Final = (
    "tests/test_ack_watch.py",
    "tests/test_client_rules.py",
    "tests/test_client_stateful.py",
    "tests/test_checker.py",
    "tests/test_traces.py",
    "tests/test_server_engine.py",
)
ENV_NAME: Final = "LEANJOIN_MUTANT"


# ---- the plugin side: applied in the pytest process --------------------------------


def pytest_configure(config: pytest.Config) -> None:
    name = os.environ.get(ENV_NAME)
    if not name:
        return
    from mutants import CATALOGUE  # tests/ is on the path of this process

    patcher = pytest.MonkeyPatch()
    CATALOGUE[name](patcher)
    config.add_cleanup(patcher.undo)


# ---- the runner side ------------------------------------------------------------------


def killers(name: str, tests: tuple[str, ...]) -> tuple[list[str], float]:
    """The tests that fail with ``name`` applied, and how long the run took."""
    env = dict(os.environ, **{ENV_NAME: name})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench"), str(ROOT / "tests")])
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "mutation", "-p", "no:cacheprovider",
         *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    failed = re.findall(r"^FAILED (\S+)", run.stdout, re.M)
    if run.returncode not in (0, 1) and not failed:
        failed = [f"(pytest exited {run.returncode}: {run.stderr.strip()[-200:]})"]
    return failed, time.monotonic() - started


def main() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from mutants import CATALOGUE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--show", type=int, default=4, help="killing tests listed per mutant")
    parser.add_argument("--tests", nargs="+", default=list(ENGINE_TESTS))
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in CATALOGUE]
    if unknown:
        parser.error(f"unknown mutants {unknown}; known: {', '.join(CATALOGUE)}")
    names = args.names or list(CATALOGUE)
    with ThreadPoolExecutor(args.workers) as pool:
        results = dict(
            zip(names, pool.map(lambda n: killers(n, tuple(args.tests)), names), strict=True)
        )
    survivors = []
    print("| mutant | killed by | tests | run |")
    print("|---|---|---|---|")
    for name in names:
        failed, seconds = results[name]
        if not failed:
            survivors.append(name)
        shown = ", ".join(f.split("::", 1)[-1] for f in failed[: args.show])
        more = f" (+{len(failed) - args.show})" if len(failed) > args.show else ""
        print(f"| {name} | {shown or '**survived**'}{more} | {len(failed)} | {seconds:.0f} s |")
    print(f"\n{len(names) - len(survivors)} of {len(names)} mutants killed")
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
