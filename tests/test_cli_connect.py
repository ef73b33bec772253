"""``leanjoin connect`` as a user or a script meets it (issue #14): its options,
its exit codes, its signals and what it prints.

The command runs in-process (click's ``CliRunner``) where a fake peer is
enough, and as a real process against ``leanjoin serve`` (both on 127.0.0.1)
where the LiveKit client or a signal is involved. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from leanjoin.adapters.cli.main import main

pytestmark = [pytest.mark.livekit]

KEY = "cli-connect-secret-17"


def cli(*args: str) -> Result:
    env = {**os.environ, "LEANJOIN_API_KEY": KEY}
    return CliRunner(env=env).invoke(main, ["connect", *args], catch_exceptions=False)


def events(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed now: a connect is refused at once


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
