# mypy: disallow-untyped-calls=False
"""Nothing a peer sends can make an engine raise, in any phase.

The client engine: arbitrary bytes and JSON, huge strings, deep nesting, NaN, big
integers, duplicate keys and wrong types in every field become at most one typed,
non-fatal problem. The server engine: the same values in every client field get at
most one error frame that never echoes them, and its memory stays bounded."""

from __future__ import annotations

import base64
import json
import tracemalloc
from collections.abc import Callable

import pytest
from engine_script import ROOM_INFO, Script
from hypothesis import given, settings
from hypothesis import strategies as st
from test_server_engine import IMAGE, KEY, Harness

from leanjoin.engine.client.config import InitialState
from leanjoin.engine.client.inputs import FrameReceived, RoomConnected, TracksPublished
from leanjoin.engine.client.outputs import ErrorKind, ErrorOccurred
from leanjoin.engine.client.session import Phase
from leanjoin.engine.codec import FrameProblem, parse_server_frame
from leanjoin.engine.server.events import (
    ClientVideoArrived,
    CloseConnection,
    CreateRoom,
    DecodeReference,
    FrameIn,
    FrameOut,
    Opened,
    ProblemNoted,
    ReferenceDecoded,
    RequestSlot,
    RoomReady,
    ServerOutput,
    SessionPhase,
    SlotGranted,
)
from leanjoin.engine.server.knobs import ServerKnobs
from leanjoin.engine.server.session import ServerSession

KNOWN_TYPES = [
    "queue_position",
    "livekit_room_info",
    "set_image_ack",
    "prompt_ack",
    "error",
    "generation_started",
    "generation_tick",
    "generation_ended",
    "session_id",
    "ready",
    "status",
]
FIELDS = [
    "position",
    "queue_size",
    "livekit_url",
    "token",
    "room_name",
    "session_id",
    "success",
    "error",
    "prompt",
    "seconds",
    "reason",
]
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def typed_objects(draw: st.DrawFn) -> str:
    obj: dict[str, object] = {"type": draw(st.sampled_from(KNOWN_TYPES))}
    for name in draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=5)):
        obj[name] = draw(values)
    return json.dumps(obj)  # may contain NaN/Infinity: json.dumps allows them


special = st.sampled_from(
    [
        "[" * 50_000 + "]" * 50_000,
        '{"type":"queue_position","position":' + "9" * 10_000 + ',"queue_size":1}',
        '{"type":"error","error":"' + "x" * 2_000_000 + '"}',
        '{"type":"set_image_ack","success":true,"success":false}',
        '{"type":"generation_tick","seconds":Infinity}',
        '{"type":"generation_tick","seconds":-1}',
        '{"type":"livekit_room_info","livekit_url":"u","token":"t","room_name":"r","session_id":"s","extra":{"deep":[[[[1]]]]}}',
        "\ud800",
        "",
    ]
)
frames = (
    st.binary(max_size=64)
    | st.text(max_size=64)
    | values.map(json.dumps)
    | typed_objects()
    | special
)


def joining(script: Script) -> None:
    script.to_joining(InitialState(image_data="aW1n", prompt="p"))


def queued(script: Script) -> None:
    joining(script)
    script.server(type="queue_position", position=1, queue_size=2)


def room_connecting(script: Script) -> None:
    joining(script)
    script.feed(FrameReceived(script.attempt, ROOM_INFO))


def publishing(script: Script) -> None:
    room_connecting(script)
    script.feed(RoomConnected(script.attempt))


def connected(script: Script) -> None:
    publishing(script)
    script.feed(TracksPublished(script.attempt))


def generating(script: Script) -> None:
    connected(script)
    script.server(type="generation_started")


PHASES: dict[str, Callable[[Script], None]] = {
    "joining": joining,
    "queued": queued,
    "room_connecting": room_connecting,
    "publishing": publishing,
    "connected": connected,
    "generating": generating,
}


@pytest.mark.parametrize("phase", sorted(PHASES))
@settings(max_examples=150, deadline=None)
@given(batch=st.lists(frames, min_size=1, max_size=5))
def test_hostile_frames_never_raise(phase: str, batch: list[str | bytes]) -> None:
    script = Script()
    PHASES[phase](script)
    for frame in batch:
        if script.session.attempt is None:
            break
        outputs = script.feed(
            FrameReceived(script.attempt, frame)
        )  # the monitor checks the invariants
        problems = [
            o
            for o in outputs
            if isinstance(o, ErrorOccurred) and o.kind is ErrorKind.MALFORMED_FRAME
        ]
        assert len(problems) <= 1
        for problem in problems:
            assert not problem.fatal and len(problem.message) < 300


