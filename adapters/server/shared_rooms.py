"""Which worker's LiveKit double holds each room, for ``serve --workers``.

A session's room lives in the double of the worker that admitted it, but a
viewer's ``/watch-stream`` request may reach any worker (``SO_REUSEPORT``).
Each worker notes its rooms here, one small file per room named after it in
the directory the workers share; the doubles share one secret, so any worker
can mint a viewer's token for a room of another.

Notes are written by one thread of their own, in the order they were asked
for: a file write costs about 40 µs, which the event loop does not spend on
every session it admits.
"""

from __future__ import annotations

import os
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

__all__ = ["SharedRooms"]

# Room names this server makes (leanjoin-<hex>); anything else is no file name.
_ROOM_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


class SharedRooms:
    """Rooms and their double's URL, in ``directory`` (created if missing)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # One thread: a room's note and its removal are written in order.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="shared-rooms")
        self._closed = False

    def __repr__(self) -> str:
        return f"SharedRooms({str(self.directory)!r})"

    def note(self, room: str, livekit_url: str) -> None:
        """``room`` is in the double at ``livekit_url`` (written soon, in order)."""
        if _ROOM_NAME.fullmatch(room) and not self._closed:
            self._writer.submit(self._write, room, livekit_url)

    def forget(self, room: str) -> None:
        """``room`` is gone (written soon, after its note)."""
        if _ROOM_NAME.fullmatch(room) and not self._closed:
            self._writer.submit((self.directory / room).unlink, missing_ok=True)

    def close(self) -> None:
        """Write what is pending, then stop the writer (later notes are dropped:
        the server is stopping)."""
        self._closed = True
        self._writer.shutdown(wait=True)

    def _write(self, room: str, livekit_url: str) -> None:
        partial = self.directory / f".{room}.{secrets.token_hex(4)}"
        partial.write_text(livekit_url)
        os.replace(partial, self.directory / room)  # whole or absent, never half written

    def find(self, room: str) -> str | None:
        """The LiveKit URL of the double holding ``room``; None: no worker has it."""
        if not _ROOM_NAME.fullmatch(room):
            return None
        try:
            return (self.directory / room).read_text()
        except FileNotFoundError:
            return None
