"""``leanjoin connect`` as a user or a script meets it (issue #14): its options,
its exit codes, its signals and what it prints.

The command runs in-process (click's ``CliRunner``) where a fake peer is
enough, and as a real process against ``leanjoin serve`` (both on 127.0.0.1)
where the LiveKit client or a signal is involved. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import client_helpers as helpers
import numpy as np
import pytest
from click.testing import CliRunner, Result
from client_helpers import LEANJOIN, served

from leanjoin.adapters.cli.main import main
from leanjoin.adapters.client.png import encode_png

pytestmark = [pytest.mark.livekit]

KEY = "cli-connect-secret-17"


def cli(*args: str) -> Result:
    env = {**os.environ, "LEANJOIN_API_KEY": KEY}
    return CliRunner(env=env).invoke(main, ["connect", *args], catch_exceptions=False)


def events(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port bound but never listening: a connect is refused at once, and no
    other process can take the port meanwhile (a freed port could be taken by
    a server, whose answer would not be a refusal)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener never accepts: the TCP handshake completes in the
    kernel's backlog, the WebSocket upgrade is never answered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


# ---- --retries and --timeout ----------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1])
def test_retries_bounds_how_often_a_failed_attempt_is_retried(
    closed_port: int, retries: int
) -> None:
    url = f"ws://127.0.0.1:{closed_port}/v1/stream"
    result = cli(url, "--model", "echo", "--json", "--retries", str(retries))
    assert result.exit_code == 1, result.output
    seen = [e["event"] for e in events(result.stdout)]
    assert seen.count("retry_scheduled") == retries
    assert f"gave up after {retries} retries" in result.stderr


def test_timeout_bounds_the_whole_connect(silent_port: int) -> None:
    url = f"ws://127.0.0.1:{silent_port}/v1/stream"
    result = cli(url, "--model", "echo", "--json", "--timeout", "0.5")
    assert result.exit_code == 1, result.output
    fatal = [e for e in events(result.stdout) if e["event"] == "error_occurred"]
    assert [e["kind"] for e in fatal] == ["connect_timeout"]
    assert "connect_timeout" in result.stderr and KEY not in result.output


@pytest.mark.parametrize("option", ["--retries", "--timeout"])
@pytest.mark.parametrize("value", ["-1", "abc"])
def test_bad_retries_and_timeouts_are_usage_errors(option: str, value: str) -> None:
    result = cli("ws://127.0.0.1:9/v1/stream", "--model", "echo", option, value)
    assert result.exit_code == 2
    assert option in result.output


# ---- numbers a user may type ----------------------------------------------------------------


@pytest.mark.parametrize("option", ["--seconds", "--timeout", "--fps"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1"])
def test_a_number_that_is_not_finite_is_refused_like_a_negative_one(
    closed_port: int, option: str, value: str
) -> None:
    # Issue #14: `--seconds nan` passed click's range check and crashed later.
    url = f"ws://127.0.0.1:{closed_port}/v1/stream"
    result = cli(url, "--model", "echo", "--retries", "0", option, value)
    assert result.exit_code == 2, result.output
    assert option in result.stderr and "Traceback" not in result.output


# ---- exit codes -----------------------------------------------------------------------------


def run_connect(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real command in a process of its own."""
    return subprocess.run(
        [str(LEANJOIN), "connect", url, "--model", "echo", "--json", *args],
        env={**os.environ, "LEANJOIN_API_KEY": KEY},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def reference_png(tmp_path: Path) -> Path:
    path = tmp_path / "reference.png"
    path.write_bytes(encode_png(np.full((48, 64, 3), (180, 70, 150), dtype=np.uint8)))
    return path


@pytest.mark.parametrize("rejected", [False, True])
def test_the_exit_code_says_whether_the_server_took_the_image(
    reference_png: Path, rejected: bool
) -> None:
    # Issue #14: a rejected reference image exited 0. With --seconds 0 the command
    # leaves once connected, but not before the image's answer: it is what was asked.
    options = ["--reject-reference"] if rejected else []
    with served(KEY, *options) as url:
        run = run_connect(url, "--image", str(reference_png), "--prompt", "p", "--seconds", "0")
    seen = [e["event"] for e in events(run.stdout)]
    assert "session_started" in seen
    if rejected:
        assert run.returncode == 3, run.stderr
        assert "initial_state_rejected" in run.stderr and "reference" in run.stderr
    else:
        assert run.returncode == 0, run.stderr
        assert "initial_state_acked" in seen
    assert KEY not in run.stdout + run.stderr


def test_help_documents_the_exit_codes() -> None:
    result = cli("--help")
    assert result.exit_code == 0
    documented = result.output.partition("Exit status:")[2]
    codes = re.findall(r"^\s+(\d)\s+\S", documented, re.MULTILINE)
    assert codes == ["0", "1", "2", "3"]
    assert "rejected the initial image or prompt" in " ".join(documented.split())


# ---- signals and noise ----------------------------------------------------------------------


def connect_process(url: str, *args: str) -> contextlib.AbstractContextManager[Any]:
    """The real command, started; killed on the way out if it is still running."""
    return helpers.connect_process(url, *args, api_key=KEY)


def test_sigterm_disconnects_cleanly_like_ctrl_c() -> None:
    # Issue #14: SIGTERM killed the command where it stood: no goodbye to the
    # server, no last event, exit -15.
    with served(KEY) as url, connect_process(url) as process:
        assert process.stdout is not None
        seen: list[dict[str, Any]] = []
        for line in process.stdout:  # bounded: the server is local and healthy
            seen.append(json.loads(line))
            if seen[-1]["event"] == "session_started":
                break
        process.send_signal(signal.SIGTERM)
        rest, err = process.communicate(timeout=30)
    seen += events(rest)
    assert process.returncode == 0, err
    assert seen[-1]["event"] == "state_changed" and seen[-1]["state"] == "disconnected"
    assert "Traceback" not in err


def test_sigterm_while_connecting_stops_and_says_it_did_not_connect(silent_port: int) -> None:
    with connect_process(f"ws://127.0.0.1:{silent_port}/v1/stream") as process:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())  # connecting: the socket is opening
        assert first["state"] == "connecting"
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert err.strip() == "leanjoin: interrupted before connecting"


