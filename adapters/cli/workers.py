"""``leanjoin serve --workers N``: N reference-server processes on one port.

The parent reserves the port with a socket bound with ``SO_REUSEPORT`` that
never listens (so the kernel hands it no connection, and no other program can
take the port), then starts N workers (``python -m leanjoin.adapters.cli.serve
--worker-index I`` with the same options), each a whole reference server
listening on that port with ``SO_REUSEPORT``: the kernel spreads new
connections over the workers by a hash of the client's address and port.

What is per worker (protocol §10.8): the admission queue (``--capacity``,
``--max-queue`` and ``--admissions-per-second`` hold for each worker, so the
server admits up to N x capacity), the connection count of
``--fault-connections``, the LiveKit double (each worker's on a port of its
own, named in the ``livekit_room_info`` it sends) and the session numbers of
the log, whose lines name their worker. Nothing of a session is shared, so
no join waits on another process. Shared: the HTTP API's port (also
``SO_REUSEPORT``) and the directory of uploaded files (``--files-dir``, else a
temporary one the parent removes at the end), so any worker finds any upload,
and in it which worker's double holds each room, so any worker answers a
viewer's ``/watch-stream`` (the doubles share one secret, handed over as the
api key is).

The parent prints where the server listens once every worker does, forwards
SIGUSR1 (a room loss) to each, and on SIGINT or SIGTERM, or when a worker
dies, stops them all: SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`. A
worker whose parent is gone stops too: its stdin is a pipe from the parent,
and it stops at the pipe's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

import attrs
import click

from leanjoin.adapters.server.listening import binding
from leanjoin.adapters.server.reference import STREAM_PATH
from leanjoin.engine.server.knobs import ServerKnobs

WORKER_KEY_ENV: Final = "LEANJOIN_SERVE_WORKER_API_KEY"
"""How the parent hands its workers the api key (never on a command line)."""
WORKER_LIVEKIT_SECRET_ENV: Final = "LEANJOIN_SERVE_WORKER_LIVEKIT_SECRET"
"""The secret of every worker's LiveKit double: each mints viewers' tokens
for the rooms of the others (``/watch-stream``)."""

READY_TIMEOUT: Final = 60.0  # seconds a worker may take to start listening
STOP_TIMEOUT: Final = 30.0  # seconds a worker gets to stop after SIGTERM

log = logging.getLogger("leanjoin.serve")


def reserve_port(host: str, port: int, option: str) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: any free port) with
    ``SO_REUSEPORT``, not listening: it holds the port for the workers;
    :class:`CannotListen` naming ``option`` when it cannot."""
    with binding(host, port, option):
        return _reserve(host, port)


def _reserve(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    reservation = socket.socket(family, kind, proto)
    try:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind(address)
    except OSError:
        reservation.close()
        raise
    return reservation


async def _ready(worker: asyncio.subprocess.Process, index: int) -> dict[str, object]:
    """The line a worker prints once it listens."""
    assert worker.stdout is not None
    line = await worker.stdout.readline()
    if not line:
        raise click.ClickException(f"worker {index} (pid {worker.pid}) exited before it listened")
    ready = json.loads(line)
    assert isinstance(ready, dict)
    return ready


async def _stop(workers: list[asyncio.subprocess.Process]) -> list[int]:
    """SIGTERM every worker still running, SIGKILL one that outlasts
    :data:`STOP_TIMEOUT`; their exit codes."""
    for worker in workers:
        if worker.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.send_signal(signal.SIGTERM)
    codes: list[int] = []
    for worker in workers:
        try:
            codes.append(await asyncio.wait_for(worker.wait(), STOP_TIMEOUT))
        except TimeoutError:
            log.warning("worker pid %d did not stop in %g s: killed", worker.pid, STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                worker.kill()
            codes.append(await worker.wait())
    return codes


async def supervise(
    host: str,
    ports: tuple[int, int],
    api_key: str | None,
    options: list[str],
    count: int,
    files_dir: Path | None = None,
) -> int:
    """Run ``count`` workers on one stream port and one HTTP API port until
    SIGINT or SIGTERM (or a worker's death); ``options`` are the knob options
    each worker gets; uploads go to ``files_dir`` (None: a temporary directory,
    removed at the end). The exit code."""
    with contextlib.ExitStack() as stack:
        reservation = stack.enter_context(reserve_port(host, ports[0], "--port"))
        http_reservation = stack.enter_context(reserve_port(host, ports[1], "--http-port"))
        if files_dir is None:
            files_dir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="leanjoin-files-"))
            )
        port = int(reservation.getsockname()[1])
        http_port = int(http_reservation.getsockname()[1])
        return await _supervise(host, (port, http_port), api_key, options, count, files_dir)


