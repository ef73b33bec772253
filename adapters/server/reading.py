"""How the reference server reads a message: fragment by fragment, across a
simulated uplink, with a ``set_image``'s reference decoded as it streams in.

Over loopback a 10 MB frame is in long before a real uplink would have carried
it, so :class:`Uplink` holds each fragment back until the simulated link would
have delivered it; only then does it go to the message and to the
:class:`~leanjoin.adapters.server.prefetch.ReferencePrefetch`, which thus decodes at
the pace a real server would see the bytes. After the last fragment only the
tail of the image is left to decode (protocol §10.7).

A small reference that comes in one fragment (at most
:data:`INLINE_DECODE_CHARS`, a 32x32 PNG is about 4 KB) is decoded on the
event loop once its message is complete: about 45 µs, where the thread
hand-offs alone cost more than that, twice (a task, a worker thread, the
loop's wake-up), per handshake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Final

import attrs
from websockets.asyncio.server import ServerConnection

from leanjoin.engine.codec import utf8_size

from .echo_model import Swatch
from .prefetch import ReferencePrefetch

Spawn = Callable[[Coroutine[Any, Any, None]], None]

INLINE_DECODE_CHARS: Final = 64 * 1024
"""A one-fragment message up to this long has its reference decoded on the
event loop (at most about 0.4 ms, for a 64 KiB frame of noise); a longer one
in a worker thread, fragment by fragment as it arrives."""


class UplinkConnection(ServerConnection):
    """Notes when bytes first come in after a message was taken: where the next
    message starts on the simulated uplink."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_bytes_at: float | None = None

    def data_received(self, data: bytes) -> None:
        if self.first_bytes_at is None:
            self.first_bytes_at = self.loop.time()
        super().data_received(data)


class Uplink:
    """The simulated uplink of one socket: messages cross it one after another,
    fragment by fragment, each taking its size / bandwidth, a message from when
    its first bytes came in (or when the one before it was taken, if they were
    buffered already). Without a bandwidth it carries everything at once."""

    def __init__(self, socket: UplinkConnection, bandwidth: float | None) -> None:
        self._socket = socket
        self._bandwidth = bandwidth
        self._loop = asyncio.get_running_loop()
        self._taken = self._free = self._loop.time()
        socket.first_bytes_at = None  # the opening handshake is not charged

    async def carry(self, fragment: str | bytes, *, first: bool) -> None:
        """Return when ``fragment`` (the ``first`` of its message or not) is across."""
        if first:
            arrived = self._socket.first_bytes_at
            self._free = max(self._free, self._taken if arrived is None else arrived)
        if self._bandwidth is None:
            return
        size = len(fragment) if isinstance(fragment, bytes) else utf8_size(fragment)
        self._free += size / self._bandwidth
        await asyncio.sleep(max(0.0, self._free - self._loop.time()))

    def taken(self) -> None:
        """The message is complete: bytes from now on belong to the next one."""
        self._socket.first_bytes_at = None
        self._taken = self._loop.time()


class Prefetching:
    """A :class:`ReferencePrefetch` fed in order, off the event loop, by one task
    (:meth:`work`, started with the first :meth:`feed` or by :meth:`start`), or,
    for a small message that came whole, finished on the loop (:meth:`finish`)."""

    def __init__(self, prefetch: ReferencePrefetch, spawn: Spawn) -> None:
        self.prefetch = prefetch
        self._spawn = spawn
        self._started = False
        self._fragments: asyncio.Queue[str | None] = asyncio.Queue()
        self._done = asyncio.Event()

    @property
    def done(self) -> bool:
        """Finished: :meth:`swatch_now` can answer."""
        return self._done.is_set()

    def start(self) -> None:
        """Start decoding in a worker thread now (a large first fragment)."""
        if not self._started:
            self._started = True
            self._spawn(self.work())

    def feed(self, fragment: str) -> None:
        self.start()
        self._fragments.put_nowait(fragment)

    def finish(self) -> None:
        """The message is complete: the worker finishes it, or, if none was
        started (one fragment of at most :data:`INLINE_DECODE_CHARS`), it is
        finished here and now."""
        if self._started:
            self._fragments.put_nowait(None)
            return
        self._started = True
        self.prefetch.finish()
        self._done.set()

    async def work(self) -> None:
        try:
            while (fragment := await self._fragments.get()) is not None:
                await asyncio.to_thread(self.prefetch.feed, fragment)
            await asyncio.to_thread(self.prefetch.finish)
        finally:
            self._done.set()  # a cancelled prefetch matches nothing; nobody waits forever

    async def swatch_for(self, data: bytes) -> Swatch | None:
        """The swatch of ``data`` if this prefetch decoded exactly it (once done)."""
        await self._done.wait()
        return self.prefetch.swatch_for(data)

    def swatch_now(self, data: bytes) -> Swatch | None:
        """:meth:`swatch_for` of a prefetch that is :attr:`done`."""
        assert self.done, "the prefetch is still decoding"
        return self.prefetch.swatch_for(data)


@attrs.frozen
class Message:
    frame: str | bytes
    prefetching: Prefetching | None  # its reference, decoded as it came in


async def receive(socket: ServerConnection, uplink: Uplink, spawn: Spawn) -> Message:
    """The next message of ``socket``, each fragment across ``uplink``; a text
    message that opens like a ``set_image`` gets a :class:`Prefetching`, whose
    work is started with ``spawn`` (unless the message is one small fragment,
    finished here). Raises ``ConnectionClosed`` at the end."""
    texts: list[str] = []
    blobs: list[bytes] = []
    prefetching: Prefetching | None = None
    async for fragment in socket.recv_streaming():
        await uplink.carry(fragment, first=not (texts or blobs))
        if isinstance(fragment, bytes):
            blobs.append(fragment)
            continue
        if not texts:
            prefetch = ReferencePrefetch.begin(fragment)
            if prefetch is not None:
                prefetching = Prefetching(prefetch, spawn)
                if len(fragment) > INLINE_DECODE_CHARS:
                    prefetching.start()
        elif prefetching is not None:
            prefetching.feed(fragment)
        texts.append(fragment)
    uplink.taken()
    if prefetching is not None:
        prefetching.finish()
    return Message(b"".join(blobs) if blobs else "".join(texts), prefetching)
