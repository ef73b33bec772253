"""Real media for load-test sessions (``--leanjoin-media``): LiveKit rooms on
an asyncio loop in one OS thread per Locust process.

The LiveKit client is an asyncio library over a native core, and Locust's
users are greenlets: the rooms live on an asyncio loop in a thread gevent did
not patch (``gevent.monkey.get_original``), each attempt's room is the anyio
client's own :class:`~leanjoin.adapters.client.room_transport.RoomAttempt`, and
its results cross back into the session's greenlet with the hub's thread-safe
callback (``loop.run_callback_threadsafe``). Calls the other way go through
``asyncio``'s ``call_soon_threadsafe``. Every session of the process publishes
one shared test pattern (one :class:`CameraFeed`, one sink per room).

Imported only when media is asked for: the signaling-only adapter loads no
asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final

import gevent
import gevent.lock
import gevent.monkey

from leanjoin.adapters.client.room_transport import CameraFeed, MediaOptions, RoomAttempt
from leanjoin.adapters.client.video_sources import Frame, TestPattern
from leanjoin.engine.client.inputs import AttemptId, Input
from leanjoin.engine.client.outputs import ConnectRoom

log = logging.getLogger(__name__)

# A small camera keeps a worker's encoders cheap: the load is the service's, not ours.
WIDTH: Final = 320
HEIGHT: Final = 192
FPS: Final = 10.0
LEAVE_TIMEOUT: Final = 10.0  # seconds a session waits for its rooms to be left

Post = Callable[[Input], None]
FirstFrame = Callable[[AttemptId], None]


class MediaLoop:
    """The process's media thread: an asyncio loop that hosts every room."""

    _instance: MediaLoop | None = None
    # Users are greenlets of one thread: a gevent lock (an OS lock would block the hub).
    _lock = gevent.lock.Semaphore()

    @classmethod
    def shared(cls) -> MediaLoop:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._started: Future[CameraFeed] = Future()
        thread_class: type[threading.Thread] = gevent.monkey.get_original("threading", "Thread")
        self._thread = thread_class(target=self._run, name="leanjoin-media", daemon=True)
        self._thread.start()
        self.camera = self._started.result(timeout=30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main())

    async def _main(self) -> None:
        camera = CameraFeed(TestPattern(WIDTH, HEIGHT, fps=FPS))
        self._started.set_result(camera)
        await camera.run()  # forever: the loop lives as long as the process

    def call(self, function: Callable[..., object], *args: Any) -> None:
        self.loop.call_soon_threadsafe(function, *args)


class MediaRooms:
    """One session's rooms (one per attempt), driven from its greenlet."""

    def __init__(self, post: Post, first_frame: FirstFrame, options: MediaOptions) -> None:
        self._media = MediaLoop.shared()
        self._hub_loop = gevent.get_hub().loop
        self._post_here = post
        self._first_here = first_frame
        self._options = options
        self._rooms: dict[AttemptId, RoomAttempt] = {}
        self._running: dict[AttemptId, Future[None]] = {}
        self._seen: set[AttemptId] = set()

    def connect(self, effect: ConnectRoom) -> None:
        room = RoomAttempt(effect, self._post, self._media.camera, self._on_frame, self._options)
        self._rooms[effect.attempt] = room
        self._running[effect.attempt] = asyncio.run_coroutine_threadsafe(
            room.run(), self._media.loop
        )

    def publish(self, attempt: AttemptId) -> None:
        if (room := self._rooms.get(attempt)) is not None:
            self._media.call(room.publish)

    def watch(self, attempt: AttemptId, track_sid: str) -> None:
        if (room := self._rooms.get(attempt)) is not None:
            self._media.call(room.watch, track_sid)

    def disconnect(self, attempt: AttemptId) -> None:
        if (room := self._rooms.get(attempt)) is not None:
            self._media.call(room.disconnect)

    def close(self) -> None:
        """Leave every room and wait (bounded, cooperatively) until they are left."""
        for attempt in self._rooms:
            self.disconnect(attempt)
        pool = gevent.get_hub().threadpool
        for attempt, running in self._running.items():
            try:
                pool.spawn(running.result, LEAVE_TIMEOUT).get()
            except Exception as exc:  # a room that failed: its failure was reported already
                log.warning("attempt %d: leaving the room: %r", attempt, exc)
        self._rooms.clear()
        self._running.clear()

    # ---- called in the media thread: handed to the session's thread ----------------------

    def _post(self, item: Input) -> None:
        self._hub_loop.run_callback_threadsafe(self._post_here, item)

    def _on_frame(self, attempt: AttemptId, _frame: Frame) -> None:
        if attempt not in self._seen:  # only an attempt's first frame is news
            self._seen.add(attempt)
            self._hub_loop.run_callback_threadsafe(self._first_here, attempt)
