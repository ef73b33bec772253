"""A distributed Locust run of ``leanjoin.adapters.load`` against ``leanjoin
serve``, all on this machine: the server in its own process, a headless
Locust master and ``--workers`` worker processes on 127.0.0.1 (the same
command lines as on several machines, see the README), then the chart.

    .venv/bin/python bench/load_locust.py          # 2 workers, 200 users, 60 s
    .venv/bin/python bench/load_locust.py --workers 1 --users 50 --run-time 20
    .venv/bin/python bench/load_locust.py --workers 1 --server-workers 2 \
        --capacity 1000 --users 1000 --spawn-rate 100 --run-time 90 \
        --session-seconds 40 --out out/load1k --chart out/load1k/chart.png

Writes ``<out>/locust_*.csv`` (with the full history), ``<out>/locust.html``
(Locust's own report), the processes' logs, and the PNG ``--chart`` (drawn by
``bench/locust_chart.py``). Prints the Locust workers' CPU (sampled from
``/proc`` every 5 s) and a markdown table of the request types.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import socket
import subprocess
import sys
import threading
import time
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


def _cpu_seconds(pid: int) -> float:
    """The process's user + system CPU so far, from ``/proc/<pid>/stat`` (Linux)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """Samples processes' CPU (percent of one core) every ``interval`` seconds
    in a thread, until :meth:`stop`; keeps each process's samples."""

    def __init__(self, pids: list[int], interval: float = 5.0) -> None:
        self.samples: dict[int, list[float]] = {pid: [] for pid in pids}
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last: dict[int, tuple[float, float]] = {}
        for pid in self.samples:
            with contextlib.suppress(OSError, IndexError):  # already gone
                last[pid] = (time.monotonic(), _cpu_seconds(pid))
        while not self._done.wait(self._interval):
            for pid, (then, used) in list(last.items()):
                try:
                    now, cpu = time.monotonic(), _cpu_seconds(pid)
                except (OSError, IndexError):
                    del last[pid]
                    continue
                self.samples[pid].append(100.0 * (cpu - used) / (now - then))
                last[pid] = (now, cpu)

    def stop(self) -> str:
        """Stops sampling; a line per process: mean and peak of its samples."""
        self._done.set()
        self._thread.join()
        lines = []
        for pid, samples in self.samples.items():
            if samples:
                mean = sum(samples) / len(samples)
                lines.append(
                    f"pid {pid}: CPU mean {mean:.0f}%, peak {max(samples):.0f}% "
                    f"({len(samples)} samples of {self._interval:g} s)"
                )
        return "\n".join(lines)


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
            f"{float(row['Median Response Time']):.0f} | {row['95%']} | {row['99%']} | "
            f"{float(row['Max Response Time']):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--spawn-rate", type=float, default=20.0)
    parser.add_argument("--run-time", type=int, default=60, help="seconds")
    parser.add_argument(
        "--capacity", type=int, default=100, help="the server's sessions at once (per process)"
    )
    parser.add_argument("--server-workers", type=int, default=1, help="leanjoin serve --workers")
    parser.add_argument("--session-seconds", type=float, default=5.0)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("out/load"))
    parser.add_argument("--chart", type=Path, default=Path("bench/locust_run.png"))
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    prefix = args.out / "locust"
    server = ServerProcess.start(
        args.out / "serve.log",
        "--capacity",
        str(args.capacity),
        "--workers",
        str(args.server_workers),
    )
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
        watch = CpuWatch([worker.pid for worker in workers])
        code = master.wait(timeout=args.run_time + 180)
        for worker in workers:
            worker.wait(timeout=60)
        cpu = watch.stop()
    finally:
        server.stop()
    print(f"Locust workers' CPU (percent of one core):\n{cpu}")
    print(f"locust master exit code {code}; logs and CSVs in {args.out}")
    title = (
        f"leanjoin.adapters.load on Locust: {args.users} signaling-only users, "
        f"{args.workers} workers, {args.session_seconds:g} s sessions, "
        f"leanjoin serve --workers {args.server_workers} --capacity {args.capacity} "
        "(one 2-core machine)"
    )
    draw_chart(prefix, args.chart, title)
    print(f"chart: {args.chart}")
    print(_table(prefix))


if __name__ == "__main__":
    main()
