"""The LiveKit room of one connect attempt, on the real ``livekit.rtc.Room``.

One :class:`RoomAttempt` per ``ConnectRoom`` effect. Its task connects, waits
for ``PublishTracks``, publishes the camera, then lives until the room is lost
or the engine says ``DisconnectRoom``. It reports ``RoomConnected``,
``RoomConnectFailed``, ``TracksPublished``, ``PublishFailed``,
``RemoteTrackReceived`` (every subscribed track: the engine decides which
participant is the model) and ``RoomDisconnected`` (room loss only, at most one
terminal report per attempt). With an audio feed it also publishes the
microphone, after the camera and without holding up ``TracksPublished``.

``Room.connect`` is not cancellation-safe: cancelled midway, the native side can
finish connecting with no Python handle left to disconnect it. So the connect
runs shielded (bounded by ``connect_timeout``); an attempt abandoned meanwhile
lets it finish and then disconnects. Every exit path — failure, abandonment,
cancellation — ends in an explicit, shielded ``await room.disconnect()``.

Observations (``observe``) are not engine inputs: LiveKit's verdict on the
local participant's connection, and, every ``stats_interval`` seconds once the
room is connected, a sample of its WebRTC statistics.

:class:`CameraFeed` holds the camera the user last set and pumps it, when it
is a local video source, into the published track of whichever attempts are
live; each attempt gets a fresh ``rtc.VideoSource``. A ``rtc.LocalVideoTrack``
given as the camera is published as it is. When the camera is replaced, a
published attempt swaps it in place (:meth:`RoomAttempt.camera_applied`): from
source to source the pump reads the new source into the same track (the
model's input never stops); otherwise the new track is published, then the old
one unpublished.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, Literal, TypeAlias

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
from leanjoin.engine.errors import LeanJoinError
from leanjoin.engine.validators import one_of, positive

from .audio_sources import AudioFrame
from .errors import redact
from .observability import ConnectionQuality, ConnectionQualityChanged, ObservabilityEvent
from .room_audio import AudioFeed, publish_microphone, read_audio
from .rtc_stats import StatsSampler
from .video_sources import Frame, VideoSource

log = logging.getLogger(__name__)

Post = Callable[[Input], None]
Trace = Callable[[AttemptId, str], None]
FrameSink = Callable[[AttemptId, Frame], None]
CameraInput: TypeAlias = VideoSource | rtc.LocalVideoTrack
AudioSink = Callable[[AttemptId, AudioFrame], None]
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
    # Bound of a camera swap's publish in a connected room (no engine timer covers it).
    publish_timeout: float = attrs.field(default=10.0, validator=positive)
    # Decoded output frames buffered per remote track; older ones are dropped.
    output_buffer: int = 2


class CameraFeed:
    """The camera the user last set (what every new attempt publishes); a
    local source is pumped into every attached ``rtc.VideoSource``."""

    def __init__(self, camera: CameraInput) -> None:
        self.camera = camera
        self.version = 0  # one more at every replace
        self._changed = anyio.Event()
        self._pump_scope: anyio.CancelScope | None = None
        self._sinks: set[rtc.VideoSource] = set()
        self.latest: Frame | None = None
        self.frames = 0

    @property
    def source(self) -> VideoSource | None:
        """The camera when it is a source leanjoin pumps (None: a track)."""
        return None if isinstance(self.camera, rtc.LocalVideoTrack) else self.camera

    def replace(self, camera: CameraInput) -> int:
        """Make ``camera`` the camera; its version (rooms swap to it on their own)."""
        self.camera = camera
        self.version += 1
        if self._pump_scope is not None:
            self._pump_scope.cancel()  # the pump goes on with the new source
        self._changed.set()
        self._changed = anyio.Event()
        return self.version

    async def wait_changed(self, seen: int) -> None:
        """Return once the camera is another than at version ``seen``."""
        while self.version == seen:
            await self._changed.wait()

    def attach(self, sink: rtc.VideoSource) -> None:
        self._sinks.add(sink)
        if self.latest is not None:  # no wait for the next tick
            sink.capture_frame(_to_livekit(self.latest), timestamp_us=_now_us())

    def detach(self, sink: rtc.VideoSource) -> None:
        self._sinks.discard(sink)

    async def run(self) -> None:
        while True:
            version, source = self.version, self.source
            if source is not None:
                with anyio.CancelScope() as self._pump_scope:
                    await self._pump(source)
                self._pump_scope = None
            await self.wait_changed(version)

    async def _pump(self, source: VideoSource) -> None:
        frames = source.frames()
        try:
            async for frame in frames:
                self.latest = frame
                self.frames += 1
                if self._sinks:
                    converted = _to_livekit(frame)
                    # Real capture times: the encoder's rate control derives the fps from them.
                    stamp = _now_us()
                    for sink in tuple(self._sinks):
                        sink.capture_frame(converted, timestamp_us=stamp)
        except LeanJoinError as exc:
            # A broken camera (say, an unreadable video file) stops the video, not
            # the session: signaling and the model's output go on. Said in one line.
            log.error("the local video source failed: %s; no more frames are published", exc)
        except Exception:  # a source's own bug: its traceback helps
            log.exception("the local video source failed; no more frames are published")
        finally:
            await _close_iterator(frames)


async def _close_iterator(frames: AsyncIterator[Frame]) -> None:
    # A replaced source's generator is closed now (its `finally` releases what
    # it holds), not whenever the garbage collector finds it.
    aclose = getattr(frames, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            await aclose()


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


async def connect_shielded(
    room: rtc.Room, url: str, token: str, timeout: float, who: str
) -> str | None:
    """Connect ``room`` (auto-subscribing); None once connected, else why not (the
    token masked). Shielded, see the module docstring: only ``timeout`` ends it
    early, and the caller must ``room.disconnect()`` whatever this returns."""
    with anyio.CancelScope(shield=True):
        try:
            with anyio.fail_after(timeout):
                await room.connect(url, token, rtc.RoomOptions(auto_subscribe=True))
        except TimeoutError:
            failure = f"room connect took longer than {timeout:g} s"
            log.warning("%s: %s; the native connection may linger", who, failure)
            return failure
        except rtc.ConnectError as exc:  # one line: a server's answer may end in a newline
            return redact(exc.message, token)
        except Exception as exc:
            return redact(f"{type(exc).__name__}: {exc}", token)
    return None


async def read_video(
    track: rtc.RemoteVideoTrack, on_frame: Callable[[Frame], None], *, capacity: int
) -> None:
    """Decode ``track`` as RGB arrays into ``on_frame`` until it ends or is cancelled."""
    stream = rtc.VideoStream(track, format=rtc.VideoBufferType.RGB24, capacity=capacity)
    try:
        async for event in stream:
            on_frame(_to_array(event.frame))
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
            await stream.aclose()


def reason_name(reason: Any) -> str:
    try:
        return str(rtc.DisconnectReason.Name(reason)).lower()
    except (ValueError, TypeError):
        return str(reason)


@attrs.define
class _Published:
    """The camera an attempt publishes: the track, and ``sink``, the
    ``rtc.VideoSource`` leanjoin made for it (None: the user's own track)."""

    version: int
    track: rtc.LocalVideoTrack
    sink: rtc.VideoSource | None
    sid: str = ""


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
        audio: AudioFeed | None = None,
        on_audio: AudioSink | None = None,
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
        self._audio = audio
        self._on_audio = on_audio
        self._audio_sink: rtc.AudioSource | None = None
        self._observe = observe
        self._stats_interval = stats_interval if observe is not None else None
        self._scope = anyio.CancelScope()
        self._publish_requested = anyio.Event()
        self._lost = anyio.Event()
        self._abandoned = False
        self._leaving = False
        self._terminal_reported = False
        self._tracks: dict[str, rtc.RemoteVideoTrack | rtc.RemoteAudioTrack] = {}
        self._watched: set[str] = set()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._done = anyio.Event()
        self._published: _Published | None = None
        self._swapped = anyio.Event()  # set (and renewed) at every swap and at the end
        self.disconnected_cleanly = False

    def __repr__(self) -> str:
        return f"RoomAttempt(attempt={self.attempt}, url={self._url!r})"

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait_done(self) -> None:
        await self._done.wait()

    async def camera_applied(self, version: int) -> None:
        """Return once this room publishes the camera of ``version`` (or a later
        one), is not publishing yet (it will publish the camera set last, or swap
        to it right after), or is gone (a retry publishes it)."""
        while not self.done and self._published is not None and self._published.version < version:
            await self._swapped.wait()

    # ---- effects (synchronous: called from the engine's task) ------------------------

    def publish(self) -> None:
        self._publish_requested.set()

    def watch(self, track_sid: str) -> None:
        """Decode the video or audio of ``track_sid`` (a model track the engine announced)."""
        track = self._tracks.get(track_sid)
        if track is None or track_sid in self._watched or self._task_group is None:
            return
        self._watched.add(track_sid)
        if isinstance(track, rtc.RemoteVideoTrack):
            self._task_group.start_soon(self._read_video, track)
        elif self._on_audio is not None:
            on_audio = functools.partial(self._on_audio, self.attempt)
            self._task_group.start_soon(read_audio, track, on_audio)

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
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    self._task_group = tg
                    if await self._connect(room):
                        if self._stats_interval is not None:
                            tg.start_soon(self._sample_stats, room, self._stats_interval)
                        await self._publish_requested.wait()
                        if await self._publish(room):
                            await self._swap_cameras(room)  # until lost or disconnected
                    tg.cancel_scope.cancel()  # video readers end with the room
        finally:
            self._task_group = None
            await self._leave(room)
            self._done.set()
            self._swapped.set()

    async def _connect(self, room: rtc.Room) -> bool:
        failure = await connect_shielded(
            room, self._url, self._token, self._options.connect_timeout, f"attempt {self.attempt}"
        )
        if self._abandoned or self._lost.is_set():
            return False  # nobody waits for this room: leave it (in `run`'s cleanup)
        if failure is not None:
            self._report_terminal(RoomConnectFailed(self.attempt, failure))
            return False
        self._post(RoomConnected(self.attempt))
        self._note("room_connected")
        return True

    def _camera_track(self) -> _Published:
        """A track for the camera set now (made for a source; a track as it is)."""
        camera = self._camera.camera
        version = self._camera.version
        if isinstance(camera, rtc.LocalVideoTrack):
            return _Published(version, camera, None)
        sink = rtc.VideoSource(camera.width, camera.height)
        track = rtc.LocalVideoTrack.create_video_track(self._options.track_name, sink)
        self._camera.attach(sink)
        return _Published(version, track, sink)

    async def _publish_camera(self, room: rtc.Room) -> tuple[_Published, Exception | None]:
        """Publish the camera set now. Made and not published (failed or cancelled),
        its sink is closed here; published, the caller records it."""
        options = self._options
        published = self._camera_track()
        publish_options = rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA,
            video_codec=_CODECS[options.codec],
            video_encoding=rtc.VideoEncoding(
                max_bitrate=options.max_bitrate, max_framerate=options.max_framerate
            ),
            simulcast=options.simulcast,
        )
        try:
            publication = await room.local_participant.publish_track(
                published.track, publish_options
            )
        except BaseException as exc:
            await self._close_sink(published)
            if not isinstance(exc, Exception):
                raise  # cancelled
            return published, exc
        published.sid = publication.sid
        return published, None

    async def _publish(self, room: rtc.Room) -> bool:
        published, failure = await self._publish_camera(room)
        if failure is not None:
            reason = self._scrub(f"{type(failure).__name__}: {failure}")
            self._report_terminal(PublishFailed(self.attempt, reason))
            return False
        self._published = published
        if self._lost.is_set():
            return True  # lost while publishing: already reported as room loss
        self._post(TracksPublished(self.attempt))
        self._note("tracks_published")
        if self._audio is not None and self._task_group is not None:
            self._task_group.start_soon(self._publish_audio, room, self._audio)
        return True

    async def _swap_cameras(self, room: rtc.Room) -> None:
        """Follow every camera replace, in this connected room, for its lifetime."""
        while True:
            current = self._published
            assert current is not None
            await self._camera.wait_changed(current.version)
            if (current.sink is not None and self._camera.source is not None) or (
                current.track is self._camera.camera
            ):
                # Source to source: the pump already reads the new source into this
                # track (or the same track again): nothing to publish.
                current.version = self._camera.version
            else:
                new: _Published | None = None
                failure: Exception | None = None
                with anyio.move_on_after(self._options.publish_timeout):
                    new, failure = await self._publish_camera(room)
                if new is None or failure is not None:
                    why = "timed out" if failure is None else f"{type(failure).__name__}: {failure}"
                    reason = self._scrub(f"publishing the replaced camera failed: {why}")
                    log.warning(
                        "attempt %d: %s; leaving the room to reconnect", self.attempt, reason
                    )
                    self._room_failed(reason)
                    return
                self._published = new
                try:
                    await room.local_participant.unpublish_track(current.sid)
                except Exception as exc:  # the new camera is published: say so, go on
                    log.warning(
                        "attempt %d: unpublishing the old camera failed: %r", self.attempt, exc
                    )
                await self._close_sink(current)
                self._note("camera_replaced")
            self._swapped.set()
            self._swapped = anyio.Event()

    async def _close_sink(self, published: _Published) -> None:
        if published.sink is not None:
            self._camera.detach(published.sink)
            with anyio.CancelScope(shield=True):
                await published.sink.aclose()

    async def _publish_audio(self, room: rtc.Room, feed: AudioFeed) -> None:
        # The session is usable without it: a failure is logged, not reported.
        try:
            self._audio_sink = await publish_microphone(room, feed)
        except Exception as exc:
            reason = self._scrub(f"{type(exc).__name__}: {exc}")
            log.warning("attempt %d: the microphone was not published: %s", self.attempt, reason)
            return
        self._note("audio_published")

    async def _read_video(self, track: rtc.RemoteVideoTrack) -> None:
        await read_video(
            track,
            lambda frame: self._on_frame(self.attempt, frame),
            capacity=self._options.output_buffer,
        )

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

    async def _leave(self, room: rtc.Room) -> None:
        self._leaving = True
        published = self._published
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._options.disconnect_timeout):
            if published is not None and published.sink is not None:
                self._camera.detach(published.sink)
            try:
                await room.disconnect()
                self.disconnected_cleanly = True
            except Exception as exc:  # cleanup must not raise; say what went wrong
                log.warning("attempt %d: room disconnect failed: %r", self.attempt, exc)
            if published is not None:
                await self._close_sink(published)  # a user's track is theirs to stop
            if self._audio is not None and self._audio_sink is not None:
                self._audio.detach(self._audio_sink)
                await self._audio_sink.aclose()
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
        if isinstance(track, rtc.RemoteVideoTrack | rtc.RemoteAudioTrack):
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
        self._room_failed(reason_name(reason))

    def _room_failed(self, reason: str) -> None:
        """Report the room lost (the engine retries) and leave it."""
        self._report_terminal(RoomDisconnected(self.attempt, self._scrub(reason)))
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
        return redact(text, self._token)
