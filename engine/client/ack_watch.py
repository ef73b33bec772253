"""The initial-state ack watch: its own table, one per connect attempt.

The lean join sends the initial state right behind the join and never waits
for its ack; the ack is watched out of band and can only ever produce one
event of the attempt that sent the frame (specs/protocol.md §4). Its rules,
which the table below is:

1. The watch belongs to one attempt (an :class:`InitialStateWatch` is created
   with the attempt and dropped with it), so a superseded attempt cannot
   report an ack, a timeout or a rejection (seed review finding 2).
2. Its deadline is armed only when ``livekit_room_info`` arrives, never
   during a queue wait; an ack before room_info is buffered and claimed at
   room_info, once.
3. A timed-out watch absorbs its late ack, so that ack is never taken for a
   runtime request's.
4. A server error while connected ends the watch without a second event.

The watch is driven by the session (``session.py``), which asks
:meth:`InitialStateWatch.answers` whether an ack is the initial state's
before it looks for a runtime request the ack could answer.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs
from transitions import EventData

from ..messages import Prompt, PromptAck, SetImage, SetImageAck
from ..sansio import clip
from ..table import Row, build_machine, sources_by_trigger
from .inputs import AttemptId
from .outputs import ErrorKind, ErrorOccurred, InitialStateAcked, Output


class AckWatch(enum.Enum):
    """The out-of-band watch on the initial-state ack."""

    NONE = "none"  # no initial-state frame was sent: there was nothing to send
    AWAITING = "awaiting"  # frame sent, room_info not yet here: no deadline runs
    BUFFERED = "buffered"  # the ack came before room_info; claimed when it arrives
    WATCHING = "watching"  # room_info came: the ack deadline runs
    EXPIRED = "expired"  # timed out: its late ack is absorbed, never taken for a request's
    SETTLED = "settled"  # acked, rejected, absorbed late, or ended by a server error


W = AckWatch

# The watch's table. Each row: trigger, source phases, destination (None: stay),
# callbacks before the change, callbacks after it. A trigger from a phase with
# no row does not concern the watch (an ack then answers a runtime request).
# fmt: off
ACK_WATCH_TRANSITIONS: Final[tuple[Row[AckWatch], ...]] = (
    # trigger          sources                    dest         before                  after
    ("frame_sent",     (W.NONE,),                 W.AWAITING,  (),                     ()),
    ("ack",            (W.AWAITING,),             W.BUFFERED,  ("_buffer",),           ()),
    ("ack",            (W.WATCHING,),             W.SETTLED,   ("_disarm", "_report"), ()),
    ("ack",            (W.EXPIRED,),              W.SETTLED,   (),                     ()),
    ("room_info",      (W.AWAITING,),             W.WATCHING,  ("_arm",),              ()),
    ("room_info",      (W.BUFFERED,),             W.SETTLED,   ("_claim",),            ()),
    ("deadline",       (W.WATCHING,),             W.EXPIRED,   ("_disarm", "_report_timeout"), ()),
    ("server_error",   (W.AWAITING, W.WATCHING),  W.EXPIRED,   ("_disarm",),           ()),
    ("server_error",   (W.BUFFERED,),             W.SETTLED,   ("_drop_buffered",),    ()),
)
# fmt: on

ACK_WATCH_MACHINE: Final = build_machine(
    AckWatch, ACK_WATCH_TRANSITIONS, initial=W.NONE, on_enter={}
)
ACK_WATCH_SOURCES: Final = sources_by_trigger(ACK_WATCH_TRANSITIONS)


# Every trigger carries (now, ack): the time, and the ack for "ack" (else None).
def _now(event: EventData) -> float:
    now: float = event.args[0]  # type: ignore[index]
    return now


def _ack(event: EventData) -> SetImageAck | PromptAck | None:
    ack: SetImageAck | PromptAck | None = event.args[1]  # type: ignore[index]
    return ack


@attrs.define(slots=True)
class InitialStateWatch:
    """One attempt's watch: the model of :data:`ACK_WATCH_MACHINE`."""

    attempt: AttemptId
    frame: SetImage | Prompt | None
    timeout: float  # seconds from room_info to the ack
    phase: AckWatch = W.NONE
    deadline: float | None = None
    buffered: SetImageAck | PromptAck | None = None
    _out: list[Output] = attrs.Factory(list)  # empty between two fires

    def answers(self, ack: SetImageAck | PromptAck) -> bool:
        """Whether ``ack`` is the ack of this attempt's initial-state frame:
        the watch still waits for one, and the frame is of the ack's kind
        (a prompt frame also by its text)."""
        if self.phase not in ACK_WATCH_SOURCES["ack"]:
            return False
        if isinstance(ack, SetImageAck):
            return isinstance(self.frame, SetImage)
        return isinstance(self.frame, Prompt) and self.frame.prompt == ack.prompt

    def fire(
        self, trigger: str, now: float, ack: SetImageAck | PromptAck | None = None
    ) -> list[Output]:
        """Run ``trigger`` if the table has a row for it from the current
        phase (else it does not concern the watch); returns the events."""
        if self.phase in ACK_WATCH_SOURCES[trigger]:
            ACK_WATCH_MACHINE.events[trigger].trigger(self, now, ack)
        out, self._out = self._out, []
        return out

    # ---- callbacks (bound by name in ACK_WATCH_TRANSITIONS) -----------------------

    def _buffer(self, event: EventData) -> None:
        self.buffered = _ack(event)

    def _arm(self, event: EventData) -> None:
        self.deadline = _now(event) + self.timeout

    def _disarm(self, _event: EventData) -> None:
        self.deadline = None

    def _claim(self, _event: EventData) -> None:
        ack, self.buffered = self.buffered, None
        assert ack is not None
        self._settle(ack)

    def _drop_buffered(self, _event: EventData) -> None:
        self.buffered = None

    def _report(self, event: EventData) -> None:
        ack = _ack(event)
        assert ack is not None
        self._settle(ack)

    def _report_timeout(self, _event: EventData) -> None:
        message = f"no initial-state ack within {self.timeout:g} s"
        self._out.append(
            ErrorOccurred(self.attempt, ErrorKind.INITIAL_STATE_TIMEOUT, message, fatal=False)
        )

    def _settle(self, ack: SetImageAck | PromptAck) -> None:
        if ack.success:
            self._out.append(InitialStateAcked(self.attempt))
            return
        reason = ack.error if isinstance(ack.error, str) else "no reason given"
        self._out.append(
            ErrorOccurred(
                self.attempt,
                ErrorKind.INITIAL_STATE_REJECTED,
                f"the server rejected the initial state: {clip(reason)}",
                fatal=False,
            )
        )
