"""A video jitter buffer that completes a frame at its last packet, as a media server does.

aiortc's :class:`~aiortc.jitterbuffer.JitterBuffer` hands a video frame to the
decoder only once a packet of the *next* frame arrives, so every decoded client
frame is one frame interval late. A sender sets the RTP marker bit on the last
packet of each video frame (RFC 3550 section 5.1; RFC 7741 for VP8, RFC 6184 for
H264): :class:`MarkerJitterBuffer` completes the frame there.

It relies on aiortc 1.16.0 internals (pinned in pyproject.toml): the buffer's
``_origin``/``_packets`` fields and its ``_remove_frame`` hook, the ``_data``
the receiver sets on each packet once depayloaded, and the receiver's private
``__jitter_buffer`` that :func:`install` replaces.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

log = logging.getLogger(__name__)

# aiortc's RTCRtpReceiver keeps its buffer in a name-mangled private attribute.
_RECEIVER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
# What aiortc 1.16.0 gives a video receiver.
VIDEO_CAPACITY = 512


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video buffer, plus: a frame is complete at its marker packet.

    A frame is returned as soon as the packets from the buffer's origin form one
    contiguous run with one timestamp that ends with a marker packet. Misorder
    handling, PLI flags, ``smart_remove`` and aiortc's own completion (a packet of
    the next timestamp) are left to the base class, which still applies to senders
    that never set the marker.
    """

    def __init__(self, capacity: int = VIDEO_CAPACITY, *, is_video: bool = True) -> None:
        # No prefetch: a complete frame goes to the decoder at once.
        super().__init__(capacity=capacity, is_video=is_video)
        self._marked_timestamp: int | None = None

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        self._drop_stragglers()
        frame = self._marked_frame()
        if frame is not None:
            return frame
        return super()._remove_frame(sequence_number)

    def _run(self) -> Iterator[RtpPacket]:
        """The contiguous packets from the origin, the run aiortc's own scan walks."""
        origin = self._origin
        if origin is None:
            return
        for count in range(self.capacity):
            packet = self._packets[(origin + count) % self.capacity]
            if packet is None:
                return
            yield packet

    def _marked_frame(self) -> JitterFrame | None:
        packets: list[RtpPacket] = []
        for packet in self._run():
            if packets and packet.timestamp != packets[0].timestamp:
                return None  # the frame at the origin has no marker: aiortc decides
            packets.append(packet)
            if packet.marker:
                self.remove(len(packets))
                self._marked_timestamp = packet.timestamp
                data = b"".join(p._data for p in packets)  # type: ignore[attr-defined]
                return JitterFrame(data=data, timestamp=packet.timestamp)
        return None

    def _drop_stragglers(self) -> None:
        # Packets after a marker with that frame's timestamp (libwebrtc's padding on
        # the media SSRC) would become a frame of their own, an empty one the decoder
        # would take for end-of-stream. aiortc would have joined them to the frame
        # already delivered, so they are dropped instead.
        count = 0
        for packet in self._run():
            if packet.timestamp != self._marked_timestamp:
                break
            count += 1
        if count:
            self.remove(count)


def install(receiver: RTCRtpReceiver) -> bool:
    """Give a video ``receiver`` a fresh :class:`MarkerJitterBuffer`; call before RTP flows.

    Returns False, with one warning, when this aiortc has no such private buffer:
    the receiver then keeps aiortc's own (frames a frame interval late, still right).
    """
    if not isinstance(getattr(receiver, _RECEIVER_BUFFER, None), JitterBuffer):
        log.warning(
            "aiortc receiver has no %s (not aiortc 1.16.0?): client video keeps "
            "aiortc's jitter buffer, one frame interval late",
            _RECEIVER_BUFFER,
        )
        return False
    setattr(receiver, _RECEIVER_BUFFER, MarkerJitterBuffer(VIDEO_CAPACITY, is_video=True))
    return True
