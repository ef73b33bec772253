"""The reference server over real sockets: raw ``websockets`` clients walk every
path, and hostile clients get an error frame or a close with a reason while
another session on the same server keeps working.

Client video is simulated by handing a decoded frame to the LiveKit double's
room (what its signal session does for real media), so these tests need no
WebRTC. Everything listens on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import attrs
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from leanjoin.adapters.client.png import encode_png
from leanjoin.adapters.server.echo_model import mean_colour, prompt_colour
from leanjoin.adapters.server.lkdouble import RoomHandle
from leanjoin.adapters.server.reference import ReferenceServer
from leanjoin.engine.server.knobs import FaultPhase, ServerKnobs

WAIT = 5.0  # seconds any single expectation may take
RED = np.full((8, 8, 3), (200, 40, 40), dtype=np.uint8)
RED_PNG = base64.b64encode(encode_png(RED)).decode()
CAMERA = np.full((64, 48, 3), 100, dtype=np.uint8)
NOISE = np.random.default_rng(7).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # no compression


@asynccontextmanager
async def running(**knobs: Any) -> AsyncIterator[ReferenceServer]:
    async with ReferenceServer(knobs=ServerKnobs(**knobs)) as server:
        yield server


@asynccontextmanager
async def client(
    server: ReferenceServer, *, key: str | None = None, path: str = "/v1/stream"
) -> AsyncIterator[ClientConnection]:
    base = server.url.removesuffix("/v1/stream") + path
    url = f"{base}?api_key={key or server.api_key}&model=echo&user_agent=tests%2F1"
    with anyio.fail_after(WAIT):
        socket = await connect(url, max_size=None)
    try:
        yield socket
    finally:
        await socket.close()


async def send(socket: ClientConnection, message: dict[str, Any]) -> None:
    await socket.send(json.dumps(message))


async def recv(socket: ClientConnection) -> dict[str, Any]:
    with anyio.fail_after(WAIT):
        frame = await socket.recv()
    assert isinstance(frame, str)
    parsed: dict[str, Any] = json.loads(frame)
    return parsed


async def until(socket: ClientConnection, kind: str) -> tuple[dict[str, Any], list[str]]:
    """The first frame of type ``kind``, and the types of the frames before it."""
    before: list[str] = []
    while (frame := await recv(socket))["type"] != kind:
        before.append(frame["type"])
    return frame, before


async def closed(socket: ClientConnection) -> tuple[int | None, str]:
    """Wait for the server's close; the frames in between are skipped."""
    with anyio.fail_after(WAIT):
        try:
            while True:
                await socket.recv()
        except ConnectionClosed:
            pass
    return socket.close_code, socket.close_reason or ""


async def video(server: ReferenceServer, room_name: str) -> None:
    """What the double does when a client's first video frame is decoded."""
    server.livekit.room(room_name).on_client_frame(CAMERA)


async def healthy_session(server: ReferenceServer) -> None:
    """A well-behaved client that must still be served."""
    async with client(server) as socket:
        await send(socket, {"type": "livekit_join", "passthrough": False})
        await send(socket, {"type": "prompt", "prompt": "still fine"})
        acks = {(await recv(socket))["type"], (await recv(socket))["type"]}
        assert acks == {"livekit_room_info", "prompt_ack"}


# ---- the lean join -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_passthrough_join_gets_room_info_generation_and_ticks() -> None:
    async with running(tick_interval=0.1) as server, client(server) as socket:
        await send(socket, {"type": "livekit_join", "passthrough": True})
        info = await recv(socket)
        assert info["type"] == "livekit_room_info"
        assert info["livekit_url"] == server.livekit.url
        assert info["token"].count(".") == 2  # a real JWT from the double
        await video(server, info["room_name"])
        assert (await recv(socket))["type"] == "generation_started"
        tick = await recv(socket)
        assert tick["type"] == "generation_tick" and tick["seconds"] > 0
        out = server.livekit.room(info["room_name"]).on_client_frame(CAMERA)
        assert out is not None and (out == CAMERA).all()  # passthrough: the camera as is


