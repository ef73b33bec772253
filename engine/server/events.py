"""Inputs and outputs of the server engine (one engine object per connection).

Inputs are what the socket, the admission queue and the media side report;
outputs are effects for the adapter and events for its log. The adapter owns
every resource (socket, room, decoded images); the engine refers to a
reference image only by the number of the request that carried it.
Secrets (the api key, LiveKit tokens, frame and image payloads) are hidden
from every ``repr``.
"""

from __future__ import annotations

import enum
from typing import NewType, TypeAlias

import attrs

# A connection's requests are numbered in arrival order, which is the order
# their acks leave in (the client's own RequestId never reaches the server).
RequestNumber = NewType("RequestNumber", int)


class SessionPhase(enum.Enum):
    NEW = "new"  # socket accepted, not yet authenticated
    AWAITING_JOIN = "awaiting_join"
    JOINED = "joined"  # livekit_join accepted; a slot was requested
    QUEUED = "queued"  # no free slot: queue_position frames flow
    ADMITTED = "admitted"  # slot granted; the room is being prepared
    IN_ROOM = "in_room"  # livekit_room_info sent; the client joins the room
    PUBLISHING = "publishing"  # the client publishes its camera; no video yet
    STREAMING = "streaming"  # the client's video arrives; generation waits for the initial state
    GENERATING = "generating"
    CLOSED = "closed"


def _size(value: str | bytes) -> str:
    return f"<{len(value)} {'chars' if isinstance(value, str) else 'bytes'}>"


def _redacted(_value: object) -> str:
    return "<redacted>"


# ---- inputs: the signaling socket ------------------------------------------------


@attrs.frozen
class Opened:
    """The WebSocket was accepted; its query parameters."""

    api_key: str | None = attrs.field(repr=_redacted)
    model: str | None = None
    resolution: str | None = None
    user_agent: str | None = None


@attrs.frozen
class FrameIn:
    frame: str | bytes = attrs.field(repr=_size)


@attrs.frozen
class PeerClosed:
    """The socket is gone (closed by the client or lost); nothing can be sent."""

    code: int | None
    reason: str


@attrs.frozen
class Shutdown:
    """The server is stopping: end the session politely."""

    reason: str = "server shutting down"


# ---- inputs: the admission queue (engine/server/admission.py) ----------------------------


@attrs.frozen
class SlotGranted:
    pass


@attrs.frozen
class QueueMoved:
    position: int
    queue_size: int


@attrs.frozen
class QueueFull:
    reason: str


AdmissionNotice: TypeAlias = SlotGranted | QueueMoved | QueueFull


# ---- inputs: room and model (answers to effects) ------------------------------------


@attrs.frozen
class RoomReady:
    """Answer to :class:`CreateRoom`: a room and a client token for it."""

    livekit_url: str
    token: str = attrs.field(repr=_redacted)
    room_name: str
    session_id: str


@attrs.frozen
class RoomFailed:
    reason: str


@attrs.frozen
class ClientPublishing:
    """The media server got the client's request to publish its camera (the
    answer may still be on its way: the client is publishing)."""


@attrs.frozen
class ClientVideoArrived:
    """The client's first video frame reached the model."""


@attrs.frozen
class ReferenceDecoded:
    """Answer to :class:`DecodeReference`: the adapter holds the decoded image."""

    request: RequestNumber


@attrs.frozen
class ReferenceUndecodable:
    request: RequestNumber
    reason: str


@attrs.frozen
class ReferenceMissing:
    """Answer to :class:`LoadReference`: no stored file has that id (never
    uploaded, deleted or expired)."""

    request: RequestNumber
    file_id: str


ServerInput: TypeAlias = (
    Opened
    | FrameIn
    | PeerClosed
    | Shutdown
    | SlotGranted
    | QueueMoved
    | QueueFull
    | RoomReady
    | RoomFailed
    | ClientPublishing
    | ClientVideoArrived
    | ReferenceDecoded
    | ReferenceUndecodable
    | ReferenceMissing
)


# ---- effects ----------------------------------------------------------------------------


@attrs.frozen
class FrameOut:
    """Write one text frame; ``kind`` is its message type (safe to log)."""

    kind: str
    frame: str = attrs.field(repr=_size)


@attrs.frozen
class CloseConnection:
    """Close the socket after every frame sent before it."""

    code: int
    reason: str


@attrs.frozen
class RequestSlot:
    """Ask the admission queue for a slot; it answers with notices."""


@attrs.frozen
class ReleaseSlot:
    """Give back the slot or the queue place requested earlier."""


@attrs.frozen
class CreateRoom:
    """Prepare a room and mint the client's token; answer RoomReady or RoomFailed."""


@attrs.frozen
class DecodeReference:
    """Decode an image; answer ReferenceDecoded or ReferenceUndecodable."""

    request: RequestNumber
    data: bytes = attrs.field(repr=_size)


@attrs.frozen
class LoadReference:
    """Load the uploaded file ``file_id`` (a ``set_image``'s ``image_ref``) and
    decode it; answer ReferenceDecoded, ReferenceUndecodable or ReferenceMissing."""

    request: RequestNumber
    file_id: str


@attrs.frozen
class ConfigureModel:
    """Make the model produce output from this state (also on every change)."""

    prompt: str | None
    reference: RequestNumber | None
    passthrough: bool


@attrs.frozen
class StopModel:
    pass


@attrs.frozen
class FailMedia:
    """The ``media_failure_at`` fault: make the media server end the client's media
    in this session's room (``leave`` with reason MEDIA_FAILURE, no reconnect).
    Performed after every frame output before it has been sent."""


ServerEffect: TypeAlias = (
    FrameOut
    | CloseConnection
    | RequestSlot
    | ReleaseSlot
    | CreateRoom
    | DecodeReference
    | LoadReference
    | ConfigureModel
    | StopModel
    | FailMedia
)


# ---- events (for the log) -------------------------------------------------------------


@attrs.frozen
class PhaseChanged:
    """One per phase a session enters; ``detail`` is safe to log."""

    phase: SessionPhase
    previous: SessionPhase
    detail: str


@attrs.frozen
class ProblemNoted:
    """A peer frame or request was refused; the client was told (an error
    frame or a failed ack) in the same words."""

    detail: str


ServerEvent: TypeAlias = PhaseChanged | ProblemNoted
ServerOutput: TypeAlias = ServerEffect | ServerEvent
