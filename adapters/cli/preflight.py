"""``leanjoin preflight``: can this network carry a realtime session?"""

from __future__ import annotations

import json
import sys

import anyio
import click

from leanjoin.adapters.client.errors import InvalidArgument
from leanjoin.adapters.client.preflight import (
    DEFAULT_STUN_SERVERS,
    ConnectivityReport,
    Quality,
    check_connectivity,
)

from .main import FiniteFloatRange

EPILOG = (
    "\b\nExit codes:\n  0  good or fair: realtime streaming should work\n"
    "  1  poor or critical: it may not (the reasons say why)\n  2  usage error"
)


def _line(report: ConnectivityReport) -> str:
    rtt = "n/a" if report.rtt_ms is None else f"{report.rtt_ms} ms"
    return f"{report.quality.value}: transport {report.transport.value}, round trip {rtt}"


@click.command("preflight", epilog=EPILOG)
@click.option(
    "--stun",
    "stun_servers",
    multiple=True,
    metavar="stun:HOST[:PORT]",
    help=f"STUN server to ask (repeatable) [default: {', '.join(DEFAULT_STUN_SERVERS)}].",
)
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds to wait for a STUN answer.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def preflight(stun_servers: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Check UDP connectivity and round-trip time as the JS client's
    checkConnectivity does: a STUN binding request, its answer and how soon."""
    try:
        report = anyio.run(
            lambda: check_connectivity(stun_servers or DEFAULT_STUN_SERVERS, timeout=timeout)
        )
    except InvalidArgument as exc:
        raise click.BadParameter(str(exc), param_hint="'--stun'") from None
    if as_json:
        click.echo(
            json.dumps(
                {
                    "quality": report.quality.value,
                    "transport": report.transport.value,
                    "rtt_ms": report.rtt_ms,
                    "stun_server": report.stun_server,
                    "reasons": list(report.reasons),
                }
            )
        )
    else:
        click.echo(_line(report))
        for reason in report.reasons:
            click.echo(f"  - {reason}")
    sys.exit(0 if report.quality in (Quality.GOOD, Quality.FAIR) else 1)
