"""Soak: one long session against the reference server, with a prompt change
every second and a forced reconnect (room loss) every minute. Reports resident
memory (start, after the warm-up, end, and the slope after the warm-up in MiB per
minute), open file descriptors, threads, asyncio tasks and live Python objects
every ``--sample-every`` seconds; memory right before each forced reconnect and
``--settle`` seconds after it; prompts sent and acked, reconnects, output
frames, and every error event. A benchmark, not a test:

    .venv/bin/python bench/soak.py --server-process --minutes 10
    .venv/bin/python bench/soak.py --minutes 2 --json   # in-process; summary as JSON too

With ``--server-process`` the reference server runs as its own process
(``leanjoin serve``, as ``bench/bench_first_frame.py`` runs it), so the client's
memory and the server's (its LiveKit double, aiortc, PyAV) are measured apart,
and the server's log is scanned for errors. Without it, server, double and client
share this process and its memory.

``--malloc-trim`` has glibc hand freed memory back before every reading of the
client's (this process's) memory: what still grows then is memory in use.

The reconnect is a room loss: the LiveKit double drops the client, in-process by
``RoomHandle.disconnect_participants``, with a separate server by SIGUSR1 (which
``leanjoin serve`` handles by disconnecting every room's participants). The client
reconnects on a fresh attempt and replays its latest prompt. The loss comes half a
prompt period after a prompt, when no prompt awaits its ack (one that did would
fail with connection_lost, as it must, and count as failed). A prompt due while
reconnecting is counted as skipped (``set_prompt`` needs a connected session).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
from proc_status import proc_status
from server_process import ServerProcess

from leanjoin.adapters import (
    ConnectionState,
    ErrorOccurred,
    Event,
    NotConnectedError,
    RequestError,
    RetryScheduled,
    Session,
    SessionStarted,
    TestPattern,
    connect,
)
from leanjoin.adapters.server.reference import ReferenceServer

RECONNECT_BOUND = 30.0  # seconds a forced reconnect may take before the soak fails
REQUEST_BOUND = 10.0

# A forced reconnect: given the room the client is in, make the double drop it.
LoseRoom = Callable[[str], Awaitable[None]]


@attrs.frozen
class Memory:
    """One process's memory, from ``/proc/<pid>/status`` (MiB)."""

    rss: float
    anon: float  # RssAnon: heap and anonymous mappings, where a leak shows
    threads: int
    fds: int

    @staticmethod
    def of(pid: int | str = "self") -> Memory:
        fields = proc_status(pid)

        def mib(key: str) -> float:
            return round(fields[key] / 1024, 1)

        return Memory(
            mib("VmRSS"), mib("RssAnon"), fields["Threads"], len(os.listdir(f"/proc/{pid}/fd"))
        )


@attrs.frozen
class Sample:
    at: float
    client: Memory
    server: Memory | None  # None: the server shares the client's process
    tasks: int
    objects: int  # live Python objects of this process tracked by the garbage collector
    frames: int

    def line(self) -> str:
        text = (
            f"{self.at:7.1f} s  client rss {self.client.rss:6.1f} MiB (anon "
            f"{self.client.anon:6.1f}) fds {self.client.fds:3d} threads {self.client.threads:3d}"
        )
        if self.server is not None:
            text += (
                f" | server rss {self.server.rss:6.1f} MiB (anon {self.server.anon:6.1f}) "
                f"fds {self.server.fds:3d} threads {self.server.threads:3d}"
            )
        return f"{text} | tasks {self.tasks:3d} objects {self.objects:7d} frames {self.frames}"


