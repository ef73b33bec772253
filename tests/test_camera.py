"""Camera sources and swapping the camera mid-session (issue #14), end to end:
the client API against the real ReferenceServer (in-process, on 127.0.0.1) and
its LiveKit double, joined by the real ``livekit.rtc.Room``.

No prompt and no image: the echo model passes the camera through, so the
output's colour is the camera's. Every wait is bounded; no speed is asserted.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import av
import numpy as np
import pytest
from client_helpers import LEANJOIN, WAIT, served, server_idle, until
from livekit import rtc

from leanjoin.adapters import (
    Camera,
    ConnectionState,
    Event,
    MediaOptions,
    NotConnectedError,
    RetryPolicy,
    RetryScheduled,
    Session,
    SessionClosed,
    SessionStarted,
    StateChanged,
    StillImage,
    Timeouts,
    connect,
)
from leanjoin.adapters.server.echo_model import colours_close, decode_reference
from leanjoin.adapters.server.reference import ReferenceServer
from leanjoin.engine.server.knobs import ServerKnobs

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.livekit]

RED = (200, 40, 40)
BLUE = (40, 40, 200)
GREEN = (40, 200, 40)
WIDTH, HEIGHT = 320, 240
TOLERANCE = 24


def still(colour: tuple[int, int, int]) -> StillImage:
    return StillImage(np.full((HEIGHT, WIDTH, 3), colour, dtype=np.uint8), fps=15)


def session_args(server: ReferenceServer, events: list[Event]) -> dict[str, Any]:
    return {
        "api_key": server.api_key,
        "model": "echo",
        "timeouts": Timeouts(socket_open=5, room_info=5, media=15),
        "retry": RetryPolicy(max_retries=3, initial_delay=0.05, max_delay=0.2),
        "on_event": events.append,
    }


def centre(frame: np.ndarray[Any, Any]) -> tuple[int, int, int]:
    h, w = frame.shape[:2]
    region = frame[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].reshape(-1, 3)
    r, g, b = (int(v) for v in np.median(region, axis=0))
    return (r, g, b)


async def output_shows(session: Session, colour: tuple[int, int, int]) -> None:
    """Return once the model's output shows ``colour`` (the camera passed through)."""
    with anyio.fail_after(WAIT):
        async for frame in session.frames():
            if colours_close(centre(frame), colour, TOLERANCE):
                return
    raise AssertionError(f"the session ended before the output showed {colour}")


class PushedTrack:
    """A LocalVideoTrack the test owns, on its own rtc.VideoSource, fed a colour."""

    def __init__(self, colour: tuple[int, int, int]) -> None:
        self.source = rtc.VideoSource(WIDTH, HEIGHT)
        self.track = rtc.LocalVideoTrack.create_video_track("test-camera", self.source)
        image = np.full((HEIGHT, WIDTH, 3), colour, dtype=np.uint8)
        self._frame = rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGB24, image.tobytes())

    async def feed(self) -> None:
        while True:
            self.source.capture_frame(self._frame)
            await anyio.sleep(1 / 15)


@asynccontextmanager
async def pushed_track(colour: tuple[int, int, int]) -> AsyncIterator[rtc.LocalVideoTrack]:
    """A :class:`PushedTrack` fed while the block runs, its source closed after:
    the test's own, which leanjoin never closes."""
    pushed = PushedTrack(colour)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pushed.feed)
        yield pushed.track
        tg.cancel_scope.cancel()
    await pushed.source.aclose()


def milestones(session: Session) -> set[tuple[str, int]]:
    return {(m.name, m.attempt) for m in session.timeline}


def attempts(events: list[Event]) -> list[int]:
    return [e.attempt for e in events if isinstance(e, SessionStarted)]


# ---- swapping ---------------------------------------------------------------------------------


async def test_replace_camera_mid_session(server: ReferenceServer) -> None:
    events: list[Event] = []
    blue = still(BLUE)
    async with connect(server.url, camera=still(RED), **session_args(server, events)) as session:
        await output_shows(session, RED)
        timeline = len({m.attempt for m in session.timeline})
        await session.replace_camera(blue)
        assert session.camera is blue
        await output_shows(session, BLUE)
        assert {m.attempt for m in session.timeline} == {1} and timeline == 1
        assert session.state in (ConnectionState.CONNECTED, ConnectionState.GENERATING)
        room = session.room_name
    assert attempts(events) == [1]  # the same socket and room: no reconnect
    assert not any(isinstance(e, RetryScheduled) for e in events)
    await server_idle(server, room)


