"""One :class:`WebRtcStats` sample from ``livekit.rtc.Room.get_rtc_stats()``.

LiveKit's native client reports the W3C WebRTC statistics of its publisher and
subscriber peer connections as optional protobuf fields: a field the stack did
not fill is absent, and becomes None here, never 0. Bitrates come from the
byte counters' growth since the previous sample, as the JS client computes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from google.protobuf.message import Message
from livekit import rtc
from livekit.rtc._proto import stats_pb2

from leanjoin.engine.client.inputs import AttemptId

from .observability import InboundVideoStats, OutboundVideoStats, WebRtcStats

T = TypeVar("T", int, float, str)

_LIMITATIONS = {
    stats_pb2.LIMITATION_NONE: "none",
    stats_pb2.LIMITATION_CPU: "cpu",
    stats_pb2.LIMITATION_BANDWIDTH: "bandwidth",
    stats_pb2.LIMITATION_OTHER: "other",
}


def _fields(*messages: Message) -> dict[str, Any]:
    """The fields set in ``messages`` (merged), by name."""
    found: dict[str, Any] = {}
    for message in messages:
        found.update((field.name, value) for field, value in message.ListFields())
    return found


def _get(fields: dict[str, Any], name: str, kind: type[T]) -> T | None:
    value = fields.get(name)
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)  # type: ignore[return-value]  # T is float here
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


Report = stats_pb2.RtcStats


def _video(report: Report, which: str) -> bool:
    """Whether ``report`` is a video report of kind ``which``."""
    kind = report.WhichOneof("stats")
    return kind == which and getattr(report, kind).stream.kind == "video"


def _pixels(fields: dict[str, Any]) -> int:
    return (_get(fields, "frame_width", int) or 0) * (_get(fields, "frame_height", int) or 0)


def _bitrate(
    now: tuple[float, int | None], before: tuple[float, int | None] | None
) -> float | None:
    if before is None or now[1] is None or before[1] is None:
        return None
    elapsed, grown = now[0] - before[0], now[1] - before[1]
    return grown * 8 / elapsed if elapsed > 0 and grown >= 0 else None


class StatsSampler:
    """Turns successive ``get_rtc_stats()`` results of one room into samples."""

    def __init__(self) -> None:
        self._sent: tuple[float, int | None] | None = None
        self._received: tuple[float, int | None] | None = None

    def sample(self, attempt: AttemptId, at: float, stats: rtc.RtcStats) -> WebRtcStats:
        publisher, subscriber = stats.publisher_stats, stats.subscriber_stats
        outbound = self._outbound(at, [r for r in publisher if _video(r, "outbound_rtp")])
        inbound = self._inbound(at, [r for r in subscriber if _video(r, "inbound_rtp")])
        rtt, available = _connection([*publisher, *subscriber])
        return WebRtcStats(attempt, at, outbound, inbound, rtt, available)

    def _outbound(self, at: float, reports: list[Report]) -> OutboundVideoStats | None:
        if not reports:
            return None
        layers = [_fields(r.outbound_rtp.sent, r.outbound_rtp.outbound) for r in reports]

        def total(name: str) -> int | None:
            values = [v for layer in layers if (v := _get(layer, name, int)) is not None]
            return sum(values) if values else None

        # Size, rate and encoder of the largest layer, as the JS client reports them.
        top = max(layers, key=_pixels)
        sent = total("bytes_sent")
        bitrate = _bitrate((at, sent), self._sent)
        self._sent = (at, sent)
        limitation = top.get("quality_limitation_reason")
        return OutboundVideoStats(
            bytes_sent=sent,
            packets_sent=total("packets_sent"),
            frames_encoded=total("frames_encoded"),
            frames_sent=total("frames_sent"),
            frames_per_second=_get(top, "frames_per_second", float),
            frame_width=_get(top, "frame_width", int),
            frame_height=_get(top, "frame_height", int),
            bitrate=bitrate,
            target_bitrate=_get(top, "target_bitrate", float),
            quality_limitation=_LIMITATIONS.get(limitation) if limitation is not None else None,
            encoder=_get(top, "encoder_implementation", str) or None,
        )

    def _inbound(self, at: float, reports: list[Report]) -> InboundVideoStats | None:
        if not reports:
            return None
        streams = [_fields(r.inbound_rtp.received, r.inbound_rtp.inbound) for r in reports]
        # The model's track: the stream that carried the most (others are leftovers).
        f = max(streams, key=lambda s: _get(s, "bytes_received", int) or 0)
        received = _get(f, "bytes_received", int)
        bitrate = _bitrate((at, received), self._received)
        self._received = (at, received)
        return InboundVideoStats(
            bytes_received=received,
            packets_received=_get(f, "packets_received", int),
            packets_lost=_get(f, "packets_lost", int),
            frames_received=_get(f, "frames_received", int),
            frames_decoded=_get(f, "frames_decoded", int),
            frames_dropped=_get(f, "frames_dropped", int),
            frames_per_second=_get(f, "frames_per_second", float),
            frame_width=_get(f, "frame_width", int),
            frame_height=_get(f, "frame_height", int),
            jitter=_get(f, "jitter", float),
            freeze_count=_get(f, "freeze_count", int),
            total_freeze_duration=_get(f, "total_freeze_duration", float),
            bitrate=bitrate,
            decoder=_get(f, "decoder_implementation", str) or None,
        )


def _connection(reports: Iterable[Report]) -> tuple[float | None, float | None]:
    """Round-trip time (s) and available outgoing bitrate of the selected ICE
    pairs: the publisher's first, since that is the camera's path."""
    rtt: float | None = None
    available: float | None = None
    for report in reports:
        if report.WhichOneof("stats") != "candidate_pair":
            continue
        pair = _fields(report.candidate_pair.candidate_pair)
        if not pair.get("nominated") or pair.get("state") != stats_pb2.PAIR_SUCCEEDED:
            continue
        if rtt is None:
            rtt = _get(pair, "current_round_trip_time", float)
        if available is None:
            available = _get(pair, "available_outgoing_bitrate", float)
    return rtt, available
