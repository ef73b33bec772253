"""Parity with the official clients (issue #14), against the real ReferenceServer
(in-process, on 127.0.0.1) and its LiveKit double, joined by the real
``livekit.rtc.Room``: what a session sends on the wire and what the server
makes of it. Every wait is bounded; no speed is asserted.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
from typing import Any

import anyio
import numpy as np
import pytest
from client_helpers import (
    BAND_TOLERANCE,
    LEANJOIN,
    WAIT,
    frame_with_band,
    refusing_server,
    served,
    server_idle,
    until,
)

from leanjoin.adapters import (
    ConnectFailed,
    ErrorKind,
    ErrorOccurred,
    Event,
    InitialStateAcked,
    ModelDefinition,
    RequestAcked,
    RequestTimedOut,
    RetryPolicy,
    Session,
    TestPattern,
    Timeouts,
    connect,
)
from leanjoin.adapters.client.endpoint import default_user_agent
from leanjoin.adapters.client.png import encode_png
from leanjoin.adapters.server.echo_model import colours_close, output_bands
from leanjoin.adapters.server.reference import ReferenceServer
from leanjoin.engine.server.knobs import ServerKnobs

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.livekit]

SERVER_LOG = "leanjoin.server"
PNG = encode_png(np.full((16, 16, 3), (200, 40, 90), dtype=np.uint8))
PNG_BASE64 = base64.b64encode(PNG).decode()


def bounded(server: ReferenceServer) -> dict[str, Any]:
    return {
        "api_key": server.api_key,
        "timeouts": Timeouts(socket_open=5, room_info=5, media=15),
        "retry": RetryPolicy(max_retries=2, initial_delay=0.05, max_delay=0.2),
    }


def small(server: ReferenceServer, events: list[Event]) -> dict[str, Any]:
    """``bounded`` with a small camera, the events collected."""
    return {**bounded(server), "camera": TestPattern(320, 240, fps=15), "on_event": events.append}


async def first_output_size(session: Session) -> tuple[int, int]:
    """Width and height of the first output frame."""
    with anyio.fail_after(WAIT):
        async for frame in session.frames():
            return frame.shape[1], frame.shape[0]
    raise AssertionError("the session ended before any output frame")


async def refused(base: str, **kwargs: Any) -> None:
    """Connect to a refusing server (it refuses the key once it has read)."""
    with anyio.fail_after(WAIT), pytest.raises(ConnectFailed) as failed:
        async with connect(
            base, api_key="k", model="echo", retry=RetryPolicy(max_retries=0), **kwargs
        ):
            raise AssertionError("the server refuses every key")
    assert failed.value.kind is ErrorKind.SERVER_ERROR


def scaled_from(size: tuple[int, int], width: int, height: int) -> bool:
    """The size is width x height, or WebRTC's scaled-down start of it (its
    bandwidth estimate ramps up over seconds): the same shape, no larger."""
    return size[0] * height == size[1] * width and size[0] <= width


# ---- the model registry (spec §1.6) --------------------------------------------------------


async def test_the_default_camera_takes_the_models_size_and_rate(
    server: ReferenceServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVER_LOG)
    async with connect(server.url, model="lucy-2.1", prompt="wide", **bounded(server)) as session:
        camera = session.camera
        assert isinstance(camera, TestPattern)
        assert (camera.width, camera.height, camera.fps) == (1088, 624, 30)
        # The echo model answers in the size it was sent: the size crossed the wire.
        assert scaled_from(await first_output_size(session), 1088, 624)
        room = session.room_name
    assert "model 'lucy-2.1'" in caplog.text
    await server_idle(server, room)


async def test_a_custom_definition_names_any_model_with_its_own_size(
    server: ReferenceServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SERVER_LOG)
    custom = ModelDefinition("my-local-model", 320, 240, fps=15)
    async with connect(server.url, model=custom, prompt="small", **bounded(server)) as session:
        assert session.model is custom
        assert scaled_from(await first_output_size(session), 320, 240)
        room = session.room_name
    assert "model 'my-local-model'" in caplog.text
    await server_idle(server, room)


async def test_the_reference_servers_model_keeps_its_name_and_a_small_camera(
    server: ReferenceServer,
) -> None:
    async with connect(server.url, model="echo", **bounded(server)) as session:
        assert session.model.kind == "local"
        assert scaled_from(await first_output_size(session), 640, 360)
        room = session.room_name
    await server_idle(server, room)


# ---- endpoint, query, user agent, key from the environment (spec §1.1) ------------------


async def test_a_base_url_extra_parameters_and_the_decart_key_reach_the_reference_server(
    server: ReferenceServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger=SERVER_LOG)
    monkeypatch.delenv("LEANJOIN_API_KEY", raising=False)
    monkeypatch.setenv("DECART_API_KEY", server.api_key)
    base = server.url.removesuffix("/v1/stream")
    args = bounded(server)
    del args["api_key"]
    async with connect(
        base,
        model="echo",
        prompt="from a base url",
        query_params={"region": "local"},
        integration="parity-test/1",
        **args,
    ) as session:
        room = session.room_name
    assert f"user agent {default_user_agent('parity-test/1')!r}" in caplog.text
    assert server.api_key not in caplog.text
    await server_idle(server, room)


def test_cli_connects_to_a_base_url_with_the_decart_key_only() -> None:
    key = "parity-cli-key-7"
    with served(key) as endpoint:
        base = endpoint.removesuffix("/v1/stream")
        assert base != endpoint
        env = {k: v for k, v in os.environ.items() if k != "LEANJOIN_API_KEY"}
        run = subprocess.run(
            [str(LEANJOIN), "connect", base, "--model", "echo", "--json", "--seconds", "0.5"],
            env={**env, "DECART_API_KEY": key},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr
    names = [json.loads(line)["event"] for line in run.stdout.splitlines()]
    assert "session_started" in names
    assert key not in run.stdout + run.stderr


# ---- the initial state on the wire, and passthrough overrides (spec §3.1, §3.2) ----------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"image": PNG, "prompt": "a cat"},
            {
                "type": "set_image",
                "image_data": PNG_BASE64,
                "prompt": "a cat",
                "enhance_prompt": True,
            },
        ),
        (
            {"image": PNG, "prompt": "a cat", "enhance_prompt": False},
            {
                "type": "set_image",
                "image_data": PNG_BASE64,
                "prompt": "a cat",
                "enhance_prompt": False,
            },
        ),
        ({"image": PNG}, {"type": "set_image", "image_data": PNG_BASE64}),
        ({"prompt": "a cat"}, {"type": "prompt", "prompt": "a cat", "enhance_prompt": True}),
    ],
)
async def test_the_initial_state_frame_is_what_the_js_client_sends(
    kwargs: dict[str, Any], expected: dict[str, Any]
) -> None:
    async with refusing_server(frames=2) as (base, recorded):
        await refused(base, **kwargs)
    assert recorded.frames == [{"type": "livekit_join", "passthrough": False}, expected]


async def test_passthrough_overrides_set_the_join_only() -> None:
    async with refusing_server(frames=2) as (base, recorded):
        await refused(base, prompt="a cat", passthrough=True)
    assert recorded.frames == [
        {"type": "livekit_join", "passthrough": True},
        {"type": "prompt", "prompt": "a cat", "enhance_prompt": True},
    ]
    async with refusing_server(frames=1) as (base, recorded):
        await refused(base, passthrough=False)
    assert recorded.frames == [{"type": "livekit_join", "passthrough": False}]


async def test_a_state_after_a_passthrough_join_is_applied_and_acked_by_the_reference_server(
    server: ReferenceServer,
) -> None:
    events: list[Event] = []
    async with connect(
        server.url,
        model="echo",
        prompt="sent anyway",
        passthrough=True,
        **small(server, events),
    ) as session:
        await frame_with_band(session, "sent anyway")
        await until(lambda: any(isinstance(e, InitialStateAcked) for e in events))
        room = session.room_name
    assert not [e for e in events if isinstance(e, ErrorOccurred)]
    await server_idle(server, room)


async def test_a_join_promising_a_state_waits_for_the_users_first_request(
    server: ReferenceServer,
) -> None:
    events: list[Event] = []
    async with connect(
        server.url,
        model="echo",
        passthrough=False,
        **small(server, events),
    ) as session:
        # The reference server starts generating once a state is applied: the
        # first request is that state, acked as a request to the client.
        await session.set_prompt("set later")
        await frame_with_band(session, "set later")
        room = session.room_name
    assert not [e for e in events if isinstance(e, ErrorOccurred | InitialStateAcked)]
    await server_idle(server, room)


# ---- set(), clearing the reference, per-call timeouts (spec §4) ---------------------------

REFERENCE = np.full((32, 32, 3), (220, 30, 30), dtype=np.uint8)


def shows_reference(frame: np.ndarray[Any, Any]) -> bool:
    return colours_close(output_bands(frame)[1], (220, 30, 30), BAND_TOLERANCE)


async def output_where(session: Session, check: Any) -> None:
    with anyio.fail_after(WAIT):
        async for frame in session.frames():
            if check(frame):
                return
    raise AssertionError("the session ended before the output passed the check")


async def test_set_sends_prompt_and_image_as_one_request_and_clears_the_image_without_one(
    server: ReferenceServer,
) -> None:
    events: list[Event] = []
    async with connect(server.url, model="echo", **small(server, events)) as session:
        await session.set(prompt="both at once", image=REFERENCE)
        await output_where(session, shows_reference)
        await frame_with_band(session, "both at once")
        # A prompt alone replaces the whole state: the reference is cleared (JS set()).
        await session.set(prompt="words only", enhance=False)
        await output_where(session, lambda f: not shows_reference(f))
        await frame_with_band(session, "words only")
        await session.set_image(REFERENCE)
        await output_where(session, shows_reference)
        await session.set(image=None)  # only clear
        await output_where(session, lambda f: not shows_reference(f))
        with pytest.raises(ValueError, match=r"set\(\) needs prompt= or image="):
            await session.set()
        with pytest.raises(ValueError, match="prompt must not be empty"):
            await session.set(prompt="")
        room = session.room_name
    acked = [e for e in events if isinstance(e, RequestAcked)]
    assert [e.request for e in acked] == [1, 2, 3, 4]  # one request, one ack, per call
    assert not [e for e in events if isinstance(e, ErrorOccurred)]
    await server_idle(server, room)


async def test_a_calls_timeout_overrides_the_default_ack_wait() -> None:
    knobs = ServerKnobs(ack_delay=1.0)
    async with ReferenceServer(host="127.0.0.1", port=0, knobs=knobs) as server:
        async with connect(server.url, model="echo", **small(server, [])) as session:
            with pytest.raises(RequestTimedOut, match=r"no ack within 0\.2 s"):
                await session.set_prompt("too slow", timeout=0.2)
            with pytest.raises(RequestTimedOut, match=r"no ack within 0\.2 s"):
                await session.set(prompt="too slow too", timeout=0.2)
            await session.set_image(REFERENCE, timeout=5.0)  # the server's 1 s fits
            with pytest.raises(ValueError, match="timeout must be a finite number > 0"):
                await session.set_prompt("never sent", timeout=0)
            room = session.room_name
        await server_idle(server, room)
