"""Audio in the LiveKit room: the client's microphone track and the model's audio.

:class:`AudioFeed` pumps one local :class:`~.audio_sources.AudioSource` into the
``rtc.AudioSource`` of whichever attempts are live (as ``CameraFeed`` does for
video). :func:`publish_microphone` publishes one such source as a microphone
track; :func:`read_audio` turns a subscribed audio track into
:class:`~.audio_sources.AudioFrame` chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import anyio
import numpy as np
from livekit import rtc

from .audio_sources import AudioFrame, AudioSource

log = logging.getLogger(__name__)

# Model audio chunks (10 ms) kept per audio_frames() reader: 2 s, then the oldest go.
AUDIO_BUFFER: Final = 200

# The model's audio as it is handed out: 48 kHz mono (WebRTC resamples to it).
RECEIVED_RATE: Final = 48_000
RECEIVED_CHANNELS: Final = 1
# Audio the native source may hold ahead of the network: a small queue keeps
# the echo prompt; a paced source never fills it.
QUEUE_MS: Final = 200
TRACK_NAME: Final = "microphone"


class AudioFeed:
    """One local audio source, pumped into every attached ``rtc.AudioSource``.

    It runs for the whole session: chunks made while no room is live are
    dropped, as a live microphone's would be (a file plays on meanwhile)."""

    def __init__(self, source: AudioSource) -> None:
        self.source = source
        self._sinks: set[rtc.AudioSource] = set()
        self.frames = 0

    def attach(self, sink: rtc.AudioSource) -> None:
        self._sinks.add(sink)

    def detach(self, sink: rtc.AudioSource) -> None:
        self._sinks.discard(sink)

    async def run(self) -> None:
        try:
            async for frame in self.source.frames():
                self.frames += 1
                if self._sinks:
                    converted = _to_livekit(frame)
                    for sink in tuple(self._sinks):
                        await self._capture(sink, converted)
        except Exception:
            # A broken microphone stops the audio, not the session (as for the camera).
            log.exception("the local audio source failed; no more audio is published")

    async def _capture(self, sink: rtc.AudioSource, frame: rtc.AudioFrame) -> None:
        try:
            await sink.capture_frame(frame)
        except Exception as exc:  # a room left meanwhile closed it: forget that sink
            log.debug("audio capture into a closed source: %r", exc)
            self._sinks.discard(sink)


def _to_livekit(frame: AudioFrame) -> rtc.AudioFrame:
    samples = np.ascontiguousarray(frame.samples)
    return rtc.AudioFrame(samples.tobytes(), frame.sample_rate, frame.channels, len(samples))


def _to_frame(frame: rtc.AudioFrame) -> AudioFrame:
    data = np.frombuffer(frame.data, dtype=np.int16)
    samples = data[: frame.samples_per_channel * frame.num_channels].copy()
    return AudioFrame(samples.reshape(-1, frame.num_channels), frame.sample_rate)


async def publish_microphone(room: rtc.Room, feed: AudioFeed) -> rtc.AudioSource:
    """Publish ``feed`` as the room's microphone track; the sink it is pumped into.
    Raises what ``publish_track`` raises (the sink is then closed and detached)."""
    source = feed.source
    sink = rtc.AudioSource(source.sample_rate, source.channels, queue_size_ms=QUEUE_MS)
    track = rtc.LocalAudioTrack.create_audio_track(TRACK_NAME, sink)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    feed.attach(sink)
    try:
        await room.local_participant.publish_track(track, options)
    except BaseException:
        feed.detach(sink)
        with anyio.CancelScope(shield=True):
            await sink.aclose()
        raise
    return sink


async def read_audio(track: rtc.RemoteAudioTrack, on_audio: Callable[[AudioFrame], None]) -> None:
    """Hand every chunk of ``track`` (48 kHz mono) to ``on_audio`` until cancelled."""
    stream = rtc.AudioStream(track, sample_rate=RECEIVED_RATE, num_channels=RECEIVED_CHANNELS)
    try:
        async for event in stream:
            on_audio(_to_frame(event.frame))
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
            await stream.aclose()
