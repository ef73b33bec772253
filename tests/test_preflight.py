"""The connectivity preflight (``check_connectivity``, ``leanjoin preflight``),
the JS client's ``checkConnectivity``: against STUN servers on 127.0.0.1 that
answer, stay silent or answer junk first. Every wait is bounded."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest
from aioice import stun
from click.testing import CliRunner

from leanjoin.adapters.cli.main import main
from leanjoin.adapters.client.errors import InvalidArgument, LeanJoinError
from leanjoin.adapters.client.preflight import (
    ConnectivityReport,
    Quality,
    Transport,
    check_connectivity,
    classify,
    parse_stun_url,
)

pytestmark = pytest.mark.anyio


@contextmanager
def stun_server(*, answer: bool = True, junk_first: bool = False) -> Iterator[str]:
    """A UDP STUN server on a thread: answers binding requests (or not)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    stop = threading.Event()
    requests: list[bytes] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                continue
            requests.append(data)
            if not answer:
                continue
            request = stun.parse_message(data)
            if junk_first:
                sock.sendto(b"not a STUN message", peer)
            response = stun.Message(
                stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=request.transaction_id
            )
            response.attributes["XOR-MAPPED-ADDRESS"] = peer
            sock.sendto(bytes(response), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"stun:127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


async def test_an_answering_stun_server_means_direct_udp() -> None:
    with stun_server(junk_first=True) as url:
        with anyio.fail_after(10):
            report = await check_connectivity([url], timeout=5)
    assert report.transport is Transport.UDP
    assert report.stun_server == url
    assert report.rtt_ms is not None and report.rtt_ms >= 0


async def test_the_first_answer_wins_over_a_silent_server() -> None:
    with stun_server(answer=False) as silent, stun_server() as answering:
        with anyio.fail_after(10):
            report = await check_connectivity([silent, answering], timeout=5)
    assert report.transport is Transport.UDP and report.stun_server == answering


async def test_no_answer_means_a_relay_would_be_needed() -> None:
    with stun_server(answer=False) as silent:
        with anyio.fail_after(10):
            report = await check_connectivity([silent], timeout=0.6)
    assert (report.quality, report.transport, report.rtt_ms) == (
        Quality.POOR,
        Transport.RELAY,
        None,
    )
    assert "TURN relay" in report.reasons[0]


async def test_a_server_that_cannot_be_reached_at_all_is_critical() -> None:
    with anyio.fail_after(10):
        report = await check_connectivity(["stun:no-such-host.invalid:3478"], timeout=2)
    assert (report.quality, report.transport) == (Quality.CRITICAL, Transport.FAILED)


async def test_each_server_that_told_nothing_is_named_with_why() -> None:
    # A typo in the host or the port must show in the report: the verdict
    # alone ("needs a TURN relay", "unlikely to work") blames the network.
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    refusing = f"stun:127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there now: the host answers ICMP port unreachable
    with anyio.fail_after(10):
        report = await check_connectivity([refusing], timeout=2)
    assert (
        f"{refusing}: refused: port unreachable (nothing listens there, or a firewall refuses it)"
        in report.reasons
    )
    with anyio.fail_after(10):
        report = await check_connectivity(["stun:no-such-host.invalid:3478"], timeout=2)
    assert "stun:no-such-host.invalid:3478: the host name does not resolve" in report.reasons


@pytest.mark.parametrize(
    ("transport", "rtt", "quality"),
    [
        (Transport.UDP, 20, Quality.GOOD),
        (Transport.UDP, 150, Quality.GOOD),
        (Transport.UDP, 151, Quality.FAIR),
        (Transport.UDP, 300, Quality.FAIR),
        (Transport.UDP, 301, Quality.POOR),
        (Transport.RELAY, None, Quality.POOR),
        (Transport.FAILED, None, Quality.CRITICAL),
    ],
)
def test_the_verdict_uses_the_js_clients_bands(
    transport: Transport, rtt: int | None, quality: Quality
) -> None:
    report = classify(transport, rtt)
    assert report.quality is quality
    assert bool(report.reasons) == (quality is not Quality.GOOD)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("stun:stun.l.google.com:19302", ("stun.l.google.com", 19302)),
        ("stun:example.org", ("example.org", 3478)),
        ("STUN:[::1]", ("::1", 3478)),
        ("stun:[::1]:19302", ("::1", 19302)),
        ("stun:[2001:db8::1]:3478", ("2001:db8::1", 3478)),
        ("stun:[::1]:3479", ("::1", 3479)),  # an IPv6 literal with its port (RFC 7064)
    ],
)
def test_stun_urls(url: str, expected: tuple[str, int]) -> None:
    assert parse_stun_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["http://x", "stun:", "stun:host:0", "stun:host:http", "host:1", "stun:[::1]x", "stun:[]"],
)
def test_a_bad_stun_url_is_refused_naming_it(url: str) -> None:
    with pytest.raises(InvalidArgument, match="STUN server URL") as caught:
        parse_stun_url(url)
    assert isinstance(caught.value, LeanJoinError)


async def test_bad_arguments_raise_before_any_probe() -> None:
    with pytest.raises(InvalidArgument, match="at least one"):
        await check_connectivity([])
    with pytest.raises(InvalidArgument, match="timeout"):
        await check_connectivity(timeout=float("nan"))


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner(env=dict(os.environ)).invoke(main, ["preflight", *args])
    return result.exit_code, result.output


def test_cli_preflight_reports_and_exits_by_quality() -> None:
    with stun_server() as url:
        code, output = _cli("--stun", url, "--json")
    report = json.loads(output)
    assert code == 0 and report["transport"] == "udp" and report["stun_server"] == url
    with stun_server(answer=False) as silent:
        code, output = _cli("--stun", silent, "--timeout", "0.6")
    assert code == 1
    assert output.startswith("poor: transport relay") and "TURN relay" in output


def test_cli_preflight_refuses_a_bad_url_as_usage() -> None:
    code, output = _cli("--stun", "http://stun.example")
    assert code == 2 and "--stun" in output


def test_report_is_a_value() -> None:
    report = classify(Transport.UDP, 10)
    assert report == ConnectivityReport(Quality.GOOD, Transport.UDP, 10, ())
