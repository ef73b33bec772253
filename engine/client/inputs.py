"""Inputs of the client engine: user commands and transport results.

Every transport result names the connect attempt it belongs to; the engine
drops results of any attempt but the live one. Frames arrive as raw text so
that a replayed log holds exactly what the peer sent.
"""

from __future__ import annotations

from typing import Literal, NewType, TypeAlias

import attrs

from ..validators import positive_or_none
from .config import InitialState

AttemptId = NewType("AttemptId", int)
RequestId = NewType("RequestId", int)
SendId = NewType("SendId", int)

TrackKind: TypeAlias = Literal["video", "audio"]


def _frame_repr(value: str | bytes) -> str:
    # Frames may carry tokens or image data: show their size only.
    return f"<{len(value)} {'chars' if isinstance(value, str) else 'bytes'}>"


# ---- user commands ----------------------------------------------------------


@attrs.frozen
class Connect:
    """Start a session. ``passthrough=None`` derives it: false iff the initial
    state has a non-null image or prompt. An explicit value sets the join's
    ``passthrough`` only: the initial state is sent whenever there is one
    (true with a state, false without one: both allowed, as in the JS client)."""

    initial: InitialState = attrs.field(factory=InitialState)
    passthrough: bool | None = None


@attrs.frozen
class ChangePrompt:
    """A runtime ``prompt`` request; answered by a ``prompt_ack`` with its text.
    ``timeout``: seconds to wait for the ack (None: ``Timeouts.request_ack``)."""

    request: RequestId
    prompt: str
    enhance_prompt: bool = True
    timeout: float | None = attrs.field(default=None, validator=positive_or_none, kw_only=True)


@attrs.frozen
class ChangeImage:
    """A runtime ``set_image`` request; ``set_image_ack`` answers them in order.
    Neither ``image_data`` nor ``image_ref``: ``image_data: null``, which clears
    the reference (spec §4.1). ``prompt`` and ``enhance_prompt`` go on the wire
    only when given. ``timeout`` as for :class:`ChangePrompt`."""

    request: RequestId
    image_data: str | None = attrs.field(
        default=None, repr=lambda v: _frame_repr(v) if v else repr(v)
    )
    image_ref: str | None = None
    prompt: str | None = None
    enhance_prompt: bool | None = None
    timeout: float | None = attrs.field(default=None, validator=positive_or_none, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.image_data is not None and self.image_ref is not None:
            raise ValueError("ChangeImage takes image_data or image_ref, not both")


@attrs.frozen
class Disconnect:
    """End the session; idempotent."""


UserCommand: TypeAlias = Connect | ChangePrompt | ChangeImage | Disconnect


# ---- signaling socket results ---------------------------------------------------


@attrs.frozen
class SocketOpened:
    attempt: AttemptId


@attrs.frozen
class SocketOpenFailed:
    """The socket could not be opened. ``permanent``: the adapter knows a retry
    would fail the same way (e.g. HTTP 404 on the upgrade; spec §6.3)."""

    attempt: AttemptId
    reason: str
    permanent: bool = False


@attrs.frozen
class FrameReceived:
    attempt: AttemptId
    frame: str | bytes = attrs.field(repr=_frame_repr)


@attrs.frozen
class SendFailed:
    """A ``SendFrame`` effect could not be written (``permanent``: as for
    :class:`SocketOpenFailed`, e.g. the peer refused the frame as too big)."""

    attempt: AttemptId
    send: SendId
    reason: str
    permanent: bool = False


@attrs.frozen
class SocketClosed:
    """The open socket ended (``permanent``: as for :class:`SocketOpenFailed`,
    e.g. close code 1009, a frame too big for the peer)."""

    attempt: AttemptId
    code: int | None
    reason: str
    permanent: bool = False


# ---- LiveKit room results ------------------------------------------------------


@attrs.frozen
class RoomConnected:
    attempt: AttemptId


@attrs.frozen
class RoomConnectFailed:
    attempt: AttemptId
    reason: str


@attrs.frozen
class TracksPublished:
    attempt: AttemptId


@attrs.frozen
class PublishFailed:
    attempt: AttemptId
    reason: str


@attrs.frozen
class RemoteTrackReceived:
    attempt: AttemptId
    participant: str
    track_sid: str
    kind: TrackKind


@attrs.frozen
class RoomDisconnected:
    attempt: AttemptId
    reason: str


TransportResult: TypeAlias = (
    SocketOpened
    | SocketOpenFailed
    | FrameReceived
    | SendFailed
    | SocketClosed
    | RoomConnected
    | RoomConnectFailed
    | TracksPublished
    | PublishFailed
    | RemoteTrackReceived
    | RoomDisconnected
)

Input: TypeAlias = UserCommand | TransportResult
