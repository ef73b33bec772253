"""The process's stderr, with the native libraries' chatter held back unless ``-v``.

The LiveKit client's native library writes to file descriptor 2 itself, past
Python's logging: its OpenH264 encoder warns a few seconds into every H.264
session that the "actual input framerate 0.000000 is different from
framerate in setting 30.000000". :func:`filtered_stderr` points descriptor 2
at a pipe for the life of the command (``wurlitzer`` forwards it from a
thread) and writes every whole line on to the real stderr, except those of
``NATIVE_NOISE`` while :attr:`NativeStderr.show_noise` is false. Python's
own output to stderr takes the same way, so nothing else changes.

A process killed by a signal (or aborted by a native crash) loses what was
still in the pipe when it died; the forwarding thread wakes on every write,
so that is at most the last few lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from typing import BinaryIO, ClassVar, Final, NoReturn

# Warnings of the OpenH264 encoder inside the LiveKit client ("[OpenH264] this =
# 0x0x7f..., Warning:Actual input framerate ..."). Its errors are still shown.
NATIVE_NOISE: Final = re.compile(rb"^\[OpenH264\] this = 0x[0-9A-Fa-fx]+, Warning:")


class NativeStderr:
    """Where descriptor 2's bytes go: whole lines to ``out``, less the noise."""

    show_noise: ClassVar[bool] = False  # set by the command's -v
    # The process's stderr while filtered_stderr() is entered (for quit_now).
    real_stderr: ClassVar[BinaryIO | None] = None

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._partial = b""

    def write(self, data: bytes) -> int:
        *lines, self._partial = (self._partial + data).split(b"\n")
        kept = [line + b"\n" for line in lines if self.show_noise or not NATIVE_NOISE.match(line)]
        if kept:
            self._out.write(b"".join(kept))
            self._out.flush()
        return len(data)

    def flush(self) -> None:
        """Write out a last line that had no newline."""
        if self._partial:
            self._out.write(self._partial)
            self._partial = b""
        self._out.flush()


def quit_now(line: str, status: int) -> NoReturn:
    """End the process at once (no cleanup, no finalization) after writing
    ``line`` to the real stderr, past the pipe, whose thread may not get to it."""
    sys.stdout.flush()
    sys.stderr.flush()
    out = NativeStderr.real_stderr
    if out is None:
        print(line, file=sys.stderr, flush=True)
    else:
        out.write(line.encode() + b"\n")
        out.flush()
    os._exit(status)


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Descriptor 2 goes through a :class:`NativeStderr` while this is entered
    (POSIX only: elsewhere, and where it cannot be set up, nothing changes)."""
    try:
        from wurlitzer import Wurlitzer
    except ImportError:  # Windows: no fcntl, no wurlitzer
        yield
        return
    sys.stderr.flush()
    out = os.fdopen(os.dup(2), "wb")
    sink = NativeStderr(out)
    NativeStderr.real_stderr = out
    try:
        with Wurlitzer(stdout=None, stderr=sink, encoding=None):
            yield
    finally:
        NativeStderr.real_stderr = None
        sink.flush()
        out.close()
