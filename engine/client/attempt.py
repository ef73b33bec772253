"""Per-attempt bookkeeping of the client engine.

Everything that belongs to one connect attempt lives in one :class:`Attempt`
record, which the session drops when the attempt ends: its deadlines, its
buffered initial-state ack and its pending requests cannot outlive it.
"""

from __future__ import annotations

import enum

import attrs

from ..messages import LiveKitRoomInfo, Prompt, PromptAck, SetImage, SetImageAck
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


class AckWatch(enum.Enum):
    """The out-of-band watch on the initial-state ack."""

    NONE = "none"  # passthrough: no initial-state frame was sent
    AWAITING = "awaiting"  # frame sent, room_info not yet here: no deadline runs
    BUFFERED = "buffered"  # the ack came before room_info; claimed when it arrives
    WATCHING = "watching"  # room_info came: the ack deadline runs
    EXPIRED = "expired"  # timed out: its late ack is absorbed, never taken for a request's
    SETTLED = "settled"  # acked, rejected, absorbed late, or failed by a server error


@attrs.define(slots=True)
class PendingRequest:
    """A runtime ``prompt``/``set_image`` awaiting its ack. An expired request
    stays as a tombstone so that its late ack cannot be taken for a newer one."""

    request: RequestId
    kind: str  # "prompt" | "set_image"
    prompt: str | None
    deadline: float
    expired: bool = False


MAX_TOMBSTONES = 64


@attrs.define(slots=True)
class Attempt:
    id: AttemptId
    passthrough: bool
    initial_frame: SetImage | Prompt | None
    next_send: int = 0
    socket_open: bool = False
    room_requested: bool = False
    room_info: LiveKitRoomInfo | None = None
    queued: bool = False
    join_send: SendId | None = None
    initial_send: SendId | None = None
    watch: AckWatch = AckWatch.NONE
    buffered_ack: SetImageAck | PromptAck | None = None
    generation_seen: bool = False
    deadlines: dict[Deadline, float] = attrs.Factory(dict)
    requests: list[PendingRequest] = attrs.Factory(list)
    request_sends: dict[SendId, RequestId] = attrs.Factory(dict)

    def new_send(self) -> SendId:
        self.next_send += 1
        return SendId(self.next_send)

    def ack_is_initial(self, ack: SetImageAck | PromptAck) -> bool:
        """Whether ``ack`` answers this attempt's initial-state frame."""
        if self.watch not in (AckWatch.AWAITING, AckWatch.WATCHING, AckWatch.EXPIRED):
            return False
        frame = self.initial_frame
        if isinstance(ack, SetImageAck):
            return isinstance(frame, SetImage)
        return isinstance(frame, Prompt) and frame.prompt == ack.prompt

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
