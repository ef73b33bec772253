"""Outputs of the client engine: effects for the adapters, events for the user.

Every output names the attempt it belongs to. Effects ask the I/O layer to do
something; events tell the user what happened. Secrets (the socket URL's api
key, LiveKit tokens, frame payloads) are hidden from every ``repr``.
"""

from __future__ import annotations

import enum
from typing import TypeAlias
from urllib.parse import parse_qsl, urlsplit

import attrs

from .inputs import AttemptId, RequestId, SendId, TrackKind


class ConnectionState(enum.Enum):
    """What the user sees."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    GENERATING = "generating"
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"


class FramePurpose(enum.Enum):
    JOIN = "join"
    INITIAL_STATE = "initial_state"
    REQUEST = "request"


class ErrorKind(enum.Enum):
    """Why something failed. The spec (specs/protocol.md) defines each."""

    SOCKET_OPEN_FAILED = "socket_open_failed"
    SOCKET_OPEN_TIMEOUT = "socket_open_timeout"
    SOCKET_CLOSED = "socket_closed"
    SEND_FAILED = "send_failed"
    SERVER_ERROR = "server_error"
    ROOM_INFO_TIMEOUT = "room_info_timeout"
    QUEUE_TIMEOUT = "queue_timeout"
    MEDIA_FAILED = "media_failed"
    MEDIA_TIMEOUT = "media_timeout"
    ROOM_LOST = "room_lost"
    CONNECT_TIMEOUT = "connect_timeout"
    INITIAL_STATE_REJECTED = "initial_state_rejected"
    INITIAL_STATE_TIMEOUT = "initial_state_timeout"
    REQUEST_REJECTED = "request_rejected"
    REQUEST_TIMEOUT = "request_timeout"
    CONNECTION_LOST = "connection_lost"
    DISCONNECTED = "disconnected"
    MALFORMED_FRAME = "malformed_frame"
    UNEXPECTED_FRAME = "unexpected_frame"


def _redacted(_value: object) -> str:
    return "<redacted>"


def _size(value: str) -> str:
    return f"<{len(value)} chars>"


# ---- effects ----------------------------------------------------------------------


@attrs.frozen
class OpenSocket:
    attempt: AttemptId
    url: str = attrs.field(repr=False)
    redacted_url: str

    def scrub(self, text: str) -> str:
        """``text`` (a transport's error, a close reason) with this socket's
        URL and api key masked: every transport reports through this."""
        text = text.replace(self.url, self.redacted_url)
        for key, value in parse_qsl(urlsplit(self.url).query):
            if key == "api_key" and value:
                text = text.replace(value, "<redacted>")
        return text


@attrs.frozen
class SendFrame:
    attempt: AttemptId
    send: SendId
    purpose: FramePurpose
    frame: str = attrs.field(repr=_size)


@attrs.frozen
class CloseSocket:
    attempt: AttemptId
    code: int
    reason: str


@attrs.frozen
class ConnectRoom:
    attempt: AttemptId
    livekit_url: str
    token: str = attrs.field(repr=_redacted)


@attrs.frozen
class PublishTracks:
    attempt: AttemptId


@attrs.frozen
class DisconnectRoom:
    attempt: AttemptId


Effect: TypeAlias = (
    OpenSocket | SendFrame | CloseSocket | ConnectRoom | PublishTracks | DisconnectRoom
)


# ---- events -----------------------------------------------------------------------


@attrs.frozen
class StateChanged:
    attempt: AttemptId
    state: ConnectionState
    previous: ConnectionState


@attrs.frozen
class QueuePositionChanged:
    attempt: AttemptId
    position: int
    queue_size: int


@attrs.frozen
class SessionStarted:
    """The session is usable: room joined and camera published."""

    attempt: AttemptId
    session_id: str
    room_name: str
    subscribe_token: str


@attrs.frozen
class RemoteStream:
    """A track of the model's participant (``inference-server-…``)."""

    attempt: AttemptId
    participant: str
    track_sid: str
    kind: TrackKind


@attrs.frozen
class InitialStateAcked:
    attempt: AttemptId


@attrs.frozen
class GenerationTicked:
    attempt: AttemptId
    seconds: float


@attrs.frozen
class GenerationStopped:
    """Generation ended; ``seconds`` is None when the server did not say."""

    attempt: AttemptId
    seconds: float | None
    reason: str


@attrs.frozen
class RequestAcked:
    attempt: AttemptId
    request: RequestId


@attrs.frozen
class RequestFailed:
    """A runtime request's outcome; not an error event."""

    attempt: AttemptId
    request: RequestId
    kind: ErrorKind
    message: str


@attrs.frozen
class RetryScheduled:
    """An attempt failed and another will start after ``delay`` seconds."""

    attempt: AttemptId
    retry: int
    delay: float
    kind: ErrorKind
    message: str


@attrs.frozen
class ErrorOccurred:
    """One per failure. ``fatal`` errors end the session (state disconnected)."""

    attempt: AttemptId
    kind: ErrorKind
    message: str
    fatal: bool


Event: TypeAlias = (
    StateChanged
    | QueuePositionChanged
    | SessionStarted
    | RemoteStream
    | InitialStateAcked
    | GenerationTicked
    | GenerationStopped
    | RequestAcked
    | RequestFailed
    | RetryScheduled
    | ErrorOccurred
)

Output: TypeAlias = Effect | Event
EFFECT_TYPES: tuple[type, ...] = (
    OpenSocket,
    SendFrame,
    CloseSocket,
    ConnectRoom,
    PublishTracks,
    DisconnectRoom,
)
