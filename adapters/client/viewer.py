"""Viewer mode: join a running session's LiveKit room subscribe-only and receive
the model's output video, as the JS ``subscribe`` client and Python
``SubscribeClient`` do.

``async with watch_room(livekit_url, token) as viewer`` takes the credentials a
watch-stream endpoint answers (``{livekit_url, token, room_name}``; the token's
grant may subscribe, not publish), joins with the real ``livekit.rtc.Room`` and
decodes every video track of the model participant (identity
``inference-server…``) into :meth:`Viewer.frames`. Connection changes are
:class:`ViewerStateChanged` events. The connect is shielded (``Room.connect`` is
not cancellation-safe, see :mod:`.room_transport`), and leaving the ``async
with`` by any path, cancellation included, ends in ``room.disconnect()``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
from livekit import rtc

from leanjoin.engine.client.outputs import ConnectionState

from .audio_sources import AudioFrame
from .errors import InvalidArgument, WatchFailed
from .fanout import Fanout
from .files import watch_credentials
from .models import STREAM_PATH
from .room_audio import AUDIO_BUFFER, read_audio
from .room_transport import MediaOptions, connect_shielded, read_video, reason_name
from .video_sources import Frame

log = logging.getLogger(__name__)

# Whose tracks are the model's output: the JS client's inference-server prefix.
MODEL_IDENTITY_PREFIX: Final = "inference-server"
EVENT_BACKLOG: Final = 1_000
_URL_SCHEMES: Final = ("ws://", "wss://", "http://", "https://")

_LIVEKIT_STATES: Final[dict[int, ConnectionState]] = {
    rtc.ConnectionState.CONN_CONNECTED: ConnectionState.CONNECTED,
    rtc.ConnectionState.CONN_RECONNECTING: ConnectionState.RECONNECTING,
    rtc.ConnectionState.CONN_DISCONNECTED: ConnectionState.DISCONNECTED,
}


@attrs.frozen
class ViewerStateChanged:
    """The viewer's connection changed: connecting, connected, reconnecting or
    disconnected (never generating: a viewer has no session of its own).
    ``reason`` says why it disconnected (LiveKit's reason, lower case:
    ``room_deleted`` when the session ended, ``client_initiated`` when the
    viewer left); None otherwise."""

    state: ConnectionState
    previous: ConnectionState
    reason: str | None = None


ViewerEventCallback = Callable[[ViewerStateChanged], object]


class Viewer:
    """A viewer joined to a session's room. Made by :func:`watch_room`, not directly."""

    def __init__(
        self,
        livekit_url: str,
        token: str,
        *,
        room_name: str | None,
        media: MediaOptions,
        model_identity_prefix: str,
        on_event: ViewerEventCallback | None,
    ) -> None:
        self._url = livekit_url
        self.__token = token
        self._room_name = room_name
        self._media = media
        self._model_prefix = model_identity_prefix
        self._on_event_callback = on_event
        self._room = rtc.Room()
        self._room.on("connection_state_changed", self._on_connection_state)
        self._room.on("disconnected", self._on_disconnected)
        self._room.on("track_subscribed", self._on_track_subscribed)
        self._frames: Fanout[Frame] = Fanout(maxlen=media.output_buffer, backlog=1)
        self._audio: Fanout[AudioFrame] = Fanout(maxlen=AUDIO_BUFFER)
        self._events: Fanout[ViewerStateChanged] = Fanout(maxlen=None, backlog=EVENT_BACKLOG)
        self._state = ConnectionState.DISCONNECTED
        self._disconnect_reason: str | None = None
        self._closed = anyio.Event()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._reading: set[str] = set()
        self._leaving = False
        self.frame_count = 0
        self.disconnected_cleanly = False

    def __repr__(self) -> str:
        return f"Viewer(state={self._state.value}, room_name={self._room_name!r})"

    # ---- what the viewer is ---------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def room_name(self) -> str | None:
        """The room watched (the server's name for it, once joined)."""
        return self._room_name

    @property
    def disconnect_reason(self) -> str | None:
        """Why the room was left, once it was (see :class:`ViewerStateChanged`)."""
        return self._disconnect_reason

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Return once the room is gone (the session ended, or the viewer left)."""
        await self._closed.wait()

    def frames(self) -> AsyncIterator[Frame]:
        """The model's output video as HxWx3 uint8 RGB arrays, as the session's own
        ``frames()``; a slow reader skips frames. Ends when the room is gone."""
        return self._frames.subscribe()

    def audio_frames(self) -> AsyncIterator[AudioFrame]:
        """The model's audio, as the session's own ``audio_frames()`` (10 ms
        chunks of 48 kHz mono, from the time of the call), once the model
        publishes some. Ends when the room is gone."""
        return self._audio.subscribe()

    def events(self) -> AsyncIterator[ViewerStateChanged]:
        """Every state change in order; the first iterator also gets those raised
        before it started (the connect's). Ends when the room is gone."""
        return self._events.subscribe()

    # ---- lifecycle (used by watch_room) -----------------------------------------------

    async def _join(self, task_group: anyio.abc.TaskGroup) -> None:
        self._task_group = task_group
        self._set_state(ConnectionState.CONNECTING)
        failure = await connect_shielded(
            self._room, self._url, self.__token, self._media.connect_timeout, "viewer"
        )
        if failure is not None:
            raise WatchFailed(f"could not join the room as a viewer: {failure}")
        self._room_name = self._room.name or self._room_name
        if self.closed:
            raise WatchFailed(
                f"the room was gone as soon as it was joined ({self._disconnect_reason})"
            )
        self._set_state(ConnectionState.CONNECTED)

    async def _leave(self) -> None:
        """Disconnect the room (shielded, bounded), whatever happened before."""
        self._leaving = True
        if self._task_group is not None:
            # Readers end before their room: a stream opened on a track the
            # disconnect already released fails in the native client.
            self._task_group.cancel_scope.cancel()
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._media.disconnect_timeout):
            try:
                await self._room.disconnect()
                self.disconnected_cleanly = True
            except Exception as exc:  # cleanup must not raise; say what went wrong
                log.warning("viewer: room disconnect failed: %s", type(exc).__name__)
        self._gone("client_initiated")

    # ---- room callbacks (the room's listener task) --------------------------------------

    def _on_connection_state(self, state: Any) -> None:
        mapped = _LIVEKIT_STATES.get(state)
        if mapped is not None and mapped is not ConnectionState.DISCONNECTED and not self.closed:
            self._set_state(mapped)

    def _on_disconnected(self, reason: Any) -> None:
        self._gone(reason_name(reason))

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        _publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        tg = self._task_group
        if (
            tg is None
            or self._leaving
            or not isinstance(track, rtc.RemoteVideoTrack | rtc.RemoteAudioTrack)
            or not participant.identity.startswith(self._model_prefix)
            or track.sid in self._reading
        ):
            return
        self._reading.add(track.sid)
        tg.start_soon(self._read, track)

    async def _read(self, track: rtc.RemoteVideoTrack | rtc.RemoteAudioTrack) -> None:
        try:
            if isinstance(track, rtc.RemoteAudioTrack):
                await read_audio(track, self._on_audio)
            else:
                await read_video(track, self._on_frame, capacity=self._media.output_buffer)
        except Exception as exc:  # one track's end must not end the watch
            level = logging.DEBUG if self._leaving or self.closed else logging.WARNING
            log.log(level, "viewer: reading track %s failed: %s", track.sid, type(exc).__name__)

    def _on_frame(self, frame: Frame) -> None:
        if self.closed:
            return
        self.frame_count += 1
        self._frames.publish(frame)

    def _on_audio(self, frame: AudioFrame) -> None:
        if not self.closed:
            self._audio.publish(frame)

    # ---- helpers -------------------------------------------------------------------------

    def _gone(self, reason: str) -> None:
        if self.closed:
            return
        self._disconnect_reason = reason
        self._set_state(ConnectionState.DISCONNECTED, reason)
        self._closed.set()
        self._frames.close()
        self._audio.close()
        self._events.close()

    def _set_state(self, state: ConnectionState, reason: str | None = None) -> None:
        if state is self._state:
            return
        event = ViewerStateChanged(state, self._state, reason)
        self._state = state
        self._events.publish(event)
        if self._on_event_callback is not None:
            try:
                self._on_event_callback(event)
            except Exception:  # a user callback must not break the room's listener
                log.exception("viewer on_event callback raised")


