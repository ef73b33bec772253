"""The LiveKit double's own token minter writes exactly what livekit-api's
``AccessToken`` writes, and its tokens pass livekit-api's verifier."""

from __future__ import annotations

import datetime
import time

import pytest
from livekit import api

from leanjoin.adapters.server.lkdouble import tokens

KEY = "leanjoin-double"
SECRET = "a-secret-long-enough-for-hs256-0123456789"


def _access_token(room: str, identity: str, ttl_seconds: int, publish: bool = True) -> str:
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=publish,
        can_subscribe=True,
        can_publish_data=publish,
    )
    return (
        api.AccessToken(KEY, SECRET)
        .with_identity(identity)
        .with_grants(grants)
        .with_ttl(datetime.timedelta(seconds=ttl_seconds))
        .to_jwt()
    )


@pytest.mark.parametrize(
    ("room", "identity"),
    [("leanjoin-5982be30246b", "client-5982be30246b859e"), ("r", "bob"), ("réunion ✓", 'a"b\\c')],
)
def test_minter_writes_the_token_livekit_api_writes(room: str, identity: str) -> None:
    minter = tokens.Minter(KEY, SECRET)
    for _ in range(5):  # all inside one second of the wall clock (nbf, exp)
        before = int(time.time())
        ours = minter.mint(room=room, identity=identity, ttl_seconds=600)
        once = tokens.mint(KEY, SECRET, room=room, identity=identity, ttl_seconds=600)
        theirs = _access_token(room, identity, 600)
        if int(time.time()) == before:
            break
    assert ours == once == theirs


def test_a_viewer_token_is_livekit_apis_subscribe_only_token() -> None:
    minter = tokens.Minter(KEY, SECRET)
    for _ in range(5):  # all inside one second of the wall clock (nbf, exp)
        before = int(time.time())
        ours = minter.mint(room="r", identity="viewer-1", ttl_seconds=600, can_publish=False)
        theirs = _access_token("r", "viewer-1", 600, publish=False)
        if int(time.time()) == before:
            break
    assert ours == theirs
    grant = tokens.verify(KEY, SECRET, ours)
    assert grant.can_subscribe and not grant.can_publish and not grant.can_publish_data


def test_minted_token_verifies_with_its_grant() -> None:
    token = tokens.Minter(KEY, SECRET).mint(room="r", identity="alice", ttl_seconds=60)
    grant = tokens.verify(KEY, SECRET, token)
    assert grant == tokens.JoinGrant(
        identity="alice",
        room="r",
        name="",
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
    )
    with pytest.raises(tokens.TokenRefused, match="signature"):
        tokens.verify(KEY, SECRET + "x", token)


def test_an_expired_token_is_refused() -> None:
    # livekit-api's verifier allows a minute of leeway.
    token = tokens.Minter(KEY, SECRET).mint(
        room="r", identity="alice", ttl_seconds=1, now=time.time() - 600
    )
    with pytest.raises(tokens.TokenRefused, match="expired"):
        tokens.verify(KEY, SECRET, token)


def test_a_join_token_needs_a_room_and_an_identity() -> None:
    minter = tokens.Minter(KEY, SECRET)
    with pytest.raises(ValueError, match="identity and room"):
        minter.mint(room="", identity="alice", ttl_seconds=60)
    with pytest.raises(ValueError, match="identity and room"):
        minter.mint(room="r", identity="", ttl_seconds=60)
    assert SECRET not in repr(minter)
