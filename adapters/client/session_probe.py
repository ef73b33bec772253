"""The deep preflight: a short real session, judged as the JS client judges it.

The JS client's ``checkConnectivity({deep: true, model})`` opens a session
with a synthetic camera for up to 12 s, then tears it down and grades what it
measured: the time to the first model frame and the steady state. This does
the same with :func:`~leanjoin.adapters.client.api.connect`: the model's test
pattern as the camera, WebRTC stats every second, and the connect breakdown.
Each dimension is graded on the JS client's bands and the verdict is the
worst of them:

- time to first frame (connect to the model's first frame): 4 / 6 / 10 s;
- round-trip time: 150 / 300 / 500 ms;
- packet loss of the model's video (received vs lost): 0.1 / 1 / 5 %;
- the model's video frame rate: at least 20 / 12 / 5 fps.

It costs what a session costs (a real service bills it).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Final

import anyio
import attrs

from leanjoin.engine.client.config import RetryPolicy

from .api import connect
from .errors import InvalidArgument, LeanJoinError
from .models import ModelDefinition
from .observability import ConnectBreakdown, WebRtcStats
from .preflight import Quality

DURATION: Final = 12.0  # seconds at most, as the JS client's probe
MIN_SAMPLES: Final = 5  # stats samples after the first frame that end it sooner
TTFF_BANDS: Final = (4.0, 6.0, 10.0)  # seconds
RTT_BANDS: Final = (0.150, 0.300, 0.500)  # seconds
LOSS_BANDS: Final = (0.001, 0.01, 0.05)  # fraction of packets
FPS_BANDS: Final = (20.0, 12.0, 5.0)  # frames per second, higher is better
_ORDER: Final = (Quality.GOOD, Quality.FAIR, Quality.POOR, Quality.CRITICAL)


@attrs.frozen
class SessionProbeReport:
    """A deep probe's verdict and what it rests on (None: not measured)."""

    quality: Quality
    time_to_first_frame: float | None  # seconds
    round_trip_time: float | None  # seconds, the median sample
    packet_loss: float | None  # fraction of the model's video packets lost
    frames_per_second: float | None  # the model's video, the median sample
    samples: int
    reasons: tuple[str, ...]


def grade(value: float, bands: tuple[float, float, float], *, higher_is_better: bool) -> Quality:
    """One dimension on its bands (good, fair, poor; beyond them critical)."""
    for band, quality in zip(bands, _ORDER, strict=False):
        if (value >= band) if higher_is_better else (value <= band):
            return quality
    return Quality.CRITICAL


def judge(
    ttff: float | None, rtt: float | None, loss: float | None, fps: float | None, samples: int
) -> SessionProbeReport:
    """The verdict of one probe's measurements (the worst dimension)."""
    if ttff is None:
        reason = "the session connected, but no model video arrived"
        return SessionProbeReport(Quality.CRITICAL, None, rtt, loss, fps, samples, (reason,))
    graded: list[tuple[Quality, str]] = [
        (
            grade(ttff, TTFF_BANDS, higher_is_better=False),
            f"time to first frame is {ttff:.1f} s (good <= {TTFF_BANDS[0]:g} s)",
        )
    ]
    if rtt is not None:
        graded.append(
            (
                grade(rtt, RTT_BANDS, higher_is_better=False),
                f"round-trip time is {rtt * 1000:.0f} ms (good <= {RTT_BANDS[0] * 1000:.0f} ms)",
            )
        )
    if loss is not None:
        graded.append(
            (
                grade(loss, LOSS_BANDS, higher_is_better=False),
                f"{loss * 100:.1f}% of the model's video packets were lost "
                f"(good <= {LOSS_BANDS[0] * 100:g}%)",
            )
        )
    if fps is not None:
        graded.append(
            (
                grade(fps, FPS_BANDS, higher_is_better=True),
                f"the model's video comes at {fps:.0f} fps (good >= {FPS_BANDS[0]:g} fps)",
            )
        )
    worst = max((quality for quality, _ in graded), key=_ORDER.index)
    reasons = tuple(text for quality, text in graded if quality is not Quality.GOOD)
    return SessionProbeReport(worst, ttff, rtt, loss, fps, samples, reasons)


async def probe_session(
    url: str | None = None,
    *,
    model: str | ModelDefinition,
    api_key: str | None = None,
    duration: float = DURATION,
    **connect_options: Any,
) -> SessionProbeReport:
    """Open a session to ``model`` at ``url`` for at most ``duration`` seconds
    (less once the first frame and five stats samples after it are in), leave
    it, and grade it. A session that cannot be opened is CRITICAL, with the
    reason; bad arguments raise as ``connect`` does (:class:`InvalidArgument`,
    ``UnknownModelError``: ``ValueError`` both).
    ``connect_options`` go to ``connect`` (``query_params``, ``timeouts``, ...)."""
    if not (math.isfinite(duration) and duration > 0):
        raise InvalidArgument(f"duration must be a positive number of seconds, not {duration!r}")
    probe = _Probe()
    # One attempt, as the JS probe: a verdict in seconds, not after a minute of retries.
    connect_options.setdefault("retry", RetryPolicy(max_retries=0))
    try:
        async with connect(
            url,
            model=model,
            api_key=api_key,
            stats_interval=1.0,
            on_event=probe.on_event,
            **connect_options,
        ):
            with anyio.move_on_after(duration):
                await probe.enough.wait()
    except ValueError:  # the arguments (InvalidArgument, UnknownModelError): the caller's
        raise
    except LeanJoinError as exc:
        reason = f"could not establish a realtime session: {exc}"
        return SessionProbeReport(Quality.CRITICAL, None, None, None, None, 0, (reason,))
    return probe.report()


@attrs.define
class _Probe:
    ttff: float | None = None
    samples: list[WebRtcStats] = attrs.Factory(list)
    enough: anyio.Event = attrs.Factory(anyio.Event)

    def on_event(self, event: object) -> None:
        if isinstance(event, ConnectBreakdown) and event.first_output_frame is not None:
            self.ttff = self.ttff if self.ttff is not None else event.total
        elif isinstance(event, WebRtcStats) and self.ttff is not None:
            self.samples.append(event)  # the steady state: after the first frame
        if self.ttff is not None and len(self.samples) >= MIN_SAMPLES:
            self.enough.set()

    def report(self) -> SessionProbeReport:
        inbound = [s.inbound_video for s in self.samples if s.inbound_video is not None]
        rtt = _median(s.round_trip_time for s in self.samples)
        fps = _median(v.frames_per_second for v in inbound)
        loss: float | None = None
        if inbound and (last := inbound[-1]).packets_received is not None:
            lost = last.packets_lost or 0
            total = last.packets_received + lost
            loss = lost / total if total else None
        return judge(self.ttff, rtt, loss, fps, len(self.samples))


def _median(values: Any) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None
