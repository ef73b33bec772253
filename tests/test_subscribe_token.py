"""Subscribe tokens (what ``Session.subscribe_token`` holds, spec §2.3): the room
they name is read back, from the engine's own tokens and from the Python SDK's
URL-safe ones; anything else is refused with an ``InvalidArgument`` that never
quotes the token."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leanjoin.adapters import InvalidArgument, LeanJoinError
from leanjoin.engine.client.session import room_of_subscribe_token, subscribe_token

rooms = st.text(min_size=1, max_size=60)


@given(rooms)
def test_subscribe_token_names_its_room(room: str) -> None:
    assert room_of_subscribe_token(subscribe_token(room)) == room


@given(rooms)
def test_subscribe_token_urlsafe_and_unpadded_read_the_same(room: str) -> None:
    raw = json.dumps({"room_name": room}).encode()
    assert room_of_subscribe_token(base64.urlsafe_b64encode(raw).decode()) == room
    assert room_of_subscribe_token(base64.b64encode(raw).decode().rstrip("=")) == room


def _b64(payload: object) -> str:
    return base64.b64encode(json.dumps(payload).encode()).decode()


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("not base64 at all!", "not base64"),
        (base64.b64encode(b"\xff\xfe secret").decode(), "not base64"),
        (base64.b64encode(b"{not json").decode(), "not base64"),
        (_b64(["room_name", "r"]), "names no room"),
        (_b64({"room": "r"}), "names no room"),
        (_b64({"room_name": ""}), "names no room"),
        (_b64({"room_name": 7}), "names no room"),
        # JSON nested past the parser's recursion limit is no token either.
        (base64.b64encode(b"[" * 100_000).decode(), "not base64"),
    ],
    ids=lambda value: value if len(value) < 40 else f"<{len(value)} chars>",
)
def test_subscribe_token_refusals_name_the_problem_not_the_token(token: str, says: str) -> None:
    with pytest.raises(InvalidArgument, match=says) as refused:
        room_of_subscribe_token(token)
    assert isinstance(refused.value, LeanJoinError) and isinstance(refused.value, ValueError)
    if token.strip():
        assert token not in str(refused.value)