@pytest.mark.anyio
async def test_initial_image_and_prompt_reach_the_model() -> None:
    async with running() as server, client(server) as socket:
        await send(socket, {"type": "livekit_join", "passthrough": False})
        await send(socket, {"type": "set_image", "image_data": RED_PNG, "prompt": "sunset"})
        # room_info leaves at the join; the ack only once the image is decoded.
        info = await recv(socket)
        assert info["type"] == "livekit_room_info"
        assert await recv(socket) == {"type": "set_image_ack", "success": True}
        room_name = info["room_name"]
        await video(server, room_name)
        assert (await recv(socket))["type"] == "generation_started"
        out = server.livekit.room(room_name).on_client_frame(CAMERA)
        assert out is not None
        assert tuple(out[0, 0]) == prompt_colour("sunset")
        assert tuple(out[-1, 0]) == mean_colour(RED)


@pytest.mark.anyio
async def test_initial_prompt_is_acked_and_a_runtime_prompt_changes_the_output() -> None:
    async with running() as server, client(server) as socket:
        await send(socket, {"type": "livekit_join", "passthrough": False})
        await send(socket, {"type": "prompt", "prompt": "one"})
        frames = [await recv(socket), await recv(socket)]
        info = next(f for f in frames if f["type"] == "livekit_room_info")
        assert {"type": "prompt_ack", "prompt": "one", "success": True} in frames
        await video(server, info["room_name"])
        await until(socket, "generation_started")
        await send(socket, {"type": "prompt", "prompt": "two"})
        await until(socket, "prompt_ack")
        out = server.livekit.room(info["room_name"]).on_client_frame(CAMERA)
        assert out is not None and tuple(out[0, 0]) == prompt_colour("two")


@pytest.mark.anyio
async def test_a_late_initial_state_still_starts_generation() -> None:
    async with running() as server, client(server) as socket:
        await send(socket, {"type": "livekit_join", "passthrough": False})
        info = await recv(socket)
        await video(server, info["room_name"])
        with anyio.move_on_after(0.2):
            early = await socket.recv()
            pytest.fail(f"generation must wait for the initial state, got {early!r}")
        await send(socket, {"type": "prompt", "prompt": "late"})
        assert [(await recv(socket))["type"] for _ in range(2)] == [
            "prompt_ack",
            "generation_started",
        ]


@pytest.mark.anyio
async def test_the_double_holds_no_room_after_the_sessions_ended() -> None:
    async with running() as server:
        names = []
        for _ in range(3):
            async with client(server) as socket:
                await send(socket, {"type": "livekit_join", "passthrough": False})
                await send(socket, {"type": "prompt", "prompt": "p"})
                info, _ = await until(socket, "livekit_room_info")
                await video(server, info["room_name"])
                await until(socket, "generation_started")
                # Held while its session lives, though no client joined it.
                assert server.livekit.find_room(info["room_name"]) is not None
                names.append(info["room_name"])
        with anyio.fail_after(WAIT):
            while server.connections or server.livekit.rooms:
                await anyio.sleep(0.01)
        assert len(set(names)) == 3


# ---- legacy joins -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_legacy_bare_join_is_served() -> None:
    async with running() as server, client(server) as socket:
        await send(socket, {"type": "livekit_join"})
        info = await recv(socket)
        assert info["type"] == "livekit_room_info"
        await video(server, info["room_name"])
        assert (await recv(socket))["type"] == "generation_started"


@pytest.mark.anyio
async def test_legacy_bundled_join_is_served_and_acked() -> None:
    async with running() as server, client(server) as socket:
        await send(socket, {"type": "livekit_join", "initial_state": {"image_data": RED_PNG}})
        types = {(await recv(socket))["type"], (await recv(socket))["type"]}
        assert types == {"livekit_room_info", "set_image_ack"}


# ---- admission ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_capacity_one_queues_the_second_client_until_the_first_leaves() -> None:
    async with running(capacity=1) as server:
        async with client(server) as first:
            await send(first, {"type": "livekit_join", "passthrough": True})
            assert (await recv(first))["type"] == "livekit_room_info"
            second = await connect(f"{server.url}?api_key={server.api_key}&model=echo")
            await send(second, {"type": "livekit_join", "passthrough": True})
            assert await recv(second) == {"type": "queue_position", "position": 1, "queue_size": 1}
        assert (await recv(second))["type"] == "livekit_room_info"
        await second.close()


