# mypy: disallow-untyped-calls=False
"""The wire codec: exact serialization, never-raising parsing, schema agreement."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

import attrs
import jsonschema
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from leanjoin.engine import messages as m
from leanjoin.engine.codec import (
    Base64Text,
    FrameProblem,
    IgnoredFrame,
    ProblemKind,
    decode_base64,
    encode,
    parse_client_frame,
    parse_server_frame,
)

SCHEMA = json.loads((Path(__file__).parents[1] / "specs" / "messages.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _def_validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        {**SCHEMA, "$ref": f"#/$defs/{name}", "oneOf": None}
        | {"oneOf": [{"$ref": f"#/$defs/{name}"}]}
    )


CLIENT = _def_validator("client")
SERVER = _def_validator("server")

text = st.text(max_size=20)
maybe = lambda s: st.one_of(st.just(m.ABSENT), s)  # noqa: E731
seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)
count = st.integers(min_value=0, max_value=10**6)

client_messages: st.SearchStrategy[m.ClientMessage] = st.one_of(
    st.builds(
        m.LiveKitJoin,
        passthrough=maybe(st.booleans()),
        client_capabilities=maybe(
            st.builds(m.ClientCapabilities, frame_timing=maybe(st.booleans()))
        ),
        initial_state=maybe(
            st.builds(
                m.InitialStateBody,
                image_data=maybe(st.none() | text),
                prompt=maybe(st.none() | text),
                enhance_prompt=maybe(st.booleans()),
            )
        ),
    ),
    st.builds(
        m.SetImage,
        image_data=st.none() | text,
        prompt=maybe(st.none() | text),
        enhance_prompt=maybe(st.booleans()),
    ),
    st.builds(
        m.SetImage, image_data=st.just(m.ABSENT), image_ref=text, prompt=maybe(st.none() | text)
    ),
    st.builds(m.Prompt, prompt=text, enhance_prompt=st.booleans()),
)

server_messages: st.SearchStrategy[m.ServerMessage] = st.one_of(
    st.builds(m.QueuePosition, position=count, queue_size=count),
    st.builds(m.LiveKitRoomInfo, livekit_url=text, token=text, room_name=text, session_id=text),
    st.builds(m.SetImageAck, success=st.booleans(), error=maybe(st.none() | text)),
    st.builds(m.PromptAck, prompt=text, success=st.booleans(), error=maybe(st.none() | text)),
    st.builds(m.Error, error=text),
    st.just(m.GenerationStarted()),
    st.builds(m.GenerationTick, seconds=seconds),
    st.builds(m.GenerationEnded, seconds=maybe(seconds), reason=text),
    st.builds(m.LegacySessionId, session_id=maybe(text)),
    st.just(m.LegacyReady()),
    st.builds(m.LegacyStatus, status=maybe(text)),
)


@given(client_messages)
def test_client_messages_round_trip_and_match_the_schema(message: m.ClientMessage) -> None:
    frame = encode(message)
    CLIENT.validate(json.loads(frame))
    assert parse_client_frame(frame) == message


@given(server_messages)
def test_server_messages_round_trip_and_match_the_schema(message: m.ServerMessage) -> None:
    frame = encode(message)
    SERVER.validate(json.loads(frame))
    assert parse_server_frame(frame) == message


FIELDS = {
    "livekit_join": ["passthrough", "client_capabilities", "initial_state"],
    "set_image": ["image_data", "image_ref", "prompt", "enhance_prompt"],
    "prompt": ["prompt", "enhance_prompt"],
    "queue_position": ["position", "queue_size", "queue_position"],
    "livekit_room_info": ["livekit_url", "token", "room_name", "session_id"],
    "set_image_ack": ["success", "error"],
    "prompt_ack": ["prompt", "success", "error"],
    "error": ["error"],
    "generation_tick": ["seconds"],
    "generation_ended": ["seconds", "reason"],
}
json_scalars = (
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2, allow_nan=False) | text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(text, inner, max_size=2),
    max_leaves=4,
)


@st.composite
def mutated_frames(draw: st.DrawFn) -> dict[str, Any]:
    message_type = draw(st.sampled_from(sorted(FIELDS)))
    names = draw(st.lists(st.sampled_from(FIELDS[message_type]), unique=True))
    obj: dict[str, Any] = {"type": message_type}
    for name in names:
        obj[name] = draw(json_values | st.booleans() | text | count)
    return obj


@given(mutated_frames())
def test_codec_accepts_exactly_what_the_schema_accepts(obj: dict[str, Any]) -> None:
    """Both directions of agreement on arbitrary frames of known types."""
    frame = json.dumps(obj)
    side = "client" if obj["type"] in ("livekit_join", "set_image", "prompt") else "server"
    parse = parse_client_frame if side == "client" else parse_server_frame
    parsed = parse(frame)
    schema_ok = (CLIENT if side == "client" else SERVER).is_valid(obj)
    assert isinstance(parsed, FrameProblem) != schema_ok, (parsed, schema_ok)


@given(st.binary(max_size=200) | st.text(max_size=200) | json_values.map(json.dumps))
def test_parsing_never_raises(frame: bytes | str) -> None:
    for parse in (parse_client_frame, parse_server_frame):
        result = parse(frame)
        assert isinstance(result, FrameProblem | IgnoredFrame) or attrs.has(type(result))


@pytest.mark.parametrize(
    ("frame", "kind", "detail"),
    [
        (b"\x00", ProblemKind.BINARY_FRAME, "binary"),
        ("{", ProblemKind.NOT_JSON, "not valid JSON"),
        ('{"type":"generation_tick","seconds":NaN}', ProblemKind.NOT_JSON, "NaN"),
        ("[1]", ProblemKind.NOT_OBJECT, "got array"),
        ("{}", ProblemKind.MISSING_TYPE, "no 'type'"),
        ('{"type":7}', ProblemKind.MISSING_TYPE, "must be a string"),
        ('{"type":"livekit_room_info","livekit_url":"u"}', ProblemKind.MISSING_FIELD, "'token'"),
        (
            '{"type":"set_image_ack","success":"yes"}',
            ProblemKind.WRONG_FIELD_TYPE,
            "'success' must be a boolean, got string",
        ),
        (
            '{"type":"queue_position","position":-1,"queue_size":1}',
            ProblemKind.INVALID_VALUE,
            "'position'",
        ),
        ("[" * 100_000, ProblemKind.NOT_JSON, "RecursionError"),
        ('{"type":"generation_tick","seconds":' + "9" * 5000 + "}", ProblemKind.NOT_JSON, "limit"),
    ],
)
def test_problems_name_what_was_wrong(frame: str | bytes, kind: ProblemKind, detail: str) -> None:
    result = parse_server_frame(frame)
    assert isinstance(result, FrameProblem)
    assert result.kind is kind
    assert detail in result.detail


# ---- lenient parsing (spec §2.3): optional fields get defaults, required ones refuse ------

ROOM = '"type":"livekit_room_info","livekit_url":"ws://lk","token":"t"'


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        # queue_size: the position.
        ('{"type":"queue_position","position":3}', m.QueuePosition(3, 3)),
        ('{"type":"queue_position","position":3,"queue_size":"many"}', m.QueuePosition(3, 3)),
        ('{"type":"queue_position","queue_position":2,"queue_size":-1}', m.QueuePosition(2, 2)),
        # room_name, session_id: "".
        ("{" + ROOM + ',"room_name":"r"}', m.LiveKitRoomInfo("ws://lk", "t", "r", "")),
        ("{" + ROOM + ',"session_id":7}', m.LiveKitRoomInfo("ws://lk", "t", "", "")),
        # error of an ack: absent unless a string or null.
        ('{"type":"set_image_ack","success":false,"error":500}', m.SetImageAck(False)),
        (
            '{"type":"prompt_ack","prompt":"a","success":false,"error":{"code":1}}',
            m.PromptAck("a", False),
        ),
        # error's text: "".
        ('{"type":"error"}', m.Error("")),
        ('{"type":"error","error":42}', m.Error("")),
        # generation_ended: seconds unknown, reason "".
        ('{"type":"generation_ended"}', m.GenerationEnded(m.ABSENT, "")),
        ('{"type":"generation_ended","seconds":-1,"reason":null}', m.GenerationEnded(m.ABSENT, "")),
        ('{"type":"generation_ended","reason":"idle"}', m.GenerationEnded(m.ABSENT, "idle")),
        # Unknown fields, everywhere.
        (
            "{" + ROOM + ',"room_name":"r","session_id":"s","region":"eu","ttl":3}',
            m.LiveKitRoomInfo("ws://lk", "t", "r", "s"),
        ),
        ('{"type":"generation_tick","seconds":2,"extra":[1]}', m.GenerationTick(2.0)),
    ],
)
def test_a_frame_missing_or_garbling_an_optional_field_is_still_parsed(
    frame: str, message: m.ServerMessage
) -> None:
    """Each of these was a FrameProblem before: the frame is now acted on, with
    the default the spec names."""
    assert parse_server_frame(frame) == message
    SERVER.validate(json.loads(frame))


@pytest.mark.parametrize(
    ("frame", "kind", "field"),
    [
        ('{"type":"queue_position","queue_size":4}', ProblemKind.MISSING_FIELD, "position"),
        (
            '{"type":"queue_position","position":"3","queue_size":4}',
            ProblemKind.WRONG_FIELD_TYPE,
            "position",
        ),
        ('{"type":"livekit_room_info","token":"t"}', ProblemKind.MISSING_FIELD, "livekit_url"),
        ('{"type":"livekit_room_info","livekit_url":"u"}', ProblemKind.MISSING_FIELD, "token"),
        (
            '{"type":"livekit_room_info","livekit_url":"u","token":null}',
            ProblemKind.WRONG_FIELD_TYPE,
            "token",
        ),
        ('{"type":"set_image_ack","error":"x"}', ProblemKind.MISSING_FIELD, "success"),
        ('{"type":"prompt_ack","prompt":"a"}', ProblemKind.MISSING_FIELD, "success"),
        ('{"type":"prompt_ack","success":true}', ProblemKind.MISSING_FIELD, "prompt"),
        ('{"type":"prompt_ack","prompt":1,"success":true}', ProblemKind.WRONG_FIELD_TYPE, "prompt"),
        ('{"type":"generation_tick"}', ProblemKind.MISSING_FIELD, "seconds"),
        ('{"type":"generation_tick","seconds":-2}', ProblemKind.INVALID_VALUE, "seconds"),
    ],
)
def test_a_frame_without_a_required_field_is_refused_naming_it(
    frame: str, kind: ProblemKind, field: str
) -> None:
    result = parse_server_frame(frame)
    assert isinstance(result, FrameProblem), result
    assert result.kind is kind and f"'{field}'" in result.detail
    assert result.message_type == json.loads(frame)["type"]
    assert not SERVER.is_valid(json.loads(frame))


def test_oversized_frames_are_refused_before_parsing() -> None:
    result = parse_server_frame('{"type":"error","error":"' + "x" * 2000 + '"}', max_bytes=1024)
    assert isinstance(result, FrameProblem) and result.kind is ProblemKind.TOO_LARGE
    assert "1024" in result.detail
    # Multi-byte characters count as bytes, not characters.
    assert isinstance(parse_server_frame('"' + "é" * 600 + '"', max_bytes=1024), FrameProblem)


def test_problems_never_echo_field_values() -> None:
    result = parse_server_frame(
        '{"type":"livekit_room_info","livekit_url":"u","token":12345678,"room_name":"r","session_id":"s"}'
    )
    assert isinstance(result, FrameProblem)
    assert "12345678" not in result.detail and "'token'" in result.detail


def test_unknown_and_legacy_types_are_ignorable() -> None:
    assert parse_server_frame('{"type":"brand_new","x":1}') == IgnoredFrame("brand_new")
    assert parse_client_frame(
        '{"type":"queue_position","position":1,"queue_size":1}'
    ) == IgnoredFrame("queue_position")
    assert parse_server_frame('{"type":"ready"}') == m.LegacyReady()


def test_serialization_follows_the_spec_exactly() -> None:
    assert encode(m.LiveKitJoin(passthrough=False)) == '{"type":"livekit_join","passthrough":false}'
    assert encode(m.LiveKitJoin()) == '{"type":"livekit_join"}'
    assert encode(m.SetImage()) == '{"type":"set_image","image_data":null}'
    assert (
        encode(m.SetImage(image_data=None, prompt=None))
        == '{"type":"set_image","image_data":null,"prompt":null}'
    )
    assert (
        encode(m.SetImage(image_data=m.ABSENT, image_ref="f1"))
        == '{"type":"set_image","image_ref":"f1"}'
    )
    assert encode(m.Prompt("a")) == '{"type":"prompt","prompt":"a","enhance_prompt":true}'
    assert parse_client_frame('{"type":"prompt","prompt":"a"}') == m.Prompt("a", True)
    assert parse_server_frame(
        '{"type":"queue_position","queue_position":4,"queue_size":9}'
    ) == m.QueuePosition(4, 9)


def test_reprs_hide_secrets() -> None:
    info = m.LiveKitRoomInfo(
        livekit_url="ws://x", token="SECRET-TOKEN", room_name="r", session_id="s"
    )
    image = m.SetImage(image_data="SECRETIMAGEBYTES")
    assert "SECRET" not in repr(info) and "SECRET" not in repr(image)


# ---- base64 spliced into frames ---------------------------------------------------------


@given(
    data=st.binary(min_size=1, max_size=512),
    prompt=st.none() | st.text(max_size=40),
    enhance=st.sampled_from([m.ABSENT, True, False]),
)
def test_spliced_base64_encodes_exactly_as_json_does(
    data: bytes, prompt: str | None, enhance: bool | m.Absent
) -> None:
    """Base64Text skips the escape pass, so its frame must be the very text json
    writes for the same message: same bytes, same member order."""
    spliced = m.SetImage(image_data=Base64Text(data), prompt=prompt, enhance_prompt=enhance)
    plain = m.SetImage(image_data=str(spliced.image_data), prompt=prompt, enhance_prompt=enhance)
    assert encode(spliced) == encode(plain)
    assert parse_client_frame(encode(spliced)) == plain


def test_base64_text_is_made_from_bytes_only() -> None:
    """A string claiming to be base64 cannot skip the escaping."""
    assert Base64Text(b"\xff\x00") == "/wA="
    with pytest.raises(TypeError, match="encodes bytes, not str"):
        Base64Text('"},"type":"x')  # type: ignore[arg-type]
    assert "/wA" not in repr(Base64Text(b"\xff\x00"))  # image data stays out of reprs


@given(st.binary(max_size=300))
def test_base64_text_is_the_stdlib_encoding(data: bytes) -> None:
    """The SIMD encoder writes what ``base64.b64encode`` writes."""
    assert Base64Text(data) == base64.b64encode(data).decode("ascii")


# Alphabet, padding, whitespace, URL-safe and non-ASCII characters.
_NOISE = st.text(st.sampled_from([*"ABab+/09=-_", "\n", " ", "\u00e9"]), max_size=14)
_ENCODED = st.binary(max_size=12).flatmap(
    lambda data: st.sampled_from(
        [base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode()]
    )
)
# Real encodings, real encodings with something after them, and noise.
_BASE64_ISH = st.one_of(_ENCODED, st.tuples(_ENCODED, _NOISE).map("".join), _NOISE)


def _stdlib(text: str, altchars: bytes | None) -> bytes | None:
    try:
        return base64.b64decode(text, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        return None


# The stdlib warns that '+' or '/' beside altchars '-_' will be refused one day:
# decode_base64 then follows it, as it is the definition.
@pytest.mark.filterwarnings("ignore:invalid characters:DeprecationWarning")
@given(_BASE64_ISH, st.sampled_from([None, b"-_"]))
def test_fast_base64_decode_refuses_and_decodes_as_the_stdlib(
    text: str, altchars: bytes | None
) -> None:
    """``decode_base64`` takes the SIMD path, yet what it accepts, refuses and
    returns is the stdlib's ``b64decode(validate=True)``, the definition the
    spec's "valid base64" points at."""
    expected = _stdlib(text, altchars)
    event("valid" if expected is not None else "refused")
    if expected is None:
        with pytest.raises((binascii.Error, ValueError)):
            decode_base64(text, altchars)
    else:
        assert decode_base64(text, altchars) == expected


def test_fast_base64_decode_takes_what_only_the_stdlib_takes() -> None:
    """pybase64 refuses a '=' after a complete quantum; the stdlib, and so the
    server, accepts it."""
    assert decode_base64("A9aA=") == base64.b64decode("A9aA=", validate=True)
