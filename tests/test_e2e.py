"""End to end: the client API against the real ReferenceServer (in-process, on
127.0.0.1) and its LiveKit double, joined by the real ``livekit.rtc.Room``.

Checks are made on decoded output pixels where the echo model makes an input
visible: the top quarter shows ``prompt_colour(prompt)``, the bottom quarter
the reference image's mean colour. Every wait is bounded; no speed is asserted.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from click.testing import CliRunner
from client_helpers import (
    BAND_TOLERANCE,
    LEANJOIN,
    WAIT,
    frame_with_band,
    rooms_of,
    served,
    server_idle,
    session_args,
    until,
)

from leanjoin.adapters import (
    ConnectFailed,
    ConnectionState,
    ErrorKind,
    ErrorOccurred,
    Event,
    InitialStateAcked,
    QueuePositionChanged,
    RetryPolicy,
    RetryScheduled,
    Session,
    SessionStarted,
    StateChanged,
    Timeouts,
    connect,
)
from leanjoin.adapters.cli.main import main
from leanjoin.adapters.client.png import encode_png
from leanjoin.adapters.server.echo_model import (
    colours_close,
    decode_reference,
    mean_colour,
    output_bands,
)
from leanjoin.adapters.server.reference import ReferenceServer
from leanjoin.engine.server.knobs import FaultPhase, ServerKnobs

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.livekit]

REFERENCE = np.full((48, 64, 3), (180, 70, 150), dtype=np.uint8)


async def output_frame(session: Session, check: Callable[[np.ndarray[Any, Any]], bool]) -> None:
    with anyio.fail_after(WAIT):
        async for frame in session.frames():
            if check(frame):
                return
    raise AssertionError("the session ended before the output passed the check")


# ---- what a session carries ----------------------------------------------------------


async def test_image_and_prompt_reach_the_model(server: ReferenceServer) -> None:
    events: list[Event] = []
    async with connect(
        server.url,
        image=encode_png(REFERENCE),
        prompt="a castle in the clouds",
        **session_args(server, events),
    ) as session:
        frame = await frame_with_band(session, "a castle in the clouds")
        await output_frame(
            session,
            lambda f: colours_close(output_bands(f)[1], mean_colour(REFERENCE), BAND_TOLERANCE),
        )
        await session.set_image(np.full((32, 32, 3), (60, 160, 200), dtype=np.uint8))
        await output_frame(
            session, lambda f: colours_close(output_bands(f)[1], (60, 160, 200), BAND_TOLERANCE)
        )
        room = session.room_name
    assert frame.shape == (240, 320, 3)
    assert any(isinstance(e, InitialStateAcked) for e in events)
    assert not any(isinstance(e, ErrorOccurred) for e in events)
    await server_idle(server, room)


async def test_prompt_only(server: ReferenceServer) -> None:
    async with connect(server.url, prompt="only words", **session_args(server)) as session:
        await frame_with_band(session, "only words")
        await session.set_prompt("other words")
        await frame_with_band(session, "other words")
        room = session.room_name
    await server_idle(server, room)


async def test_passthrough_returns_the_camera_unchanged(server: ReferenceServer) -> None:
    # The test pattern's red channel ramps up from left to right; the echo model
    # mirrors frames once it has a state, so an unmirrored frame is passthrough.
    async with connect(server.url, **session_args(server)) as session:
        await output_frame(session, lambda f: int(f[120, 10, 0]) + 60 < int(f[120, 310, 0]))
        assert session.state in (ConnectionState.CONNECTED, ConnectionState.GENERATING)
        await session.set_prompt("now styled")
        await frame_with_band(session, "now styled")
        room = session.room_name
    await server_idle(server, room)


# ---- the handshake under stress ----------------------------------------------------


async def test_a_queue_wait_longer_than_the_room_info_timeout() -> None:
    # Capacity 1: the second session queues for longer than three of its
    # room_info timeouts and must still connect on its first attempt.
    async with ReferenceServer(host="127.0.0.1", port=0, knobs=ServerKnobs(capacity=1)) as server:
        first_in, release, first_out = anyio.Event(), anyio.Event(), anyio.Event()
        queued: list[Event] = []

        async def first() -> None:
            async with connect(server.url, prompt="first", **session_args(server)):
                first_in.set()
                await release.wait()
            first_out.set()

        async def second() -> None:
            args = session_args(server, queued)
            args["timeouts"] = Timeouts(room_info=0.3, socket_open=5, media=15)
            async with connect(server.url, prompt="waited", **args) as session:
                assert first_out.is_set()  # admitted only once the first one left
                await frame_with_band(session, "waited")

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            with anyio.fail_after(WAIT):
                await first_in.wait()
            tg.start_soon(second)
            await until(lambda: any(isinstance(e, QueuePositionChanged) for e in queued))
            await anyio.sleep(1.0)  # queued well past the room_info timeout
            release.set()
        await server_idle(server)
    assert not any(isinstance(e, RetryScheduled) for e in queued)
    assert [e.attempt for e in queued if isinstance(e, SessionStarted)] == [1]


async def test_an_ack_before_room_info_is_claimed_once() -> None:
    # room_info is delayed, so the server acks the initial state before it.
    knobs = ServerKnobs(room_info_delay=0.5)
    async with ReferenceServer(host="127.0.0.1", port=0, knobs=knobs) as server:
        events: list[Event] = []
        args = session_args(server, events)
        args["timeouts"] = Timeouts(initial_state_ack=2, socket_open=5, media=15)
        async with connect(server.url, prompt="early ack", **args) as session:
            await frame_with_band(session, "early ack")
            await anyio.sleep(2.5)  # past the ack timeout: a lost ack would show as an error
            room = session.room_name
        await server_idle(server, room)
    assert sum(isinstance(e, InitialStateAcked) for e in events) == 1
    assert not any(isinstance(e, ErrorOccurred) for e in events)


async def test_a_rejected_reference_is_an_error_event_and_the_session_stays_up() -> None:
    knobs = ServerKnobs(reject_reference=True)
    async with ReferenceServer(host="127.0.0.1", port=0, knobs=knobs) as server:
        events: list[Event] = []
        async with connect(
            server.url, image=encode_png(REFERENCE), prompt="kept", **session_args(server, events)
        ) as session:
            await until(lambda: any(isinstance(e, ErrorOccurred) for e in events))
            (error,) = [e for e in events if isinstance(e, ErrorOccurred)]
            assert error.kind is ErrorKind.INITIAL_STATE_REJECTED and not error.fatal
            assert session.state in (ConnectionState.CONNECTED, ConnectionState.GENERATING)
            await session.set_prompt("still here")
            await frame_with_band(session, "still here")
            room = session.room_name
        await server_idle(server, room)
    assert not any(isinstance(e, RetryScheduled) for e in events)


async def test_a_failed_initial_state_send_fails_the_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The server's socket refuses frames over 2 x 64 KiB: it closes (1009) while the
    # client is still writing a ~2.6 MB initial state. The attempt must fail, not
    # go on to connect a room for a server that never got its state.
    caplog.set_level(logging.INFO, logger="leanjoin.adapters.server.lkdouble")
    knobs = ServerKnobs(max_frame_bytes=64 * 1024)
    noise = np.random.default_rng(7).integers(0, 255, (800, 800, 3), dtype=np.uint8)
    async with ReferenceServer(host="127.0.0.1", port=0, knobs=knobs) as server:
        events: list[Event] = []
        args = session_args(server, events)
        args["retry"] = RetryPolicy(max_retries=1, initial_delay=0.05)
        with anyio.fail_after(WAIT * 2), pytest.raises(ConnectFailed) as caught:
            async with connect(server.url, image=encode_png(noise), **args):
                raise AssertionError("must not connect")
        await server_idle(server)
    failures = {ErrorKind.SEND_FAILED, ErrorKind.SOCKET_CLOSED}
    assert caught.value.kind in failures
    # Refused as too big (1009): a retry would send it again (issue #14).
    assert not any(isinstance(e, RetryScheduled) for e in events)
    assert not any(isinstance(e, SessionStarted) for e in events)
    # Never joined: the double forgets rooms, but it logs every join it serves.
    assert not [r for r in caplog.records if "joins room" in r.getMessage()]


@pytest.mark.parametrize("mistake", ["wrong path", "livekit url", "image over the frame limit"])
async def test_a_failure_a_retry_cannot_mend_ends_the_connect_at_once(mistake: str) -> None:
    # Issue #14: each of these was retried for ~25 s (five retries, 1 to 8 s apart).
    # room_info waits 1 s, so the refusal of the image comes before it.
    knobs = ServerKnobs(max_frame_bytes=256 * 1024, room_info_delay=1.0)
    noise = np.random.default_rng(3).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    png = encode_png(noise)
    assert 256 * 1024 < len(png) * 4 / 3 < 2 * 256 * 1024  # refused by the engine, not 1009
    async with ReferenceServer(host="127.0.0.1", port=0, knobs=knobs) as server:
        events: list[Event] = []
        args = session_args(server, events)
        args["retry"] = RetryPolicy()  # the default policy: 1 s before the first retry
        url = server.url
        image = None
        if mistake == "wrong path":
            url = url.replace("/v1/stream", "/v2/stream")
        elif mistake == "livekit url":
            url = server.livekit.url
        else:
            image = png
        with anyio.fail_after(WAIT), pytest.raises(ConnectFailed) as caught:
            async with connect(url, image=image, **args):
                raise AssertionError("must not connect")
        await server_idle(server)
    assert not any(isinstance(e, RetryScheduled) for e in events)
    if mistake == "image over the frame limit":
        assert caught.value.kind is ErrorKind.SERVER_ERROR
        assert "exceeds the maximum" in caught.value.message
    else:
        assert caught.value.kind is ErrorKind.SOCKET_OPEN_FAILED
        assert "HTTP 404" in caught.value.message


async def test_a_server_close_during_the_join_is_retried() -> None:
    knobs = ServerKnobs(close_at=FaultPhase.BEFORE_ROOM_INFO, fault_connections=1)
    async with ReferenceServer(host="127.0.0.1", port=0, knobs=knobs) as server:
        events: list[Event] = []
        async with connect(server.url, prompt="second try", **session_args(server, events)) as s:
            await frame_with_band(s, "second try")  # the retry replayed the initial state
            room = s.room_name
        await server_idle(server, room)
    (retry,) = [e for e in events if isinstance(e, RetryScheduled)]
    assert retry.kind is ErrorKind.SOCKET_CLOSED
    assert [e.attempt for e in events if isinstance(e, SessionStarted)] == [2]


async def test_room_loss_while_generating_reconnects_with_the_state_replayed(
    server: ReferenceServer,
) -> None:
    events: list[Event] = []
    async with connect(server.url, prompt="before", **session_args(server, events)) as session:
        await until(lambda: session.state is ConnectionState.GENERATING)
        await session.set_prompt("latest")
        await frame_with_band(session, "latest")
        lost = session.room_name
        assert lost is not None
        await server.livekit.room(lost).disconnect_participants("room_deleted")
        await until(lambda: session.room_name != lost and session.state is not None)
        await until(lambda: sum(isinstance(e, SessionStarted) for e in events) == 2)
        await frame_with_band(session, "latest")  # replayed: not "before"
        room = session.room_name
    states = [e.state for e in events if isinstance(e, StateChanged)]
    assert ConnectionState.RECONNECTING in states
    assert states.index(ConnectionState.RECONNECTING) > states.index(ConnectionState.GENERATING)
    await server_idle(server, lost, room)


async def test_a_stale_attempt_never_emits_after_a_retry() -> None:
    # Connection 1 gets room_info and then an error while its room is still
    # joining (the double answers after 0.5 s): attempt 1 is abandoned mid-connect.
    knobs = ServerKnobs(
        error_at=FaultPhase.AFTER_ROOM_INFO, fault_connections=1, media_setup_delay=0.5
    )
    async with ReferenceServer(host="127.0.0.1", port=0, knobs=knobs) as server:
        events: list[Event] = []
        async with connect(server.url, prompt="fresh", **session_args(server, events)) as s:
            await frame_with_band(s, "fresh")
            await anyio.sleep(1.0)  # give attempt 1's late room every chance to speak
            room = s.room_name
        await server_idle(server, room)
    (retry,) = [e for e in events if isinstance(e, RetryScheduled)]
    assert retry.kind is ErrorKind.SERVER_ERROR and retry.attempt == 1
    start = next(i for i, e in enumerate(events) if e.attempt == 2)
    assert all(e.attempt == 2 for e in events[start:])
    assert all(room.participants == 0 for room in rooms_of(server))


# ---- leaving in every phase --------------------------------------------------------------

PHASES: dict[str, ServerKnobs] = {
    "joining": ServerKnobs(room_info_delay=30),
    "queued": ServerKnobs(capacity=0),
    "room_connecting": ServerKnobs(media_setup_delay=3),
    "publishing": ServerKnobs(publish_delay=3),  # the double holds its track_published
    "backoff": ServerKnobs(close_at=FaultPhase.BEFORE_ROOM_INFO),
    "connected": ServerKnobs(),
    "generating": ServerKnobs(),
}


@pytest.mark.parametrize("phase", list(PHASES))
async def test_leaving_in_any_phase_leaves_nothing_behind(phase: str) -> None:
    async with ReferenceServer(host="127.0.0.1", port=0, knobs=PHASES[phase]) as server:
        reached = anyio.Event()

        def watch(event: Event) -> None:
            if (
                (phase == "queued" and isinstance(event, QueuePositionChanged))
                or (phase == "backoff" and isinstance(event, RetryScheduled))
                or (phase in ("joining", "room_connecting") and isinstance(event, StateChanged))
            ):
                reached.set()

        args = session_args(server)
        args["on_event"] = watch
        args["retry"] = RetryPolicy(initial_delay=30)

        async def run() -> None:
            async with connect(server.url, prompt="bye", **args) as session:
                if phase == "generating":
                    await until(lambda: session.state is ConnectionState.GENERATING)
                # "connected": leave as soon as connect returns

        async def publishing() -> None:
            await until(lambda: bool(rooms_of(server)))
            await rooms_of(server)[0].wait_client_publishing()
            reached.set()

        if phase in ("connected", "generating"):
            with anyio.fail_after(WAIT):
                await run()
        else:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                if phase == "publishing":
                    tg.start_soon(publishing)
                with anyio.fail_after(WAIT):
                    await reached.wait()
                await anyio.sleep(0.5)  # well into the phase (room_info/media take longer)
                tg.cancel_scope.cancel()
        await server_idle(server, *(room.name for room in rooms_of(server)))


# ---- the command line ----------------------------------------------------------------------


def test_cli_demo_passes_and_writes_a_contact_sheet(tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--codec", "vp8"])
    assert result.exit_code == 0, result.output
    assert "demo passed" in result.output
    for phase in ("socket_opened", "room_info", "room_connected", "first_output_frame"):
        assert phase in result.output
    sheet = decode_reference(out.read_bytes())
    assert sheet.ndim == 3 and sheet.shape[0] > 240


def test_cli_connect_prints_json_events_and_never_the_key(tmp_path: Path) -> None:
    key = "cli-secret-key-42"
    with served(key) as url:
        image = tmp_path / "ref.png"
        image.write_bytes(encode_png(REFERENCE))
        args = ["connect", url, "--model", "echo", "--image", str(image), "--prompt", "cli"]
        args += ["--json", "--seconds", "1.5", "--save-frames", str(tmp_path)]
        run = subprocess.run(
            [str(LEANJOIN), *args],
            env={**os.environ, "LEANJOIN_API_KEY": key},
            capture_output=True,
            text=True,
            timeout=60,
        )
        wrong = subprocess.run(
            [str(LEANJOIN), "connect", url, "--model", "echo", "--json"],
            env={**os.environ, "LEANJOIN_API_KEY": "wrong-" + key},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "state_changed" and "session_started" in names
    assert names[-1] == "state_changed" and events[-1]["state"] == "disconnected"
    assert list(tmp_path.glob("frame_*.png"))
    assert wrong.returncode == 1
    assert wrong.stderr.strip().count("\n") == 0 and "invalid api key" in wrong.stderr
    for output in (run.stdout, run.stderr, wrong.stdout, wrong.stderr):
        assert key not in output


def test_cli_refuses_to_run_without_a_key() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("LEANJOIN_API_KEY", "DECART_API_KEY")}
    result = CliRunner(env=env).invoke(
        main, ["connect", "ws://127.0.0.1:9/v1/stream", "--model", "echo"]
    )
    assert result.exit_code == 2
    assert "LEANJOIN_API_KEY or DECART_API_KEY" in result.output