@asynccontextmanager
async def watch_room(
    livekit_url: str,
    token: str,
    *,
    room_name: str | None = None,
    on_event: ViewerEventCallback | None = None,
    media: MediaOptions | None = None,
    model_identity_prefix: str = MODEL_IDENTITY_PREFIX,
) -> AsyncIterator[Viewer]:
    """Join a session's room as a viewer; yields the :class:`Viewer` once joined.

    ``livekit_url`` and ``token`` are the room's credentials for a viewer (a
    subscribe-only grant; ``room_name``, if known, names the room until the server
    does). ``media`` bounds the connect and the disconnect and sizes the frame
    buffer (its publishing fields are unused). ``on_event`` gets every
    :class:`ViewerStateChanged` in the room's listener task: keep it quick.
    Raises :class:`InvalidArgument` for bad arguments, :class:`WatchFailed` when
    the room cannot be joined; no error quotes the token.
    """
    if not isinstance(livekit_url, str) or not livekit_url.startswith(_URL_SCHEMES):
        raise InvalidArgument("livekit_url must be a ws://, wss://, http:// or https:// URL")
    if not isinstance(token, str) or not token.strip():
        raise InvalidArgument("token must be a non-empty LiveKit access token")
    viewer = Viewer(
        livekit_url,
        token.strip(),
        room_name=room_name,
        media=media if media is not None else MediaOptions(),
        model_identity_prefix=model_identity_prefix,
        on_event=on_event,
    )
    # As connect(): the caller's exception stays out of the task group's
    # ExceptionGroup and is re-raised as itself once the room is left.
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        try:
            await viewer._join(tg)
            yield viewer
        except Exception as exc:
            failure = exc
        finally:
            await viewer._leave()
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure


def watch_base_url(url: str | None) -> str | None:
    """Where ``/watch-stream`` is asked, given what ``connect`` was given: a
    realtime base URL (``ws[s]://host[/prefix]``) over HTTP(S), as the Python
    SDK derives it; a stream endpoint (``.../v1/stream``) is its base URL
    first; an ``http[s]://`` base URL is used as it is; None means the
    service's (``watch_credentials``' default). Errors never quote the URL
    (it may carry a key)."""
    if url is None:
        return None
    parts = urlsplit(url.strip())
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None:
        return url
    if not parts.netloc:
        raise InvalidArgument("the URL has no host: pass ws[s]://host[/prefix] or http[s]://host")
    path = parts.path.rstrip("/")
    if path.endswith(STREAM_PATH):  # what connect() recognises as a stream endpoint
        path = path[: -len(STREAM_PATH)]
    return f"{scheme}://{parts.netloc}{path}"


@asynccontextmanager
async def watch(
    subscribe_token: str,
    url: str | None = None,
    *,
    api_key: str | None = None,
    integration: str | None = None,
    on_event: ViewerEventCallback | None = None,
    media: MediaOptions | None = None,
) -> AsyncIterator[Viewer]:
    """Watch a running session with its subscribe token (``Session.subscribe_token``),
    as the JS client's ``subscribe``: the room's viewer credentials are asked of
    ``/watch-stream`` (below ``url``'s host: the stream URL ``connect`` used, or
    an HTTP base URL; default the service's), then the room is joined as in
    :func:`watch_room`. ``api_key`` as in ``connect`` (or the environment).
    Raises :class:`InvalidArgument`, ``HttpApiError`` (the server refused:
    unknown room, bad key) or :class:`WatchFailed`; none quotes a secret."""
    credentials = await watch_credentials(
        subscribe_token, base_url=watch_base_url(url), api_key=api_key, integration=integration
    )
    async with watch_room(
        credentials.livekit_url,
        credentials.token,
        room_name=credentials.room_name,
        on_event=on_event,
        media=media,
    ) as viewer:
        yield viewer