def test_oversized_frame_is_refused_without_parsing() -> None:
    script = Script()
    connected(script)
    (problem,) = script.feed(
        FrameReceived(script.attempt, '{"type":"error","error":"' + "x" * 2_000_000 + '"}')
    )
    assert isinstance(problem, ErrorOccurred) and "exceeds the maximum" in problem.message
    assert script.session.phase is Phase.CONNECTED


def test_problems_do_not_echo_what_the_peer_sent() -> None:
    script = Script()
    connected(script)
    secret = "SECRET-TOKEN-VALUE"
    (problem,) = script.feed(
        FrameReceived(
            script.attempt,
            json.dumps({"type": "livekit_room_info", "livekit_url": 1, "token": secret}),
        )
    )
    assert isinstance(problem, ErrorOccurred) and secret not in problem.message


# ---- the server engine: hostile values in every field, bounded memory -----------------------------
#
# test_server_engine.py's property walks the server's phases with arbitrary small JSON. Here
# every client field gets the values that break parsers: NaN and infinities, integers past
# Python's digit limit, nesting deeper than the recursion limit, duplicate keys, megabyte
# strings, lone surrogates. Frames are built as raw text, so duplicate keys and JSON
# extensions reach the engine as a peer would send them.

MiB = 1 << 20
HUGE_STRING = json.dumps("h" * MiB)
HOSTILE_VALUES = [
    "NaN",
    "Infinity",
    "-Infinity",
    "9" * 5_000,  # over sys.get_int_max_str_digits(): json raises ValueError
    "-" + "9" * 4_000,  # under it: a real, huge int
    "1e400",  # parses to inf
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 5_000 + "1" + "}" * 5_000,
    HUGE_STRING,
    '"\\ud800"',
    '"\\u0000"',
    "null",
    "true",
    "false",
    '""',
    "0",
    "-1",
    "[]",
    "{}",
    json.dumps(IMAGE),
    '"data:image/png;base64,aW1n"',
    '"!!not base64!!"',
]
CLIENT_FIELDS = [
    "type",
    "passthrough",
    "image_data",
    "image_ref",
    "prompt",
    "enhance_prompt",
    "initial_state",
    "client_capabilities",
]
NESTED_FIELDS = ["image_data", "prompt", "enhance_prompt", "frame_timing"]
CLIENT_TYPES = ['"livekit_join"', '"set_image"', '"prompt"', '"queue_position"', HUGE_STRING]

raw_values = st.sampled_from(HOSTILE_VALUES) | values.map(json.dumps)


def object_text(pairs: list[tuple[str, str]]) -> str:
    """A JSON object as text: keys may repeat, values are raw JSON text."""
    return "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in pairs) + "}"


field_values = raw_values | st.lists(
    st.tuples(st.sampled_from(NESTED_FIELDS), raw_values), max_size=3
).map(object_text)
client_frames = st.builds(
    lambda kind, pairs: object_text([("type", kind), *pairs]),
    st.sampled_from(CLIENT_TYPES),
    st.lists(st.tuples(st.sampled_from(CLIENT_FIELDS), field_values), max_size=5),
)
server_frames = st.one_of(client_frames, st.sampled_from(HOSTILE_VALUES), st.binary(max_size=32))

# Every frame is parsed: no rate limit, no close for bad frames.
PATIENT = ServerKnobs(frame_rate=1e9, frame_burst=10**9, max_bad_frames=10**9)


def server_in(phase: str) -> Harness:
    h = Harness(PATIENT)
    h.open()
    if phase == "joined":
        h.join(passthrough=False)  # admitted, in the room, awaiting its initial state
    elif phase == "generating":
        h.join(passthrough=True)
        h.feed(0, ClientVideoArrived())
    h.new()
    return h


def answer_decodes(h: Harness, outputs: list[ServerOutput]) -> None:
    """The adapter's part: every reference is decoded (or found undecodable) at once."""
    for output in outputs:
        if isinstance(output, DecodeReference):
            h.feed(0, ReferenceDecoded(output.request))
            answer_decodes(h, h.new())


