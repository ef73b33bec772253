"""What both engines share: the plumbing of a sans-IO state machine.

An engine takes one input at a time with the time it happened (``handle``),
fires due deadlines when told the time (``handle_timer``) and hands back what
it wants done as a list of outputs. Its phases and their transitions are one
table (:mod:`.table`); this base runs a trigger on the table's shared machine
and answers whether the table allows a trigger in the current phase, so a
handler never restates which phases accept what.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

from transitions import EventData, Machine

from .errors import LeanJoinError

OutputT = TypeVar("OutputT")
DueT = TypeVar("DueT")


def clip(text: str, limit: int = 200) -> str:
    """A peer's text cut to a size fit for an event or a log line."""
    return text if len(text) <= limit else text[:limit] + "…"


def trigger_arg(event: EventData) -> Any:
    """The single argument a trigger was fired with."""
    return next(iter(event.args))


class UsageError(LeanJoinError):
    """The local side misused an engine: a command in the wrong phase, an
    adapter result that was never asked for, time going backwards. Nothing a
    peer sends raises it."""


class SansIOEngine(Generic[OutputT, DueT]):
    """One session of an engine: the model of its table's shared machine."""

    __slots__ = ("_firing", "_now", "_out", "phase")

    MACHINE: ClassVar[Machine]
    SOURCES: ClassVar[Mapping[str, frozenset[enum.Enum]]]

    phase: Any  # the engine's phase enum; transitions sets it

    def __init__(self, initial: enum.Enum) -> None:
        self.phase = initial
        self._now = float("-inf")
        self._out: list[OutputT] = []
        self._firing = False

    def handle_timer(self, now: float) -> list[OutputT]:
        """Fire every deadline due at ``now``, earliest first."""
        self._advance(now)
        while (due := self._next_due(now)) is not None:
            self._fire_deadline(due)
        return self._flush()

    def _next_due(self, now: float) -> DueT | None:
        raise NotImplementedError

    def _fire_deadline(self, due: DueT) -> None:
        raise NotImplementedError

    def _advance(self, now: float) -> None:
        if now < self._now:
            raise UsageError(f"time went backwards: {now} < {self._now}")
        if self._firing:
            raise UsageError("the engine is not re-entrant")
        self._now = now

    def _flush(self) -> list[OutputT]:
        out, self._out = self._out, []
        return out

    def _emit(self, output: OutputT) -> None:
        self._out.append(output)

    def _can(self, trigger: str) -> bool:
        """Whether the table has a row for ``trigger`` from the current phase."""
        return self.phase in self.SOURCES[trigger]

    def _fire(self, trigger: str, *args: Any) -> None:
        """Run a trigger the table allows now (callers ask :meth:`_can` first)."""
        assert self._can(trigger), f"engine bug: {trigger} while {self.phase}"
        self._firing = True
        try:
            self.MACHINE.events[trigger].trigger(self, *args)
        finally:
            self._firing = False