@pytest.mark.parametrize("verbose", [False, True])
def test_native_noise_is_silenced_unless_verbose(verbose: bool) -> None:
    # The OpenH264 encoder (inside the LiveKit client) writes a framerate warning
    # to the process's stderr a few seconds in; the client logs its /rtc/v1
    # fallback on every join (the double serves only the v0 path).
    with served(KEY) as url:
        args = ["-v"] if verbose else []
        run = subprocess.run(
            [str(LEANJOIN), *args, "connect", url, "--model", "echo", "--json", "--seconds", "4"],
            env={**os.environ, "LEANJOIN_API_KEY": KEY},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr
    if verbose:
        assert "v1 path" in run.stderr  # -v shows what the LiveKit client says
    else:
        assert run.stderr == ""


# ---- --query-param and --integration --------------------------------------------------------


@contextmanager
def recording_refuser() -> Iterator[tuple[str, list[Any]]]:
    """A server on a thread that records each upgrade request, then answers 401."""
    import threading

    from websockets.sync.server import serve as sync_serve

    requests: list[Any] = []

    def refuse(connection: Any, request: Any) -> Any:
        requests.append(request)
        return connection.respond(401, "unauthorized\n")

    with sync_serve(lambda ws: None, "127.0.0.1", 0, process_request=refuse) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/v1/stream", requests
        finally:
            server.shutdown()
            thread.join(timeout=10)


def test_query_params_and_integration_reach_the_server() -> None:
    from urllib.parse import parse_qsl

    with recording_refuser() as (url, requests):
        result = cli(
            url, "--model", "echo", "--json",
            "--query-param", "region=eu west", "--query-param", "tier=a=b",
            "--integration", "my-app/2.0",
        )  # fmt: skip
    assert result.exit_code == 1, result.output
    (request,) = requests  # a refused key is not retried
    query = parse_qsl(request.path.partition("?")[2])
    assert query[:2] == [("region", "eu west"), ("tier", "a=b")]
    agent = dict(query)["user_agent"]
    assert " my-app/2.0 " in agent
    assert request.headers["User-Agent"] == agent


@pytest.mark.parametrize("value", ["region", "=eu", "api_key=x"])
def test_a_query_param_that_is_not_key_value_is_a_usage_error(value: str) -> None:
    result = cli("ws://127.0.0.1:9/v1/stream", "--model", "echo", "--query-param", value)
    assert result.exit_code == 2
    assert "--query-param" in result.output
    assert ("KEY=VALUE" in result.output) != ("set by leanjoin" in result.output)


@pytest.mark.parametrize(
    "command",
    [
        ["connect"],
        ["watch"],
        ["files"],
        ["files", "upload"],
        ["preflight"],
        ["serve"],
        ["demo"],
        ["check"],
        ["diagrams"],
    ],
)
def test_every_command_documents_its_exit_status(command: list[str]) -> None:
    # A script needs to know what each code means, whatever the command.
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    documented = result.output.partition("Exit status")[2]
    codes = re.findall(r"^\s+(\d)\s+\S", documented, re.MULTILINE)
    assert codes[:2] == ["0", "1"], result.output
