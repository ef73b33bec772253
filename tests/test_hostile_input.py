# mypy: disallow-untyped-calls=False
"""Nothing a server sends can make the client engine raise, in any phase: arbitrary
bytes and JSON, huge strings, deep nesting, NaN, big integers, duplicate keys
and wrong types in every field become at most one typed, non-fatal problem."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from engine_script import ROOM_INFO, Script
from hypothesis import given, settings
from hypothesis import strategies as st

from leanjoin.engine.client import Phase
from leanjoin.engine.config import InitialState
from leanjoin.engine.inputs import FrameReceived, RoomConnected, TracksPublished
from leanjoin.engine.outputs import ErrorKind, ErrorOccurred

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
