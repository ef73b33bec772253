"""Viewer mode (issue #14): a second participant joins a running session's room
with a subscribe-only token and receives the model's output video.

A real session (``connect`` against the in-process ReferenceServer) runs the
echo model, whose top band shows the prompt's colour; the viewer is joined with
the real ``livekit.rtc.Room`` through ``watch_room`` (or ``leanjoin watch``).
Every wait is bounded; no speed is asserted.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from client_helpers import (
    BAND_TOLERANCE,
    LEANJOIN,
    WAIT,
    frame_with_band,
    server_idle,
    session_args,
    until,
)
from livekit import rtc
from livekit.rtc.participant import PublishTrackError

from leanjoin.adapters import (
    ConnectionState,
    HttpApiError,
    InvalidArgument,
    LeanJoinError,
    Session,
    Viewer,
    ViewerStateChanged,
    WatchFailed,
    connect,
    watch,
    watch_room,
)
from leanjoin.adapters.cli.main import main
from leanjoin.adapters.client.viewer import watch_base_url
from leanjoin.adapters.server.echo_model import (
    colours_close,
    decode_reference,
    output_bands,
    prompt_colour,
)
from leanjoin.adapters.server.lkdouble import LiveKitDouble
from leanjoin.adapters.server.reference import ReferenceServer
from leanjoin.engine.client.session import subscribe_token

pytestmark = [pytest.mark.anyio, pytest.mark.livekit]


def viewer_token(server: ReferenceServer, session: Session) -> str:
    assert session.room_name
    return server.livekit.mint_viewer_token(room=session.room_name)


async def test_viewer_receives_model_video(server: ReferenceServer) -> None:
    events: list[ViewerStateChanged] = []
    async with connect(server.url, prompt="a castle", **session_args(server)) as session:
        own = await frame_with_band(session, "a castle")
        token = viewer_token(server, session)
        async with watch_room(server.livekit.url, token, on_event=events.append) as viewer:
            assert viewer.state is ConnectionState.CONNECTED
            assert viewer.room_name == session.room_name
            seen = await frame_with_band(viewer, "a castle")
            # The viewer follows the model's output, not a copy taken once.
            await session.set_prompt("a stormy sea")
            await frame_with_band(viewer, "a stormy sea")
        room = session.room_name
    assert seen.shape == own.shape == (240, 320, 3)
    assert [e.state for e in events] == [
        ConnectionState.CONNECTING,
        ConnectionState.CONNECTED,
        ConnectionState.DISCONNECTED,
    ]
    assert events[-1].reason == "client_initiated"
    assert token not in repr(viewer)
    await server_idle(server, room)


async def test_every_viewer_receives_model_video(server: ReferenceServer) -> None:
    async with connect(server.url, prompt="a castle", **session_args(server)) as session:
        assert session.room_name
        handle = server.livekit.find_room(session.room_name)
        assert handle is not None
        async with (
            watch_room(server.livekit.url, viewer_token(server, session)) as first,
            watch_room(server.livekit.url, viewer_token(server, session)) as second,
        ):
            assert handle.viewers == 2 and handle.participants == 3
            await frame_with_band(first, "a castle")
            await frame_with_band(second, "a castle")
            await frame_with_band(session, "a castle")  # its own output goes on
        room = session.room_name
    await server_idle(server, room)


async def test_viewer_token_cannot_publish() -> None:
    async with LiveKitDouble() as lk:
        handle = lk.room("watched")
        token = lk.mint_viewer_token(room="watched")
        room = rtc.Room()
        try:
            with anyio.fail_after(WAIT):
                await room.connect(lk.url, token)
            assert room.local_participant.identity.startswith("viewer-")
            assert not room.local_participant.permissions.can_publish
            source = rtc.VideoSource(64, 48)
            track = rtc.LocalVideoTrack.create_video_track("camera", source)
            options = rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_CAMERA, video_codec=rtc.VideoCodec.VP8
            )
            # The double answers NOT_ALLOWED and never track_published; this client
            # then gives up on its own publication deadline (10 s).
            with anyio.fail_after(30), pytest.raises(PublishTrackError):
                await room.local_participant.publish_track(track, options)
            assert handle.participants == 1 and handle.viewers == 1
            assert handle.client_video_frames == 0
            with anyio.move_on_after(0.2):
                await handle.wait_client_publishing()
            assert not room.local_participant.track_publications
        finally:
            await room.disconnect()
        with pytest.raises(ValueError, match="viewer-"):
            lk.mint_viewer_token(room="watched", identity="client-1")


async def test_viewer_is_told_when_the_session_ends(server: ReferenceServer) -> None:
    events: list[ViewerStateChanged] = []
    joined = anyio.Event()
    watched: list[Viewer] = []

    async def watch(token: str) -> None:
        async with watch_room(server.livekit.url, token, on_event=events.append) as viewer:
            watched.append(viewer)
            await frame_with_band(viewer, "a castle")
            joined.set()
            with anyio.fail_after(WAIT):
                async for _ in viewer.frames():  # ends once the room is gone
                    pass
                await viewer.wait_closed()

    async with (
        anyio.create_task_group() as tg,
        connect(server.url, prompt="a castle", **session_args(server)) as session,
    ):
        tg.start_soon(watch, viewer_token(server, session))
        with anyio.fail_after(WAIT):
            await joined.wait()
        room = session.room_name
    (viewer,) = watched
    assert viewer.disconnect_reason == "room_deleted"
    assert events[-1] == ViewerStateChanged(
        ConnectionState.DISCONNECTED, ConnectionState.CONNECTED, "room_deleted"
    )
    assert viewer.disconnected_cleanly
    await server_idle(server, room)


async def test_leaving_the_watch_disconnects_the_viewer(server: ReferenceServer) -> None:
    async with connect(server.url, prompt="a castle", **session_args(server)) as session:
        assert session.room_name
        handle = server.livekit.find_room(session.room_name)
        assert handle is not None
        token = viewer_token(server, session)
        async with watch_room(server.livekit.url, token) as viewer:
            await frame_with_band(viewer, "a castle")
            assert handle.viewers == 1 and handle.participants == 2
        assert viewer.disconnected_cleanly and viewer.state is ConnectionState.DISCONNECTED
        await until(lambda: handle.participants == 1 and handle.viewers == 0)
        # Cancelled from outside while watching: the room is left all the same.
        with anyio.CancelScope() as scope:
            async with watch_room(server.livekit.url, token) as viewer:
                await until(lambda: handle.viewers == 1)
                scope.cancel()
                await anyio.sleep_forever()
        await until(lambda: handle.participants == 1 and handle.viewers == 0)
        await frame_with_band(session, "a castle")  # the session itself goes on
        room = session.room_name
    await server_idle(server, room)


async def test_a_watch_cancelled_while_joining_leaves_the_room() -> None:
    # The double counts the viewer, then holds its join answer: the client's
    # connect is under way when the watch is cancelled.
    async with LiveKitDouble(join_answer_delay=1.0) as lk:
        handle = lk.room("watched")
        token = lk.mint_viewer_token(room="watched")
        with anyio.CancelScope() as scope:

            async def cancel_once_joining() -> None:
                await until(lambda: handle.participants == 1)
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_once_joining)
                async with watch_room(lk.url, token):
                    await anyio.sleep_forever()
        await until(lambda: handle.participants == 0)


async def test_a_refused_viewer_token_fails_without_showing_it() -> None:
    async with LiveKitDouble() as lk, LiveKitDouble() as other:
        lk.room("watched")
        foreign = other.mint_viewer_token(room="watched")
        with anyio.fail_after(WAIT), pytest.raises(WatchFailed) as failed:
            async with watch_room(lk.url, foreign):
                raise AssertionError("joined with a token of another server")
        assert isinstance(failed.value, LeanJoinError)
        assert "signature" in str(failed.value)
        assert foreign not in str(failed.value)
        with anyio.fail_after(WAIT), pytest.raises(WatchFailed) as failed:
            async with watch_room(lk.url, "not-a-token"):
                raise AssertionError("joined with no token at all")
        # One line: the server's answer ends in a newline, not the message.
        assert str(failed.value).endswith("token is malformed"), str(failed.value)
        with pytest.raises(InvalidArgument, match="token"):
            async with watch_room(lk.url, " "):
                pass
        with pytest.raises(InvalidArgument, match="livekit_url"):
            async with watch_room("localhost:7880", foreign):
                pass


# ---- leanjoin watch ----------------------------------------------------------------


def watch_env(token: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LEANJOIN_LIVEKIT_TOKEN", None)
    if token is not None:
        env["LEANJOIN_LIVEKIT_TOKEN"] = token
    return env


async def leanjoin_watch(*args: str, token: str | None) -> tuple[int, str, str]:
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [str(LEANJOIN), "watch", *args], env=watch_env(token), check=False
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_cli_watch_reports_a_served_sessions_video(
    server: ReferenceServer, tmp_path: Path
) -> None:
    png = tmp_path / "last.png"
    async with connect(server.url, prompt="a castle", **session_args(server)) as session:
        await frame_with_band(session, "a castle")
        token = viewer_token(server, session)
        code, out, err = await leanjoin_watch(
            "--livekit-url",
            server.livekit.url,
            "--seconds",
            "3",
            "--save-frame",
            str(png),
            token=token,
        )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:2] == ["state: connecting", "state: connected"]
    assert f"watching room {session.room_name}" in lines
    assert any(line.startswith("frames: ") for line in lines)
    assert f"watched {session.room_name}: " in out
    assert token not in out + err
    saved = decode_reference(png.read_bytes())
    assert colours_close(output_bands(saved)[0], prompt_colour("a castle"), BAND_TOLERANCE)


async def test_cli_watch_without_video_fails_in_one_line() -> None:
    async with LiveKitDouble() as lk:
        lk.room("quiet")  # held, with nobody publishing
        token = lk.mint_viewer_token(room="quiet")
        code, out, err = await leanjoin_watch(
            "--livekit-url", lk.url, "--seconds", "1", token=token
        )
        assert code == 1
        assert err.strip().splitlines() == [
            "leanjoin: no video from quiet: none arrived within 1 s"
        ]
        code, out, err = await leanjoin_watch(
            "--livekit-url", lk.url, "--video-timeout", "1.5", token=token
        )
        assert code == 1
        assert err.strip().splitlines() == [
            "leanjoin: no video from quiet: none arrived within 1.5 s"
        ]
        foreign = LiveKitDouble().mint_viewer_token(room="quiet")
        code, out, err = await leanjoin_watch("--livekit-url", lk.url, token=foreign)
        assert code == 1
        assert err.strip().startswith("leanjoin: watch failed: could not join the room")
        assert len(err.strip().splitlines()) == 1 and foreign not in out + err
        code, _, err = await leanjoin_watch("--livekit-url", lk.url, token=None)
        assert code == 2 and "LEANJOIN_LIVEKIT_TOKEN" in err
        code, _, err = await leanjoin_watch("--livekit-url", "localhost:1", token=token)
        assert code == 2 and "livekit_url" in err and token not in err


async def test_cli_watch_leaves_politely_on_sigterm(server: ReferenceServer) -> None:
    async with connect(server.url, prompt="a castle", **session_args(server)) as session:
        assert session.room_name
        handle = server.livekit.find_room(session.room_name)
        assert handle is not None
        command = [str(LEANJOIN), "watch", "--livekit-url", server.livekit.url]
        async with await anyio.open_process(
            command, env=watch_env(viewer_token(server, session))
        ) as process:
            assert process.stdout is not None
            lines: list[str] = []
            with anyio.fail_after(30):
                async for chunk in process.stdout:
                    lines += chunk.decode().splitlines()
                    if any(line.startswith("frames: ") for line in lines):
                        break
                process.terminate()  # SIGTERM
                async for chunk in process.stdout:
                    lines += chunk.decode().splitlines()
                code = await process.wait()
        assert code == 0, lines
        assert "state: disconnected (client_initiated)" in lines
        await until(lambda: handle.viewers == 0)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_cli_watch_stopped_before_any_video_says_so(signum: signal.Signals) -> None:
    # Ctrl-C in a dark room is the user's doing: the line must not claim the
    # video timeout (20 s) ran out, which it did not.
    async with LiveKitDouble() as lk:
        lk.room("quiet")  # held, with nobody publishing
        command = [str(LEANJOIN), "watch", "--livekit-url", lk.url]
        env = watch_env(lk.mint_viewer_token(room="quiet"))
        async with await anyio.open_process(command, env=env) as process:
            assert process.stdout is not None and process.stderr is not None
            lines: list[str] = []
            with anyio.fail_after(30):
                async for chunk in process.stdout:
                    lines += chunk.decode().splitlines()
                    if "watching room quiet" in lines:
                        break
                process.send_signal(signum)
                async for chunk in process.stdout:
                    lines += chunk.decode().splitlines()
                err = b"".join([chunk async for chunk in process.stderr]).decode()
                code = await process.wait()
        assert code == 1, lines
        assert "state: disconnected (client_initiated)" in lines
        assert err.strip().splitlines() == [
            "leanjoin: no video from quiet: stopped before any arrived"
        ]


# ---- watch(): a session's subscribe token, as the official clients' subscribe ----------------


@pytest.mark.parametrize("where", ["stream_url", "http_api"])
async def test_watch_with_the_subscribe_token_receives_model_video(
    server: ReferenceServer, where: str
) -> None:
    # The stream URL's host answers /watch-stream (the Python SDK's derivation),
    # and so does the HTTP API's base URL (the JS client's baseUrl).
    base = server.url if where == "stream_url" else server.http_url
    async with connect(server.url, prompt="a castle", **session_args(server)) as session:
        token = session.subscribe_token
        assert token
        async with watch(token, base, api_key=server.api_key) as viewer:
            assert viewer.room_name == session.room_name
            await frame_with_band(viewer, "a castle")
        room = session.room_name
    await server_idle(server, room)


async def test_watch_of_an_unknown_session_or_with_a_bad_key_is_refused_by_the_server(
    server: ReferenceServer,
) -> None:
    token = subscribe_token("leanjoin-no-such-room")
    with pytest.raises(HttpApiError) as unknown:
        async with watch(token, server.url, api_key=server.api_key):
            raise AssertionError("must not join")
    assert unknown.value.status == 404 and "leanjoin-no-such-room" in str(unknown.value)
    with pytest.raises(HttpApiError) as refused:
        async with watch(token, server.url, api_key="not-the-key"):
            raise AssertionError("must not join")
    assert refused.value.status == 401 and "not-the-key" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "base"),
    [
        (None, None),
        ("ws://127.0.0.1:8765/v1/stream", "http://127.0.0.1:8765"),
        ("wss://api3.decart.ai", "https://api3.decart.ai"),
        ("https://api.example/prefix", "https://api.example/prefix"),
        # A proxy's base URL (connect appends the stream path below it): its prefix stays.
        ("wss://proxy.example/decart", "https://proxy.example/decart"),
        ("wss://proxy.example/decart/v1/stream", "https://proxy.example/decart"),
    ],
)
def test_watch_asks_the_host_of_the_url_the_session_used(url: str | None, base: str | None) -> None:
    assert watch_base_url(url) == base


def test_watch_base_url_without_a_host_is_refused_without_quoting_it() -> None:
    # A stream URL may carry the api key in its query (connect() refuses that, but
    # the text is the caller's): the refusal must not repeat it.
    with pytest.raises(InvalidArgument, match="host") as refused:
        watch_base_url("wss:///v1/stream?api_key=sk-secret-1")
    assert "sk-secret-1" not in str(refused.value)


async def test_cli_watch_with_a_subscribe_token(server: ReferenceServer) -> None:
    async with connect(server.url, prompt="a castle", **session_args(server)) as session:
        await frame_with_band(session, "a castle")
        token = session.subscribe_token
        assert token
        env = {**watch_env(None), "LEANJOIN_SUBSCRIBE_TOKEN": token}
        env["LEANJOIN_API_KEY"] = server.api_key
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [str(LEANJOIN), "watch", "--url", server.url, "--seconds", "2"],
                env=env,
                check=False,
            )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err
    assert f"watching room {session.room_name}" in out
    assert server.api_key not in out + err


def test_cli_watch_says_which_option_or_variable_is_wrong() -> None:
    # The command line's words, not the Python API's (api_key=, base_url).
    token = subscribe_token("leanjoin-1a2b")
    no_key = {"LEANJOIN_API_KEY": "", "DECART_API_KEY": "", "LEANJOIN_SUBSCRIBE_TOKEN": token}
    result = CliRunner(env=no_key).invoke(main, ["watch", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "set the api key in LEANJOIN_API_KEY or DECART_API_KEY" in result.output
    assert "api_key=" not in result.output
    # A subscribe token left in the environment is named with the clash.
    result = CliRunner(env=no_key).invoke(main, ["watch", "--livekit-url", "ws://127.0.0.1:9"])
    assert result.exit_code == 2 and "LEANJOIN_SUBSCRIBE_TOKEN" in result.output
    help_text = CliRunner().invoke(main, ["watch", "--help"]).output
    assert "2  usage: a bad option, or no URL, token or api key" in help_text
    keyed = {**no_key, "LEANJOIN_API_KEY": "k"}
    result = CliRunner(env=keyed).invoke(main, ["watch", "--url", "ftp://127.0.0.1:9"])
    assert result.exit_code == 2 and "--url must be" in result.output
    assert "base_url" not in result.output
