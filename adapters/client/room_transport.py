"""The LiveKit room of one connect attempt, on the real ``livekit.rtc.Room``.

One :class:`RoomAttempt` per ``ConnectRoom`` effect. Its task connects, waits
for ``PublishTracks``, publishes the camera, then lives until the room is lost
or the engine says ``DisconnectRoom``. It reports ``RoomConnected``,
``RoomConnectFailed``, ``TracksPublished``, ``PublishFailed``,
``RemoteTrackReceived`` (every subscribed track: the engine decides which
participant is the model) and ``RoomDisconnected`` (room loss only, at most one
terminal report per attempt).

``Room.connect`` is not cancellation-safe: cancelled midway, the native side can
finish connecting with no Python handle left to disconnect it. So the connect
runs shielded (bounded by ``connect_timeout``); an attempt abandoned meanwhile
lets it finish and then disconnects. Every exit path — failure, abandonment,
cancellation — ends in an explicit, shielded ``await room.disconnect()``.

Observations (``observe``) are not engine inputs: LiveKit's verdict on the
local participant's connection, and, every ``stats_interval`` seconds once the
room is connected, a sample of its WebRTC statistics.

:class:`CameraFeed` pumps one local video source into the published track of
whichever attempts are live; each attempt gets a fresh ``rtc.VideoSource``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, Literal

import anyio
import anyio.abc
import attrs
import numpy as np
from livekit import rtc

from leanjoin.engine.client.inputs import (
    AttemptId,
    Input,
    PublishFailed,
    RemoteTrackReceived,
    RoomConnected,
    RoomConnectFailed,
    RoomDisconnected,
    TrackKind,
    TracksPublished,
)
from leanjoin.engine.client.outputs import ConnectRoom
from leanjoin.engine.validators import one_of, positive

from .observability import ConnectionQuality, ConnectionQualityChanged, ObservabilityEvent
from .rtc_stats import StatsSampler
from .video_sources import Frame, VideoSource

log = logging.getLogger(__name__)

Post = Callable[[Input], None]
Trace = Callable[[AttemptId, str], None]
FrameSink = Callable[[AttemptId, Frame], None]
Observe = Callable[[ObservabilityEvent], None]

_CODECS: Final = {"h264": rtc.VideoCodec.H264, "vp8": rtc.VideoCodec.VP8}
_KINDS: Final[dict[int, TrackKind]] = {
    rtc.TrackKind.KIND_VIDEO: "video",
    rtc.TrackKind.KIND_AUDIO: "audio",
}
# A stats request answers in milliseconds; this only bounds a stuck one.
STATS_TIMEOUT: Final = 5.0
_QUALITIES: Final = {
    rtc.ConnectionQuality.QUALITY_EXCELLENT: ConnectionQuality.EXCELLENT,
    rtc.ConnectionQuality.QUALITY_GOOD: ConnectionQuality.GOOD,
    rtc.ConnectionQuality.QUALITY_POOR: ConnectionQuality.POOR,
    rtc.ConnectionQuality.QUALITY_LOST: ConnectionQuality.LOST,
}


@attrs.frozen
class MediaOptions:
    """How the camera is published and how long room operations may take."""

    codec: Literal["h264", "vp8"] = attrs.field(default="h264", validator=one_of(tuple(_CODECS)))
    max_bitrate: int = attrs.field(default=3_500_000, validator=positive)
    max_framerate: float = attrs.field(default=30.0, validator=positive)
    # One full-quality layer: the model wants the camera as is, not a ladder.
    simulcast: bool = False
    track_name: str = "camera"
    # Bound of the shielded connect (the client retries 3 times inside, ~5 s each).
    connect_timeout: float = attrs.field(default=30.0, validator=positive)
    disconnect_timeout: float = attrs.field(default=5.0, validator=positive)
    # Decoded output frames buffered per remote track; older ones are dropped.
    output_buffer: int = 2


class CameraFeed:
    """One local source, pumped into every attached ``rtc.VideoSource``."""

    def __init__(self, source: VideoSource) -> None:
        self.source = source
        self._sinks: set[rtc.VideoSource] = set()
        self.latest: Frame | None = None
        self.frames = 0

    def attach(self, sink: rtc.VideoSource) -> None:
        self._sinks.add(sink)
        if self.latest is not None:  # no wait for the next tick
            sink.capture_frame(_to_livekit(self.latest), timestamp_us=_now_us())

    def detach(self, sink: rtc.VideoSource) -> None:
        self._sinks.discard(sink)

    async def run(self) -> None:
        try:
            async for frame in self.source.frames():
                self.latest = frame
                self.frames += 1
                if self._sinks:
                    converted = _to_livekit(frame)
                    # Real capture times: the encoder's rate control derives the fps from them.
                    stamp = _now_us()
                    for sink in tuple(self._sinks):
                        sink.capture_frame(converted, timestamp_us=stamp)
        except Exception:
            # A broken camera (say, an unreadable video file) stops the video, not
            # the session: signaling and the model's output go on, loudly logged.
            log.exception("the local video source failed; no more frames are published")


def _now_us() -> int:
    return int(anyio.current_time() * 1_000_000)


def _to_livekit(frame: Frame) -> rtc.VideoFrame:
    height, width = frame.shape[:2]
    return rtc.VideoFrame(width, height, rtc.VideoBufferType.RGB24, frame.tobytes())


def _to_array(frame: rtc.VideoFrame) -> Frame:
    data = np.frombuffer(frame.data, dtype=np.uint8)
    row = len(data) // frame.height  # >= width * 3 when rows are padded
    rows = data[: row * frame.height].reshape(frame.height, row)
    out: Frame = rows[:, : frame.width * 3].reshape(frame.height, frame.width, 3).copy()
    return out


def _reason_name(reason: Any) -> str:
    try:
        return str(rtc.DisconnectReason.Name(reason)).lower()
    except (ValueError, TypeError):
        return str(reason)


class RoomAttempt:
    """One attempt's room. Create, start :meth:`run` in a task, feed effects."""

    def __init__(
        self,
        effect: ConnectRoom,
        post: Post,
        camera: CameraFeed,
        on_frame: FrameSink,
        options: MediaOptions = MediaOptions(),
        trace: Trace | None = None,
        *,
        observe: Observe | None = None,
        stats_interval: float | None = None,
    ) -> None:
        self.attempt = effect.attempt
        self._url = effect.livekit_url
        self._token = effect.token
        self._post = post
        self._camera = camera
        self._on_frame = on_frame
        self._options = options
        self._trace = trace
        self._observe = observe
        self._stats_interval = stats_interval if observe is not None else None
        self._scope = anyio.CancelScope()
        self._publish_requested = anyio.Event()
        self._lost = anyio.Event()
        self._abandoned = False
        self._leaving = False
        self._terminal_reported = False
        self._tracks: dict[str, rtc.RemoteVideoTrack] = {}
        self._watched: set[str] = set()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._done = anyio.Event()
        self.disconnected_cleanly = False

    def __repr__(self) -> str:
        return f"RoomAttempt(attempt={self.attempt}, url={self._url!r})"

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait_done(self) -> None:
        await self._done.wait()

    # ---- effects (synchronous: called from the engine's task) ------------------------

    def publish(self) -> None:
        self._publish_requested.set()

    def watch(self, track_sid: str) -> None:
        """Decode the video of ``track_sid`` (a model track the engine announced)."""
        track = self._tracks.get(track_sid)
        if track is None or track_sid in self._watched or self._task_group is None:
            return
        self._watched.add(track_sid)
        self._task_group.start_soon(self._read_video, track)

    def disconnect(self) -> None:
        """Leave (idempotent). A connect in progress finishes first, then leaves."""
        self._abandoned = True
        self._scope.cancel()

    # ---- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        room = rtc.Room()
        room.on("track_subscribed", self._on_track_subscribed)
        room.on("disconnected", self._on_disconnected)
        room.on("connection_quality_changed", self._on_connection_quality)
        sink: rtc.VideoSource | None = None
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    self._task_group = tg
                    if await self._connect(room):
                        if self._stats_interval is not None:
                            tg.start_soon(self._sample_stats, room, self._stats_interval)
                        await self._publish_requested.wait()
                        sink = await self._publish(room)
                        if sink is not None:
                            await anyio.sleep_forever()  # until lost or disconnected
                    tg.cancel_scope.cancel()  # video readers end with the room
        finally:
            self._task_group = None
            await self._leave(room, sink)
            self._done.set()

    async def _connect(self, room: rtc.Room) -> bool:
        options = self._options
        failure: str | None = None
        # Shielded: see the module docstring. Only the timeout can interrupt it.
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(options.connect_timeout):
                    await room.connect(self._url, self._token, rtc.RoomOptions(auto_subscribe=True))
            except TimeoutError:
                failure = f"room connect took longer than {options.connect_timeout:g} s"
                log.warning(
                    "attempt %d: %s; the native connection may linger", self.attempt, failure
                )
            except rtc.ConnectError as exc:
                failure = self._scrub(exc.message)
            except Exception as exc:
                failure = self._scrub(f"{type(exc).__name__}: {exc}")
        if self._abandoned or self._lost.is_set():
            return False  # nobody waits for this room: leave it (in `run`'s cleanup)
        if failure is not None:
            self._report_terminal(RoomConnectFailed(self.attempt, failure))
            return False
        self._post(RoomConnected(self.attempt))
        self._note("room_connected")
        return True

    async def _publish(self, room: rtc.Room) -> rtc.VideoSource | None:
        options = self._options
        camera = self._camera.source
        sink = rtc.VideoSource(camera.width, camera.height)
        track = rtc.LocalVideoTrack.create_video_track(options.track_name, sink)
        publish_options = rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA,
            video_codec=_CODECS[options.codec],
            video_encoding=rtc.VideoEncoding(
                max_bitrate=options.max_bitrate, max_framerate=options.max_framerate
            ),
            simulcast=options.simulcast,
        )
        self._camera.attach(sink)
        try:
            await room.local_participant.publish_track(track, publish_options)
        except Exception as exc:
            self._camera.detach(sink)
            await sink.aclose()
            reason = self._scrub(f"{type(exc).__name__}: {exc}")
            self._report_terminal(PublishFailed(self.attempt, reason))
            return None
        if self._lost.is_set():
            return sink  # lost while publishing: already reported as room loss
        self._post(TracksPublished(self.attempt))
        self._note("tracks_published")
        return sink

    async def _read_video(self, track: rtc.RemoteVideoTrack) -> None:
        stream = rtc.VideoStream(
            track, format=rtc.VideoBufferType.RGB24, capacity=self._options.output_buffer
        )
        try:
            async for event in stream:
                self._on_frame(self.attempt, _to_array(event.frame))
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await stream.aclose()

    async def _sample_stats(self, room: rtc.Room, interval: float) -> None:
        assert self._observe is not None
        sampler = StatsSampler()
        while True:
            await anyio.sleep(interval)
            if self._lost.is_set():
                return  # a closing peer connection is no place to ask for stats
            if not room.isconnected():
                continue  # LiveKit is resuming the connection: ask again later
            try:
                # Shielded: a stats request still in flight when the room is left
                # aborts the process (livekit 1.2.1 panics parsing that answer), so
                # the leave waits for it (run's task group ends before _leave).
                with anyio.CancelScope(shield=True), anyio.fail_after(STATS_TIMEOUT):
                    stats = await room.get_rtc_stats()
            except Exception as exc:  # the room is going away; the next sample may work
                log.debug("attempt %d: no WebRTC stats: %r", self.attempt, exc)
                continue
            self._observe(sampler.sample(self.attempt, anyio.current_time(), stats))

    async def _leave(self, room: rtc.Room, sink: rtc.VideoSource | None) -> None:
        self._leaving = True
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._options.disconnect_timeout):
            if sink is not None:
                self._camera.detach(sink)
            try:
                await room.disconnect()
                self.disconnected_cleanly = True
            except Exception as exc:  # cleanup must not raise; say what went wrong
                log.warning("attempt %d: room disconnect failed: %r", self.attempt, exc)
            if sink is not None:
                await sink.aclose()
        self._note("room_left")

    # ---- room callbacks (run in the room's listener task) -------------------------------

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        _publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        kind = _KINDS.get(track.kind)
        if kind is None or self._leaving:
            return
        if isinstance(track, rtc.RemoteVideoTrack):
            self._tracks[track.sid] = track
        self._post(RemoteTrackReceived(self.attempt, participant.identity, track.sid, kind))

    def _on_connection_quality(
        self, participant: rtc.Participant | None, quality: rtc.ConnectionQuality
    ) -> None:
        verdict = _QUALITIES.get(quality)  # QUALITY_UNKNOWN: nothing said yet
        if self._observe is None or self._leaving or verdict is None:
            return
        if isinstance(participant, rtc.LocalParticipant):
            self._observe(ConnectionQualityChanged(self.attempt, verdict))

    def _on_disconnected(self, reason: Any) -> None:
        if self._leaving:
            return  # our own leave, not a loss
        self._report_terminal(RoomDisconnected(self.attempt, _reason_name(reason)))
        self._lost.set()
        self._scope.cancel()  # nothing left to do in a lost room but leave it

    # ---- helpers -----------------------------------------------------------------------

    def _report_terminal(self, result: Input) -> None:
        if not self._terminal_reported:
            self._terminal_reported = True
            self._post(result)

    def _note(self, milestone: str) -> None:
        if self._trace is not None:
            self._trace(self.attempt, milestone)

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "<redacted>") if self._token else text
