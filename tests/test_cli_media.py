"""``leanjoin connect``'s media options as a user meets them (review of issue #14):
where output is saved (``--save-frames``, ``--save-audio``), what is published
(``--video``, ``--audio``, ``--image``), and how a failure reads: one line,
the option or file named, no traceback, the exit code of ``connect --help``.

In-process (click's ``CliRunner``) where nothing is opened; as a real process
against ``leanjoin serve`` (both on 127.0.0.1) where a session is needed.
Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import client_helpers as helpers
import pytest
from click.testing import CliRunner, Result
from client_helpers import served, write_video

from leanjoin.adapters.cli.main import main

pytestmark = [pytest.mark.livekit]

KEY = "cli-media-secret-29"
# A file name the file system refuses (longer than NAME_MAX), also for root.
TOO_LONG = "n" * 300


@pytest.fixture
def closed_url() -> Iterator[str]:
    """A stream URL whose port is bound, never listening: a connect is refused."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield f"ws://127.0.0.1:{holder.getsockname()[1]}/v1/stream"


def cli(url: str, *args: str) -> Result:
    env = {**os.environ, "LEANJOIN_API_KEY": KEY}
    runner = CliRunner(env=env)
    return runner.invoke(main, ["connect", url, "--model", "echo", "--retries", "0", *args])


def one_line_usage_error(result: Result, option: str) -> str:
    """The ``Error:`` line of a usage error naming ``option`` (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert f"'{option}'" in line, line
    return line


def connect_process(
    url: str, *args: str, verbose: bool = False
) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    return helpers.connect_process(url, *args, api_key=KEY, verbose=verbose)


def until_event(process: subprocess.Popen[str], name: str) -> None:
    """Read the process's JSON events up to the first ``name`` (bounded: the
    server is local, and the process ends if it fails)."""
    assert process.stdout is not None
    for line in process.stdout:
        if json.loads(line)["event"] == name:
            return
    raise AssertionError(f"the process ended before {name}: {process.wait()}")


# ---- where output is saved -------------------------------------------------------------------


def test_save_frames_into_a_directory_that_cannot_be_made_is_a_usage_error(
    closed_url: str, tmp_path: Path
) -> None:
    # It failed with a traceback once connected (the directory was made at the first frame).
    line = one_line_usage_error(
        cli(closed_url, "--save-frames", str(tmp_path / TOO_LONG)), "--save-frames"
    )
    assert "cannot make directory" in line and "File name too long" in line


def test_save_frames_makes_a_missing_directory_before_connecting(
    closed_url: str, tmp_path: Path
) -> None:
    target = tmp_path / "new" / "frames"
    result = cli(closed_url, "--save-frames", str(target))
    assert result.exit_code == 1  # the refused connect, not the directory
    assert target.is_dir()


def test_save_audio_to_a_file_that_cannot_be_written_is_a_usage_error(
    closed_url: str, tmp_path: Path
) -> None:
    # It failed with a traceback once connected (the file was opened then).
    line = one_line_usage_error(
        cli(closed_url, "--audio", "tone", "--save-audio", str(tmp_path / f"{TOO_LONG}.wav")),
        "--save-audio",
    )
    assert "cannot write" in line and "File name too long" in line


def test_a_frame_that_cannot_be_written_mid_session_ends_it_in_one_line(tmp_path: Path) -> None:
    # The directory is replaced by a file once the session runs (as a full disk
    # or a removed mount would fail): the next frame's write fails.
    frames = tmp_path / "frames"
    with (
        served(KEY) as url,
        connect_process(url, "--seconds", "30", "--save-frames", str(frames)) as process,
    ):
        until_event(process, "session_started")
        shutil.rmtree(frames)
        frames.write_text("not a directory")
        out, err = process.communicate(timeout=30)
    assert process.returncode == 1, err
    assert err.count("\n") == 1 and err.startswith("leanjoin: --save-frames: cannot write"), err
    assert json.loads(out.splitlines()[-1])["state"] == "disconnected"  # left politely


# ---- how a failure reads ---------------------------------------------------------------------


def test_a_refused_room_join_fails_in_one_line_without_the_native_clients_errors() -> None:
    # The LiveKit client logged its own ERROR line for each join path it tried,
    # and its reason ended in a newline: the one-line failure took seven.
    with served(KEY, "--refuse-media") as url, connect_process(url, "--retries", "0") as process:
        _out, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    assert err.count("\n") == 1, err
    assert err.startswith("leanjoin: media_failed: room connect failed: ") and "503" in err


# ---- signals ----------------------------------------------------------------------------------


def test_a_second_signal_quits_while_the_room_connect_is_still_closing() -> None:
    # The room's join is answered later than the LiveKit client waits (it tries
    # four times, 5 s each): the first SIGTERM cancels the connect, whose close
    # waits for the native join to give up; it waited it out, ~20 s, whatever
    # the user did. A second signal now quits at once, saying so.
    with (
        served(KEY, "--media-setup-delay", "60") as url,
        connect_process(url, "--prompt", "p") as process,
    ):
        until_event(process, "initial_state_acked")  # after room info: the room join runs
        process.send_signal(signal.SIGTERM)
        until_event(process, "state_changed")  # the engine let go: the close waits for the room
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)
    assert process.returncode == 1, err
    assert err.splitlines()[-1] == (
        "leanjoin: interrupted again: quit without waiting for the room connect to end"
    ), err


def test_a_video_that_stops_decoding_mid_session_says_so_in_one_line(tmp_path: Path) -> None:
    # The session goes on without video (the model's output, signaling); the
    # failure was logged with the decoder's traceback.
    video = write_video(tmp_path / "clip.mp4", frames=5)  # half a second, looped
    with (
        served(KEY) as url,
        connect_process(url, "--video", str(video), "--seconds", "30") as process,
    ):
        until_event(process, "session_started")
        video.unlink()  # the next loop finds nothing to play
        assert process.stderr is not None
        line = process.stderr.readline()  # bounded: the loop restarts within a second
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    assert line.startswith("ERROR leanjoin.adapters.client.room_transport: the local video "), line
    assert "no frame of" in line and "clip.mp4 could be decoded" in line
    assert process.returncode == 0 and err == "", err


# ---- what is published ------------------------------------------------------------------------


def test_an_empty_image_file_is_a_usage_error_naming_the_option_and_file(
    closed_url: str, tmp_path: Path
) -> None:
    # It said "Invalid value: the image is empty": which value, of what?
    path = tmp_path / "Kätzchen.png"
    path.write_bytes(b"")
    line = one_line_usage_error(cli(closed_url, "--image", str(path)), "--image")
    assert "Kätzchen.png: the image is empty" in line


def test_a_video_that_cannot_be_played_is_a_usage_error_naming_the_option(
    closed_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a video")
    line = one_line_usage_error(cli(closed_url, "--video", str(path)), "--video")
    assert "notes.txt" in line


def test_demo_refuses_an_out_path_it_cannot_write_before_running(tmp_path: Path) -> None:
    # It ran the whole demo, then failed on writing the contact sheet.
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / TOO_LONG / "sheet.png")])
    line = one_line_usage_error(result, "--out")
    assert "cannot make directory" in line and "✓" not in result.output
