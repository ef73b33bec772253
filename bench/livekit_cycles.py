"""Memory of the bare LiveKit client over repeated rooms, without leanjoin: the
soak's evidence that the client's growth per reconnect is the native library's.

Each cycle makes a fresh ``livekit.rtc.Room``, joins a room of the LiveKit double
(running in a child process, so its memory is not counted), optionally publishes
a camera track, holds the room ``--hold`` seconds, disconnects and drops every
handle. Every ``--every`` cycles it prints this process's RSS, RSS after glibc's
``malloc_trim(0)`` (freed memory handed back: what remains is in use) and how many
LiveKit FFI handles and ``Room`` objects Python still holds. A benchmark, not a
test:

    .venv/bin/python bench/livekit_cycles.py connect --cycles 100
    .venv/bin/python bench/livekit_cycles.py echo --cycles 60 --hold 2
    .venv/bin/python bench/livekit_cycles.py refused --cycles 100   # HTTP 401 joins

Modes: ``connect`` (join, then leave), ``publish`` (join, publish a 320x240 camera
at 15 fps, leave), ``echo`` (publish, and decode the model's echo of it, as a
leanjoin session does), ``refused`` (a join the double refuses: no peer connection).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
from livekit import rtc
from livekit.rtc._ffi_client import FfiHandle
from proc_status import proc_status

from leanjoin.adapters.server.lkdouble import LiveKitDouble, tokens

API_KEY = "cycles"
SECRET_ENV = "LIVEKIT_CYCLES_SECRET"
WIDTH, HEIGHT = 320, 240


async def run_double(rooms: int) -> None:
    """The child process: the double until SIGINT/SIGTERM; its URL on stdout. Rooms
    ``cycle-1`` … ``cycle-<rooms>`` echo the client's video as it is."""
    double = LiveKitDouble(api_key=API_KEY, api_secret=os.environ[SECRET_ENV])
    await double.start()
    for number in range(1, rooms + 1):
        double.room(f"cycle-{number}").set_transform(lambda frame: frame)
    print(double.url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await double.aclose()


@contextlib.contextmanager
def double_process(secret: str, rooms: int) -> Iterator[str]:
    env = {**os.environ, SECRET_ENV: secret, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, __file__, "--double", str(rooms)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("ws://"):
            raise RuntimeError("the LiveKit double did not start")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def rss_mib() -> tuple[float, float]:
    """(VmRSS, RssAnon) of this process."""
    fields = proc_status()
    return fields["VmRSS"] / 1024, fields["RssAnon"] / 1024


async def feed(source: rtc.VideoSource) -> None:
    data = np.full((HEIGHT, WIDTH, 3), 120, np.uint8).tobytes()
    while True:
        source.capture_frame(rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGB24, data))
        await asyncio.sleep(1 / 15)


async def cycle(mode: str, url: str, token: str, hold: float) -> None:
    room = rtc.Room()
    if mode == "refused":
        with contextlib.suppress(rtc.ConnectError):
            await room.connect(url, "not-a-token", rtc.RoomOptions())
        await room.disconnect()
        return
    echo: asyncio.Future[rtc.RemoteVideoTrack] = asyncio.get_running_loop().create_future()

    def subscribed(track: rtc.Track, *_: object) -> None:
        if isinstance(track, rtc.RemoteVideoTrack) and not echo.done():
            echo.set_result(track)

    room.on("track_subscribed", subscribed)
    await room.connect(url, token, rtc.RoomOptions(auto_subscribe=mode == "echo"))
    source: rtc.VideoSource | None = None
    feeder: asyncio.Task[None] | None = None
    frames = 0
    if mode in ("publish", "echo"):
        source = rtc.VideoSource(WIDTH, HEIGHT)
        track = rtc.LocalVideoTrack.create_video_track("camera", source)
        options = rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA, video_codec=rtc.VideoCodec.H264, simulcast=False
        )
        await room.local_participant.publish_track(track, options)
        feeder = asyncio.create_task(feed(source))
    if mode == "echo":
        stream = rtc.VideoStream(
            await asyncio.wait_for(echo, 10), format=rtc.VideoBufferType.RGB24, capacity=2
        )
        try:
            async with asyncio.timeout(hold):
                async for _event in stream:
                    frames += 1
        except TimeoutError:
            pass
        finally:
            await stream.aclose()
        if not frames:
            raise RuntimeError("the echo track carried no frame")
    else:
        await asyncio.sleep(hold)
    if feeder is not None:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
    await room.disconnect()
    if source is not None:
        await source.aclose()


async def cycles(args: argparse.Namespace) -> None:
    trim = ctypes.CDLL("libc.so.6").malloc_trim
    secret = secrets.token_urlsafe(32)
    started = time.monotonic()
    with double_process(secret, args.cycles) as url:
        for number in range(1, args.cycles + 1):
            token = tokens.mint(
                API_KEY, secret, room=f"cycle-{number}", identity=f"c{number}", ttl_seconds=600
            )
            await cycle(args.mode, url, token, args.hold)
            if number == 1 or number % args.every == 0:
                await asyncio.sleep(0.5)  # let the room's last events drain
                gc.collect()
                rss, _ = rss_mib()
                trim(0)
                trimmed, anon = rss_mib()
                objects = gc.get_objects()
                handles = sum(isinstance(o, FfiHandle) and not o.disposed for o in objects)
                rooms = sum(isinstance(o, rtc.Room) for o in objects)
                print(
                    f"{args.mode} cycle {number:4d} at {time.monotonic() - started:5.0f} s: "
                    f"rss {rss:6.1f} MiB, after malloc_trim {trimmed:6.1f} (anon {anon:6.1f}); "
                    f"live FFI handles {handles}, Room objects {rooms}",
                    flush=True,
                )


def main() -> None:
    if sys.argv[1:2] == ["--double"]:
        asyncio.run(run_double(int(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("mode", choices=["connect", "publish", "echo", "refused"])
    parser.add_argument("--cycles", type=int, default=100, help="rooms joined (default 100)")
    parser.add_argument("--hold", type=float, default=0.5, help="seconds in each room (0.5)")
    parser.add_argument("--every", type=int, default=10, help="report every N cycles (10)")
    asyncio.run(cycles(parser.parse_args()))


if __name__ == "__main__":
    main()