@attrs.frozen
class Reconnect:
    at: float  # when the room was lost, seconds into the soak
    seconds: float  # until the client was connected again
    client_before: float  # RSS right before the loss (MiB)
    client_after: float  # RSS --settle seconds after the reconnect
    server_before: float | None
    server_after: float | None

    def line(self, number: int) -> str:
        text = (
            f"  reconnect {number} at {self.at:.0f} s: {self.seconds:.2f} s; client rss "
            f"{self.client_before} -> {self.client_after} MiB "
            f"({self.client_after - self.client_before:+.1f})"
        )
        if self.server_before is not None and self.server_after is not None:
            text += (
                f", server rss {self.server_before} -> {self.server_after} MiB "
                f"({self.server_after - self.server_before:+.1f})"
            )
        return text


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute; None for
    fewer than two distinct times."""
    try:
        fit = statistics.linear_regression([t for t, _ in points], [v for _, v in points])
    except statistics.StatisticsError:
        return None
    return round(fit.slope * 60, 2)


@attrs.define
class Tally:
    server_pid: int | None = None
    # glibc's malloc_trim: called before each reading of this process's memory.
    malloc_trim: Callable[[int], int] | None = None
    started: float = 0.0
    prompts_sent: int = 0
    prompts_acked: int = 0
    prompts_failed: collections.Counter[str] = attrs.Factory(collections.Counter)
    prompts_skipped: int = 0  # due while reconnecting
    reconnects: list[Reconnect] = attrs.Factory(list)
    sessions_started: int = 0
    retries: int = 0
    errors: collections.Counter[str] = attrs.Factory(collections.Counter)
    frames: int = 0
    samples: list[Sample] = attrs.Factory(list)

    def on_event(self, event: Event) -> None:
        if isinstance(event, SessionStarted):
            self.sessions_started += 1
        elif isinstance(event, RetryScheduled):
            self.retries += 1
        elif isinstance(event, ErrorOccurred):
            self.errors[f"{event.kind.value}{' (fatal)' if event.fatal else ''}"] += 1

    def now(self) -> float:
        return round(anyio.current_time() - self.started, 1)

    def memory(self) -> tuple[Memory, Memory | None]:
        if self.malloc_trim is not None:
            self.malloc_trim(0)
        server = None if self.server_pid is None else Memory.of(self.server_pid)
        return Memory.of(), server

    def census(self) -> collections.Counter[str]:
        """Live objects by type: which of them grow is where memory goes."""
        gc.collect()
        return collections.Counter(
            f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects()
        )

    def sample(self) -> Sample:
        gc.collect()  # count live objects, not garbage awaiting a collection
        client, server = self.memory()
        taken = Sample(
            self.now(), client, server, len(asyncio.all_tasks()), len(gc.get_objects()), self.frames
        )
        self.samples.append(taken)
        print(taken.line(), flush=True)
        return taken

    def summary(self, warm_up: float) -> dict[str, Any]:
        first, last = self.samples[0], self.samples[-1]
        warm = [s for s in self.samples if s.at >= warm_up] or [last]
        losses = [r for r in self.reconnects if r.at >= warm_up]

        def process(memory: Callable[[Sample], Memory | None]) -> dict[str, Any] | None:
            start, settled, end = memory(first), memory(warm[0]), memory(last)
            if start is None or settled is None or end is None:
                return None
            points = [(s.at, m.rss) for s in warm if (m := memory(s)) is not None]
            anon = [(s.at, m.anon) for s in warm if (m := memory(s)) is not None]
            return {
                "rss_start_mib": start.rss,
                "rss_after_warm_up_mib": settled.rss,
                "rss_end_mib": end.rss,
                "rss_peak_mib": max(m.rss for s in self.samples if (m := memory(s)) is not None),
                "rss_slope_mib_per_min_after_warm_up": slope_per_minute(points),
                "anon_slope_mib_per_min_after_warm_up": slope_per_minute(anon),
                "fds_start": start.fds,
                "fds_end": end.fds,
                "threads_start": start.threads,
                "threads_end": end.threads,
            }

        def deltas(
            before: Callable[[Reconnect], float | None], after: Callable[[Reconnect], float | None]
        ) -> dict[str, Any]:
            over = [
                round(a - b, 1)
                for r in self.reconnects
                if (b := before(r)) is not None and (a := after(r)) is not None
            ]
            warm_over = [
                round(a - b, 1)
                for r in losses
                if (b := before(r)) is not None and (a := after(r)) is not None
            ]
            return {
                "each_mib": over,
                "mean_after_warm_up_mib": round(sum(warm_over) / len(warm_over), 2)
                if warm_over
                else None,
            }

        return {
            "duration_s": last.at,
            "warm_up_s": warm_up,
            "server_in_own_process": self.server_pid is not None,
            "client": process(lambda s: s.client),
            "server": process(lambda s: s.server),
            "client_rss_over_each_reconnect": deltas(
                lambda r: r.client_before, lambda r: r.client_after
            ),
            "server_rss_over_each_reconnect": deltas(
                lambda r: r.server_before, lambda r: r.server_after
            ),
            "tasks_start": first.tasks,
            "tasks_end": last.tasks,
            "objects_start": first.objects,
            "objects_after_warm_up": warm[0].objects,
            "objects_end": last.objects,
            "prompts_sent": self.prompts_sent,
            "prompts_acked": self.prompts_acked,
            "prompts_failed": dict(self.prompts_failed),
            "prompts_skipped_while_reconnecting": self.prompts_skipped,
            "reconnects_forced": len(self.reconnects),
            "reconnect_seconds_max": round(
                max((r.seconds for r in self.reconnects), default=0.0), 2
            ),
            "sessions_started": self.sessions_started,
            "retries": self.retries,
            "error_events": dict(self.errors),
            "output_frames": self.frames,
            "reconnects": [attrs.asdict(r) for r in self.reconnects],
            "samples": [attrs.asdict(s) for s in self.samples],
        }


async def count_frames(session: Session, tally: Tally) -> None:
    async for _frame in session.frames():
        tally.frames += 1


async def change_prompts(
    session: Session, tally: Tally, every: float, start: float, until: float
) -> None:
    number = 0
    next_at = start
    while (now := anyio.current_time()) < until:
        await anyio.sleep(max(0.0, next_at - now))
        next_at += every
        number += 1
        if session.state not in (ConnectionState.CONNECTED, ConnectionState.GENERATING):
            tally.prompts_skipped += 1
            continue
        tally.prompts_sent += 1
        try:
            with anyio.fail_after(REQUEST_BOUND):
                await session.set_prompt(f"soak prompt {number}")
        except NotConnectedError:
            tally.prompts_sent -= 1
            tally.prompts_skipped += 1
        except RequestError as exc:
            tally.prompts_failed[exc.kind.value] += 1
        else:
            tally.prompts_acked += 1


def connected(session: Session) -> bool:
    return session.state in (ConnectionState.CONNECTED, ConnectionState.GENERATING)


async def force_reconnects(
    lose: LoseRoom,
    session: Session,
    tally: Tally,
    every: float,
    offset: float,
    settle: float,
    until: float,
) -> None:
    """A room loss every ``every`` seconds (``offset`` after the prompt ticks, so
    that no prompt awaits its ack then: one that does fails with connection_lost,
    as it must); memory right before it and ``settle`` s after the reconnect."""
    number = 0
    while (at := tally.started + (number + 1) * every + offset) + settle + 5.0 < until:
        number += 1
        await anyio.sleep(max(0.0, at - anyio.current_time()))
        room = session.room_name
        if room is None or not connected(session):
            continue
        client_before, server_before = tally.memory()
        started = tally.sessions_started
        lost_at = anyio.current_time()
        await lose(room)
        with anyio.fail_after(RECONNECT_BOUND):
            while tally.sessions_started == started or not connected(session):
                await anyio.sleep(0.02)
        seconds = anyio.current_time() - lost_at
        await anyio.sleep(settle)
        client_after, server_after = tally.memory()
        tally.reconnects.append(
            Reconnect(
                round(lost_at - tally.started, 1),
                round(seconds, 2),
                client_before.rss,
                client_after.rss,
                None if server_before is None else server_before.rss,
                None if server_after is None else server_after.rss,
            )
        )
        print(tally.reconnects[-1].line(len(tally.reconnects)), flush=True)


async def take_samples(tally: Tally, every: float, until: float) -> None:
    # Half a period late, so that samples do not fall on the room losses.
    number = 0
    while (at := tally.started + (number + 0.5) * every) < until - 1.0:
        number += 1
        await anyio.sleep(max(0.0, at - anyio.current_time()))
        tally.sample()


async def take_census(tally: Tally, warm_up: float, until: float) -> None:
    """Count this process's objects by type after the warm-up and near the end;
    print the growth."""
    await anyio.sleep(warm_up)
    before = tally.census()
    await anyio.sleep(max(0.0, until - anyio.current_time() - 1.0))
    growth = tally.census()
    growth.subtract(before)
    print("objects that grew after the warm-up (type: count):", flush=True)
    for name, count in growth.most_common(15):
        if count > 0:
            print(f"  {count:7d}  {name}", flush=True)


@contextlib.asynccontextmanager
async def in_process_server() -> AsyncIterator[tuple[str, str, LoseRoom]]:
    async with ReferenceServer() as server:

        async def lose(room: str) -> None:
            handle = server.livekit.find_room(room)
            if handle is not None:
                await handle.disconnect_participants("room_deleted")

        yield server.url, server.api_key, lose


async def soak(args: argparse.Namespace, server: ServerProcess | None) -> Tally:
    tally = Tally(server_pid=None if server is None else server.pid)
    if args.malloc_trim:
        tally.malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    async with contextlib.AsyncExitStack() as stack:
        if server is None:
            url, key, lose = await stack.enter_async_context(in_process_server())
        else:
            url, key = server.url, server.api_key

            async def lose(_room: str) -> None:
                server.lose_rooms()  # every room of the server process

        session = await stack.enter_async_context(
            connect(
                url,
                api_key=key,
                model="echo",
                prompt="soak prompt 0",
                camera=TestPattern(320, 240, fps=15),
                on_event=tally.on_event,
            )
        )
        tally.started = anyio.current_time()
        tally.sample()
        until = tally.started + args.minutes * 60
        async with anyio.create_task_group() as tg:
            tg.start_soon(count_frames, session, tally)
            tg.start_soon(take_samples, tally, args.sample_every, until)
            if args.census:
                tg.start_soon(take_census, tally, args.census, until)
            offset = args.prompt_every / 2
            tg.start_soon(
                force_reconnects,
                lose,
                session,
                tally,
                args.reconnect_every,
                offset,
                args.settle,
                until,
            )
            await change_prompts(session, tally, args.prompt_every, tally.started, until)
            tg.cancel_scope.cancel()
        tally.sample()
    return tally


def _mib(value: object) -> str:
    return "n/a" if value is None else f"{value}"


def report(summary: dict[str, Any], wall: float) -> None:
    for name in ("client", "server"):
        figures = summary[name]
        if figures is None:
            continue
        over = summary[f"{name}_rss_over_each_reconnect"]
        label = name if summary["server_in_own_process"] else "client and server (one process)"
        print(
            f"{label}: rss {figures['rss_start_mib']} -> {figures['rss_after_warm_up_mib']} "
            f"(after {summary['warm_up_s']:.0f} s warm-up) -> {figures['rss_end_mib']} MiB, "
            f"peak {figures['rss_peak_mib']}; slope after warm-up "
            f"{_mib(figures['rss_slope_mib_per_min_after_warm_up'])} MiB/min (anon "
            f"{_mib(figures['anon_slope_mib_per_min_after_warm_up'])}); over each reconnect "
            f"{over['each_mib']} MiB (mean after warm-up {_mib(over['mean_after_warm_up_mib'])}); "
            f"fds {figures['fds_start']} -> {figures['fds_end']}, threads "
            f"{figures['threads_start']} -> {figures['threads_end']}"
        )
    print(
        f"soak: {summary['duration_s']:.0f} s; prompts sent {summary['prompts_sent']}, acked "
        f"{summary['prompts_acked']}, failed {summary['prompts_failed']}, skipped while "
        f"reconnecting {summary['prompts_skipped_while_reconnecting']}; reconnects forced "
        f"{summary['reconnects_forced']} (max {summary['reconnect_seconds_max']} s), sessions "
        f"started {summary['sessions_started']}, retries {summary['retries']}; error events "
        f"{summary['error_events'] or 'none'}; output frames {summary['output_frames']}; "
        f"client tasks {summary['tasks_start']} -> {summary['tasks_end']}, objects "
        f"{summary['objects_start']} -> {summary['objects_after_warm_up']} -> "
        f"{summary['objects_end']}; wall {wall:.0f} s"
    )
    if summary["server_in_own_process"]:
        problems = summary["server_log_problems"]
        print(f"server log: {len(problems)} line(s) at WARNING or above", flush=True)
        for line in problems[:10]:
            print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--prompt-every", type=float, default=1.0, help="seconds (default 1)")
    parser.add_argument(
        "--reconnect-every", type=float, default=60.0, help="seconds between room losses (60)"
    )
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument(
        "--warm-up",
        type=float,
        default=120.0,
        help="seconds before 'after warm-up' figures and slopes start (default 120)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds after a reconnect before its memory is read (default 5)",
    )
    parser.add_argument(
        "--server-process",
        action="store_true",
        help="run the reference server as its own process (leanjoin serve) and measure both",
    )
    parser.add_argument("--server-log", type=Path, help="keep the server's log in this file")
    parser.add_argument(
        "--malloc-trim",
        action="store_true",
        help="call glibc's malloc_trim(0) in this process before each memory reading, so "
        "that its figures leave out freed memory the allocator keeps (a diagnosis)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    parser.add_argument(
        "--census",
        type=float,
        default=0.0,
        metavar="WARM_UP_S",
        help="after this warm-up, count this process's live objects by type; print what grew",
    )
    args = parser.parse_args()
    wall = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if args.server_process:
            server = ServerProcess.start(args.server_log or Path(tmp) / "server.log")
        try:
            tally = anyio.run(soak, args, server)
        finally:
            exit_code = None if server is None else server.stop()
        summary = tally.summary(args.warm_up)
        if server is not None:
            summary["server_exit_code"] = exit_code
            summary["server_log_problems"] = server.problems()
    report(summary, time.monotonic() - wall)
    if args.json:
        print(json.dumps(summary))
    ok = (
        not summary["error_events"]
        and summary["prompts_acked"] == summary["prompts_sent"]
        and not summary.get("server_log_problems")
        and summary.get("server_exit_code") in (None, 0)
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
