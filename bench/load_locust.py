"""A distributed Locust run of ``leanjoin.adapters.load`` against ``leanjoin
serve``, all on this machine: the server in its own process, a headless
Locust master and ``--workers`` worker processes on 127.0.0.1 (the same
command lines as on several machines, see the README), then the chart.

    .venv/bin/python bench/load_locust.py          # 2 workers, 200 users, 60 s
    .venv/bin/python bench/load_locust.py --workers 1 --users 50 --run-time 20

Writes ``<out>/locust_*.csv`` (with the full history), ``<out>/locust.html``
(Locust's own report), the processes' logs, and the PNG ``--chart`` (drawn by
``bench/locust_chart.py``). Prints a markdown table of the request types.
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

from locust_chart import draw_chart
from server_process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "adapters" / "load" / "locustfile.py"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _locust(log: Path, api_key: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "LEANJOIN_"))}
    env |= {"LEANJOIN_API_KEY": api_key, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )


def _table(prefix: Path) -> str:
    with Path(f"{prefix}_stats.csv").open() as file:
        rows = list(csv.DictReader(file))
    lines = [
        "| request type | count | failures | median ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        kind = row["Type"] or "(all)"
        lines.append(
            f"| {kind} | {row['Request Count']} | {row['Failure Count']} | "
            f"{row['Median Response Time']} | {row['95%']} | {row['99%']} | "
            f"{float(row['Max Response Time']):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--spawn-rate", type=float, default=20.0)
    parser.add_argument("--run-time", type=int, default=60, help="seconds")
    parser.add_argument("--capacity", type=int, default=100, help="the server's sessions at once")
    parser.add_argument("--session-seconds", type=float, default=5.0)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("out/load"))
    parser.add_argument("--chart", type=Path, default=Path("bench/locust_run.png"))
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / "locust"
    server = ServerProcess.start(args.out / "serve.log", "--capacity", str(args.capacity))
    port = _free_port()
    try:
        master = _locust(
            args.out / "master.log",
            server.api_key,
            "--master",
            "--master-bind-host=127.0.0.1",
            f"--master-bind-port={port}",
            f"--expect-workers={args.workers}",
            "--expect-workers-max-wait=60",
            "--headless",
            f"--users={args.users}",
            f"--spawn-rate={args.spawn_rate:g}",
            f"--run-time={args.run_time}s",
            f"--host={server.url}",
            f"--csv={prefix}",
            "--csv-full-history",
            f"--html={args.out / 'locust.html'}",
            f"--leanjoin-session-seconds={args.session_seconds:g}",
            f"--leanjoin-prompts={args.prompts}",
        )
        workers = [
            _locust(
                args.out / f"worker{index}.log",
                server.api_key,
                "--worker",
                "--master-host=127.0.0.1",
                f"--master-port={port}",
            )
            for index in range(1, args.workers + 1)
        ]
        code = master.wait(timeout=args.run_time + 180)
        for worker in workers:
            worker.wait(timeout=60)
    finally:
        server.stop()
    print(f"locust master exit code {code}; logs and CSVs in {args.out}")
    title = (
        f"leanjoin.adapters.load on Locust: {args.users} signaling-only users, "
        f"{args.workers} workers, {args.session_seconds:g} s sessions, "
        f"leanjoin serve --capacity {args.capacity} (one 2-core machine)"
    )
    draw_chart(prefix, args.chart, title)
    print(f"chart: {args.chart}")
    print(_table(prefix))


if __name__ == "__main__":
    main()
