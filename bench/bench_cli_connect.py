"""Time to connected through the command line, with and without a reference image (issue #14).

The real ``leanjoin connect`` runs as a child process against ``leanjoin serve``
(its own process, as in ``bench_first_frame.py``: a simulated 20 Mbit/s
signaling uplink, a 1 s LiveKit media setup delay, frame and reference limits
raised for an 8 MB image). Each run starts the command with ``--json
--seconds 0`` (and ``--image``/``--prompt`` for the sizes above 0) and reads
its stdout until the ``session_started`` line. Sizes alternate within each
repeat so that machine load falls on both alike.

Two times per run, both through the CLI:

* *wall*: from starting the process to reading the ``session_started`` line
  (interpreter start and imports included, the same for every size);
* *in-CLI*: the ``t`` of that line, from the command's connect run (after it
  read and encoded the image file) to connected.

The goal (issue #14): wall time to connected with an 8 MB image <= 1.05x the
time with none. Before the fix the image was converted twice (~0.2 s at 8 MB)
before the socket opened.

    .venv/bin/python bench/bench_cli_connect.py
    .venv/bin/python bench/bench_cli_connect.py --sizes 0,8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import attrs
from bench_first_frame import MEDIA_SETUP, PROMPT, SERVER_LIMIT, SETTLE, UPLINK, make_reference
from server_process import ServerProcess

LEANJOIN: Final = Path(sys.executable).parent / "leanjoin"
RUN_TIMEOUT: Final = 60.0


@attrs.frozen
class Run:
    size_mb: float
    wall: float | None
    in_cli: float | None
    error: str | None = None


def run_cli(url: str, key: str, image: Path | None) -> Run:
    """One ``leanjoin connect``: start it, read stdout to ``session_started``, let it leave."""
    size = 0.0 if image is None else image.stat().st_size / 1e6
    command = [str(LEANJOIN), "connect", url, "--model", "echo", "--json", "--seconds", "0"]
    if image is not None:
        command += ["--image", str(image), "--prompt", PROMPT]
    began = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LEANJOIN_API_KEY": key},
    )
    assert process.stdout is not None
    wall = in_cli = None
    for line in process.stdout:
        event = json.loads(line)
        if event.get("event") == "session_started":
            wall = time.perf_counter() - began
            in_cli = float(event["t"])
            break
    try:
        _out, err = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        _out, err = process.communicate()
    error = None
    if wall is None:
        error = f"exit {process.returncode}: {err.strip().splitlines()[-1:] or 'no output'}"
    return Run(size, wall, in_cli, error)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present and len(present) == len(values) else None


def _s(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def report(sizes: list[float], runs: list[Run], command: str) -> None:
    def med(size: float, field: str) -> float | None:
        return _median([getattr(r, field) for r in runs if r.size_mb == size])

    base_wall, base_cli = med(sizes[0], "wall"), med(sizes[0], "in_cli")
    print(f"command: `{command}`\n")
    print(
        "| image MB | wall to connected s | ratio to no image | in-CLI to connected s "
        "| ratio to no image |"
    )
    print("|---|---|---|---|---|")
    for size in sizes:
        wall, in_cli = med(size, "wall"), med(size, "in_cli")
        wall_ratio = None if wall is None or not base_wall else wall / base_wall
        cli_ratio = None if in_cli is None or not base_cli else in_cli / base_cli
        print(
            f"| {size:g} | {_s(wall)} | {_s(wall_ratio, 2)} | {_s(in_cli)} | {_s(cli_ratio, 2)} |"
        )
    print(f"\nuplink {UPLINK:,} B/s, media setup {MEDIA_SETUP:g} s; medians of the runs below\n")
    print("| image MB | wall s | in-CLI s | error |\n|---|---|---|---|")
    for r in runs:
        print(f"| {r.size_mb:.2f} | {_s(r.wall)} | {_s(r.in_cli)} | {r.error or ''} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="0,8", help="image sizes in MB (10^6 B); 0 first")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    command = " ".join([".venv/bin/python", "bench/bench_cli_connect.py", *sys.argv[1:]])
    sizes = [float(s) for s in args.sizes.split(",")]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-cli-connect-") as tmp:
        images: dict[float, Path | None] = {}
        for index, size in enumerate(sizes):
            reference = make_reference(size, seed=index + 1)
            path = None
            if reference.png is not None:
                path = Path(tmp) / f"reference-{size:g}MB.png"
                path.write_bytes(reference.png)
            images[size] = path
        server = ServerProcess.start(
            Path(tmp) / "server.log",
            *("--uplink-bytes-per-second", str(UPLINK), "--media-setup-delay", str(MEDIA_SETUP)),
            *("--max-frame-bytes", str(SERVER_LIMIT), "--max-reference-bytes", str(SERVER_LIMIT)),
        )
        try:
            run_cli(server.url, server.api_key, None)  # warm-up: first-use costs, not reported
            for repeat in range(args.repeats):
                for size in sizes:
                    time.sleep(SETTLE)
                    run = run_cli(server.url, server.api_key, images[size])
                    runs.append(attrs.evolve(run, size_mb=size))
                    print(
                        f"# {repeat + 1}/{args.repeats} {size:g} MB: wall {_s(run.wall)} "
                        f"in-CLI {_s(run.in_cli)}{' error: ' + run.error if run.error else ''}",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            server.stop()
    report(sizes, runs, command)


if __name__ == "__main__":
    main()
