"""``leanjoin serve``: run the reference server until Ctrl-C (or SIGTERM);
SIGUSR1 injects a room loss in every room (a fault-injection control).

Every field of :class:`~leanjoin.engine.server.knobs.ServerKnobs` becomes one
option (``capacity`` -> ``--capacity``), with the field's help text, so the
command line and the Python API cannot drift apart. The log (stderr) has one
line per session phase and never shows api keys, tokens or image data; stdout
has the URL to connect to, when none was given the generated api key, and
last the HTTP API's base URL (files, watch-stream; ``--http-port``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import json
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import click

from leanjoin.adapters.cli.workers import (
    WORKER_KEY_ENV,
    WORKER_LIVEKIT_SECRET_ENV,
    knob_options,
    supervise,
)
from leanjoin.adapters.server.listening import CannotListen
from leanjoin.adapters.server.reference import ReferenceServer
from leanjoin.engine.server.knobs import AckDrop, FaultPhase, MediaFailurePhase, ServerKnobs

DEFAULT_PORT: Final = 8765

log = logging.getLogger("leanjoin.serve")

# Knob annotations are strings (postponed evaluation): map each to a click type.
_PLAIN_TYPES: Final[dict[str, type]] = {
    "int": int,
    "int | None": int,
    "float": float,
    "float | None": float,
    "str": str,
}
_ENUM_TYPES: Final[dict[str, type[enum.Enum]]] = {
    "AckDrop": AckDrop,
    "FaultPhase | None": FaultPhase,
    "MediaFailurePhase | None": MediaFailurePhase,
}

F = TypeVar("F", bound=Callable[..., Any])


def _knob_option(field: attrs.Attribute[Any]) -> Callable[[F], F]:
    name = "--" + field.name.replace("_", "-")
    help_text = field.metadata.get("help", "")
    annotation = str(field.type)
    if annotation == "bool":
        return click.option(name, field.name, is_flag=True, default=field.default, help=help_text)
    enum_type = _ENUM_TYPES.get(annotation)
    if enum_type is not None:
        default = field.default.value if isinstance(field.default, enum.Enum) else None
        choice = click.Choice([member.value for member in enum_type])
        return click.option(
            name, field.name, type=choice, default=default, show_default=True, help=help_text
        )
    return click.option(
        name,
        field.name,
        type=_PLAIN_TYPES[annotation],
        default=field.default,
        show_default=field.default is not None,
        help=help_text,
    )


def _with_knob_options(command: F) -> F:
    for field in reversed(attrs.fields(ServerKnobs)):
        command = _knob_option(field)(command)
    return command


def knobs_from_options(values: dict[str, Any]) -> ServerKnobs:
    """The knobs named by parsed option values; a bad value is a usage error."""
    converted = dict(values)
    for field in attrs.fields(ServerKnobs):
        enum_type = _ENUM_TYPES.get(str(field.type))
        if enum_type is not None and converted.get(field.name) is not None:
            converted[field.name] = enum_type(converted[field.name])
    try:
        return ServerKnobs(**converted)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from exc


GC_YOUNGEST_THRESHOLD: Final = 20_000
"""Allocations between two collections of the youngest generation (Python's
default: 700). A burst of 500 handshakes allocates enough to run ~115
collections, 60-90 ms of the server's CPU (gc.callbacks); at 20,000 it runs
a dozen, 10-40 ms. Cyclic garbage waits a little longer, no more."""


def _tune_gc() -> None:
    """Once the server is up: what start-up allocated (modules, classes,
    tables) is never garbage, so no collection walks it again (``gc.freeze``),
    and the youngest generation is collected less often."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNGEST_THRESHOLD, middle, oldest)


