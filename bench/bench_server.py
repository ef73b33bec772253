"""Signaling benchmark of the reference server: N concurrent raw WebSocket
clients through join, room_info and the initial-state ack, on loopback.

The server runs as its own process (``leanjoin serve``), so its memory is
measured alone: RSS once it is up, and again when every client has finished
its handshake and sits idle; the difference over N is the memory an idle
connection costs. The clients never join the LiveKit room, so no media flows.
Latency is per client, from opening the socket to holding both
``livekit_room_info`` and the ack.

    .venv/bin/python bench/bench_server.py            # 500 clients
    .venv/bin/python bench/bench_server.py --clients 100 --initial prompt
    .venv/bin/python bench/bench_server.py --workers 2 # two server processes, one port

Prints a markdown table row (with its header).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from proc_status import proc_status
from server_process import ServerProcess
from websockets.asyncio.client import ClientConnection, connect

from leanjoin.adapters.client.png import encode_png

HANDSHAKE_TIMEOUT = 60.0  # seconds one client may take before it counts as failed
SETTLE = 1.0  # seconds idle before the second memory reading


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_pids(pid: int) -> list[int]:
    """The server process and its children (the workers of ``--workers``)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            if parent == pid:
                children.append(int(entry.name))
    return [pid, *children]


def _tree_cpu_seconds(pids: list[int]) -> float:
    return sum(_cpu_seconds(pid) for pid in pids)


def _tree_rss_kib(pids: list[int]) -> int:
    return sum(proc_status(pid)["VmRSS"] for pid in pids)


def _initial_frame(kind: str) -> str:
    if kind == "prompt":
        return json.dumps({"type": "prompt", "prompt": "benchmark"})
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    data = base64.b64encode(encode_png(image)).decode()
    return json.dumps({"type": "set_image", "image_data": data})


async def _handshake(
    url: str, initial: str, sockets: list[ClientConnection], start: asyncio.Event, delay: float
) -> float | None:
    """Seconds from opening the socket to room_info plus ack; None if it failed."""
    await start.wait()
    await asyncio.sleep(delay)  # arrivals spread over --ramp; all stay connected
    began = time.perf_counter()
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            # No proxy lookup (it scans the environment on every connect) and no
            # compression offer (the server declines it): the load generator's own
            # CPU shares the machine with the server.
            socket = await connect(
                url, max_size=None, open_timeout=None, proxy=None, compression=None
            )
            sockets.append(socket)  # kept open (idle) for the memory reading
            await socket.send(json.dumps({"type": "livekit_join", "passthrough": False}))
            await socket.send(initial)
            wanted = {"livekit_room_info", "set_image_ack", "prompt_ack"}
            seen: set[str] = set()
            while len(seen) < 2:
                frame = json.loads(await socket.recv())
                if frame["type"] not in wanted or frame.get("success") is False:
                    return None
                seen.add(frame["type"])
    except (OSError, TimeoutError, Exception):
        return None
    return time.perf_counter() - began


async def _run(clients: int, initial_kind: str, ramp: float, workers: int, level: str) -> None:
    # --capacity is per worker: each admits every client it may get.
    server = ServerProcess.start(
        None, "--log-level", level, "--capacity", str(clients), "--workers", str(workers)
    )
    url, key = server.url, server.api_key
    sockets: list[ClientConnection] = []
    try:
        await asyncio.sleep(0.5)  # let the server settle before the baseline
        pids = _server_pids(server.pid)
        assert len(pids) == (1 if workers == 1 else 1 + workers), pids
        before = _tree_rss_kib(pids)
        cpu_before = _tree_cpu_seconds(pids)
        bench_cpu_before = time.process_time()
        start = asyncio.Event()
        full_url = f"{url}?api_key={key}&model=bench"
        initial = _initial_frame(initial_kind)
        tasks = [
            asyncio.create_task(_handshake(full_url, initial, sockets, start, i * ramp / clients))
            for i in range(clients)
        ]
        await asyncio.sleep(0)  # every task waits on the start line
        began = time.perf_counter()
        start.set()
        results = await asyncio.gather(*tasks)
        wall = time.perf_counter() - began
        server_cpu = _tree_cpu_seconds(pids) - cpu_before
        bench_cpu = time.process_time() - bench_cpu_before
        await asyncio.sleep(SETTLE)
        after = _tree_rss_kib(pids)
        open_now = sum(1 for s in sockets if s.close_code is None)
    finally:
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
        server.stop()
    latencies = sorted(r for r in results if r is not None)
    done = len(latencies)
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    p99 = latencies[min(done - 1, int(0.99 * done))] * 1000 if latencies else float("nan")
    per_connection = (after - before) / max(open_now, 1)
    print(
        "| clients | workers | arrivals | initial state | all complete | p50 ms | p99 ms | wall s "
        "| server CPU s (ms per handshake) | bench client CPU s "
        "| server RSS before -> after MiB | RSS per idle connection KiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {clients} | {workers} | {'all at once' if ramp == 0 else f'over {ramp:g} s'} | {initial_kind} | {'yes' if done == clients else 'no'} ({done}/{clients}) "
        f"| {p50:.1f} | {p99:.1f} | {wall:.2f} "
        f"| {server_cpu:.2f} ({server_cpu / clients * 1000:.2f}) | {bench_cpu:.2f} "
        f"| {before / 1024:.1f} -> {after / 1024:.1f} "
        f"| {per_connection:.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--initial", choices=("image", "prompt"), default="image")
    parser.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        help="spread the arrivals over this many seconds (0: all at once)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on the one port (leanjoin serve --workers); CPU and "
        "memory are summed over them and their parent",
    )
    parser.add_argument(
        "--server-log-level",
        choices=("WARNING", "INFO"),
        default="WARNING",
        help="the server's logging: WARNING as `leanjoin serve`, INFO (a line per "
        "session phase) as `leanjoin -v serve`",
    )
    args = parser.parse_args()
    asyncio.run(_run(args.clients, args.initial, args.ramp, args.workers, args.server_log_level))


if __name__ == "__main__":
    main()
