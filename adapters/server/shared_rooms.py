"""Which worker's LiveKit double holds each room, for ``serve --workers``.

A session's room lives in the double of the worker that admitted it, but a
viewer's ``/watch-stream`` request may reach any worker (``SO_REUSEPORT``).
Each worker keeps its live rooms in memory and publishes them as one small
JSON file of its own in the directory the workers share (``<worker>.json``:
room name -> its double's URL); the doubles share one secret, so any worker
can mint a viewer's token for a room of another.

The file is rewritten at most every ``FLUSH_DELAY`` seconds while rooms come
and go, not once per session: a burst of 500 handshakes costs a few writes,
not 500 writes and renames beside the event loop (which cost a third of a
millisecond of CPU per handshake). Another worker sees a new room that much
later; the worker that holds it answers at once, and a worker that does not
find a room looks once more after that delay before it says 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Final

__all__ = ["SharedRooms"]

# Room names this server makes (leanjoin-<hex>); anything else is never looked up.
_ROOM_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
FLUSH_DELAY: Final = 0.1  # seconds between rewrites of this worker's file


class SharedRooms:
    """This worker's rooms, and every worker's, through ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._file = directory / f"{os.getpid()}-{secrets.token_hex(4)}.json"
        self._rooms: dict[str, str] = {}
        self._flush: asyncio.TimerHandle | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SharedRooms({str(self.directory)!r}, rooms={len(self._rooms)})"

    def note(self, room: str, livekit_url: str) -> None:
        """``room`` is in the double at ``livekit_url``."""
        if _ROOM_NAME.fullmatch(room) and not self._closed:
            self._rooms[room] = livekit_url
            self._changed()

    def forget(self, room: str) -> None:
        """``room`` is gone."""
        if self._rooms.pop(room, None) is not None and not self._closed:
            self._changed()

    def find(self, room: str) -> str | None:
        """The LiveKit URL of the double holding ``room``; None: no worker has it."""
        if not _ROOM_NAME.fullmatch(room):
            return None
        if (own := self._rooms.get(room)) is not None:
            return own
        for path in self.directory.glob("*.json"):
            if path == self._file or not _writer_alive(path):
                continue
            with contextlib.suppress(OSError, ValueError):  # gone or replaced meanwhile
                rooms = json.loads(path.read_text())
                if isinstance(url := rooms.get(room), str):
                    return url
        return None

    async def lookup(self, room: str) -> str | None:
        """:meth:`find`, asked once more after a rewrite's delay on a miss: a
        room another worker made a moment ago is in its file by then."""
        found = self.find(room)
        if found is None and _ROOM_NAME.fullmatch(room):
            await asyncio.sleep(FLUSH_DELAY * 1.5)
            found = self.find(room)
        return found

    def close(self) -> None:
        """Stop publishing: this worker's rooms are gone with it."""
        self._closed = True
        if self._flush is not None:
            self._flush.cancel()
        self._file.unlink(missing_ok=True)

    def _changed(self) -> None:
        if self._flush is not None:
            return  # a rewrite is due already
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script, a test): write now
            self._write()
            return
        self._flush = loop.call_later(FLUSH_DELAY, self._write)

    def _write(self) -> None:
        self._flush = None
        if self._closed:
            return
        partial = self._file.with_name(f".{self._file.name}.partial")
        partial.write_text(json.dumps(self._rooms))
        os.replace(partial, self._file)  # whole or absent, never half written


def _writer_alive(path: Path) -> bool:
    """Whether the worker that wrote ``path`` (``<pid>-<hex>.json``) still runs:
    one killed outright (SIGKILL) left its file, and its rooms, behind."""
    pid_text = path.name.partition("-")[0]
    if not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
