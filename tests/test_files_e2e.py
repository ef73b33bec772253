"""Uploaded files as reference images, end to end: upload to the reference
server's HTTP API, then a session (the real ``livekit.rtc.Room`` client) names
the file by id; the echo model paints the file's mean colour in the bottom
band, exactly as it paints an inline image's. Also the CLI: ``leanjoin files``
against ``leanjoin serve`` and ``leanjoin connect --image file_...``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from client_helpers import BAND_TOLERANCE, LEANJOIN, WAIT, served_with_http, server_idle, until

from leanjoin.adapters import (
    ErrorKind,
    ErrorOccurred,
    Event,
    FilesClient,
    InitialStateAcked,
    RequestRejected,
    RetryPolicy,
    Session,
    SessionStarted,
    TestPattern,
    Timeouts,
    connect,
    watch_credentials,
)
from leanjoin.adapters.client.png import encode_png
from leanjoin.adapters.server.echo_model import colours_close, mean_colour, output_bands
from leanjoin.adapters.server.reference import ReferenceServer

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.livekit]

FIRST = np.full((48, 64, 3), (180, 70, 150), dtype=np.uint8)
SECOND = np.full((32, 32, 3), (60, 160, 200), dtype=np.uint8)
UNKNOWN = "file_0123456789abcdef01234567"


@pytest.fixture
async def server() -> AsyncIterator[ReferenceServer]:
    async with ReferenceServer(host="127.0.0.1", port=0) as running:
        yield running


def session_args(server: ReferenceServer, events: list[Event]) -> dict[str, Any]:
    return {
        "api_key": server.api_key,
        "model": "echo",
        "camera": TestPattern(320, 240, fps=15),
        "timeouts": Timeouts(socket_open=5, room_info=5, media=15),
        "retry": RetryPolicy(max_retries=0),
        "on_event": events.append,
    }


async def reference_band(session: Session, colour: tuple[int, int, int]) -> None:
    """Wait for an output frame whose bottom band shows ``colour``."""
    with anyio.fail_after(WAIT):
        async for frame in session.frames():
            if colours_close(output_bands(frame)[1], colour, BAND_TOLERANCE):
                return
    raise AssertionError("frames ended before the reference showed")


async def test_upload_then_connect_with_file_ref(server: ReferenceServer) -> None:
    events: list[Event] = []
    async with FilesClient(base_url=server.http_url, api_key=server.api_key) as files:
        first = await files.upload(encode_png(FIRST))
        second = await files.upload(encode_png(SECOND))
    async with connect(
        server.url, image=first.id, prompt="by reference", **session_args(server, events)
    ) as session:
        await reference_band(session, mean_colour(FIRST))
        await session.set_image(second.id)  # a later set_image names a file too
        await reference_band(session, mean_colour(SECOND))
        room = session.room_name
        (started,) = [e for e in events if isinstance(e, SessionStarted)]
        viewer = await watch_credentials(
            started.subscribe_token, base_url=server.http_url, api_key=server.api_key
        )
        assert viewer.room_name == room and viewer.livekit_url == server.livekit.url
    assert any(isinstance(e, InitialStateAcked) for e in events)
    assert not any(isinstance(e, ErrorOccurred) for e in events)
    await server_idle(server, room)


async def test_an_unknown_file_ref_is_rejected_naming_the_id(server: ReferenceServer) -> None:
    events: list[Event] = []
    async with connect(
        server.url, image=UNKNOWN, prompt="kept", **session_args(server, events)
    ) as session:
        await until(lambda: any(isinstance(e, ErrorOccurred) for e in events))
        (error,) = [e for e in events if isinstance(e, ErrorOccurred)]
        assert error.kind is ErrorKind.INITIAL_STATE_REJECTED and not error.fatal
        assert UNKNOWN in error.message and "names no stored file" in error.message
        with pytest.raises(RequestRejected) as rejected:
            await session.set_image("file_ffffffffffffffffffffffff")
        assert "'file_ffffffffffffffffffffffff' names no stored file" in str(rejected.value)
        await session.set_prompt("still here")  # the session stays up
        room = session.room_name
    await server_idle(server, room)


def _leanjoin(key: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LEANJOIN), *args],
        env={**os.environ, "LEANJOIN_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_files_round_trip_and_connect_with_the_file(tmp_path: Path) -> None:
    key = "cli-files-secret-31"
    image = tmp_path / "ref.png"
    image.write_bytes(encode_png(FIRST))
    with served_with_http(key, "--workers", "2") as (url, http):
        uploaded = _leanjoin(key, "files", "upload", str(image), "--ttl", "600", "--base-url", http)
        assert uploaded.returncode == 0, uploaded.stderr
        reference = json.loads(uploaded.stdout)
        file_id = reference["id"]
        # Each call is a new connection, which either worker may take: all find the file.
        got = [_leanjoin(key, "files", "get", file_id, "--base-url", http) for _ in range(4)]
        connected = _leanjoin(
            key, "connect", url, "--model", "echo", "--image", file_id, "--json", "--seconds", "1"
        )
        deleted = _leanjoin(key, "files", "delete", file_id, "--base-url", http)
        gone = _leanjoin(key, "files", "get", file_id, "--base-url", http)
        refused = _leanjoin(
            key, "connect", url, "--model", "echo", "--image", file_id, "--seconds", "1"
        )
        wrong = _leanjoin("wrong-" + key, "files", "upload", str(image), "--base-url", http)
    bad_ttl = _leanjoin(key, "files", "upload", str(image), "--ttl", "59", "--base-url", http)
    assert reference["filename"] == "ref.png" and reference["mime_type"] == "image/png"
    for each in got:
        assert each.returncode == 0 and json.loads(each.stdout) == reference
    assert connected.returncode == 0, connected.stderr
    names = [json.loads(line)["event"] for line in connected.stdout.splitlines()]
    assert "initial_state_acked" in names
    assert deleted.returncode == 0 and json.loads(deleted.stdout) == {"deleted": file_id}
    assert gone.returncode == 1 and "404" in gone.stderr and file_id in gone.stderr
    assert refused.returncode == 3 and "names no stored file" in refused.stderr
    assert wrong.returncode == 1 and "401" in wrong.stderr
    assert bad_ttl.returncode == 2 and "'59' is not a number of seconds" in bad_ttl.stderr
    for run in (uploaded, *got, connected, deleted, gone, refused, wrong, bad_ttl):
        assert key not in run.stdout + run.stderr
