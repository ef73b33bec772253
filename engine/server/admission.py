"""The admission queue shared by every connection of one server.

Sans-IO like the session engine: time comes in as ``now`` and the one timer
(the admission rate) goes out through ``get_timer()``. Sessions never call
it; their ``RequestSlot``/``ReleaseSlot`` effects do, through the adapter,
and its answers are notices addressed to connections by key, which the
adapter feeds back as session inputs in order. A change to the queue sends
a ``QueueMoved`` to every waiting connection, since each one's position or
the queue size changed.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

from .events import AdmissionNotice, QueueFull, QueueMoved, SlotGranted
from .session import UsageError

K = TypeVar("K", bound=Hashable)


class AdmissionError(UsageError):
    """The adapter misused the queue: a key requested twice, or released unknown."""


class Admission(Generic[K]):
    """At most ``capacity`` admitted keys; the rest wait in FIFO order."""

    __slots__ = ("_active", "_next_admit", "_now", "_waiting", "capacity", "max_queue", "rate")

    def __init__(self, capacity: int, max_queue: int | None = None, rate: float | None = None):
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self.max_queue = max_queue
        self.rate = rate  # admissions per second; None: unlimited
        self._active: set[K] = set()
        self._waiting: dict[K, None] = {}  # insertion-ordered: the FIFO
        self._next_admit = float("-inf")
        self._now = float("-inf")

    @property
    def admitted(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> list[K]:
        return list(self._waiting)

    def request(self, key: K, now: float) -> list[tuple[K, AdmissionNotice]]:
        """A joined connection wants a slot."""
        self._advance(now)
        if key in self._active or key in self._waiting:
            raise AdmissionError("slot requested twice")
        full = self.max_queue is not None and len(self._waiting) >= self.max_queue
        if full and not self._can_admit():
            return [(key, QueueFull(f"server at capacity: {len(self._waiting)} already waiting"))]
        self._waiting[key] = None  # the queue grew, even if only for a moment
        return self._settle(changed=True)

    def release(self, key: K, now: float) -> list[tuple[K, AdmissionNotice]]:
        """A connection leaves, admitted or waiting."""
        self._advance(now)
        if key in self._active:
            self._active.discard(key)
            return self._settle(changed=False)
        if key in self._waiting:
            del self._waiting[key]
            return self._settle(changed=True)
        raise AdmissionError("release of a key that holds no slot")

    def get_timer(self) -> float | None:
        """When the rate limit lets the next waiting key in, if one is held back."""
        if self._waiting and len(self._active) < self.capacity and not self._rate_allows():
            return self._next_admit
        return None

    def handle_timer(self, now: float) -> list[tuple[K, AdmissionNotice]]:
        self._advance(now)
        return self._settle(changed=False)

    # ---- internals ------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        if now < self._now:
            raise AdmissionError(f"time went backwards: {now} < {self._now}")
        self._now = now

    def _rate_allows(self) -> bool:
        return self.rate is None or self._now >= self._next_admit

    def _can_admit(self) -> bool:
        return len(self._active) < self.capacity and self._rate_allows()

    def _settle(self, *, changed: bool) -> list[tuple[K, AdmissionNotice]]:
        notices: list[tuple[K, AdmissionNotice]] = []
        while self._waiting and self._can_admit():
            key = next(iter(self._waiting))
            del self._waiting[key]
            self._active.add(key)
            notices.append((key, SlotGranted()))
            if self.rate is not None:
                self._next_admit = self._now + 1.0 / self.rate
            changed = True
        if changed:
            size = len(self._waiting)
            notices.extend(
                (key, QueueMoved(position, size))
                for position, key in enumerate(self._waiting, start=1)
            )
        return notices