def _watch_parent(stop: asyncio.Event) -> None:
    """A worker's stdin is a pipe from its parent (``--workers``): its end
    means the parent is gone, and the worker stops."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            ended = not os.read(fd, 4096)
        except OSError:
            ended = True
        if ended:
            loop.remove_reader(fd)
            log.info("the parent process is gone: stopping")
            stop.set()

    loop.add_reader(fd, readable)


def http_port_for(port: int, http_port: int | None) -> int:
    """The HTTP API's port: as given, else the stream port's next one (a free
    port when the stream port is itself any free port, 0)."""
    if http_port is not None:
        return http_port
    return port + 1 if 0 < port < 65535 else 0


async def _run(
    host: str,
    port: int,
    api_key: str | None,
    knobs: ServerKnobs,
    worker: int | None = None,
    *,
    http_port: int = 0,
    files_dir: Path | None = None,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with ReferenceServer(
        host=host,
        port=port,
        api_key=api_key,
        knobs=knobs,
        reuse_port=worker is not None,
        http_port=http_port,
        files_dir=files_dir,
        livekit_secret=os.environ.get(WORKER_LIVEKIT_SECRET_ENV) if worker is not None else None,
    ) as server:
        _tune_gc()
        losses: set[asyncio.Task[None]] = set()

        def lose_rooms() -> None:
            # Fault injection: a room loss in every room, as a test's
            # RoomHandle.disconnect_participants("room_deleted") would do in-process.
            log.info("SIGUSR1: room loss: every participant of every room is disconnected")
            task = loop.create_task(server.livekit.disconnect_all("room_deleted"))
            losses.add(task)
            task.add_done_callback(losses.discard)

        loop.add_signal_handler(signal.SIGUSR1, lose_rooms)
        if worker is not None:  # one line for the parent: listening
            _watch_parent(stop)
            ready = {"worker": worker, "pid": os.getpid(), "livekit": server.livekit.url}
            click.echo(json.dumps(ready))
        else:
            click.echo(f"leanjoin reference server: {server.url}")
            if api_key is None:
                click.echo(f"api key (generated): {server.api_key}")
            click.echo(f"LiveKit double: {server.livekit.url}")
            click.echo(f"HTTP API (files, watch-stream): {server.http_url}")
        try:
            await stop.wait()
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        if worker is None:
            click.echo("shutting down", err=True)


EXIT_STATUS: Final = """\b
Exit status:
  0  stopped by Ctrl-C or SIGTERM
  1  could not listen (a port in use, an address not this host's), or a worker died
  2  usage: a bad option (a --files-dir that cannot be used included)"""


@click.command("serve", epilog=EXIT_STATUS)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="port to listen on (0: any free port)",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="port of the HTTP API: files, watch-stream (0: any free port) "
    "[default: --port + 1, or any free port when --port is 0]",
)
@click.option(
    "--files-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where uploaded files are kept (shared by the workers) "
    "[default: a temporary directory, removed at exit]",
)
@click.option("--api-key", default=None, help="the key clients must send (default: generated)")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="processes serving the port (SO_REUSEPORT); each has its own admission "
    "queue (--capacity is per worker) and LiveKit double",
)
@click.option("--worker-index", type=int, default=None, hidden=True)
# A worker logs at its parent's level (``leanjoin -v serve --workers 2``); run
# directly (``python -m leanjoin.adapters.cli.serve``) the default is INFO.
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    default=None,
    hidden=True,
)
@_with_knob_options
def serve(
    host: str,
    port: int,
    http_port: int | None,
    files_dir: Path | None,
    api_key: str | None,
    workers: int,
    worker_index: int | None,
    log_level: str | None,
    **knob_values: Any,
) -> None:
    """Run the reference lean-join server with its LiveKit double.

    Fault injection from outside: SIGUSR1 makes the LiveKit double disconnect
    every participant of every room with reason ROOM_DELETED (a room loss; each
    client reconnects on a fresh session). SIGINT or SIGTERM stops the server.

    With --workers N, N processes accept on the one port, the kernel spreading
    the connections; the parent forwards SIGUSR1 to each and stops them all on
    SIGINT or SIGTERM. Capacity, queue length, admission rate and
    --fault-connections hold per worker (protocol §10.8).
    """
    knobs = knobs_from_options(knob_values)
    if files_dir is not None and worker_index is None:
        _check_files_dir(files_dir)
    if workers > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise click.UsageError("--workers needs SO_REUSEPORT, which this system lacks")
    if worker_index is not None:  # started by a parent's --workers
        api_key = os.environ.get(WORKER_KEY_ENV, api_key)
        who = f"worker {worker_index} (pid {os.getpid()}) "
    else:
        who = ""
    # Under `leanjoin` the group configured logging already (WARNING, or -v's
    # INFO / -vv's DEBUG): this is then a no-op, and --log-level aligns workers.
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {who}%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if log_level is not None:
        logging.getLogger().setLevel(log_level)
    # transitions logs every callback at INFO: far too chatty for one line per phase.
    logging.getLogger("transitions").setLevel(logging.WARNING)
    # What the format above never shows, a record need not collect (the logging
    # HOWTO's "Optimization"): ~1.5 us of each of a handshake's five lines.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # no caller lookup (file, line, function)
    with _one_line_when_cannot_listen():
        if workers > 1:
            code = 1
            with contextlib.suppress(KeyboardInterrupt):
                code = asyncio.run(
                    supervise(
                        host,
                        (port, http_port_for(port, http_port)),
                        api_key,
                        knob_options(knobs),
                        workers,
                        files_dir,
                    )
                )
            click.echo("stopped", err=True)
            sys.exit(code)
        with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C during shutdown
            asyncio.run(
                _run(
                    host,
                    port,
                    api_key,
                    knobs,
                    worker_index,
                    http_port=http_port_for(port, http_port),
                    files_dir=files_dir,
                )
            )
        if worker_index is None:
            click.echo("stopped", err=True)


def _check_files_dir(files_dir: Path) -> None:
    """``--files-dir`` made if missing and writable, or a usage error saying why."""
    try:
        files_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=files_dir):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise click.BadParameter(
            f"cannot use {files_dir}: {reason}", param_hint="'--files-dir'"
        ) from None


@contextlib.contextmanager
def _one_line_when_cannot_listen() -> Iterator[None]:
    """A port in use or an address not this host's ends ``serve`` with its one line."""
    try:
        yield
    except CannotListen as exc:
        click.echo(f"leanjoin: {exc.strerror}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    serve()
