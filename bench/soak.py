"""Soak: one long session against the in-process reference server, with a prompt
change every second and a forced reconnect (room loss) every minute. Reports the
process's resident memory at the start, at the end and every ``--sample-every``
seconds, with open file descriptors, asyncio tasks and live Python objects; prompts
sent and acked, reconnects, output frames, and every error event. The server, its
LiveKit double and the client share the process, so the memory is theirs together.
A benchmark, not a test:

    .venv/bin/python bench/soak.py --minutes 10
    .venv/bin/python bench/soak.py --minutes 2 --json   # the summary as JSON too

The reconnect is a room loss: the LiveKit double drops the client
(``RoomHandle.disconnect_participants``), the client reconnects on a fresh
attempt and replays its latest prompt. A prompt due while reconnecting is
counted as skipped (``set_prompt`` needs a connected session).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import resource
import sys
import time
from typing import Any

import anyio
import attrs

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
from leanjoin.adapters.server import ReferenceServer

RECONNECT_BOUND = 30.0  # seconds a forced reconnect may take before the soak fails
REQUEST_BOUND = 10.0


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@attrs.define
class Sample:
    at: float
    rss_mib: float
    fds: int
    tasks: int
    objects: int  # live Python objects tracked by the garbage collector
    frames: int

    def line(self) -> str:
        return (
            f"{self.at:7.1f} s  rss {self.rss_mib:7.1f} MiB  fds {self.fds:4d}  "
            f"tasks {self.tasks:4d}  objects {self.objects:7d}  output frames {self.frames}"
        )


@attrs.define
class Tally:
    started: float = 0.0
    prompts_sent: int = 0
    prompts_acked: int = 0
    prompts_failed: collections.Counter[str] = attrs.Factory(collections.Counter)
    prompts_skipped: int = 0  # due while reconnecting
    reconnects_forced: int = 0
    reconnect_seconds: list[float] = attrs.Factory(list)
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

    def census(self) -> collections.Counter[str]:
        """Live objects by type: which of them grow is where memory goes."""
        gc.collect()
        return collections.Counter(
            f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects()
        )

    def sample(self) -> Sample:
        gc.collect()  # count live objects, not garbage awaiting a collection
        taken = Sample(
            round(anyio.current_time() - self.started, 1),
            round(rss_mib(), 1),
            open_fds(),
            len(asyncio.all_tasks()),
            len(gc.get_objects()),
            self.frames,
        )
        self.samples.append(taken)
        print(taken.line(), flush=True)
        return taken

    def summary(self) -> dict[str, Any]:
        first, last = self.samples[0], self.samples[-1]
        peak = max(s.rss_mib for s in self.samples)
        return {
            "duration_s": last.at,
            "rss_start_mib": first.rss_mib,
            "rss_end_mib": last.rss_mib,
            "rss_peak_mib": peak,
            "max_rss_mib_getrusage": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
            ),
            "fds_start": first.fds,
            "fds_end": last.fds,
            "tasks_start": first.tasks,
            "tasks_end": last.tasks,
            "objects_start": first.objects,
            "objects_end": last.objects,
            "prompts_sent": self.prompts_sent,
            "prompts_acked": self.prompts_acked,
            "prompts_failed": dict(self.prompts_failed),
            "prompts_skipped_while_reconnecting": self.prompts_skipped,
            "reconnects_forced": self.reconnects_forced,
            "reconnect_seconds_max": round(max(self.reconnect_seconds, default=0.0), 2),
            "sessions_started": self.sessions_started,
            "retries": self.retries,
            "error_events": dict(self.errors),
            "output_frames": self.frames,
            "samples": [attrs.asdict(s) for s in self.samples],
        }


async def count_frames(session: Session, tally: Tally) -> None:
    async for _frame in session.frames():
        tally.frames += 1


async def change_prompts(session: Session, tally: Tally, every: float, until: float) -> None:
    number = 0
    next_at = anyio.current_time()
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


async def force_reconnects(
    server: ReferenceServer, session: Session, tally: Tally, every: float, until: float
) -> None:
    while anyio.current_time() + every < until:
        await anyio.sleep(every)
        room = session.room_name
        if room is None:
            continue
        before = tally.sessions_started
        lost_at = anyio.current_time()
        await server.livekit.room(room).disconnect_participants("room_deleted")
        tally.reconnects_forced += 1
        with anyio.fail_after(RECONNECT_BOUND):
            while tally.sessions_started == before or session.state not in (
                ConnectionState.CONNECTED,
                ConnectionState.GENERATING,
            ):
                await anyio.sleep(0.02)
        tally.reconnect_seconds.append(anyio.current_time() - lost_at)
        print(f"  reconnected in {tally.reconnect_seconds[-1]:.2f} s", flush=True)


async def take_samples(tally: Tally, every: float, until: float) -> None:
    while anyio.current_time() + every < until:
        await anyio.sleep(every)
        tally.sample()


async def take_census(tally: Tally, warm_up: float, until: float) -> None:
    """Count objects by type after the warm-up and near the end; print the growth."""
    await anyio.sleep(warm_up)
    before = tally.census()
    await anyio.sleep(max(0.0, until - anyio.current_time() - 1.0))
    growth = tally.census()
    growth.subtract(before)
    print("objects that grew after the warm-up (type: count):", flush=True)
    for name, count in growth.most_common(15):
        if count > 0:
            print(f"  {count:7d}  {name}", flush=True)


async def soak(args: argparse.Namespace) -> Tally:
    tally = Tally()
    async with (
        ReferenceServer() as server,
        connect(
            server.url,
            api_key=server.api_key,
            model="echo",
            prompt="soak prompt 0",
            camera=TestPattern(320, 240, fps=15),
            on_event=tally.on_event,
        ) as session,
    ):
        tally.started = anyio.current_time()
        tally.sample()
        until = tally.started + args.minutes * 60
        async with anyio.create_task_group() as tg:
            tg.start_soon(count_frames, session, tally)
            tg.start_soon(take_samples, tally, args.sample_every, until)
            if args.census:
                tg.start_soon(take_census, tally, args.census, until)
            tg.start_soon(force_reconnects, server, session, tally, args.reconnect_every, until)
            await change_prompts(session, tally, args.prompt_every, until)
            tg.cancel_scope.cancel()
        tally.sample()
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--prompt-every", type=float, default=1.0, help="seconds (default 1)")
    parser.add_argument(
        "--reconnect-every", type=float, default=60.0, help="seconds between room losses (60)"
    )
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    parser.add_argument(
        "--census",
        type=float,
        default=0.0,
        metavar="WARM_UP_S",
        help="after this warm-up, count live objects by type; print what grew by the end",
    )
    args = parser.parse_args()
    wall = time.monotonic()
    tally = anyio.run(soak, args)
    summary = tally.summary()
    print(
        f"soak: {summary['duration_s']:.0f} s; rss {summary['rss_start_mib']} -> "
        f"{summary['rss_end_mib']} MiB (peak {summary['rss_peak_mib']}); "
        f"prompts sent {summary['prompts_sent']}, acked {summary['prompts_acked']}, "
        f"failed {summary['prompts_failed']}, skipped while reconnecting "
        f"{summary['prompts_skipped_while_reconnecting']}; reconnects forced "
        f"{summary['reconnects_forced']} (max {summary['reconnect_seconds_max']} s), sessions "
        f"started {summary['sessions_started']}, retries {summary['retries']}; error events "
        f"{summary['error_events'] or 'none'}; output frames {summary['output_frames']}; "
        f"fds {summary['fds_start']} -> {summary['fds_end']}, tasks {summary['tasks_start']} -> "
        f"{summary['tasks_end']}; wall {time.monotonic() - wall:.0f} s"
    )
    if args.json:
        print(json.dumps(summary))
    ok = not summary["error_events"] and summary["prompts_acked"] == summary["prompts_sent"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
