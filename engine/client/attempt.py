"""Per-attempt bookkeeping of the client engine.

Everything that belongs to one connect attempt lives in one :class:`Attempt`
record, which the session drops when the attempt ends: its deadlines, its
initial-state ack watch (with any ack it buffered) and its pending requests
cannot outlive it.
"""

from __future__ import annotations

import enum

import attrs

from ..messages import LiveKitRoomInfo, Prompt, PromptAck, SetImage, SetImageAck
from .ack_watch import InitialStateWatch
from .inputs import AttemptId, RequestId, SendId


class Deadline(enum.IntEnum):
    """Deadline kinds, in the order they fire when due at the same instant."""

    CONNECT = 0
    SOCKET_OPEN = 1
    ROOM_INFO = 2
    QUEUE_SILENCE = 3
    MAX_QUEUE_WAIT = 4
    MEDIA = 5
    INITIAL_STATE_ACK = 6
    REQUEST = 7
    RETRY = 8


@attrs.define(slots=True)
class PendingRequest:
    """A runtime ``prompt``/``set_image`` awaiting its ack. An expired request
    stays as a tombstone so that its late ack cannot be taken for a newer one."""

    request: RequestId
    kind: str  # "prompt" | "set_image"
    prompt: str | None
    deadline: float
    timeout: float  # seconds from the send to the deadline (the call's or the default)
    expired: bool = False


MAX_TOMBSTONES = 64


@attrs.define(slots=True)
class Attempt:
    id: AttemptId
    passthrough: bool
    ack_watch: InitialStateWatch  # knows the initial-state frame, if one is sent
    next_send: int = 0
    socket_open: bool = False
    room_requested: bool = False
    room_info: LiveKitRoomInfo | None = None
    queued: bool = False
    join_send: SendId | None = None
    initial_send: SendId | None = None
    generation_seen: bool = False
    # The ack watch keeps its own deadline (INITIAL_STATE_ACK); these are the rest.
    deadlines: dict[Deadline, float] = attrs.Factory(dict)
    requests: list[PendingRequest] = attrs.Factory(list)
    request_sends: dict[SendId, RequestId] = attrs.Factory(dict)

    def new_send(self) -> SendId:
        self.next_send += 1
        return SendId(self.next_send)

    @property
    def initial_frame(self) -> SetImage | Prompt | None:
        """The initial-state frame sent right behind the join (None: nothing to send)."""
        return self.ack_watch.frame

    def take_request(self, ack: SetImageAck | PromptAck) -> PendingRequest | None:
        """The oldest pending request ``ack`` answers (set_image in order,
        prompt by text), removed from the pending list."""
        for index, pending in enumerate(self.requests):
            if isinstance(ack, SetImageAck):
                if pending.kind == "set_image":
                    return self.requests.pop(index)
            elif pending.kind == "prompt" and pending.prompt == ack.prompt:
                return self.requests.pop(index)
        return None

    def live_requests(self) -> list[PendingRequest]:
        return [p for p in self.requests if not p.expired]

    def drop_excess_tombstones(self) -> None:
        tombstones = [p for p in self.requests if p.expired]
        for stale in tombstones[: max(0, len(tombstones) - MAX_TOMBSTONES)]:
            self.requests.remove(stale)
