"""Every message of the lean-join signaling protocol, as frozen attrs classes.

One class per JSON ``type`` and direction. The field layout mirrors the wire
exactly; ``specs/messages.schema.json`` is the normative JSON Schema and
``leanjoin.engine.codec`` converts between these classes and JSON text.

Optional fields that the wire distinguishes as "absent" versus ``null`` use
the :data:`ABSENT` sentinel; plain ``None`` always means JSON ``null``.
Secret-bearing fields (image data, LiveKit tokens) are hidden from ``repr``.
"""

from __future__ import annotations

import enum
from typing import ClassVar, Final, Literal, TypeAlias

import attrs


class _Absent(enum.Enum):
    """A field left out of the JSON object (as opposed to sent as ``null``)."""

    ABSENT = "ABSENT"

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Final = _Absent.ABSENT
Absent: TypeAlias = Literal[_Absent.ABSENT]


def _image_repr(value: str | Absent | None) -> str:
    # Image data is user content (and often megabytes): show only its size.
    if isinstance(value, str):
        return f"<{len(value)} base64 chars>"
    return repr(value)


def _secret_repr(value: object) -> str:
    return "<redacted>" if value else repr(value)


# --------------------------------------------------------------------------
# Client -> server
# --------------------------------------------------------------------------


@attrs.frozen
class ClientCapabilities:
    """``client_capabilities`` of a ``livekit_join``."""

    frame_timing: bool | Absent = ABSENT


@attrs.frozen
class InitialStateBody:
    """The nested ``initial_state`` of the legacy bundled join (tolerated, not sent)."""

    image_data: str | Absent | None = attrs.field(default=ABSENT, repr=_image_repr)
    prompt: str | Absent | None = ABSENT
    enhance_prompt: bool | Absent = ABSENT


@attrs.frozen
class LiveKitJoin:
    """``livekit_join``.

    The lean join carries ``passthrough`` (a bool). ``passthrough=ABSENT`` is the
    legacy bare join; ``initial_state`` set is the legacy bundled join.
    """

    type: ClassVar[Literal["livekit_join"]] = "livekit_join"
    passthrough: bool | Absent = ABSENT
    client_capabilities: ClientCapabilities | Absent = ABSENT
    initial_state: InitialStateBody | Absent = ABSENT

    @property
    def is_lean(self) -> bool:
        return isinstance(self.passthrough, bool) and self.initial_state is ABSENT


@attrs.frozen
class SetImage:
    """``set_image``: a reference image as base64 (``image_data``) or an uploaded
    file id (``image_ref``); ``image_data=None`` with ``prompt=None`` is the null
    bootstrap of a passthrough session."""

    type: ClassVar[Literal["set_image"]] = "set_image"
    image_data: str | Absent | None = attrs.field(default=None, repr=_image_repr)
    image_ref: str | Absent = ABSENT
    prompt: str | Absent | None = ABSENT
    enhance_prompt: bool | Absent = ABSENT

    def __attrs_post_init__(self) -> None:
        if self.image_ref is not ABSENT and self.image_data is not ABSENT:
            raise ValueError("set_image takes image_data or image_ref, not both")
        if self.image_ref is ABSENT and self.image_data is ABSENT:
            raise ValueError("set_image needs image_data (may be null) or image_ref")

    @property
    def is_null_bootstrap(self) -> bool:
        return self.image_data is None and self.image_ref is ABSENT and not self.prompt


@attrs.frozen
class Prompt:
    """``prompt``: a text prompt; ``enhance_prompt`` defaults to true on the wire."""

    type: ClassVar[Literal["prompt"]] = "prompt"
    prompt: str
    enhance_prompt: bool = True


ClientMessage: TypeAlias = LiveKitJoin | SetImage | Prompt


# --------------------------------------------------------------------------
# Server -> client
# --------------------------------------------------------------------------


@attrs.frozen
class QueuePosition:
    """``queue_position``: waiting for capacity (legacy field name ``queue_position``
    is accepted for ``position`` on parse)."""

    type: ClassVar[Literal["queue_position"]] = "queue_position"
    position: int
    queue_size: int


@attrs.frozen
class LiveKitRoomInfo:
    """``livekit_room_info``: the room credentials, the handshake's goal."""

    type: ClassVar[Literal["livekit_room_info"]] = "livekit_room_info"
    livekit_url: str
    token: str = attrs.field(repr=_secret_repr)
    room_name: str
    session_id: str


@attrs.frozen
class SetImageAck:
    """``set_image_ack``: answer to the last ``set_image``."""

    type: ClassVar[Literal["set_image_ack"]] = "set_image_ack"
    success: bool
    error: str | Absent | None = ABSENT


@attrs.frozen
class PromptAck:
    """``prompt_ack``: answer to a ``prompt``, matched by its text."""

    type: ClassVar[Literal["prompt_ack"]] = "prompt_ack"
    prompt: str
    success: bool
    error: str | Absent | None = ABSENT


@attrs.frozen
class Error:
    """``error``: a server-side failure."""

    type: ClassVar[Literal["error"]] = "error"
    error: str


@attrs.frozen
class GenerationStarted:
    type: ClassVar[Literal["generation_started"]] = "generation_started"


@attrs.frozen
class GenerationTick:
    """``generation_tick``: billing tick, about once a second."""

    type: ClassVar[Literal["generation_tick"]] = "generation_tick"
    seconds: float


@attrs.frozen
class GenerationEnded:
    """``generation_ended``; ``seconds`` may be absent (spec §2.3)."""

    type: ClassVar[Literal["generation_ended"]] = "generation_ended"
    seconds: float | Absent
    reason: str


@attrs.frozen
class LegacySessionId:
    """Legacy ``session_id`` frame; LiveKit-mode clients ignore it."""

    type: ClassVar[Literal["session_id"]] = "session_id"
    session_id: str | Absent = ABSENT


@attrs.frozen
class LegacyReady:
    """Legacy ``ready`` frame; ignored by LiveKit-mode clients."""

    type: ClassVar[Literal["ready"]] = "ready"


@attrs.frozen
class LegacyStatus:
    """Legacy ``status`` frame; ignored by LiveKit-mode clients."""

    type: ClassVar[Literal["status"]] = "status"
    status: str | Absent = ABSENT


ServerMessage: TypeAlias = (
    QueuePosition
    | LiveKitRoomInfo
    | SetImageAck
    | PromptAck
    | Error
    | GenerationStarted
    | GenerationTick
    | GenerationEnded
    | LegacySessionId
    | LegacyReady
    | LegacyStatus
)

LEGACY_SERVER_TYPES: Final = frozenset({"session_id", "ready", "status"})
