"""Access tokens of the LiveKit double: real JWTs minted and verified with livekit-api.

Reasons given for a refused token never quote the token or the secret.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import jwt
from livekit import api


class TokenRefused(Exception):
    """A join token was refused; ``str()`` is a reason safe to show to the client."""


@dataclass(frozen=True)
class JoinGrant:
    """What a verified join token lets its bearer do: join this room as this
    identity, with these participant permissions (its LiveKit video grant)."""

    identity: str
    room: str
    name: str
    can_publish: bool
    can_subscribe: bool
    can_publish_data: bool


def mint(api_key: str, api_secret: str, *, room: str, identity: str, ttl_seconds: int) -> str:
    """A join token for ``identity`` in ``room``, valid for ``ttl_seconds``."""
    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
    )
    return (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_grants(grants)
        .with_ttl(datetime.timedelta(seconds=ttl_seconds))
        .to_jwt()
    )


# Fixed texts per failure: PyJWT's own messages are safe today, but a fixed text
# guarantees no token material can ever reach a log line or the client.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not valid yet"),
    (jwt.InvalidIssuerError, "token issued for another API key"),
    (jwt.InvalidSignatureError, "token signature does not match this server's secret"),
    (jwt.MissingRequiredClaimError, "token lacks a required claim (exp)"),
    (jwt.DecodeError, "token is malformed"),
)


def verify(api_key: str, api_secret: str, token: str | None) -> JoinGrant:
    """Check ``token`` against the double's key and secret and its join grant."""
    if not token:
        raise TokenRefused("no access token given")
    try:
        claims = api.TokenVerifier(api_key, api_secret).verify(token)
    except Exception as exc:
        for kind, reason in _REASONS:
            if isinstance(exc, kind):
                raise TokenRefused(reason) from None
        raise TokenRefused(f"token rejected ({type(exc).__name__})") from None
    video = claims.video
    if video is None or not video.room_join:
        raise TokenRefused("token has no room_join grant")
    if not video.room:
        raise TokenRefused("token names no room")
    if not claims.identity:
        raise TokenRefused("token has no identity")
    return JoinGrant(
        identity=claims.identity,
        room=video.room,
        name=claims.name or "",
        can_publish=bool(video.can_publish),
        can_subscribe=bool(video.can_subscribe),
        can_publish_data=bool(video.can_publish_data),
    )
