"""ICE confinement of the LiveKit double: loopback candidates, local peers only.

The double must never send a packet off this machine:

* it gathers and advertises only a 127.0.0.1 host candidate. aioice skips
  loopback when it lists host addresses, so :func:`install_loopback_gathering`
  wraps ``aioice.ice.get_host_addresses`` once; the wrapper answers
  ``["127.0.0.1"]`` only inside a context marked by :func:`confine_to_loopback`,
  so other aiortc users in the process keep the stock behaviour;
* peer connections get no STUN/TURN servers (aiortc would otherwise default to a
  public STUN server);
* remote candidates are kept only when they are UDP host addresses of this very
  machine, which drops mDNS names (they would trigger multicast look-ups),
  server-reflexive and relay candidates.
"""

from __future__ import annotations

import json
from contextvars import ContextVar

import aioice.ice
import ifaddr
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceCandidate
from aiortc.sdp import candidate_from_sdp

LOOPBACK = "127.0.0.1"

_LOOPBACK_ONLY: ContextVar[bool] = ContextVar("lkdouble_loopback_only", default=False)
_installed = False


def install_loopback_gathering() -> None:
    """Wrap aioice's host-address listing once per process (idempotent)."""
    global _installed
    if _installed:
        return
    stock = aioice.ice.get_host_addresses

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if _LOOPBACK_ONLY.get():
            return [LOOPBACK]
        return stock(use_ipv4, use_ipv6)

    aioice.ice.get_host_addresses = host_addresses
    _installed = True


def confine_to_loopback() -> None:
    """Make ICE gathering in the current context (and tasks it starts) loopback-only."""
    install_loopback_gathering()
    _LOOPBACK_ONLY.set(True)


def rtc_configuration() -> RTCConfiguration:
    """No ICE servers at all, one bundled transport."""
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def machine_addresses() -> frozenset[str]:
    """IPv4 addresses of this machine's interfaces, loopback included."""
    found = {LOOPBACK}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                found.add(ip.ip)
    return frozenset(found)


def _candidate_fields(line: str) -> list[str]:
    body = line.strip()
    for prefix in ("a=", "candidate:"):
        if body.startswith(prefix):
            body = body[len(prefix) :]
    return body.split()


def candidate_is_local(line: str, allowed: frozenset[str]) -> bool:
    """True for a UDP host candidate whose address is one of ``allowed``."""
    fields = _candidate_fields(line)
    # foundation component transport priority address port "typ" type ...
    if len(fields) < 8 or fields[6] != "typ":
        return False
    return fields[2].lower() == "udp" and fields[4] in allowed and fields[7] == "host"


def parse_trickle(candidate_init: str, allowed: frozenset[str]) -> RTCIceCandidate | None:
    """The aiortc candidate of a LiveKit trickle, or None when it must be ignored.

    ``candidate_init`` is the browser-style JSON ``{candidate, sdpMid, sdpMLineIndex}``.
    """
    try:
        init = json.loads(candidate_init)
    except ValueError:
        return None
    if not isinstance(init, dict):
        return None
    line = init.get("candidate")
    if not isinstance(line, str) or not line or not candidate_is_local(line, allowed):
        return None
    candidate = candidate_from_sdp(line.split(":", 1)[1] if ":" in line else line)
    mid = init.get("sdpMid")
    index = init.get("sdpMLineIndex")
    candidate.sdpMid = mid if isinstance(mid, str) else None
    candidate.sdpMLineIndex = index if isinstance(index, int) else None
    if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
        candidate.sdpMLineIndex = 0
    assert isinstance(candidate, RTCIceCandidate)
    return candidate
