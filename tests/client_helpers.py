"""Helpers shared by the client tests: bounded polling, leak checks, pixel checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Protocol

import anyio
import attrs
import av
import numpy as np
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection, serve

from leanjoin.adapters import Frame, RetryPolicy, TestPattern, Timeouts
from leanjoin.adapters.server.echo_model import colours_close, output_bands, prompt_colour
from leanjoin.adapters.server.lkdouble import LiveKitDouble, RoomHandle
from leanjoin.adapters.server.reference import ReferenceServer

WAIT = 10.0  # the bound of every wait in the client tests
LEANJOIN = Path(sys.executable).parent / "leanjoin"


@contextmanager
def served(api_key: str, *options: str, log: Path | None = None) -> Iterator[str]:
    """``leanjoin serve`` (with ``options``) in a process of its own on
    127.0.0.1; yields its stream endpoint. Its stderr goes to ``log`` (None:
    discarded); it is stopped with SIGTERM, killed after 30 s."""
    with served_with_http(api_key, *options, log=log) as (url, _http):
        yield url


@contextmanager
def served_with_http(
    api_key: str, *options: str, log: Path | None = None
) -> Iterator[tuple[str, str]]:
    """As :func:`served`; yields its stream endpoint and its HTTP API's base URL."""
    command = [str(LEANJOIN), "serve", "--host", "127.0.0.1", "--port", "0", "--api-key", api_key]
    with contextlib.ExitStack() as stack:
        stderr = subprocess.DEVNULL if log is None else stack.enter_context(log.open("w"))
        serve = subprocess.Popen(
            [*command, *options], stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    try:
        assert serve.stdout is not None
        url = serve.stdout.readline().rsplit(" ", 1)[-1].strip()
        assert url.startswith("ws://127.0.0.1:"), url
        # Its last line at start-up (the LiveKit double or doubles come before it).
        while not (line := serve.stdout.readline()).startswith("HTTP API") and line:
            pass
        http = line.rsplit(" ", 1)[-1].strip()
        assert http.startswith("http://127.0.0.1:"), http
        yield url, http
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()


@contextmanager
def connect_process(
    url: str, *args: str, api_key: str, verbose: bool = False
) -> Iterator[subprocess.Popen[str]]:
    """``leanjoin connect URL --model echo --json ARGS`` started in a process of
    its own (pipes for its output); killed on the way out if it is still running."""
    command = [str(LEANJOIN), *(["-v"] if verbose else []), "connect", url, "--model", "echo"]
    process = subprocess.Popen(
        [*command, "--json", *args],
        env={**os.environ, "LEANJOIN_API_KEY": api_key},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def until(predicate: Callable[[], bool]) -> None:
    """Poll a condition that no event announces, within the usual bound."""
    with anyio.fail_after(WAIT):
        while not predicate():
            await anyio.sleep(0.01)


_CLIENT_MODULES = {"api.py", "driver.py", "ws_transport.py", "room_transport.py", "fanout.py"}
_CLIENT_MODULES |= {"video_sources.py", "audio_sources.py", "room_audio.py", "diagnostics.py"}


def _is_client_coroutine(coro: Any) -> bool:
    depth = 0
    while coro is not None and depth < 64:
        code = getattr(coro, "cr_code", None) or getattr(coro, "ag_code", None)
        frame = getattr(coro, "cr_frame", None)
        if code is not None:
            path = Path(code.co_filename)
            if path.parent.name == "adapters" and path.name in _CLIENT_MODULES:
                return True
            if "livekit" in path.parts and "rtc" in path.parts:
                return True
        if frame is not None and isinstance(frame.f_locals.get("self"), ClientConnection):
            return True
        coro = getattr(coro, "cr_await", None)
        depth += 1
    return False


def client_tasks() -> list[asyncio.Task[Any]]:
    me = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not me and _is_client_coroutine(t.get_coro())]


async def assert_nothing_left(lk: LiveKitDouble | None = None, *rooms: str) -> None:
    """No client task, socket or room survives the session."""
    # A cancelled task finishes one loop turn after its cancellation: allow that.
    with anyio.fail_after(WAIT):
        while client_tasks():
            await anyio.sleep(0.01)
    if lk is not None:
        with anyio.fail_after(WAIT):
            while any((room := lk.find_room(name)) and room.participants for name in rooms):
                await anyio.sleep(0.02)


@attrs.define
class Recorded:
    """What a refusing server received: each upgrade's path and User-Agent
    header, every frame."""

    paths: list[str] = attrs.Factory(list)
    user_agents: list[str | None] = attrs.Factory(list)
    frames: list[dict[str, Any]] = attrs.Factory(list)


@asynccontextmanager
async def refusing_server(frames: int = 0) -> AsyncIterator[tuple[str, Recorded]]:
    """A signaling server that records each upgrade's path and its first
    ``frames`` frames (and any more that come at once), then refuses the key:
    a permanent failure, so the client gives up at once. Yields its base URL."""
    recorded = Recorded()

    async def refuse(ws: ServerConnection) -> None:
        assert ws.request is not None
        recorded.paths.append(ws.request.path)
        recorded.user_agents.append(ws.request.headers.get("User-Agent"))
        for _ in range(frames):
            recorded.frames.append(json.loads(await ws.recv()))
        # A frame too many is sent right behind the others: give it a moment.
        with anyio.move_on_after(0.3):
            while True:
                recorded.frames.append(json.loads(await ws.recv()))
        await ws.send('{"type":"error","error":"unauthorized: invalid api key"}')
        await ws.close(1008, "unauthorized")

    async with serve(refuse, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}", recorded


def rooms_of(server: ReferenceServer) -> list[RoomHandle]:
    """Every room the server's LiveKit double holds now."""
    return list(server.livekit.rooms)


async def server_idle(server: ReferenceServer, *rooms: str | None) -> None:
    """Nothing of the client is left, the server saw every connection end and its
    LiveKit double forgot every room."""
    await assert_nothing_left(server.livekit, *(room for room in rooms if room))
    await until(lambda: server.connections == 0)
    await until(lambda: not server.livekit.rooms)


def session_args(server: ReferenceServer, events: list[Any] | None = None) -> dict[str, Any]:
    """``connect`` arguments for an echo session with the server, every wait bounded."""
    return {
        "api_key": server.api_key,
        "model": "echo",
        "camera": TestPattern(320, 240, fps=15),
        "timeouts": Timeouts(socket_open=5, room_info=5, media=15),
        "retry": RetryPolicy(max_retries=3, initial_delay=0.05, max_delay=0.2),
        "on_event": None if events is None else events.append,
    }


BAND_TOLERANCE = 16  # tighter than the demo's 24: the tests' frames are steady


class ShowsFrames(Protocol):
    """A session, or a viewer of one: whatever yields the model's output frames."""

    def frames(self) -> AsyncIterator[Frame]: ...


async def frame_with_band(session: ShowsFrames, prompt: str) -> np.ndarray[Any, Any]:
    """The first output frame whose top band shows ``prompt``'s colour."""
    colour = prompt_colour(prompt)
    with anyio.fail_after(WAIT):
        async for out in session.frames():
            if colours_close(output_bands(out)[0], colour, BAND_TOLERANCE):
                return out
    raise AssertionError("frames ended before the prompt showed")


def write_video(path: Path, frames: int = 20, *, damaged: range = range(0)) -> Path:
    """An MPEG-4 file of ``frames`` 64x48 frames, 10 a second; the packets of
    ``damaged`` overwritten with bytes no decoder takes (the container intact)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(frames):
            image = np.full((48, 64, 3), index * 8, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        packets = [
            (p.pos, p.size) for p in container.demux(video=0) if p.size and p.pos is not None
        ]
    data = bytearray(path.read_bytes())
    for pos, size in (packets[index] for index in damaged):
        data[pos : pos + size] = b"\xff" * size
    path.write_bytes(data)
    return path
