"""Rooms of the LiveKit double: the model participant, the frame transform, members.

A member that may publish gets the model's output of its own camera; a viewer
(a subscribe-only grant) gets every output frame of the room, whoever's camera
it came from (:meth:`RoomHandle.add_viewer`).

The model participant publishes one video track; once a client publishes a
microphone it also publishes an audio track (the client's audio echoed back).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt
from av import AudioFrame
from livekit.protocol import models

log = logging.getLogger(__name__)

Frame = npt.NDArray[np.uint8]
Transform = Callable[[Frame], Frame | None]

MODEL_TRACK_NAME = "echo"
MODEL_AUDIO_TRACK_NAME = "echo-audio"


def new_sid(prefix: str) -> str:
    """A LiveKit-style id; the client checks only the prefix (``PA_``, ``TR_``, ``RM_``)."""
    return f"{prefix}_{secrets.token_hex(6)}"


def leave_reason(reason: str) -> models.DisconnectReason:
    """The protocol disconnect reason named by ``reason``; room loss for any other text."""
    name = reason.upper()
    if name in models.DisconnectReason.keys():  # noqa: SIM118  (an enum wrapper, not a dict)
        return cast(models.DisconnectReason, models.DisconnectReason.Value(name))
    return models.ROOM_DELETED


QUALITIES = ("excellent", "good", "poor", "lost")


def connection_quality(name: str) -> models.ConnectionQuality:
    """The protocol connection quality called ``name`` (one of :data:`QUALITIES`)."""
    if name.lower() not in QUALITIES:
        raise ValueError(f"unknown connection quality {name!r}: one of {', '.join(QUALITIES)}")
    return cast(models.ConnectionQuality, models.ConnectionQuality.Value(name.upper()))


class Member(Protocol):
    """A connected client as the room sees it."""

    async def leave(self, reason: models.DisconnectReason, why: str) -> None: ...

    async def send_connection_quality(self, quality: models.ConnectionQuality) -> None: ...

    async def wait_closed(self) -> None: ...


class AudioSink(Protocol):
    """A viewer's model audio track."""

    def push(self, frame: AudioFrame) -> None: ...


def _copy(frame: AudioFrame) -> AudioFrame:
    copy = AudioFrame.from_ndarray(
        frame.to_ndarray(), format=frame.format.name, layout=frame.layout.name
    )
    copy.sample_rate = frame.sample_rate
    return copy


class ViewerSink(Protocol):
    """Where a viewer's copy of the model output goes (its subscriber track)."""

    def push(self, rgb: Frame) -> None: ...


class RoomListener(Protocol):
    """Told, synchronously, of a room's first client publication and first decoded
    client frame: synchronously, so a model configured on the first frame's news
    already styles that frame instead of the next one (a frame interval sooner)."""

    def client_publishing(self) -> None: ...

    def client_video(self) -> None: ...


