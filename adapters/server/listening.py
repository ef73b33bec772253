"""A server socket that cannot be bound, named for the person who chose its address."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator


class CannotListen(OSError):
    """Binding a listening socket failed; the message names the address and
    the option that chose it (``leanjoin serve`` prints it as its one line)."""


@contextlib.contextmanager
def binding(host: str, port: int, option: str) -> Iterator[None]:
    """Turn an :class:`OSError` of binding ``host``:``port`` into :class:`CannotListen`."""
    try:
        yield
    except CannotListen:
        raise
    except OSError as exc:
        # asyncio's strerror repeats the address; the errno's own text is the reason.
        errno = exc.errno if not isinstance(exc, socket.gaierror) else None
        reason = (os.strerror(errno) if errno else exc.strerror or str(exc)).lower()
        message = f"cannot listen on {host}:{port} ({option}): {reason}"
        raise CannotListen(exc.errno, message) from exc