# ---- bad requests -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_unauthorized_gets_an_error_and_a_close() -> None:
    async with running() as server, client(server, key="wrong") as socket:
        error = await recv(socket)
        assert error["type"] == "error" and "unauthorized" in error["error"]
        assert await closed(socket) == (1008, "unauthorized")


@pytest.mark.anyio
async def test_other_paths_are_not_found() -> None:
    async with running() as server:
        with pytest.raises(InvalidStatus) as refused:
            async with client(server, path="/v2/other"):
                pass
        assert refused.value.response.status_code == 404


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("image_data", "problem"),
    [
        ("%%% not base64", "not valid base64"),
        (base64.b64encode(b"these bytes are no image").decode(), "not a decodable image"),
        (base64.b64encode(encode_png(NOISE)).decode(), "over the limit of 200 bytes"),
    ],
)
async def test_bad_references_are_rejected_clearly(image_data: str, problem: str) -> None:
    async with running(max_reference_bytes=200) as server, client(server) as socket:
        await send(socket, {"type": "livekit_join", "passthrough": False})
        await send(socket, {"type": "set_image", "image_data": image_data})
        ack, _ = await until(socket, "set_image_ack")
        assert ack["success"] is False and problem in ack["error"]


@pytest.mark.anyio
async def test_a_frame_before_the_join_is_refused_and_the_join_still_works() -> None:
    async with running() as server, client(server) as socket:
        await send(socket, {"type": "prompt", "prompt": "too early"})
        error = await recv(socket)
        assert error["type"] == "error" and "before livekit_join" in error["error"]
        await send(socket, {"type": "livekit_join", "passthrough": True})
        assert (await recv(socket))["type"] == "livekit_room_info"


