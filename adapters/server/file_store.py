"""Uploaded files of the reference server's files API, kept on disk.

On disk, not in memory, so that every worker of ``leanjoin serve --workers``
finds a file any of them stored: one directory per serve run, two files per
upload, ``<id>.data`` (the bytes) and ``<id>.json`` (the metadata, written
last, so a file is complete once its metadata is there). Each write goes to a
temporary name first and is renamed into place, which is atomic on POSIX.

An expired file is gone: looking it up removes it, and every upload sweeps.
Times are wall-clock seconds (shared by processes and shown as dates).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "MAX_TTL_SECONDS",
    "MIN_TTL_SECONDS",
    "FileStore",
    "StoredFile",
]

MIN_TTL_SECONDS: Final = 60
MAX_TTL_SECONDS: Final = 30 * 24 * 3600
DEFAULT_TTL_SECONDS: Final = 24 * 3600  # the official clients' documented default

# The ids this store hands out; anything else is no file of it (and no path).
_FILE_ID: Final = re.compile(r"file_[0-9a-f]{24}")


def _iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(int(seconds), datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")


@attrs.frozen
class StoredFile:
    """One upload's metadata; :meth:`reference` is the API's FileReference JSON."""

    id: str
    filename: str | None
    mime_type: str
    size_bytes: int
    created_at: float
    expires_at: float | None  # None: persistent

    def reference(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "filename": self.filename,
            "mime_type": self.mime_type,
            "size_bytes": self.size_bytes,
            "created_at": _iso(self.created_at),
            "expires_at": None if self.expires_at is None else _iso(self.expires_at),
        }

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class FileStore:
    """The uploads in ``directory`` (created if missing)."""

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self._clock = clock
        directory.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FileStore({str(self.directory)!r})"

    def put(
        self, data: bytes, *, filename: str | None, mime_type: str, ttl_seconds: int | None
    ) -> StoredFile:
        """Store ``data``; ``ttl_seconds`` None keeps it until deleted."""
        self.sweep()
        now = self._clock()
        stored = StoredFile(
            id=f"file_{secrets.token_hex(12)}",
            filename=filename,
            mime_type=mime_type,
            size_bytes=len(data),
            created_at=now,
            expires_at=None if ttl_seconds is None else now + ttl_seconds,
        )
        self._write(self._data_path(stored.id), data)
        self._write(self._meta_path(stored.id), json.dumps(attrs.asdict(stored)).encode())
        return stored

    def get(self, file_id: str) -> StoredFile | None:
        """The metadata of ``file_id``; None when there is no such file (now)."""
        if not _FILE_ID.fullmatch(file_id):
            return None
        try:
            stored = StoredFile(**json.loads(self._meta_path(file_id).read_bytes()))
        except (FileNotFoundError, ValueError, TypeError):
            return None
        if stored.expired(self._clock()):
            self.delete(file_id)
            return None
        return stored

    def read(self, file_id: str) -> bytes | None:
        """The bytes of ``file_id``; None when there is no such file (now)."""
        if self.get(file_id) is None:
            return None
        try:
            return self._data_path(file_id).read_bytes()
        except FileNotFoundError:  # deleted meanwhile
            return None

    def delete(self, file_id: str) -> bool:
        """Remove ``file_id``; whether it was there."""
        if not _FILE_ID.fullmatch(file_id):
            return False
        try:
            self._meta_path(file_id).unlink()  # first: from now on it is not found
        except FileNotFoundError:
            return False
        self._data_path(file_id).unlink(missing_ok=True)
        return True

    def sweep(self) -> None:
        """Remove every expired file."""
        for meta in self.directory.glob("file_*.json"):
            self.get(meta.stem)

    def _meta_path(self, file_id: str) -> Path:
        return self.directory / f"{file_id}.json"

    def _data_path(self, file_id: str) -> Path:
        return self.directory / f"{file_id}.data"

    def _write(self, path: Path, data: bytes) -> None:
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            partial.write_bytes(data)
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