@pytest.mark.parametrize("kind", ["source", "track"])
async def test_replace_camera_survives_a_reconnect(server: ReferenceServer, kind: str) -> None:
    events: list[Event] = []
    async with (
        pushed_track(GREEN) as green,
        connect(server.url, camera=still(RED), **session_args(server, events)) as session,
    ):
        colour = BLUE if kind == "source" else GREEN
        await output_shows(session, RED)
        await session.replace_camera(still(BLUE) if kind == "source" else green)
        await output_shows(session, colour)
        lost = session.room_name
        assert lost is not None
        await server.livekit.room(lost).disconnect_participants("room_deleted")
        await until(lambda: attempts(events) == [1, 2])
        # From here on every frame is the retry's (a stale one waits in no backlog).
        await until(lambda: ("first_output_frame", 2) in milestones(session))
        with anyio.fail_after(WAIT):
            # The retry publishes the camera set last, never the first one again.
            async for frame in session.frames():
                assert not colours_close(centre(frame), RED, TOLERANCE)
                if colours_close(centre(frame), colour, TOLERANCE):
                    break
        room = session.room_name
    await server_idle(server, lost, room)


async def test_a_failed_swap_reconnects_with_the_new_camera(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The double holds every track_published answer for 1 s: the first publish
    # waits it out (the media timeout is longer), the swap gives up after 0.3 s.
    events: list[Event] = []
    knobs = ServerKnobs(publish_delay=1.0)
    async with (
        ReferenceServer(host="127.0.0.1", port=0, knobs=knobs) as server,
        pushed_track(GREEN) as green,
    ):
        args = session_args(server, events)
        async with connect(
            server.url, camera=still(RED), media=MediaOptions(publish_timeout=0.3), **args
        ) as session:
            await output_shows(session, RED)
            lost = session.room_name
            await session.replace_camera(green)  # returns: the room is gone, a retry follows
            await until(lambda: attempts(events) == [1, 2])
            await until(lambda: ("first_output_frame", 2) in milestones(session))
            await output_shows(session, GREEN)
            room = session.room_name
        await server_idle(server, lost, room)
    states = [e.state for e in events if isinstance(e, StateChanged)]
    assert ConnectionState.RECONNECTING in states
    assert "publishing the replaced camera failed: timed out" in caplog.text


async def test_replace_camera_on_a_closed_session_raises(server: ReferenceServer) -> None:
    events: list[Event] = []
    async with connect(server.url, camera=still(RED), **session_args(server, events)) as session:
        room = session.room_name
    with pytest.raises((SessionClosed, NotConnectedError)):
        await session.replace_camera(still(BLUE))
    await server_idle(server, room)


async def test_camera_device_in_a_session_then_replaced(server: ReferenceServer) -> None:
    # FFmpeg's lavfi colour source stands in for a capture device (none on CI):
    # the Camera's own reading code feeds the session, then a swap stops it.
    if "lavfi" not in av.formats_available:
        pytest.skip("this PyAV build has no lavfi input")
    events: list[Event] = []
    red = "color=c=0xC82828:size=320x240:rate=15,realtime"
    with Camera(red, format="lavfi", width=WIDTH, height=HEIGHT, fps=15) as camera:
        async with connect(server.url, camera=camera, **session_args(server, events)) as session:
            await output_shows(session, RED)
            await session.replace_camera(still(BLUE))
            await output_shows(session, BLUE)
            room = session.room_name
    assert camera.closed
    assert attempts(events) == [1]
    await server_idle(server, room)


def test_cli_connect_camera_publishes_the_device(tmp_path: Path) -> None:
    if "lavfi" not in av.formats_available:
        pytest.skip("this PyAV build has no lavfi input")
    key = "camera-cli-key"
    red = "color=c=0xC82828:size=320x240:rate=15,realtime"
    with served(key) as url:
        args = ["connect", url, "--model", "echo", "--camera", red, "--camera-format", "lavfi"]
        run = subprocess.run(
            [str(LEANJOIN), *args, "--seconds", "2", "--save-frames", str(tmp_path), "--json"],
            env={**os.environ, "LEANJOIN_API_KEY": key},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr
    saved = sorted(tmp_path.glob("frame_*.png"))
    assert saved
    assert colours_close(centre(decode_reference(saved[-1].read_bytes())), RED, TOLERANCE)


# ---- an existing LocalVideoTrack ---------------------------------------------------------------


async def test_local_video_track_camera_is_published_and_echoed(server: ReferenceServer) -> None:
    events: list[Event] = []
    async with (
        pushed_track(GREEN) as green,
        connect(server.url, camera=green, **session_args(server, events)) as session,
    ):
        assert session.camera is green
        await output_shows(session, GREEN)
        room = session.room_name
    await server_idle(server, room)


async def test_replace_camera_between_a_source_and_a_track(server: ReferenceServer) -> None:
    events: list[Event] = []
    async with (
        pushed_track(GREEN) as green,
        connect(server.url, camera=still(RED), **session_args(server, events)) as session,
    ):
        await output_shows(session, RED)
        await session.replace_camera(green)  # the track is published as is
        await output_shows(session, GREEN)
        await session.replace_camera(still(BLUE))  # and unpublished again
        await output_shows(session, BLUE)
        await session.replace_camera(green)  # unpublished, it is not stopped: still the user's
        await output_shows(session, GREEN)
        room = session.room_name
    assert attempts(events) == [1]
    await server_idle(server, room)
