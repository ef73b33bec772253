"""``leanjoin preflight``: can this network carry a realtime session?"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from leanjoin.adapters.client.session_probe import SessionProbeReport

EPILOG = (
    "\b\nExit status (both probes):\n  0  good or fair: realtime streaming should work\n"
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
@click.option(
    "--deep",
    "deep_url",
    metavar="URL",
    help="Instead: open a short real session to URL (a stream endpoint or base URL; "
    "the api key from the environment) and judge its first frame and steady state.",
)
@click.option("--model", help="The model of the deep probe (its camera size and rate).")
@click.option(
    "--duration",
    type=FiniteFloatRange(min=0, min_open=True),
    default=12.0,
    show_default=True,
    help="Longest the deep probe's session lasts (it ends sooner once measured).",
)
def preflight(
    stun_servers: tuple[str, ...],
    timeout: float,
    as_json: bool,
    deep_url: str | None,
    model: str | None,
    duration: float,
) -> None:
    """Check UDP connectivity and round-trip time as the JS client's
    checkConnectivity does: a STUN binding request, its answer and how soon.
    With --deep, as its deep probe: a short real session (billed as one)."""
    if deep_url is not None:
        _deep(deep_url, model, duration, as_json)
        return
    if model is not None:
        raise click.UsageError("--model is for --deep")
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


def _deep(url: str, model: str | None, duration: float, as_json: bool) -> None:
    # Imported here: the session stack (LiveKit) is needed by the deep probe only.
    from leanjoin.adapters.client.session_probe import probe_session

    if model is None:
        raise click.UsageError("--deep needs --model (the latency is the model's)")
    try:
        report = anyio.run(lambda: probe_session(url, model=model, duration=duration))
    except ValueError as exc:  # a bad URL, an unknown model, no api key: said as misuse
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"quality": report.quality.value, **_measured(report)}))
    else:
        figures = ", ".join(f"{name} {value}" for name, value in _shown(report))
        click.echo(f"{report.quality.value}: {figures or 'nothing measured'}")
        for reason in report.reasons:
            click.echo(f"  - {reason}")
    sys.exit(0 if report.quality in (Quality.GOOD, Quality.FAIR) else 1)


def _measured(report: SessionProbeReport) -> dict[str, object]:
    return {
        "time_to_first_frame": report.time_to_first_frame,
        "round_trip_time": report.round_trip_time,
        "packet_loss": report.packet_loss,
        "frames_per_second": report.frames_per_second,
        "samples": report.samples,
        "reasons": list(report.reasons),
    }


def _shown(report: SessionProbeReport) -> list[tuple[str, str]]:
    shown = []
    if report.time_to_first_frame is not None:
        shown.append(("first frame", f"{report.time_to_first_frame:.2f} s"))
    if report.round_trip_time is not None:
        shown.append(("round trip", f"{report.round_trip_time * 1000:.0f} ms"))
    if report.packet_loss is not None:
        shown.append(("loss", f"{report.packet_loss * 100:.1f}%"))
    if report.frames_per_second is not None:
        shown.append(("video", f"{report.frames_per_second:.0f} fps"))
    return shown
