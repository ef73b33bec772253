"""JSON text <-> message classes, for both directions.

Parsing never raises on peer input: it returns the message, an
:class:`IgnoredFrame` (a well-formed frame of a type this side does not act
on, which every client ignores), or a :class:`FrameProblem` naming what was
wrong. Problems name fields and JSON types, never field values, so a token or
image in a bad frame cannot leak into an error message.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias, TypeVar

import attrs
import pybase64

from .messages import (
    ABSENT,
    Absent,
    ClientCapabilities,
    ClientMessage,
    Error,
    GenerationEnded,
    GenerationStarted,
    GenerationTick,
    InitialStateBody,
    LegacyReady,
    LegacySessionId,
    LegacyStatus,
    LiveKitJoin,
    LiveKitRoomInfo,
    Prompt,
    PromptAck,
    QueuePosition,
    ServerMessage,
    SetImage,
    SetImageAck,
)

DEFAULT_MAX_FRAME_BYTES: Final = 1 << 20

_V = TypeVar("_V")


class ProblemKind(enum.Enum):
    BINARY_FRAME = "binary_frame"
    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    MISSING_TYPE = "missing_type"
    MISSING_FIELD = "missing_field"
    WRONG_FIELD_TYPE = "wrong_field_type"
    INVALID_VALUE = "invalid_value"


@attrs.frozen
class FrameProblem:
    """A frame this side cannot accept; ``detail`` names what was wrong."""

    kind: ProblemKind
    detail: str
    message_type: str | None = None


@attrs.frozen
class IgnoredFrame:
    """A well-formed frame of a type this side ignores (unknown or legacy)."""

    message_type: str


class _Bad(Exception):
    # Internal: unwinds a decoder to the single place that builds the problem.
    def __init__(self, kind: ProblemKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _wrong(name: str, want: str, value: object) -> _Bad:
    return _Bad(
        ProblemKind.WRONG_FIELD_TYPE,
        f"field '{name}' must be {want}, got {_json_type(value)}",
    )


def _required(obj: Mapping[str, Any], name: str) -> Any:
    if name not in obj:
        raise _Bad(ProblemKind.MISSING_FIELD, f"missing required field '{name}'")
    return obj[name]


def _str(obj: Mapping[str, Any], name: str) -> str:
    value = _required(obj, name)
    if not isinstance(value, str):
        raise _wrong(name, "a string", value)
    return value


def _bool(obj: Mapping[str, Any], name: str) -> bool:
    value = _required(obj, name)
    if not isinstance(value, bool):
        raise _wrong(name, "a boolean", value)
    return value


def _count(obj: Mapping[str, Any], name: str) -> int:
    value = _required(obj, name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema (and JavaScript) treat 3.0 as the integer 3
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(name, "an integer", value)
    if value < 0:
        raise _Bad(ProblemKind.INVALID_VALUE, f"field '{name}' must not be negative")
    return value


def _seconds(obj: Mapping[str, Any], name: str) -> float:
    value = _required(obj, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(name, "a number", value)
    if not math.isfinite(value) or value < 0:
        raise _Bad(ProblemKind.INVALID_VALUE, f"field '{name}' must be a finite number >= 0")
    return float(value)


def _opt_str(obj: Mapping[str, Any], name: str) -> str | Absent:
    if name not in obj:
        return ABSENT
    value = obj[name]
    if not isinstance(value, str):
        raise _wrong(name, "a string", value)
    return value


def _opt_nullable_str(obj: Mapping[str, Any], name: str) -> str | Absent | None:
    if name not in obj:
        return ABSENT
    value = obj[name]
    if value is not None and not isinstance(value, str):
        raise _wrong(name, "a string or null", value)
    return value


def _opt_bool(obj: Mapping[str, Any], name: str) -> bool | Absent:
    if name not in obj:
        return ABSENT
    value = obj[name]
    if not isinstance(value, bool):
        raise _wrong(name, "a boolean", value)
    return value


def _opt_object(obj: Mapping[str, Any], name: str) -> Mapping[str, Any] | Absent:
    if name not in obj:
        return ABSENT
    value = obj[name]
    if not isinstance(value, dict):
        raise _wrong(name, "an object", value)
    return value


# ---- client -> server decoders ------------------------------------------


def _livekit_join(obj: Mapping[str, Any]) -> LiveKitJoin:
    caps_obj = _opt_object(obj, "client_capabilities")
    caps: ClientCapabilities | Absent = ABSENT
    if caps_obj is not ABSENT:
        caps = ClientCapabilities(frame_timing=_opt_bool(caps_obj, "frame_timing"))
    state_obj = _opt_object(obj, "initial_state")
    state: InitialStateBody | Absent = ABSENT
    if state_obj is not ABSENT:
        state = InitialStateBody(
            image_data=_opt_nullable_str(state_obj, "image_data"),
            prompt=_opt_nullable_str(state_obj, "prompt"),
            enhance_prompt=_opt_bool(state_obj, "enhance_prompt"),
        )
    return LiveKitJoin(
        passthrough=_opt_bool(obj, "passthrough"),
        client_capabilities=caps,
        initial_state=state,
    )


def _set_image(obj: Mapping[str, Any]) -> SetImage:
    image_ref = _opt_str(obj, "image_ref")
    image_data = _opt_nullable_str(obj, "image_data")
    if image_ref is not ABSENT and image_data is not ABSENT:
        raise _Bad(ProblemKind.INVALID_VALUE, "set_image takes image_data or image_ref, not both")
    if image_ref is ABSENT and image_data is ABSENT:
        raise _Bad(
            ProblemKind.MISSING_FIELD, "set_image needs 'image_data' (may be null) or 'image_ref'"
        )
    return SetImage(
        image_data=image_data,
        image_ref=image_ref,
        prompt=_opt_nullable_str(obj, "prompt"),
        enhance_prompt=_opt_bool(obj, "enhance_prompt"),
    )


def _prompt(obj: Mapping[str, Any]) -> Prompt:
    enhance = _opt_bool(obj, "enhance_prompt")
    return Prompt(prompt=_str(obj, "prompt"), enhance_prompt=True if enhance is ABSENT else enhance)


# ---- server -> client decoders ------------------------------------------
#
# Lenient where the frame can still be acted on (protocol §2.3): a required
# field missing or malformed refuses the frame, naming it; an optional field
# missing, of another JSON type or out of range is taken as absent and gets
# the default the spec names. Unknown fields are ignored everywhere.


def _lenient(
    read: Callable[[Mapping[str, Any], str], _V], obj: Mapping[str, Any], name: str
) -> _V | Absent:
    """An optional field: its value, or ABSENT when missing or unusable."""
    if name not in obj:
        return ABSENT
    try:
        return read(obj, name)
    except _Bad:
        return ABSENT


def _reason(obj: Mapping[str, Any], name: str) -> str | Absent | None:
    # An ack's `error`: null or a string; any other type reads as absent.
    value = obj.get(name, ABSENT)
    return value if value is None or isinstance(value, str) else ABSENT


def _queue_position(obj: Mapping[str, Any]) -> QueuePosition:
    # Android accepts the legacy field name `queue_position` for `position`;
    # whichever is present must be valid, and `position` wins.
    legacy = _count(obj, "queue_position") if "queue_position" in obj else None
    position = _count(obj, "position") if "position" in obj or legacy is None else legacy
    size = _lenient(_count, obj, "queue_size")
    return QueuePosition(position=position, queue_size=position if size is ABSENT else size)


def _room_info(obj: Mapping[str, Any]) -> LiveKitRoomInfo:
    room_name = _lenient(_str, obj, "room_name")
    session_id = _lenient(_str, obj, "session_id")
    return LiveKitRoomInfo(
        livekit_url=_str(obj, "livekit_url"),
        token=_str(obj, "token"),
        room_name="" if room_name is ABSENT else room_name,
        session_id="" if session_id is ABSENT else session_id,
    )


def _set_image_ack(obj: Mapping[str, Any]) -> SetImageAck:
    return SetImageAck(success=_bool(obj, "success"), error=_reason(obj, "error"))


def _prompt_ack(obj: Mapping[str, Any]) -> PromptAck:
    return PromptAck(
        prompt=_str(obj, "prompt"),
        success=_bool(obj, "success"),
        error=_reason(obj, "error"),
    )


def _error(obj: Mapping[str, Any]) -> Error:
    text = _lenient(_str, obj, "error")
    return Error(error="" if text is ABSENT else text)


def _generation_tick(obj: Mapping[str, Any]) -> GenerationTick:
    return GenerationTick(seconds=_seconds(obj, "seconds"))


def _generation_ended(obj: Mapping[str, Any]) -> GenerationEnded:
    reason = _lenient(_str, obj, "reason")
    return GenerationEnded(
        seconds=_lenient(_seconds, obj, "seconds"), reason="" if reason is ABSENT else reason
    )


_M = TypeVar("_M")
_Decoders: TypeAlias = Mapping[str, Callable[[Mapping[str, Any]], _M]]

CLIENT_DECODERS: Final[_Decoders[ClientMessage]] = {
    "livekit_join": _livekit_join,
    "set_image": _set_image,
    "prompt": _prompt,
}

SERVER_DECODERS: Final[_Decoders[ServerMessage]] = {
    "queue_position": _queue_position,
    "livekit_room_info": _room_info,
    "set_image_ack": _set_image_ack,
    "prompt_ack": _prompt_ack,
    "error": _error,
    "generation_started": lambda _obj: GenerationStarted(),
    "generation_tick": _generation_tick,
    "generation_ended": _generation_ended,
    "session_id": lambda obj: LegacySessionId(session_id=_opt_str(obj, "session_id")),
    "ready": lambda _obj: LegacyReady(),
    "status": lambda obj: LegacyStatus(status=_opt_str(obj, "status")),
}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Built once: json.loads/dumps with options construct a coder on every call.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8; an ASCII text (every image frame) is counted
    without a copy (``str.isascii`` is O(1) in CPython)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _utf8_len_exceeds(text: str, limit: int) -> bool:
    # A character is 1 to 4 UTF-8 bytes: only count when the bounds disagree.
    if len(text) * 4 <= limit:
        return False
    if len(text) > limit:
        return True
    return utf8_size(text) > limit


def _parse(
    frame: str | bytes, max_bytes: int, decoders: _Decoders[_M]
) -> _M | IgnoredFrame | FrameProblem:
    if not isinstance(frame, str):
        return FrameProblem(ProblemKind.BINARY_FRAME, "binary frames are not part of the protocol")
    if _utf8_len_exceeds(frame, max_bytes):
        return FrameProblem(
            ProblemKind.TOO_LARGE, f"frame exceeds the maximum of {max_bytes} bytes"
        )
    try:
        obj = _DECODER.decode(frame)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, NaN/Infinity and over-long integers.
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        if isinstance(exc, ValueError) and not isinstance(exc, json.JSONDecodeError):
            detail = str(exc).split(":")[0]
        return FrameProblem(ProblemKind.NOT_JSON, f"frame is not valid JSON ({detail})")
    if not isinstance(obj, dict):
        return FrameProblem(
            ProblemKind.NOT_OBJECT, f"frame must be a JSON object, got {_json_type(obj)}"
        )
    message_type = obj.get("type")
    if message_type is None:
        return FrameProblem(ProblemKind.MISSING_TYPE, "frame has no 'type' field")
    if not isinstance(message_type, str):
        return FrameProblem(
            ProblemKind.MISSING_TYPE,
            f"field 'type' must be a string, got {_json_type(message_type)}",
        )
    decoder = decoders.get(message_type)
    if decoder is None:
        return IgnoredFrame(message_type[:64])
    try:
        return decoder(obj)
    except _Bad as bad:
        return FrameProblem(bad.kind, bad.detail, message_type)


def parse_server_frame(
    frame: str | bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> ServerMessage | IgnoredFrame | FrameProblem:
    """Parse a frame the client received from the server. Never raises."""
    return _parse(frame, max_bytes, SERVER_DECODERS)


def parse_client_frame(
    frame: str | bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> ClientMessage | IgnoredFrame | FrameProblem:
    """Parse a frame the server received from a client. Never raises."""
    return _parse(frame, max_bytes, CLIENT_DECODERS)


# ---- encoding -------------------------------------------------------------


class Base64Text(str):
    """Standard base64 of ``data``, made here from bytes and nothing else.

    Its alphabet needs no JSON escaping, so :func:`encode` splices it into the
    frame instead of scanning it: a 10 MB reference image costs a copy, not a
    ~35 ms escape pass ahead of the upload. Built only from bytes, so a string
    that merely claims to be base64 can never skip the escaping.
    """

    __slots__ = ()

    def __new__(cls, data: bytes | bytearray | memoryview) -> Base64Text:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"Base64Text encodes bytes, not {type(data).__name__}")
        # SIMD base64 (pybase64): 8 MB in ~2 ms against the stdlib's ~23 ms.
        return super().__new__(cls, pybase64.b64encode(data).decode("ascii"))

    def __repr__(self) -> str:
        return f"<base64, {len(self)} chars>"


def decode_base64(text: str, altchars: bytes | None = None) -> bytes:
    """The bytes of base64 ``text``, refused exactly as ``base64.b64decode(text,
    altchars=altchars, validate=True)`` refuses it (``binascii.Error`` or ``ValueError``).

    pybase64 decodes a 10.7 MB image in ~2 ms against the stdlib's ~40 ms; it
    refuses a few texts the stdlib takes (a '=' after a complete quantum), so a
    refusal is re-judged by the stdlib, which stays the definition.
    """
    try:
        return pybase64.b64decode(text, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        return base64.b64decode(text, altchars=altchars, validate=True)


def _present(obj: attrs.AttrsInstance) -> dict[str, Any]:
    """A message or sub-object as a JSON dict, leaving out ABSENT fields."""
    out: dict[str, Any] = {}
    message_type = getattr(type(obj), "type", None)
    if isinstance(message_type, str):
        out["type"] = message_type
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        if value is ABSENT:
            continue
        if attrs.has(type(value)):
            value = _present(value)
        out[field.name] = value
    return out


def to_json_object(message: ClientMessage | ServerMessage) -> dict[str, Any]:
    """The message as the JSON object the spec prescribes."""
    return _present(message)


def encode(message: ClientMessage | ServerMessage) -> str:
    """The message as one compact JSON text frame."""
    obj = _present(message)
    if not any(type(value) is Base64Text for value in obj.values()):
        return _ENCODER.encode(obj)
    # The same text json would write, member by member, with base64 spliced in
    # (one join: the only copy of the base64).
    parts = ["{"]
    for key, value in obj.items():
        if len(parts) > 1:
            parts.append(",")
        parts += (_ENCODER.encode(key), ":")
        parts += ('"', value, '"') if type(value) is Base64Text else (_ENCODER.encode(value),)
    parts.append("}")
    return "".join(parts)
