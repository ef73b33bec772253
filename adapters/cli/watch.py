"""``leanjoin watch``: join a running session's room as a viewer and report its video.

Prints each connection state change, then once a second the frames received
and the frame rate; ``--save-frame`` writes the last frame seen as PNG. Leaves
after ``--seconds``, when the room is gone (the session ended), or on Ctrl-C /
SIGTERM. Exit status 0 when video was received, 1 with one line saying why not.

Where the viewer's credentials come from is one function (:func:`_target`):
a session's subscribe token (``--subscribe-token`` or
``LEANJOIN_SUBSCRIBE_TOKEN``), exchanged at ``/watch-stream`` below ``--url``
(the stream URL the session used, or an HTTP base URL) with the api key of the
environment; or a LiveKit URL and a viewer token given directly
(``--livekit-url``, ``--token`` or, kept out of shell history and ``ps``,
``LEANJOIN_LIVEKIT_TOKEN``).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import anyio
import anyio.abc
import anyio.to_thread
import attrs
import click

from leanjoin.adapters.client.endpoint import API_KEY_ENV_VARS, api_key_from_env
from leanjoin.adapters.client.errors import InvalidArgument, LeanJoinError
from leanjoin.adapters.client.files import watch_credentials
from leanjoin.adapters.client.png import write_png
from leanjoin.adapters.client.video_sources import Frame
from leanjoin.adapters.client.viewer import (
    Viewer,
    ViewerStateChanged,
    watch_base_url,
    watch_room,
)

from .main import ExitCode, FiniteFloatRange, _fail

TOKEN_ENV: Final = "LEANJOIN_LIVEKIT_TOKEN"
SUBSCRIBE_ENV: Final = "LEANJOIN_SUBSCRIBE_TOKEN"


@attrs.frozen
class WatchTarget:
    """A room to watch: its LiveKit URL and a viewer's token (never printed)."""

    livekit_url: str
    token: str = attrs.field(repr=False)
    room_name: str | None = None


@attrs.frozen
class SubscribeTarget:
    """A session to watch by its subscribe token, asked of ``/watch-stream``."""

    subscribe_token: str = attrs.field(repr=False)
    url: str | None = None


@attrs.define
class Watched:
    """What a watch saw."""

    room_name: str | None = None
    joined: bool = False
    frames: int = 0
    seconds: float = 0.0
    reason: str | None = None  # why the room went away, if it did
    interrupted: bool = False  # Ctrl-C or SIGTERM ended the watch
    last_frame: Frame | None = attrs.field(default=None, repr=False)


def _target(
    livekit_url: str | None, token: str | None, subscribe_token: str | None, url: str | None
) -> WatchTarget | SubscribeTarget:
    if subscribe_token:
        if livekit_url:
            _fail(
                f"give --subscribe-token (or {SUBSCRIBE_ENV}) or --livekit-url, not both",
                ExitCode.USAGE,
            )
        if api_key_from_env() is None:
            names = " or ".join(API_KEY_ENV_VARS)
            _fail(
                f"set the api key in {names}: the subscribe token is exchanged with it",
                ExitCode.USAGE,
            )
        if url is not None and not _exchange_url(url):  # not echoed: it may carry a key
            _fail(
                "--url must be the stream URL (ws:// or wss://) or an HTTP base URL "
                "(http:// or https://) with a host",
                ExitCode.USAGE,
            )
        return SubscribeTarget(subscribe_token, url)
    if not livekit_url:
        _fail(
            f"nothing to watch: pass --subscribe-token (or set {SUBSCRIBE_ENV}), "
            "or --livekit-url with a viewer token",
            ExitCode.USAGE,
        )
    if not token:
        _fail(f"no viewer token: pass --token or set {TOKEN_ENV}", ExitCode.USAGE)
    assert livekit_url is not None and token is not None
    return WatchTarget(livekit_url, token)


def _exchange_url(url: str) -> bool:
    """Whether ``--url`` names a host where ``/watch-stream`` can be asked."""
    try:
        base = urlsplit(watch_base_url(url) or "")
    except InvalidArgument:
        return False
    return base.scheme in ("http", "https") and bool(base.netloc)


EXIT_STATUS: Final = (
    "\b\nExit status:\n  0  video was received\n"
    "  1  none was (refused, unreachable, the room went away or stayed dark)\n"
    "  2  usage: a bad option, or no URL, token or api key"
)