async def _supervise(
    host: str,
    ports: tuple[int, int],
    api_key: str | None,
    options: list[str],
    count: int,
    files_dir: Path,
) -> int:
    port, http_port = ports
    key = api_key if api_key is not None else secrets.token_urlsafe(24)
    command = [
        sys.executable,
        "-m",
        "leanjoin.adapters.cli.serve",
        "--host",
        host,
        "--port",
        str(port),
        "--http-port",
        str(http_port),
        "--files-dir",
        str(files_dir),
        "--log-level",  # the parent's (leanjoin -v serve): every process logs alike
        logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        *options,
    ]
    env = {
        **os.environ,
        WORKER_KEY_ENV: key,
        WORKER_LIVEKIT_SECRET_ENV: secrets.token_urlsafe(32),
        "PYTHONUNBUFFERED": "1",
    }
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    workers: list[asyncio.subprocess.Process] = []
    failed = False
    try:
        for index in range(1, count + 1):
            # stderr is the parent's: the workers' log lines go where its own go.
            workers.append(
                await asyncio.create_subprocess_exec(
                    *command,
                    "--worker-index",
                    str(index),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    env=env,
                )
            )
        starting: asyncio.Future[list[dict[str, object]]] = asyncio.gather(
            *(_ready(w, i) for i, w in enumerate(workers, start=1))
        )
        waiting: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        await asyncio.wait(
            [starting, waiting], timeout=READY_TIMEOUT, return_when="FIRST_COMPLETED"
        )
        if not starting.done():
            starting.cancel()
            waiting.cancel()
            # Its end read, or asyncio logs the cancelled wait as a traceback.
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            if stop.is_set():
                return 0
            raise click.ClickException(f"the workers did not listen within {READY_TIMEOUT:g} s")
        waiting.cancel()
        ready = starting.result()
        click.echo(f"leanjoin reference server: ws://{host}:{port}{STREAM_PATH}")
        if api_key is None:
            click.echo(f"api key (generated): {key}")
        pids = ", ".join(str(worker.pid) for worker in workers)
        click.echo(f"workers: {count} (pids {pids}) on port {port}, SO_REUSEPORT")
        for index, info in enumerate(ready, start=1):
            click.echo(f"LiveKit double of worker {index}: {info['livekit']}")
        click.echo(f"HTTP API (files, watch-stream): http://{host}:{http_port}")

        def lose_rooms() -> None:
            for worker in workers:
                if worker.returncode is None:
                    worker.send_signal(signal.SIGUSR1)

        loop.add_signal_handler(signal.SIGUSR1, lose_rooms)
        ended = [asyncio.ensure_future(worker.wait()) for worker in workers]
        waiting = asyncio.ensure_future(stop.wait())
        await asyncio.wait([waiting, *ended], return_when="FIRST_COMPLETED")
        waiting.cancel()
        for index, (worker, end) in enumerate(zip(workers, ended, strict=True), start=1):
            if end.done() and not stop.is_set():
                log.error(
                    "worker %d (pid %d) exited (%s): stopping all", index, worker.pid, end.result()
                )
                failed = True
            end.cancel()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        click.echo("shutting down", err=True)
        codes = await _stop(workers)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 1 if failed or any(code != 0 for code in codes) else 0


def knob_options(knobs: ServerKnobs) -> list[str]:
    """Command-line options that give ``knobs`` back (each field that differs
    from its default), for the workers."""
    options: list[str] = []
    for field in attrs.fields(ServerKnobs):
        value = getattr(knobs, field.name)
        if value == field.default:
            continue
        name = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            assert value and field.default is False, f"{field.name}: only a flag can be set"
            options.append(name)
        elif isinstance(value, enum.Enum):
            options += [name, str(value.value)]
        elif value is None:
            raise ValueError(f"{field.name}: None cannot be given on the command line")
        else:
            options += [name, repr(value) if isinstance(value, float) else str(value)]
    return options
