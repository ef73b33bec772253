"""``leanjoin serve`` in a child process, for the benchmarks that keep the
reference server off the measuring process's CPU and heap."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import attrs


@attrs.frozen
class ServerProcess:
    process: subprocess.Popen[str]
    url: str
    api_key: str = attrs.field(repr=False)
    log: Path | None  # the server's stderr; None: discarded

    @staticmethod
    def start(log: Path | None, *options: str) -> ServerProcess:
        """Start it on a free port with ``options`` (``leanjoin serve`` flags);
        return once it printed its URL and API key."""
        # Without a log file, the server logs as `leanjoin serve` does by default
        # (warnings only); with one, each session's phases too (`leanjoin -v serve`).
        level = (
            ()
            if "--log-level" in options
            else ("--log-level", "WARNING" if log is None else "INFO")
        )
        command = [
            sys.executable, "-m", "leanjoin.adapters.cli.serve", "--port", "0", *level, *options
        ]  # fmt: skip
        with contextlib.ExitStack() as stack:
            stderr = subprocess.DEVNULL if log is None else stack.enter_context(log.open("w"))
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1:]
        key = process.stdout.readline().split()[-1:]
        if not url or not url[0].startswith("ws://") or not key:
            process.kill()
            process.wait()
            raise RuntimeError(f"leanjoin serve did not start; see {log or 'its stderr'}")
        return ServerProcess(process, url[0], key[0], log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def lose_rooms(self) -> None:
        """Room loss: SIGUSR1 makes the server's double disconnect every participant."""
        self.process.send_signal(signal.SIGUSR1)

    def stop(self) -> int:
        """SIGINT (a clean shutdown), killed after 30 s; the exit code."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def problems(self) -> list[str]:
        """The log's lines at WARNING or above, and tracebacks."""
        if self.log is None:
            return []
        levels = (" WARNING ", " ERROR ", " CRITICAL ")
        return [
            line.rstrip()
            for line in self.log.read_text(errors="replace").splitlines()
            if any(level in line for level in levels) or line.startswith("Traceback")
        ]
