"""Fan one producer out to several async iterators without ever blocking it.

The engine's task produces events and the room's reader produces frames; both
must go on at once whatever the consumers do, so publishing is synchronous.
Each subscriber has its own queue: events keep everything (``maxlen=None``),
frames keep only the newest few (a slow consumer skips frames, it does not
delay the next ones). Items published before anyone subscribed wait in a
backlog that the first subscriber takes over, so nothing raised early is lost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class _Subscriber(Generic[T]):
    __slots__ = ("queue", "wakeup")

    def __init__(self, maxlen: int | None, backlog: deque[T]) -> None:
        self.queue: deque[T] = deque(backlog, maxlen=maxlen)
        self.wakeup = anyio.Event()

    def put(self, item: T) -> None:
        self.queue.append(item)
        self.wakeup.set()


class Fanout(Generic[T]):
    """Synchronous publish, asynchronous per-subscriber iteration, explicit close."""

    def __init__(self, *, maxlen: int | None, backlog: int | None = 0) -> None:
        self._maxlen = maxlen
        self._backlog: deque[T] = deque(maxlen=backlog)
        self._keep_backlog = backlog is None or backlog > 0
        self._subscribers: set[_Subscriber[T]] = set()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def publish(self, item: T) -> None:
        if self._closed:
            return
        if not self._subscribers and self._keep_backlog:
            self._backlog.append(item)
        for subscriber in self._subscribers:
            subscriber.put(item)

    def close(self) -> None:
        """End every iteration once its queue is drained."""
        self._closed = True
        for subscriber in self._subscribers:
            subscriber.wakeup.set()

    async def subscribe(self) -> AsyncIterator[T]:
        """Items from now on (plus the backlog, for the first subscriber)."""
        subscriber = _Subscriber(self._maxlen, self._backlog)
        self._backlog.clear()
        self._subscribers.add(subscriber)
        try:
            while True:
                while subscriber.queue:
                    yield subscriber.queue.popleft()
                if self._closed:
                    return
                subscriber.wakeup = anyio.Event()
                if subscriber.queue or self._closed:
                    continue
                await subscriber.wakeup.wait()
        finally:
            self._subscribers.discard(subscriber)
