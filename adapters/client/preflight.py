"""Preflight: can this network carry a realtime session? (``check_connectivity``)

The JS client's ``checkConnectivity`` gathers ICE candidates against a public
STUN server: a server-reflexive answer means direct UDP works, and how soon it
came is the round-trip time; no answer means a TURN relay would be needed. This
asks the same question without a peer connection: a STUN binding request over
UDP (messages from ``aioice``, the ICE library under aiortc), resent every
``RETRANSMIT`` seconds until the first answer or ``timeout``. The verdict uses
the JS client's bands (good <= 150 ms, fair <= 300 ms, else poor).
"""

from __future__ import annotations

import enum
import math
import socket
from collections.abc import Sequence
from typing import Final

import anyio
import anyio.abc
import attrs
from aioice import stun

from .errors import InvalidArgument

DEFAULT_STUN_SERVERS: Final = ("stun:stun.l.google.com:19302",)
GOOD_RTT_MS: Final = 150
MARGINAL_RTT_MS: Final = 300
RETRANSMIT: Final = 0.5  # seconds between binding requests while none is answered


class Transport(enum.Enum):
    """What the probe found: direct UDP, only a relay could work, or nothing."""

    UDP = "udp"
    RELAY = "relay"
    FAILED = "failed"


class Quality(enum.Enum):
    GOOD = "good"
    FAIR = "fair"
    POOR = "poor"
    CRITICAL = "critical"


@attrs.frozen
class ConnectivityReport:
    """The verdict, the measurements it rests on, and why (one line each)."""

    quality: Quality
    transport: Transport
    rtt_ms: int | None
    reasons: tuple[str, ...]
    stun_server: str | None = None  # the one that answered


def classify(transport: Transport, rtt_ms: int | None) -> ConnectivityReport:
    """The JS client's verdict for one probe's result."""
    if transport is Transport.FAILED:
        return ConnectivityReport(
            Quality.CRITICAL,
            transport,
            rtt_ms,
            ("no STUN server could be reached over UDP: realtime streaming is unlikely to work",),
        )
    if transport is Transport.RELAY:
        return ConnectivityReport(
            Quality.POOR,
            transport,
            rtt_ms,
            (
                "direct UDP connectivity could not be confirmed: the session would need a "
                "TURN relay, which adds latency",
            ),
        )
    if rtt_ms is not None and rtt_ms > MARGINAL_RTT_MS:
        reason = f"network round-trip time is high (~{rtt_ms} ms > {MARGINAL_RTT_MS} ms)"
        return ConnectivityReport(Quality.POOR, transport, rtt_ms, (reason,))
    if rtt_ms is not None and rtt_ms > GOOD_RTT_MS:
        reason = f"network round-trip time is elevated (~{rtt_ms} ms > {GOOD_RTT_MS} ms)"
        return ConnectivityReport(Quality.FAIR, transport, rtt_ms, (reason,))
    return ConnectivityReport(Quality.GOOD, transport, rtt_ms, ())


def parse_stun_url(url: str) -> tuple[str, int]:
    """``stun:host[:port]`` (port 3478 by default) as (host, port)."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() != "stun" or not rest:
        raise InvalidArgument(f"not a STUN server URL (stun:host[:port]): {url!r}")
    if rest.startswith("["):  # an IPv6 literal, its port after the bracket
        host, bracket, after = rest[1:].partition("]")
        colon, port_text = after[:1], after[1:]
        if not host or not bracket or (after and colon != ":"):
            raise InvalidArgument(f"not a STUN server URL (stun:host[:port]): {url!r}")
    elif rest.count(":") == 1:
        host, colon, port_text = rest.partition(":")
    else:  # a bare name, or an IPv6 literal without brackets (and so without a port)
        host, colon, port_text = rest, "", ""
    if not colon:
        return host, 3478
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidArgument(f"bad port in STUN server URL {url!r}")
    return host, int(port_text)


async def check_connectivity(
    stun_servers: Sequence[str] = DEFAULT_STUN_SERVERS, *, timeout: float = 5.0
) -> ConnectivityReport:
    """Probe UDP connectivity and its round-trip time against ``stun_servers``
    (``stun:host[:port]``); never raises for what the network does, only for
    bad arguments. Takes at most about ``timeout`` seconds."""
    if not stun_servers:
        raise InvalidArgument("stun_servers must name at least one server")
    if not (math.isfinite(timeout) and timeout > 0):
        raise InvalidArgument(f"timeout must be a positive number of seconds, not {timeout!r}")
    targets = [parse_stun_url(url) for url in stun_servers]
    probe = _Probe()
    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as tg:
            probe.done = tg.cancel_scope
            for url, (host, port) in zip(stun_servers, targets, strict=True):
                tg.start_soon(probe.run, url, host, port)
    if probe.answer is not None:
        url, rtt = probe.answer
        return attrs.evolve(classify(Transport.UDP, rtt), stun_server=url)
    # A request went out but none came back: UDP is blocked or filtered on the way.
    report = classify(Transport.RELAY if probe.sent else Transport.FAILED, None)
    # Which server told nothing and why: a typo in a host or port shows here.
    notes = tuple(f"{url}: {why}" for url, why in probe.failures.items())
    return attrs.evolve(report, reasons=report.reasons + notes)


@attrs.define
class _Probe:
    """One binding request per server; the first answer ends them all."""

    sent: bool = False
    answer: tuple[str, int] | None = None
    failures: dict[str, str] = attrs.Factory(dict)  # url -> why it told nothing
    done: anyio.CancelScope = attrs.Factory(anyio.CancelScope)

    async def run(self, url: str, host: str, port: int) -> None:
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError:
            self.failures[url] = "the host name does not resolve"
            return
        family, kind, proto, _, address = infos[0]
        # A plain non-blocking socket, not anyio's UDP stream: on asyncio that
        # keeps an ICMP error (port unreachable) to itself, and a refused port
        # looked like UDP filtered on the way.
        with socket.socket(family, kind, proto) as udp:
            udp.setblocking(False)
            try:
                udp.connect(address)
                await self._exchange(url, udp)
            except OSError as exc:  # no route
                self.failures.setdefault(url, _why_unanswered(exc))

    async def _exchange(self, url: str, udp: socket.socket) -> None:
        request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._resend, url, udp, bytes(request))
            try:
                while True:
                    await anyio.wait_readable(udp)
                    try:
                        answer = stun.parse_message(udp.recv(2048))
                    except ValueError:
                        continue  # not STUN: keep listening
                    if (
                        answer.transaction_id == request.transaction_id
                        and answer.message_class is stun.Class.RESPONSE
                    ):
                        rtt = round((anyio.current_time() - start) * 1000)
                        if self.answer is None:
                            self.answer = (url, rtt)
                        self.done.cancel()
                        return
            except OSError as exc:  # an ICMP error, read back: no STUN service there
                self.failures.setdefault(url, _why_unanswered(exc))
            finally:
                tg.cancel_scope.cancel()

    async def _resend(self, url: str, udp: socket.socket, request: bytes) -> None:
        while True:
            try:
                udp.send(request)  # a datagram: sent whole or refused, never waits
            except OSError as exc:  # the reader ends on its own or at the timeout
                self.failures.setdefault(url, _why_unanswered(exc))
                return
            self.sent = True
            await anyio.sleep(RETRANSMIT)


def _why_unanswered(exc: OSError) -> str:
    """A probe's socket error, as the reason its server told nothing."""
    if isinstance(exc, ConnectionRefusedError):  # ICMP port unreachable
        return "refused: port unreachable (nothing listens there, or a firewall refuses it)"
    return f"no answer ({exc.strerror or exc})"
