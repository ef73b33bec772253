"""The two aiortc peer connections of one client (LiveKit's dual-PC, "v0" mode).

* publisher: the client offers, the double answers and decodes incoming video;
* subscriber: the double offers the model's echo track, the client answers.

A client that publishes audio gets it back: its decoded audio goes into an
:class:`AudioEchoTrack` that :meth:`ClientMedia.subscriber_audio_offer` adds to
the subscriber connection (a renegotiation, Opus only), labelled as the video.

The echo track is labelled the LiveKit way: msid stream id
``PA_<participant sid>|TR_<track sid>`` and track id ``TR_<track sid>``. aiortc has
no public API for either, so the sender's private ``_stream_id``/``_track_id`` are
set; aiortc is pinned (==1.16.0) for that reason and the end-to-end test covers it.
Each incoming video track's receiver also gets a :class:`~.jitter.MarkerJitterBuffer`
so that a client frame is decoded at its last packet, not one frame later.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import numpy.typing as npt
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame
from livekit.protocol import rtc

from . import ice, jitter, sdp

log = logging.getLogger(__name__)

Frame = npt.NDArray[np.uint8]
_CLOCK = fractions.Fraction(1, 90_000)


class EchoTrack(MediaStreamTrack):
    """A video track that sends whatever RGB frames are pushed into it (latest wins)."""

    kind = "video"

    def __init__(self, track_sid: str) -> None:
        super().__init__()
        self._id = track_sid
        self._queue: asyncio.Queue[Frame] = asyncio.Queue(maxsize=2)
        self._start = time.monotonic()
        self._last_pts = -1

    def push(self, rgb: Frame) -> None:
        # A slow encoder must not build up latency: drop the oldest frame instead.
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(rgb)

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        rgb = await self._queue.get()
        frame = VideoFrame.from_ndarray(rgb, format="rgb24")
        pts = int((time.monotonic() - self._start) * 90_000)
        self._last_pts = max(pts, self._last_pts + 1)
        frame.pts = self._last_pts
        frame.time_base = _CLOCK
        return frame


class AudioEchoTrack(MediaStreamTrack):
    """An audio track that sends the decoded audio frames pushed into it, restamped."""

    kind = "audio"

    def __init__(self, track_sid: str) -> None:
        super().__init__()
        self._id = track_sid
        # 1 s of 20 ms frames: a stalled encoder drops the oldest instead of lagging.
        self._queue: asyncio.Queue[AudioFrame] = asyncio.Queue(maxsize=50)
        self._samples = 0

    def push(self, frame: AudioFrame) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(frame)

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        # The client's RTP clock is not ours: count samples for a gapless timeline.
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, frame.sample_rate)
        self._samples += frame.samples
        return frame


class ClientMedia:
    """Both peer connections of one client, confined to loopback ICE."""

    def __init__(
        self,
        *,
        on_frame: Callable[[Frame], Frame | None],
        model_participant_sid: str,
        model_track_sid: str,
        model_audio_track_sid: str = "",
        on_audio: Callable[[AudioFrame], None] | None = None,
    ) -> None:
        self._on_frame = on_frame
        self._on_audio = on_audio
        self._allowed = ice.machine_addresses()
        self.publisher = RTCPeerConnection(ice.rtc_configuration())
        self.subscriber = RTCPeerConnection(ice.rtc_configuration())
        self._pcs = {rtc.PUBLISHER: self.publisher, rtc.SUBSCRIBER: self.subscriber}
        self._early: dict[rtc.SignalTarget, list[Any]] = {
            rtc.PUBLISHER: [],
            rtc.SUBSCRIBER: [],
        }
        self._participant_sid = model_participant_sid
        self._stream_id = f"{model_participant_sid}|{model_track_sid}"
        self.echo = EchoTrack(model_track_sid)
        self.audio_echo = AudioEchoTrack(model_audio_track_sid)
        self.audio_offered = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.publisher.on("track", self._on_track)

    def _on_track(self, track: Any) -> None:
        if track.kind == "audio":
            self._start(self._consume_audio(track))
            return
        if track.kind != "video":
            return
        # "track" fires inside setRemoteDescription, before the transports connect:
        # no RTP has reached the receiver's buffer yet, so swapping it loses nothing.
        receiver = next((r for r in self.publisher.getReceivers() if r.track is track), None)
        if receiver is None:
            log.warning("no receiver for the client's video track: aiortc's jitter buffer kept")
        else:
            jitter.install(receiver)
        self._start(self._consume(track))

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _consume_audio(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if self._on_audio is not None:
                self._on_audio(frame)
            if self.audio_offered:
                self.audio_echo.push(frame)

    async def _consume(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            try:
                out = self._on_frame(frame.to_ndarray(format="rgb24"))
            except Exception:
                # A broken transform must not silently end decoding for the session.
                log.exception("frame transform failed; frame dropped")
                continue
            if out is not None:
                self.echo.push(out)

    async def subscriber_offer(self) -> str:
        """The double's offer carrying the echo track, VP8 only."""
        sender = self.subscriber.addTrack(self.echo)
        sender._stream_id = self._stream_id
        sender._track_id = self.echo.id
        for transceiver in self.subscriber.getTransceivers():
            if transceiver.sender is sender:
                codecs = RTCRtpSender.getCapabilities("video").codecs
                transceiver.setCodecPreferences(
                    [c for c in codecs if c.mimeType in ("video/VP8", "video/rtx")]
                )
        await self.subscriber.setLocalDescription(await self.subscriber.createOffer())
        return self._local_sdp(self.subscriber)

    async def subscriber_audio_offer(self) -> str:
        """A new subscriber offer that adds the audio echo track (Opus only)."""
        sender = self.subscriber.addTrack(self.audio_echo)
        sender._stream_id = f"{self._participant_sid}|{self.audio_echo.id}"
        sender._track_id = self.audio_echo.id
        for transceiver in self.subscriber.getTransceivers():
            if transceiver.sender is sender:
                codecs = RTCRtpSender.getCapabilities("audio").codecs
                transceiver.setCodecPreferences([c for c in codecs if c.mimeType == "audio/opus"])
        self.audio_offered = True
        await self.subscriber.setLocalDescription(await self.subscriber.createOffer())
        return self._local_sdp(self.subscriber)

    async def publisher_answer(self, offer_sdp: str) -> str:
        """Apply the client's publisher offer and return the double's answer."""
        offer = self._remote_sdp(offer_sdp)
        await self.publisher.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await self._flush_early(rtc.PUBLISHER)
        await self.publisher.setLocalDescription(await self.publisher.createAnswer())
        return sdp.patch_publisher_answer(offer, self._local_sdp(self.publisher))

    async def subscriber_answered(self, answer_sdp: str) -> None:
        answer = self._remote_sdp(answer_sdp)
        await self.subscriber.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await self._flush_early(rtc.SUBSCRIBER)

    async def add_candidate(self, target: rtc.SignalTarget, candidate_init: str) -> None:
        """Apply a trickled candidate, or keep it until the remote description is set."""
        candidate = ice.parse_trickle(candidate_init, self._allowed)
        if candidate is None:
            return
        pc = self._pcs[target]
        if pc.remoteDescription is None:
            self._early[target].append(candidate)
            return
        await pc.addIceCandidate(candidate)

    async def _flush_early(self, target: rtc.SignalTarget) -> None:
        early, self._early[target] = self._early[target], []
        for candidate in early:
            await self._pcs[target].addIceCandidate(candidate)

    def _remote_sdp(self, text: str) -> str:
        return sdp.filter_candidates(text, lambda line: ice.candidate_is_local(line, self._allowed))

    def _local_sdp(self, pc: Any) -> str:
        # Gathering is loopback-only already; filtering again keeps that a guarantee.
        loopback = frozenset({ice.LOOPBACK})
        text: str = pc.localDescription.sdp
        return sdp.filter_candidates(text, lambda line: ice.candidate_is_local(line, loopback))

    async def close(self) -> None:
        """Stop decoding and close both peer connections."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.echo.stop()
        self.audio_echo.stop()
        await self.publisher.close()
        await self.subscriber.close()