@pytest.mark.parametrize("phase", ["awaiting_join", "joined", "generating"])
@settings(max_examples=100, deadline=None)
@given(batch=st.lists(server_frames, min_size=1, max_size=6))
def test_the_server_engine_survives_hostile_values_in_every_field(
    phase: str, batch: list[str | bytes]
) -> None:
    h = server_in(phase)
    for frame in batch:
        h.feed(0, FrameIn(frame))
        outputs = h.new()
        answer_decodes(h, outputs)
        sent = [o for o in outputs if isinstance(o, FrameOut)]
        errors = [o for o in sent if o.kind == "error"]
        assert len(errors) <= 1 and len([o for o in outputs if isinstance(o, CloseConnection)]) <= 1
        for out in sent:
            assert not isinstance(parse_server_frame(out.frame), FrameProblem), out.frame[:200]
            if out.kind == "error":
                assert len(out.frame) < 400, "an error frame must name the problem, not echo"
        for note in outputs:
            if isinstance(note, ProblemNoted):
                assert len(note.detail) < 400
    assert h.phase() is not SessionPhase.CLOSED  # patient knobs: hostile input alone never closes


def _feed_all(session: ServerSession, frames: list[str], now: float) -> None:
    """A minimal adapter that keeps no output: slots, rooms and decodes answered at once."""
    work: list[object] = [FrameIn(frame) for frame in frames]
    while work:
        for output in session.handle(work.pop(0), now):
            if isinstance(output, RequestSlot):
                work.insert(0, SlotGranted())
            elif isinstance(output, CreateRoom):
                work.insert(0, RoomReady("ws://127.0.0.1:1", "token", "room", "session"))
            elif isinstance(output, DecodeReference):
                work.insert(0, ReferenceDecoded(output.request))


def _megabyte_frames() -> list[str]:
    """About 1 MiB each: a huge value in each field of each request type, the deep and
    the big-number values, and valid requests that the session keeps (a 1 MiB prompt)."""
    frames = [
        object_text([("type", kind), (field, value)])
        for kind in CLIENT_TYPES[:3]
        for field in CLIENT_FIELDS
        for value in (HUGE_STRING, HOSTILE_VALUES[6], HOSTILE_VALUES[3])
    ]
    frames.append(object_text([("type", HUGE_STRING)]))
    frames.append(object_text([("type", '"prompt"'), ("prompt", HUGE_STRING)] * 3))
    return frames


def test_hostile_megabytes_keep_the_server_engine_memory_bounded() -> None:
    """Peak and retained memory of a session fed ~80 MiB of hostile frames stay within
    a few frames' worth: nothing accumulates per frame."""
    frames = _megabyte_frames()
    session = ServerSession(PATIENT, KEY)
    session.handle(Opened(api_key=KEY, model="echo"), 0.0)
    _feed_all(session, ['{"type":"livekit_join","passthrough":true}'], 0.0)
    _feed_all(session, frames[:2], 0.0)  # warm up caches before measuring
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for round_ in range(3):
            _feed_all(session, frames, float(round_))
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    fed = 3 * sum(len(frame) for frame in frames)
    assert fed > 60 * MiB
    assert session.phase is not SessionPhase.CLOSED
    assert peak - base < 8 * MiB, f"peak {(peak - base) / MiB:.1f} MiB while parsing"
    assert current - base < 3 * MiB, f"{(current - base) / MiB:.1f} MiB kept after the frames"


def test_the_pending_pipeline_holds_at_most_its_configured_requests() -> None:
    """Requests wait behind a reference that is still decoding; what they hold is
    bounded by max_pending_requests (then the server closes), not by what the peer sends.

    The bound is large: each waiting set_image keeps its base64 text and its decoded
    bytes, so with the defaults (16 requests, 8 MiB frames, 6 MiB references) one
    connection can pin about 16 x 14 MiB. Measured here at 1 MiB references."""
    knobs = ServerKnobs(frame_rate=1e9, frame_burst=10**9, max_pending_requests=16)
    session = ServerSession(knobs, KEY)
    session.handle(Opened(api_key=KEY, model="echo"), 0.0)
    _feed_all(session, ['{"type":"livekit_join","passthrough":true}'], 0.0)
    image = base64.b64encode(bytes(range(256)) * 4096).decode()  # 1 MiB decoded
    frame = json.dumps({"type": "set_image", "image_data": image})
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        closed = False
        for _ in range(40):  # the decoder never answers: everything queues behind request 1
            outputs = session.handle(FrameIn(frame), 0.0)
            closed = closed or any(isinstance(o, CloseConnection) for o in outputs)
        peak = tracemalloc.get_traced_memory()[1]
        retained = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert closed and session.phase is SessionPhase.CLOSED  # too many pending requests
    per_request = len(frame) + MiB  # base64 text + decoded bytes
    assert peak - base <= 17 * per_request, f"{(peak - base) / MiB:.1f} MiB at the peak"
    assert retained - base < MiB  # closing let go of everything