# ---- hostile clients -------------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG of ``width`` x ``height`` black pixels: kilobytes that decode to
    hundreds of megabytes (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress((b"\x00" * (1 + 3 * width)) * height, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


@pytest.mark.anyio
async def test_a_reference_claiming_too_many_pixels_is_refused_undecoded() -> None:
    # 8000 x 8000 (192 MB of pixels once decoded) in about 190 KB: refused from
    # its header, never decoded, with a reason that names the size.
    bomb = base64.b64encode(png_claiming(8000, 8000)).decode()
    assert len(bomb) < 300_000
    async with running() as server, client(server) as socket:
        await send(socket, {"type": "livekit_join", "passthrough": False})
        await send(socket, {"type": "set_image", "image_data": bomb})
        ack, _ = await until(socket, "set_image_ack")
    assert ack["success"] is False
    assert "8000x8000: over the 40,000,000-pixel limit" in ack["error"]


@pytest.mark.anyio
async def test_garbage_binary_and_wrong_types_get_error_frames() -> None:
    async with running() as server, client(server) as socket:
        await socket.send("garbage{")
        assert "not valid JSON" in (await recv(socket))["error"]
        await socket.send(b"\x00\xff binary")
        assert "binary frames" in (await recv(socket))["error"]
        await send(socket, {"type": "livekit_join", "passthrough": "yes"})
        assert "'passthrough' must be a boolean" in (await recv(socket))["error"]
        await send(socket, {"type": 42})
        assert "'type' must be a string" in (await recv(socket))["error"]
        await healthy_session(server)
        await send(socket, {"type": "livekit_join", "passthrough": True})
        assert (await recv(socket))["type"] == "livekit_room_info"


@pytest.mark.anyio
async def test_oversized_frames_get_an_error_or_a_close() -> None:
    async with running(max_frame_bytes=4096) as server:
        async with client(server) as socket:
            await socket.send("x" * 5000)
            error = await recv(socket)
            assert "exceeds the maximum of 4096 bytes" in error["error"]
        async with client(server) as socket:
            await socket.send("x" * 9000)  # beyond twice the limit: websockets refuses it
            code, reason = await closed(socket)
            assert code == 1009 and reason
        # Read fragment by fragment, a message is bounded all the same; one that
        # opens like a set_image (a prefetch starts) changes nothing.
        big = '{"type":"set_image","image_data":"' + "A" * 9000 + '"}'
        async with client(server) as socket:
            await socket.send(_fragments(big[:5000], 700))
            assert "exceeds the maximum of 4096 bytes" in (await recv(socket))["error"]
        async with client(server) as socket:
            await socket.send(_fragments(big, 700))
            code, reason = await closed(socket)
            assert code == 1009 and reason
        await healthy_session(server)


@pytest.mark.anyio
async def test_a_flood_is_closed_while_another_session_keeps_working() -> None:
    async with running(frame_rate=20.0, frame_burst=40) as server:
        async with client(server) as good, client(server) as flood:
            await send(good, {"type": "livekit_join", "passthrough": True})
            info = await recv(good)
            for _ in range(200):
                try:
                    await flood.send('{"type":"noise"}')
                except ConnectionClosed:
                    break
            code, reason = await closed(flood)
            assert (code, reason) == (1008, "too many frames")
            await video(server, info["room_name"])
            assert (await recv(good))["type"] == "generation_started"
        await healthy_session(server)


@asynccontextmanager
async def never_reading(server: ReferenceServer) -> AsyncIterator[ClientConnection]:
    """A joined client that stops reading: its library buffers one frame, then the
    kernel's buffers fill and the server's writes to it block."""
    url = f"{server.url}?api_key={server.api_key}&model=echo"
    with anyio.fail_after(WAIT):
        socket = await connect(url, max_queue=1, max_size=None, compression=None)
    try:
        await send(socket, {"type": "livekit_join", "passthrough": True})
        yield socket
    finally:
        # Drop it without a closing handshake, which it would never answer in time.
        if socket.transport is not None:
            socket.transport.abort()


async def send_unread_prompts(socket: ClientConnection, megabytes: int) -> None:
    """Prompts of 256 KiB, under the rate limit; each gets an ack echoing its text."""
    prompt = json.dumps({"type": "prompt", "prompt": "p" * (256 * 1024)})
    for _ in range(megabytes * 4):
        await socket.send(prompt)
        await anyio.sleep(0.025)  # 40 frames/s: the server's limit is 50


@pytest.mark.anyio
async def test_a_client_that_never_reads_does_not_hold_up_the_others() -> None:
    async with running() as server, never_reading(server) as deaf:
        async with anyio.create_task_group() as tg:
            tg.start_soon(send_unread_prompts, deaf, 4)
            for _ in range(3):
                with anyio.fail_after(WAIT):
                    await healthy_session(server)
                await anyio.sleep(0.3)
        with anyio.fail_after(WAIT):
            await healthy_session(server)


@pytest.mark.anyio
async def test_a_client_that_never_reads_cannot_grow_the_server_without_bound() -> None:
    """What the server owes a peer that does not read is bounded (BUG-2, fixed): it
    stops reading that peer (back-pressure), then drops it, instead of queueing its
    acks without end."""
    async with running(max_frame_bytes=2**20) as server, never_reading(server) as deaf:
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            dropped = False
            with anyio.fail_after(WAIT * 3):
                try:
                    await send_unread_prompts(deaf, 24)
                except ConnectionClosed:
                    dropped = True
            grown = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        assert grown < 8 * 2**20, f"the server holds {grown / 2**20:.0f} MiB for a deaf peer"
        assert dropped, "the deaf peer was neither slowed down nor dropped"
        with anyio.fail_after(WAIT):
            await healthy_session(server)


@pytest.mark.anyio
async def test_many_bad_frames_close_the_connection() -> None:
    async with running(max_bad_frames=3) as server, client(server) as socket:
        for _ in range(4):
            await socket.send("not json")
        assert await closed(socket) == (1008, "too many bad frames")


# ---- knobs ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_injected_error_and_close_hit_only_the_first_connections() -> None:
    knobs = {
        "close_at": FaultPhase.AFTER_ROOM_INFO,
        "error_at": FaultPhase.BEFORE_JOIN,
        "error_text": "boom",
        "fault_connections": 1,
    }
    async with running(**knobs) as server:
        async with client(server) as socket:
            assert await recv(socket) == {"type": "error", "error": "boom"}
            await send(socket, {"type": "livekit_join", "passthrough": True})
            assert (await recv(socket))["type"] == "livekit_room_info"
            assert await closed(socket) == (1011, "injected close at after_room_info")
        await healthy_session(server)


@pytest.mark.anyio
async def test_the_uplink_throttle_delays_what_the_server_reads() -> None:
    async with running(uplink_bytes_per_second=100_000) as server, client(server) as socket:
        await send(socket, {"type": "livekit_join", "passthrough": True})
        await recv(socket)
        started = anyio.current_time()
        await send(socket, {"type": "prompt", "prompt": "p" * 30_000})
        await until(socket, "prompt_ack")
        assert anyio.current_time() - started >= 0.3


@pytest.mark.anyio
async def test_the_uplink_carries_frames_one_after_another() -> None:
    """Sent back to back, two 30 kB frames cross a 100 kB/s uplink in 0.6 s, not
    0.3 s each in parallel: the link is busy until the first one is through."""
    async with running(uplink_bytes_per_second=100_000) as server, client(server) as socket:
        await send(socket, {"type": "livekit_join", "passthrough": True})
        await recv(socket)
        started = anyio.current_time()
        await send(socket, {"type": "prompt", "prompt": "a" * 30_000})
        await send(socket, {"type": "prompt", "prompt": "b" * 30_000})
        first, _ = await until(socket, "prompt_ack")
        second, _ = await until(socket, "prompt_ack")
        assert first["prompt"].startswith("a") and second["prompt"].startswith("b")
        assert anyio.current_time() - started >= 0.6


@pytest.mark.anyio
async def test_shutdown_ends_generation_and_closes_going_away() -> None:
    server = ReferenceServer()
    async with server:
        socket = await connect(f"{server.url}?api_key={server.api_key}&model=echo")
        await send(socket, {"type": "livekit_join", "passthrough": True})
        info = await recv(socket)
        await video(server, info["room_name"])
        await until(socket, "generation_started")
    ended, _ = await until(socket, "generation_ended")
    assert ended["reason"] == "server shutting down"
    assert await closed(socket) == (1001, "server shutting down")
    assert server.connections == 0


# ---- the command line --------------------------------------------------------------------------


def start_serve(command: list[str]) -> tuple[subprocess.Popen[str], str, str]:
    """A ``serve`` process; its URL and api key, its first two lines."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    url = process.stdout.readline().split()[-1]
    key = process.stdout.readline().split()[-1]
    return process, url, key


def test_serve_prints_the_url_logs_phases_without_secrets_and_stops_on_ctrl_c() -> None:
    command = [
        sys.executable,
        "-m",
        "leanjoin.adapters.cli.serve",
        "--port",
        "0",
        "--capacity",
        "2",
    ]
    process, url, key = start_serve(command)
    try:
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/stream")

        async def session() -> str:
            async with await connect(f"{url}?api_key={key}&model=echo") as socket:
                await send(socket, {"type": "livekit_join", "passthrough": False})
                await send(socket, {"type": "set_image", "image_data": RED_PNG})
                info = await recv(socket)
                await until(socket, "set_image_ack")
                return str(info["token"])

        token = anyio.run(session)
        process.send_signal(signal.SIGUSR1)  # room loss everywhere (no room is left here)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        _, log = process.communicate(timeout=WAIT)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "session 1: in_room" in log and "session 1: closed" in log
    assert "SIGUSR1: room loss" in log and "disconnecting the participants of 0 room(s)" in log
    for secret in (key, token, RED_PNG[:40]):
        assert secret not in log


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT spreads connections on Linux")
def test_serve_workers_share_one_port_and_all_stop_on_sigterm() -> None:
    """``leanjoin serve --workers 2``: one URL, two processes accepting on its
    port; handshakes arriving at once all complete and both workers serve some
    (each hands out its own LiveKit double, and logs its lines under its pid);
    the knobs reach every worker; SIGTERM to the parent stops every process."""
    command = [
        sys.executable,
        "-m",
        "leanjoin.adapters.cli.serve",
        "--port",
        "0",
        "--workers",
        "2",
        "--capacity",
        "40",
        "--room-info-delay",
        "0.05",
    ]
    process, url, key = start_serve(command)
    clients = 40
    try:
        assert process.stdout is not None
        workers_line = process.stdout.readline()
        doubles = {process.stdout.readline().split()[-1] for _ in range(2)}
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/stream")
        assert workers_line.startswith("workers: 2 (pids ")
        pids = [
            int(pid) for pid in workers_line.partition("(pids ")[2].partition(")")[0].split(", ")
        ]
        assert len(pids) == 2 and process.pid not in pids and len(doubles) == 2

        async def handshake(results: list[tuple[str, float]]) -> None:
            began = time.monotonic()
            async with await connect(f"{url}?api_key={key}&model=echo") as socket:
                await send(socket, {"type": "livekit_join", "passthrough": False})
                await send(socket, {"type": "prompt", "prompt": "two workers"})
                # The ack may overtake room_info, held back by its delay.
                frames = {
                    frame["type"]: frame for frame in [await recv(socket), await recv(socket)]
                }
                info = frames["livekit_room_info"]
                assert frames["prompt_ack"]["success"] is True
                results.append((str(info["livekit_url"]), time.monotonic() - began))

        async def burst() -> list[tuple[str, float]]:
            results: list[tuple[str, float]] = []
            with anyio.fail_after(4 * WAIT):
                async with anyio.create_task_group() as group:
                    for _ in range(clients):
                        group.start_soon(handshake, results)
            return results

        results = anyio.run(burst)
        process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=4 * WAIT)
    finally:
        process.kill()
    assert len(results) == clients
    served = {double for double, _ in results}
    assert served == doubles  # both workers served some
    # room_info came after the room_info delay, so each worker had the knob.
    assert min(seconds for _, seconds in results) >= 0.05
    assert process.returncode == 0
    assert all(_gone(pid) for pid in pids)
    for pid in pids:
        assert f"(pid {pid}) INFO leanjoin.server: session 1: in_room" in log
    assert key not in log


def test_workers_get_the_knobs_the_parent_was_given() -> None:
    from leanjoin.adapters.cli.serve import knobs_from_options, serve
    from leanjoin.adapters.cli.workers import knob_options
    from leanjoin.engine.server.knobs import AckDrop, MediaFailurePhase

    knobs = ServerKnobs(
        capacity=3,
        admissions_per_second=2.5,
        room_info_delay=0.1 + 0.2,  # a float that needs all its digits
        reject_reference=True,
        drop_ack=AckDrop.INITIAL,
        error_at=FaultPhase.QUEUED,
        media_failure_at=MediaFailurePhase.GENERATING,
        fault_connections=2,
    )
    assert knob_options(ServerKnobs()) == []
    context = serve.make_context("serve", knob_options(knobs))
    names = {field.name for field in attrs.fields(ServerKnobs)}
    assert knobs_from_options({k: v for k, v in context.params.items() if k in names}) == knobs


def test_the_model_styles_the_first_client_frame_itself() -> None:
    """first_frame_styled: the room tells its listener of the first decoded frame
    before it looks up the transform, so a model configured on that news (as the
    reference server's engine does on ClientVideoArrived) styles that very frame."""
    room = RoomHandle("r", "inference-server-test")
    heard: list[str] = []

    class Listener:
        def client_publishing(self) -> None:
            heard.append("publishing")

        def client_video(self) -> None:
            heard.append("video")
            room.set_transform(lambda frame: 255 - frame)

    room.listener = Listener()
    frame = np.full((4, 4, 3), 10, dtype=np.uint8)
    room.on_client_publishing()
    room.on_client_publishing()  # a second track: no second notice
    first = room.on_client_frame(frame)
    assert first is not None and int(first[0, 0, 0]) == 245
    assert room.on_client_frame(frame) is not None
    assert heard == ["publishing", "video"]  # once each
    # A room nobody listens to (a closed session's) still counts frames, untransformed.
    quiet = RoomHandle("s", "inference-server-test")
    assert quiet.on_client_frame(frame) is None and quiet.client_video_frames == 1


def _fragments(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("image", "fragment", "prefetched"),
    [
        (NOISE, 1000, True),  # RGB PNG in many fragments: decoded while streaming in
        (NOISE, None, True),  # one unfragmented frame: the prefetch gets it whole
        (np.dstack([NOISE, NOISE[:, :, :1]]), 777, True),  # RGBA
        (NOISE[:, :, 0], 1000, False),  # grey PNG: left to the server's own decode
    ],
    ids=["rgb-fragmented", "rgb-whole", "rgba-fragmented", "grey-not-prefetched"],
)
async def test_a_streamed_reference_is_decoded_once_with_the_server_decode_s_colour(
    monkeypatch: pytest.MonkeyPatch, image: np.ndarray, fragment: int | None, prefetched: bool
) -> None:
    """prefetch_used_only_when_exact: a reference the prefetch decoded while it
    streamed in is not decoded again, and styles the output exactly as the
    server's own decode would; an image it does not speculate on still works."""
    from leanjoin.adapters.server import reference as server_module

    slow: list[int] = []
    own_decode = server_module._reference_swatch

    def counted(data: bytes) -> np.ndarray:
        slow.append(len(data))
        return own_decode(data)

    monkeypatch.setattr(server_module, "_reference_swatch", counted)
    png = base64.b64encode(encode_png(image)).decode()
    frame = json.dumps({"type": "set_image", "image_data": png, "prompt": "sunset"})
    async with running() as server, client(server) as socket:
        await send(socket, {"type": "livekit_join", "passthrough": False})
        await socket.send(frame if fragment is None else _fragments(frame, fragment))
        info = await recv(socket)
        assert await recv(socket) == {"type": "set_image_ack", "success": True}
        await video(server, info["room_name"])
        assert (await recv(socket))["type"] == "generation_started"
        out = server.livekit.room(info["room_name"]).on_client_frame(CAMERA)
    assert out is not None
    expected = own_decode(base64.b64decode(png))[0, 0]
    assert tuple(out[-1, 0]) == tuple(expected)
    assert (slow == []) is prefetched


@pytest.mark.anyio
@pytest.mark.parametrize(("side", "on_the_loop"), [(32, True), (160, False)])
async def test_a_small_whole_reference_is_decoded_on_the_loop_a_large_one_in_a_thread(
    monkeypatch: pytest.MonkeyPatch, side: int, on_the_loop: bool
) -> None:
    """A reference that comes in one small fragment (a 32x32 PNG: 4 KB) is
    decoded by the prefetch on the event loop, with no worker thread; one over
    INLINE_DECODE_CHARS (160x160 of noise: 100 KB) in a worker thread."""
    import threading

    from leanjoin.adapters.server.prefetch import ReferencePrefetch
    from leanjoin.adapters.server.reading import INLINE_DECODE_CHARS

    finished_on: list[bool] = []
    own_finish = ReferencePrefetch.finish

    def finish(self: ReferencePrefetch) -> None:
        finished_on.append(threading.current_thread() is threading.main_thread())
        own_finish(self)

    monkeypatch.setattr(ReferencePrefetch, "finish", finish)
    image = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    frame = json.dumps(
        {"type": "set_image", "image_data": base64.b64encode(encode_png(image)).decode()}
    )
    assert (len(frame) <= INLINE_DECODE_CHARS) is on_the_loop
    async with running() as server, client(server) as socket:
        await send(socket, {"type": "livekit_join", "passthrough": False})
        await socket.send(frame)
        info = await recv(socket)
        assert await recv(socket) == {"type": "set_image_ack", "success": True}
        await video(server, info["room_name"])
        assert (await recv(socket))["type"] == "generation_started"
        out = server.livekit.room(info["room_name"]).on_client_frame(CAMERA)
    assert finished_on == [on_the_loop]
    assert out is not None and tuple(out[-1, 0]) == mean_colour(image)


@pytest.mark.anyio
async def test_a_misleading_frame_cannot_make_the_prefetch_style_the_output() -> None:
    """The prefetch speculates on the first image_data of a frame, but JSON keeps
    the last one of a duplicated key, another image: the output shows that one."""
    blue = base64.b64encode(encode_png(np.full((8, 8, 3), (40, 40, 200), np.uint8))).decode()
    frame = '{"type":"set_image","image_data":"' + RED_PNG + '","image_data":"' + blue + '"}'
    async with running() as server, client(server) as socket:
        await send(socket, {"type": "livekit_join", "passthrough": False})
        await socket.send(_fragments(frame, 50))
        info = await recv(socket)
        assert await recv(socket) == {"type": "set_image_ack", "success": True}
        await video(server, info["room_name"])
        await until(socket, "generation_started")
        out = server.livekit.room(info["room_name"]).on_client_frame(CAMERA)
        assert out is not None and tuple(out[-1, 0]) == (40, 40, 200)


@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT spreads connections on Linux")
@pytest.mark.parametrize("verbose", [False, True])
def test_serve_workers_log_at_the_level_leanjoin_was_given(verbose: bool) -> None:
    # The workers are processes of their own: they must log as `leanjoin serve`
    # does (quiet by default, each session's phases with -v), not at a level of
    # their own, which had them write five lines a handshake unasked.
    leanjoin = str(sys.executable).rsplit("/", 1)[0] + "/leanjoin"
    command = [leanjoin, *(["-v"] if verbose else []), "serve", "--port", "0", "--workers", "2"]
    process, url, key = start_serve(command)
    try:

        async def sessions() -> None:
            for _ in range(4):  # the kernel spreads them over both workers
                async with await connect(f"{url}?api_key={key}&model=echo") as socket:
                    await send(socket, {"type": "livekit_join", "passthrough": True})
                    await recv(socket)

        anyio.run(sessions)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        _, log = process.communicate(timeout=WAIT * 4)
    finally:
        process.kill()
    assert process.returncode == 0, log
    phases = [line for line in log.splitlines() if ": in_room" in line]
    if verbose:
        assert len(phases) == 4 and all(" worker " in line for line in phases), log
    else:
        assert phases == [], log


@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT spreads connections on Linux")
@pytest.mark.parametrize(
    ("options", "role"),
    [
        (["--port", "{busy}"], "--port"),
        (["--port", "0", "--http-port", "{busy}"], "--http-port"),
        (["--port", "{busy}", "--workers", "2"], "--port"),
        (["--port", "0", "--http-port", "{busy}", "--workers", "2"], "--http-port"),
    ],
)
def test_serve_on_a_port_in_use_fails_in_one_line(options: list[str], role: str) -> None:
    # A port someone else holds is a user's everyday mistake: one line naming
    # the address and its option, exit 1, not a traceback.
    leanjoin = str(sys.executable).rsplit("/", 1)[0] + "/leanjoin"
    with socket.create_server(("127.0.0.1", 0)) as holder:
        busy = str(holder.getsockname()[1])
        command = [leanjoin, "serve", "--api-key", "k", *(o.format(busy=busy) for o in options)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"leanjoin: cannot listen on 127.0.0.1:{busy} ({role}): address already in use"
    ]


def test_serve_on_an_address_not_this_hosts_fails_in_one_line() -> None:
    leanjoin = str(sys.executable).rsplit("/", 1)[0] + "/leanjoin"
    command = [leanjoin, "serve", "--api-key", "k", "--port", "0", "--host", "192.0.2.1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "leanjoin: cannot listen on 192.0.2.1:0 (--host): cannot assign requested address"
    ]


@pytest.mark.skipif(sys.platform != "linux", reason="/proc lists a process's children")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_workers_stopped_while_starting_stop_quietly(signum: signal.Signals) -> None:
    # Ctrl-C while the workers are still starting (seconds, on a busy machine)
    # stops them all with "stopped" and no traceback of the abandoned wait.
    leanjoin = str(sys.executable).rsplit("/", 1)[0] + "/leanjoin"
    command = [leanjoin, "serve", "--port", "0", "--api-key", "k", "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    deadline = time.monotonic() + 30
    # The parent handles signals before it starts a worker; a worker takes far
    # longer to import than this poll to see it.
    while len(children.read_text().split()) < 2:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out == "" and err.splitlines() == ["shutting down", "stopped"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_with_a_files_dir_it_cannot_use_is_a_usage_error(
    tmp_path: Path, workers: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    leanjoin = str(sys.executable).rsplit("/", 1)[0] + "/leanjoin"
    command = [leanjoin, "serve", "--api-key", "k", "--port", "0", "--workers", workers]
    command += ["--files-dir", str(a_file / "files")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: Invalid value for '--files-dir': cannot use {a_file / 'files'}: Not a directory"
    )


def test_serve_help_documents_its_exit_codes() -> None:
    leanjoin = str(sys.executable).rsplit("/", 1)[0] + "/leanjoin"
    done = subprocess.run([leanjoin, "serve", "--help"], capture_output=True, text=True, timeout=60)
    documented = done.stdout.partition("Exit status:")[2]
    assert [line.split()[0] for line in documented.strip().splitlines()] == ["0", "1", "2"]
    assert "could not listen" in documented and "--files-dir" in documented