class RoomHandle:
    """One room: who is in it, and what the model does to client video."""

    def __init__(self, name: str, model_identity: str) -> None:
        self.name = name
        self.sid = new_sid("RM")
        self.model_identity = model_identity
        self.model_participant_sid = new_sid("PA")
        self.model_track_sid = new_sid("TR")
        self.model_audio_track_sid = new_sid("TR")
        self._created = int(time.time())
        self._transform: Transform | None = None
        self._frames = 0
        self._audio_frames = 0
        self._client_track_kinds: list[str] = []
        self._first_frame = asyncio.Event()
        self._publishing = asyncio.Event()
        self._members: set[Member] = set()
        self._viewers: set[ViewerSink] = set()
        # Viewers hear the model's audio too, once it publishes some (a client's
        # microphone echoed): told when it starts, then fed every chunk.
        self.model_audio = False
        self._audio_viewers: set[AudioSink] = set()
        self._audio_started: set[Callable[[], None]] = set()
        # The refuse_media fault for this room only: the double answers its joins with 503.
        self.refuses_joins = False
        self.listener: RoomListener | None = None
        # What the media server says of each client's connection (sent once it publishes).
        self.connection_quality: models.ConnectionQuality = models.EXCELLENT

    def __repr__(self) -> str:
        return f"RoomHandle(name={self.name!r}, participants={len(self._members)})"

    def set_transform(self, transform: Transform | None) -> None:
        """Set what the model publishes per client frame (None: publish nothing)."""
        self._transform = transform

    async def wait_client_video(self) -> None:
        """Return once a first client video frame was decoded."""
        await self._first_frame.wait()

    async def wait_client_publishing(self) -> None:
        """Return once a client asked to publish a track (its ``add_track`` arrived;
        the answer may still be held back by the double's ``publish_delay``)."""
        await self._publishing.wait()

    @property
    def client_video_frames(self) -> int:
        return self._frames

    @property
    def client_audio_frames(self) -> int:
        """Audio frames decoded from the clients' microphone tracks."""
        return self._audio_frames

    @property
    def client_track_kinds(self) -> tuple[str, ...]:
        """The kind ("video", "audio") of every track a client asked to publish, in order."""
        return tuple(self._client_track_kinds)

    @property
    def participants(self) -> int:
        """Clients in the room (joined or joining), viewers included."""
        return len(self._members)

    @property
    def viewers(self) -> int:
        """Subscribe-only members receiving the room's model output."""
        return len(self._viewers)

    async def disconnect_participants(self, reason: str = "fault") -> None:
        """Server-initiated leave and close of every client, as when a room is lost."""
        code = leave_reason(reason)
        members = list(self._members)
        if members:
            log.info(
                "room %r: disconnecting %d participant(s): %s", self.name, len(members), reason
            )
        await asyncio.gather(*(member.leave(code, reason) for member in members))
        # Return only once they are gone, so `participants` is 0 right after.
        await asyncio.gather(*(member.wait_closed() for member in members))

    async def set_connection_quality(self, quality: str) -> None:
        """Judge every client's connection ``quality`` (excellent, good, poor,
        lost) and tell each one now, as a LiveKit server's quality updates do;
        clients that publish later are told on their ``track_published``."""
        self.connection_quality = connection_quality(quality)
        members = list(self._members)
        await asyncio.gather(*(m.send_connection_quality(self.connection_quality) for m in members))

    async def fail_media(self) -> None:
        """The media server can no longer carry this room's media: every client is
        told to leave with reason MEDIA_FAILURE (no reconnect), as a LiveKit server
        does, and its socket is closed. Returns once they are gone."""
        await self.disconnect_participants("media_failure")

    # Called by the signal sessions, not part of the public API.

    def on_client_frame(self, frame: Frame) -> Frame | None:
        """Count a decoded client frame and return the model's output for it (the
        viewers get their copy here; the publishing member's own track, from the caller)."""
        self._frames += 1
        if not self._first_frame.is_set():
            self._first_frame.set()
            if self.listener is not None:
                self.listener.client_video()  # may set the transform used just below
        transform = self._transform
        if transform is None:
            return None
        out = transform(frame)
        if out is not None and (out.shape != frame.shape or out.dtype != np.uint8):
            log.warning("room %r: transform output is not HxWx3 uint8; frame dropped", self.name)
            return None
        if out is not None:
            for viewer in self._viewers:
                viewer.push(out)
        return out

    def on_client_audio(self, frame: AudioFrame | None = None) -> None:
        """Count a decoded client audio frame (the echo needs no transform) and
        give the viewers who hear the model a copy of it."""
        self._audio_frames += 1
        if frame is not None:
            for sink in self._audio_viewers:
                sink.push(_copy(frame))  # each track restamps its own frames

    def on_model_audio_started(self) -> None:
        """The model now publishes audio: every viewer is offered it."""
        if not self.model_audio:
            self.model_audio = True
            for started in tuple(self._audio_started):
                started()

    def watch_model_audio(self, started: Callable[[], None]) -> None:
        """Call ``started`` when the model starts publishing audio."""
        self._audio_started.add(started)

    def add_audio_viewer(self, sink: AudioSink) -> None:
        self._audio_viewers.add(sink)

    def remove_audio_viewer(self, sink: AudioSink, started: Callable[[], None]) -> None:
        self._audio_viewers.discard(sink)
        self._audio_started.discard(started)

    def on_client_publishing(self, kind: str = "video") -> None:
        """A client asked to publish a track of ``kind``."""
        self._client_track_kinds.append(kind)
        if not self._publishing.is_set():
            self._publishing.set()
            if self.listener is not None:
                self.listener.client_publishing()

    def attach(self, member: Member) -> None:
        self._members.add(member)

    def detach(self, member: Member) -> None:
        self._members.discard(member)

    def add_viewer(self, sink: ViewerSink) -> None:
        self._viewers.add(sink)

    def remove_viewer(self, sink: ViewerSink) -> None:
        self._viewers.discard(sink)

    def model_participant(self, *, audio: bool = False) -> models.ParticipantInfo:
        """The model participant with its video track, as announced on join; with
        ``audio``, as updated once it publishes its audio track too."""
        tracks = [
            models.TrackInfo(
                sid=self.model_track_sid,
                type=models.VIDEO,
                name=MODEL_TRACK_NAME,
                source=models.CAMERA,
                mime_type="video/VP8",
            )
        ]
        if audio:
            tracks.append(
                models.TrackInfo(
                    sid=self.model_audio_track_sid,
                    type=models.AUDIO,
                    name=MODEL_AUDIO_TRACK_NAME,
                    source=models.MICROPHONE,
                    mime_type="audio/opus",
                )
            )
        return models.ParticipantInfo(
            sid=self.model_participant_sid,
            identity=self.model_identity,
            name=self.model_identity,
            state=models.ParticipantInfo.ACTIVE,
            tracks=tracks,
            joined_at=self._created,
            version=1 if audio else 0,  # an update must be newer than the join's info
            is_publisher=True,
            permission=models.ParticipantPermission(
                can_publish=True, can_subscribe=True, can_publish_data=True
            ),
        )

    def room_info(self) -> models.Room:
        return models.Room(
            sid=self.sid,
            name=self.name,
            creation_time=self._created,
            num_participants=len(self._members) + 1,
            num_publishers=1,
        )
