"""Knobs of the reference server: capacity, timing, limits and injected faults.

One frozen class holds every knob so that the Python API and the ``serve``
command line expose the same set. Most are read by the server engine
(:mod:`leanjoin.engine.server.session`) or the admission queue; the few marked
"adapter" need I/O (socket throttling, the LiveKit double) and are only
carried here. Values are validated at construction; misuse raises
``ValueError`` naming the field. Each field's ``help`` metadata is the text
the command line shows.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs

from ..validators import count, non_negative, positive, positive_or_none


class FaultPhase(enum.Enum):
    """Where in a session an injected error or close happens."""

    BEFORE_JOIN = "before_join"  # authenticated, no livekit_join yet
    QUEUED = "queued"  # first queue_position sent
    BEFORE_ROOM_INFO = "before_room_info"  # admitted, room_info not yet sent
    AFTER_ROOM_INFO = "after_room_info"  # right after livekit_room_info
    PUBLISHING = "publishing"  # the media server got the client's request to publish its camera
    CLIENT_VIDEO = "client_video"  # the client's video arrived; generation has not started
    GENERATING = "generating"  # right after generation_started


class MediaFailurePhase(enum.Enum):
    """Where in a session the media server fails the client's media (the
    ``media_failure_at`` knob): the phases of :class:`FaultPhase` in which the
    client is in its room."""

    PUBLISHING = "publishing"
    CLIENT_VIDEO = "client_video"
    GENERATING = "generating"

    @property
    def phase(self) -> FaultPhase:
        """The same phase as a :class:`FaultPhase`."""
        return FaultPhase(self.value)


class AckDrop(enum.Enum):
    """Which acks the server never sends."""

    NONE = "none"
    INITIAL = "initial"  # only the initial-state ack
    ALL = "all"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


_bool: Final = attrs.validators.instance_of(bool)
_phase: Final = attrs.validators.optional(attrs.validators.instance_of(FaultPhase))
MIB: Final = 1 << 20


@attrs.frozen
class ServerKnobs:
    """Every tunable of the reference server; the defaults make a healthy server."""

    # ---- admission (engine/server/admission.py) ----
    capacity: int = attrs.field(
        default=8,
        validator=count(0),
        metadata=_help("sessions admitted at once; the rest queue (FIFO)"),
    )
    admissions_per_second: float | None = attrs.field(
        default=None,
        validator=positive_or_none,
        metadata=_help("admission rate limit (default: unlimited)"),
    )
    max_queue: int | None = attrs.field(
        default=None,
        validator=count(0, optional=True),
        metadata=_help("queue length limit; a join beyond it is refused (default: unbounded)"),
    )
    # ---- session timing (engine) ----
    room_info_delay: float = attrs.field(
        default=0.0,
        validator=non_negative,
        metadata=_help("seconds between admission and livekit_room_info"),
    )
    reference_processing_time: float = attrs.field(
        default=0.0,
        validator=non_negative,
        metadata=_help("seconds spent applying a decoded reference image"),
    )
    ack_delay: float = attrs.field(
        default=0.0,
        validator=non_negative,
        metadata=_help("seconds between applying a request and sending its ack"),
    )
    initial_state_timeout: float = attrs.field(
        default=30.0,
        validator=positive,
        metadata=_help(
            "seconds to wait for the initial-state frame after a passthrough=false join"
        ),
    )
    tick_interval: float = attrs.field(
        default=1.0,
        validator=positive,
        metadata=_help("seconds between generation_tick frames"),
    )
    # ---- injected faults (engine) ----
    reject_reference: bool = attrs.field(
        default=False, validator=_bool, metadata=_help("reject every reference image")
    )
    drop_ack: AckDrop = attrs.field(
        default=AckDrop.NONE,
        validator=attrs.validators.instance_of(AckDrop),
        metadata=_help("acks the server never sends"),
    )
    error_at: FaultPhase | None = attrs.field(
        default=None,
        validator=_phase,
        metadata=_help("send an error frame when a session reaches this phase"),
    )
    error_text: str = attrs.field(
        default="injected fault",
        validator=attrs.validators.min_len(1),
        metadata=_help("text of the injected error frame"),
    )
    close_at: FaultPhase | None = attrs.field(
        default=None,
        validator=_phase,
        metadata=_help("close the connection when a session reaches this phase"),
    )
    media_failure_at: MediaFailurePhase | None = attrs.field(
        default=None,
        validator=attrs.validators.optional(attrs.validators.instance_of(MediaFailurePhase)),
        metadata=_help(
            "the LiveKit double ends the client's room media (leave with reason "
            "MEDIA_FAILURE, no reconnect) when a session reaches this phase"
        ),
    )
    fault_connections: int | None = attrs.field(
        default=None,
        validator=count(0, optional=True),
        metadata=_help("inject faults into the first N connections only (default: all)"),
    )
    # ---- limits against hostile peers (engine) ----
    max_frame_bytes: int = attrs.field(
        default=8 * MIB, validator=count(1024), metadata=_help("largest accepted frame, in bytes")
    )
    max_reference_bytes: int = attrs.field(
        default=6 * MIB,
        validator=count(1),
        metadata=_help("largest accepted reference image, decoded, in bytes"),
    )
    max_pending_requests: int = attrs.field(
        default=16,
        validator=count(1),
        metadata=_help("requests awaiting their ack, per session"),
    )
    frame_rate: float = attrs.field(
        default=50.0,
        validator=positive,
        metadata=_help("sustained frames per second a client may send"),
    )
    frame_burst: int = attrs.field(
        default=100, validator=count(1), metadata=_help("frames a client may send in one burst")
    )
    max_bad_frames: int = attrs.field(
        default=8,
        validator=count(0),
        metadata=_help("malformed frames answered with an error before the server closes"),
    )
    # ---- adapter only ----
    uplink_bytes_per_second: float | None = attrs.field(
        default=None,
        validator=positive_or_none,
        metadata=_help("simulated uplink of the signaling socket, bytes/s (default: unlimited)"),
    )
    media_setup_delay: float = attrs.field(
        default=0.0,
        validator=non_negative,
        metadata=_help("seconds the LiveKit double waits before answering a room join"),
    )
    join_answer_delay: float = attrs.field(
        default=0.0,
        validator=non_negative,
        metadata=_help(
            "seconds the LiveKit double holds a join answer after putting the client in the room"
        ),
    )
    publish_delay: float = attrs.field(
        default=0.0,
        validator=non_negative,
        metadata=_help("seconds the LiveKit double holds its answer to a track publication"),
    )
    refuse_media: bool = attrs.field(
        default=False,
        validator=_bool,
        metadata=_help("the LiveKit double refuses the room joins of faulted connections"),
    )

    def without_faults(self) -> ServerKnobs:
        """These knobs with every injected fault switched off."""
        return attrs.evolve(
            self,
            reject_reference=False,
            drop_ack=AckDrop.NONE,
            error_at=None,
            close_at=None,
            media_failure_at=None,
            refuse_media=False,
        )