@click.command("watch", epilog=EXIT_STATUS)
@click.option(
    "--subscribe-token",
    envvar=SUBSCRIBE_ENV,
    show_envvar=True,
    help="The session's subscribe token (its session_started event shows it).",
)
@click.option(
    "--url",
    help="Where to exchange it: the stream URL the session connected to, or an HTTP "
    "base URL [default: the service's].",
)
@click.option("--livekit-url", help="The session room's LiveKit URL (ws:// or wss://).")
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    show_envvar=True,
    help="A viewer's (subscribe-only) LiveKit token; prefer the environment variable.",
)
@click.option(
    "--seconds",
    type=FiniteFloatRange(min=0, min_open=True),
    help="Leave after this long (default: until the session ends or Ctrl-C).",
)
@click.option(
    "--video-timeout",
    type=FiniteFloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    help="Give up when no video has arrived this long after joining.",
)
@click.option(
    "--save-frame",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the last frame received to this PNG file.",
)
def watch(
    subscribe_token: str | None,
    url: str | None,
    livekit_url: str | None,
    token: str | None,
    seconds: float | None,
    video_timeout: float,
    save_frame: Path | None,
) -> None:
    """Watch a running session's model output as a viewer (publishes nothing)."""
    target = _target(livekit_url, token, subscribe_token, url)
    if not logging.getLogger().isEnabledFor(logging.INFO):
        # Without -v: a refused join is reported in one line below, not also as the
        # native client's own ERROR lines about each signal path it tried.
        logging.getLogger("livekit").setLevel(logging.CRITICAL)
    try:
        watched = anyio.run(_watch, target, seconds, video_timeout)
    except InvalidArgument as exc:
        _fail(str(exc), ExitCode.USAGE)
        return
    except LeanJoinError as exc:
        _fail(f"watch failed: {exc}")
        return
    except KeyboardInterrupt:
        _fail("watch interrupted before the room was joined")
        return
    room = watched.room_name or "the room"
    rate = watched.frames / watched.seconds if watched.seconds > 0 else 0.0
    click.echo(
        f"watched {room}: {watched.frames} frames in {watched.seconds:.1f} s ({rate:.1f} fps)"
    )
    if watched.last_frame is not None and save_frame is not None:
        click.echo(f"last frame: {write_png(save_frame, watched.last_frame)}")
    if watched.frames == 0:
        waited = video_timeout if seconds is None else min(seconds, video_timeout)
        why = f"none arrived within {waited:g} s"
        if watched.interrupted:
            why = "stopped before any arrived"
        elif watched.reason and watched.reason != "client_initiated":
            why = f"the room went away ({watched.reason})"
        _fail(f"no video from {room}: {why}")


async def _watch(
    target: WatchTarget | SubscribeTarget, seconds: float | None, video_timeout: float
) -> Watched:
    if isinstance(target, SubscribeTarget):
        credentials = await watch_credentials(
            target.subscribe_token, base_url=watch_base_url(target.url)
        )
        target = WatchTarget(credentials.livekit_url, credentials.token, credentials.room_name)
    watched = Watched(room_name=target.room_name)
    stop = anyio.Event()

    def show(event: ViewerStateChanged) -> None:
        why = f" ({event.reason})" if event.reason else ""
        click.echo(f"state: {event.state.value}{why}")

    # A failure is kept out of the task group (which would wrap it in an
    # ExceptionGroup) and raised as itself once the group is done.
    failure: LeanJoinError | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_on_signals, stop, watched, tg.cancel_scope)
        try:
            async with watch_room(
                target.livekit_url, target.token, room_name=target.room_name, on_event=show
            ) as viewer:
                watched.room_name = viewer.room_name
                watched.joined = True
                click.echo(f"watching room {viewer.room_name}")
                started = anyio.current_time()
                async with anyio.create_task_group() as inner:
                    inner.start_soon(_keep_last, viewer, watched)
                    inner.start_soon(_report_rate, viewer)
                    inner.start_soon(_give_up_if_dark, viewer, video_timeout, stop)
                    with anyio.move_on_after(math.inf if seconds is None else seconds):
                        await _first(stop.wait, viewer.wait_closed)
                    inner.cancel_scope.cancel()
                watched.seconds = anyio.current_time() - started
                watched.frames = viewer.frame_count
                watched.reason = viewer.disconnect_reason
        except LeanJoinError as exc:
            failure = exc
        finally:
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return watched


async def _keep_last(viewer: Viewer, watched: Watched) -> None:
    async for frame in viewer.frames():
        watched.last_frame = frame


async def _give_up_if_dark(viewer: Viewer, timeout: float, stop: anyio.Event) -> None:
    # A room with no session in it stays joined and dark: do not wait forever.
    await anyio.sleep(timeout)
    if viewer.frame_count == 0:
        stop.set()


async def _report_rate(viewer: Viewer) -> None:
    previous = viewer.frame_count
    while True:
        await anyio.sleep(1.0)
        count = viewer.frame_count
        click.echo(f"frames: {count} ({count - previous:.0f} fps)")
        previous = count


async def _first(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return once the first of ``waits`` returns."""
    async with anyio.create_task_group() as tg:

        async def until(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        for wait in waits:
            tg.start_soon(until, wait)


async def _on_signals(stop: anyio.Event, watched: Watched, scope: anyio.CancelScope) -> None:
    """Ctrl-C and SIGTERM leave the room (politely) instead of killing the process;
    while still joining, the join is cancelled (``watch_room`` disconnects it)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread (a test runner's worker)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            watched.interrupted = True
            if stop.is_set() or not watched.joined:
                scope.cancel()
                return
            stop.set()
