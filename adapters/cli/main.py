"""The ``leanjoin`` command line: ``connect``, ``watch``, ``files``, ``preflight``, ``demo``, ``serve``, ``check``, ``diagrams``.

``connect`` needs only the client. ``serve`` and ``demo`` need the server stack
(``pip install 'leanjoin[server]'``); without it they fail with one line saying
so. Subcommands in their own modules are imported only when looked up, so
``leanjoin connect`` never imports the server stack.

Exit status: 0 on success, 1 with a one-line reason on failure, 2 on misuse
(click); ``connect`` adds 3 (connected, but the server rejected the initial
image or prompt) and documents its codes in ``--help`` (:class:`ExitCode`).
The api key comes from ``LEANJOIN_API_KEY`` or ``DECART_API_KEY`` only and is
never printed.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import importlib
import logging
import math
import os
import signal
import sys
import textwrap
import threading
import wave
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import anyio.to_thread
import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from leanjoin.adapters.client.api import Session, connect
from leanjoin.adapters.client.audio_sources import AudioSource, Microphone, Tone, WavSource
from leanjoin.adapters.client.camera import Camera
from leanjoin.adapters.client.endpoint import (
    API_KEY_ENV_VARS,
    api_key_from_env,
    stream_url,
)
from leanjoin.adapters.client.errors import CameraError, LeanJoinError, MicrophoneUnavailable
from leanjoin.adapters.client.images import file_ref, image_to_base64
from leanjoin.adapters.client.models import ModelDefinition, UnknownModelError, resolve_model
from leanjoin.adapters.client.observability import DEFAULT_STATS_INTERVAL, SessionEvent
from leanjoin.adapters.client.png import write_png
from leanjoin.adapters.client.room_audio import RECEIVED_CHANNELS, RECEIVED_RATE
from leanjoin.adapters.client.room_transport import MediaOptions
from leanjoin.adapters.client.video_sources import FileSource, TestPattern, VideoSource
from leanjoin.engine.client.config import RESERVED_QUERY_NAMES, RetryPolicy, Timeouts
from leanjoin.engine.client.outputs import (
    ConnectionState,
    ErrorKind,
    ErrorOccurred,
    InitialStateAcked,
    SessionStarted,
    StateChanged,
)

from .display import StatusView, describe, event_json
from .native_stderr import NativeStderr, filtered_stderr, quit_now

SERVER_EXTRA: Final = "pip install 'leanjoin[server]'"
# What `--camera` without a DEVICE stands for: the platform's default device.
DEFAULT_CAMERA: Final = "default"

# Subcommands in their own modules ("module:attribute"), imported when looked up.
LAZY_COMMANDS: Final[Mapping[str, str]] = {
    "check": "leanjoin.adapters.cli.check:check",
    "diagrams": "leanjoin.adapters.cli.diagrams:diagrams",
    "preflight": "leanjoin.adapters.cli.preflight:preflight",
    "files": "leanjoin.adapters.cli.files:files",
    "serve": "leanjoin.adapters.cli.serve:serve",
    "watch": "leanjoin.adapters.cli.watch:watch",
}
# Subcommands that import the server stack (the `server` extra).
SERVER_COMMANDS: Final = frozenset({"serve", "demo"})


def _query_params(values: tuple[str, ...]) -> dict[str, str]:
    """``KEY=VALUE`` options as a mapping, in order; a later key wins."""
    params: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint="'--query-param'")
        if key in RESERVED_QUERY_NAMES:  # said at once, as the usage error it is
            raise click.BadParameter(
                f"{key!r} is set by leanjoin itself (from its own option or the environment)",
                param_hint="'--query-param'",
            )
        params[key] = rest
    return params


class FiniteFloatRange(click.FloatRange):
    """A ``click.FloatRange`` that refuses NaN and the infinities, which pass
    its bounds checks (``nan < 0`` is false) and would fail later, far from
    the option that carried them."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def _configure_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose == 0:
        # The native LiveKit client warns about its v1 -> v0 signal fallback on
        # every join (the double serves v0 only), and logs ERROR lines of its own
        # for what leanjoin reports in one line (a refused join, each path it
        # tried) or handles (channels closing as a room is left): noise unless -v.
        logging.getLogger("livekit").setLevel(logging.CRITICAL)
    # What the native libraries write to stderr themselves (see entry()).
    NativeStderr.show_noise = verbose > 0


class ExitCode(enum.IntEnum):
    """What ``leanjoin connect`` tells a script (its ``--help`` lists them)."""

    OK = 0
    FAILED = 1
    USAGE = 2  # click's own code for misuse
    REJECTED = 3


CONNECT_EXIT_CODES: Final[Mapping[ExitCode, str]] = {
    ExitCode.OK: "connected, and left as asked (--seconds, Ctrl-C or SIGTERM); the "
    "initial image and prompt, if given, were accepted",
    ExitCode.FAILED: "not connected (refused, unreachable, timed out or interrupted), "
    "or the session failed after connecting",
    ExitCode.USAGE: "usage: a bad option or argument, or no api key",
    ExitCode.REJECTED: "connected, but the server rejected the initial image or prompt "
    "(or never answered it)",
}


def _exit_codes_help() -> str:
    r"""The epilog of ``connect --help``; ``\b`` keeps click from rewrapping it."""
    lines = ["\b", "Exit status:"]
    for code, meaning in CONNECT_EXIT_CODES.items():
        lines += textwrap.wrap(
            meaning, width=76, initial_indent=f"  {int(code)}  ", subsequent_indent="     "
        )
    return "\n".join(lines)


def _image_option(value: str | None) -> str | None:
    """``--image``: an uploaded file's id (unless a file has that name), else
    a file that must exist."""
    if value is None or (file_ref(value) and not Path(value).exists()):
        return value
    if not Path(value).is_file():
        raise click.BadParameter(
            f"{value!r} is neither a file nor an uploaded file's id (file_...)",
            param_hint="'--image'",
        )
    return value


def _fail(reason: str, code: ExitCode = ExitCode.FAILED) -> None:
    click.echo(f"leanjoin: {reason}", err=True)
    sys.exit(int(code))


def _missing_extra(command: str, exc: ModuleNotFoundError) -> str | None:
    """The one-line reason when ``exc`` is a third-party module of the server
    stack that is not installed; None when it is one of ours (a bug: re-raise)."""
    missing = exc.name or ""
    if command not in SERVER_COMMANDS or missing.partition(".")[0] in ("", "leanjoin"):
        return None
    return (
        f"`leanjoin {command}` needs the server extra ({missing} is not installed): {SERVER_EXTRA}"
    )


def _unavailable(name: str, reason: str) -> click.Command:
    """A stand-in for a command whose module cannot be imported: ``leanjoin --help``
    lists it with the fix; run with any arguments (``--help`` too), it fails in one line."""
    return click.Command(
        name,
        callback=lambda: _fail(reason),
        help=reason,
        short_help=f"(not installed: {SERVER_EXTRA})",
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when the subcommand is looked
    up (click's documented lazy-loading pattern); ``lazy`` maps names to
    ``"module:attribute"``."""

    def __init__(self, *args: Any, lazy: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module_name, _, attribute = self.lazy[cmd_name].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            reason = _missing_extra(cmd_name, exc)
            if reason is None:
                raise
            return _unavailable(cmd_name, reason)
        command = getattr(module, attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
        return command


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS)
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Realtime lean-join client: connect to a model, or run the local demo."""
    _configure_logging(verbose)


# ---- connect -------------------------------------------------------------------------


@main.command("connect", epilog=_exit_codes_help())
@click.argument("url", required=False)
@click.option(
    "--model",
    required=True,
    help="Model name sent in the socket URL: a realtime model (lucy-2.5, ...) or echo "
    "(the reference server's). Sets the test pattern's size and rate.",
)
@click.option(
    "--image",
    callback=lambda _ctx, _param, value: _image_option(value),
    help="Reference image file (PNG/JPEG), or an uploaded file's id (file_..., "
    "see `leanjoin files upload`), sent as image_ref.",
)
@click.option("--prompt", help="Initial prompt.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON event per line.")
@click.option(
    "--stats",
    is_flag=True,
    help="Also print the WebRTC statistics every second (connection quality, the "
    "connect breakdown, reconnects and video stalls are always printed).",
)
@click.option(
    "--seconds",
    type=FiniteFloatRange(min=0),
    help="Leave after N seconds connected, once the initial image or prompt is answered.",
)
@click.option(
    "--save-frames",
    type=click.Path(file_okay=False, path_type=Path),
    help="Save about one output frame per second as PNG into this directory.",
)
@click.option(
    "--video",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Publish this video file (looped) instead of the test pattern.",
)
@click.option(
    "--camera",
    "camera_device",
    is_flag=False,
    flag_value=DEFAULT_CAMERA,
    metavar="[DEVICE]",
    help="Publish a capture device instead of the test pattern: DEVICE, or alone the "
    "platform's default (/dev/video0; macOS: 0; Windows: name it, video=<name>). Asks "
    "for the model's size and --fps. Put it after URL, or write --camera=DEVICE.",
)
@click.option(
    "--camera-format",
    metavar="FORMAT",
    help="The FFmpeg input of --camera [default: v4l2; macOS: avfoundation; Windows: dshow].",
)
@click.option(
    "--audio",
    "audio_spec",
    metavar="tone|mic|PATH.wav",
    help="Publish a microphone track: a 440 Hz tone, the default input device, "
    "or a 16-bit PCM WAV file (looped).",
)
@click.option(
    "--save-audio",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the model's audio received to this WAV file (48 kHz mono, 16-bit).",
)
@click.option("--codec", type=click.Choice(["h264", "vp8"]), default="h264", show_default=True)
@click.option(
    "--fps", type=FiniteFloatRange(min=1, max=60), help="Camera frame rate [default: the model's]."
)
@click.option(
    "--max-bitrate", type=click.IntRange(min=100_000), default=3_500_000, show_default=True
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=RetryPolicy().max_retries,
    show_default=True,
    help="Retries of a failed connect attempt (1, 2, 4, 8, then 10 s apart). Failures "
    "no retry can mend (a bad key, a wrong URL, an image too big) are never retried.",
)
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0, min_open=True),
    default=Timeouts().connect,
    show_default=True,
    help="Give up connecting after this many seconds, retries included (time spent "
    "waiting in the server's queue is not counted).",
)
@click.option(
    "--query-param",
    "query_params",
    multiple=True,
    callback=lambda ctx, param, values: _query_params(values),
    metavar="KEY=VALUE",
    help="An extra query parameter of the socket URL, sent before the others "
    "(repeatable; not secret: logs show them).",
)
@click.option(
    "--integration",
    help="Your application's name/version, added to the user agent the server sees.",
)
def connect_command(
    url: str | None,
    model: str,
    image: str | None,
    prompt: str | None,
    as_json: bool,
    stats: bool,
    seconds: float | None,
    save_frames: Path | None,
    video: Path | None,
    camera_device: str | None,
    camera_format: str | None,
    audio_spec: str | None,
    save_audio: Path | None,
    codec: str,
    fps: float | None,
    max_bitrate: int,
    retries: int,
    timeout: float,
    query_params: dict[str, str],
    integration: str | None,
) -> None:
    """Connect to URL and show events. URL is a stream endpoint
    (ws://host:port/v1/stream) or a base URL the model's path goes below;
    default: wss://api3.decart.ai (the service's)."""
    api_key = api_key_from_env()
    if api_key is None:
        names = " or ".join(API_KEY_ENV_VARS)
        raise click.UsageError(f"set the api key in the environment variable {names}")
    try:
        definition = resolve_model(model)
    except UnknownModelError as exc:
        raise click.BadParameter(str(exc), param_hint="'--model'") from None
    try:
        url = stream_url(url, definition.path)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'URL'") from None
    if camera_device is not None and video is not None:
        raise click.UsageError("--camera and --video are two cameras: give one of them")
    if camera_format is not None and camera_device is None:
        raise click.UsageError("--camera-format is the input of --camera: give --camera too")
    fps = definition.fps if fps is None else fps
    try:
        reference = image if image is None or file_ref(image) else image_to_base64(Path(image))
    except ValueError as exc:  # the message says what is wrong; the file is named here
        raise click.BadParameter(f"{image}: {exc}", param_hint="'--image'") from None
    try:
        camera: VideoSource = (
            FileSource(video, fps=fps)
            if video is not None
            else TestPattern(definition.width, definition.height, fps=fps)
            if camera_device is None
            else _open_camera(camera_device, camera_format, definition, fps)
        )
    except ValueError as exc:
        hint = "'--video'" if video is not None else "'--camera'" if camera_device else None
        raise click.BadParameter(str(exc), param_hint=hint) from None
    audio = None if audio_spec is None else _audio_source(audio_spec)
    if save_audio is not None and not save_audio.parent.is_dir():
        raise click.BadParameter(
            f"no directory {str(save_audio.parent)!r} to write into", param_hint="'--save-audio'"
        )
    # Where output goes is made (or opened) now: a path that cannot be written
    # is a usage error before connecting, not a traceback once connected.
    if save_frames is not None:
        _make_directory(save_frames, "--save-frames")
    audio_out = None if save_audio is None else _open_wav(save_audio)
    media = MediaOptions(
        codec="vp8" if codec == "vp8" else "h264", max_bitrate=max_bitrate, max_framerate=fps
    )
    runner = _ConnectRun(
        as_json=as_json,
        stats=stats,
        seconds=seconds,
        save_frames=save_frames,
        save_audio=audio_out,
        retry=RetryPolicy(max_retries=retries),
        timeouts=Timeouts(connect=timeout),
        initial_state=reference is not None or prompt is not None,
        query_params=query_params,
        integration=integration,
    )
    try:
        code, reason = anyio.run(
            runner.run, url, api_key, definition, reference, prompt, camera, media, audio
        )
    except KeyboardInterrupt:  # the user ended the session: judged like any other end
        code, reason = runner.outcome()
    except ValueError as exc:  # a bad URL, caught by the configuration
        code, reason = ExitCode.FAILED, str(exc)
    finally:
        if isinstance(camera, Camera):
            camera.close()  # the device is released before the exit
        if audio_out is not None:
            with contextlib.suppress(OSError):  # its failure is the reason given
                audio_out.close()  # fixes the header: a valid WAV file, however it ended
    if reason is not None:
        _fail(reason, code)


def _make_directory(directory: Path, option: str) -> None:
    """The directory ``option`` writes into, made now if it is missing."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot make directory {str(directory)!r}: {exc.strerror}", param_hint=f"'{option}'"
        ) from None


def _open_wav(path: Path) -> wave.Wave_write:
    """``--save-audio``: the WAV file, open for the model's audio (48 kHz mono, 16-bit)."""
    try:
        # Tried first: wave.open failing half-way leaves a writer that complains when collected.
        path.open("wb").close()
    except OSError as exc:
        raise click.BadParameter(
            f"cannot write {str(path)!r}: {exc.strerror}", param_hint="'--save-audio'"
        ) from None
    out = wave.open(str(path), "wb")  # noqa: SIM115  (closed by connect_command)
    out.setnchannels(RECEIVED_CHANNELS)
    out.setsampwidth(2)
    out.setframerate(RECEIVED_RATE)
    return out


def _open_camera(device: str, form: str | None, model: ModelDefinition, fps: float) -> Camera:
    """The capture device of ``--camera``; no camera is a one-line failure."""
    try:
        return Camera(
            None if device == DEFAULT_CAMERA else device,
            width=model.width,
            height=model.height,
            fps=fps,
            format=form,
        )
    except CameraError as exc:
        _fail(f"camera: {exc}")
        raise  # not reached: _fail exits


def _audio_source(spec: str) -> AudioSource:
    """``--audio``: ``tone``, ``mic`` or a WAV file's path."""
    if spec == "tone":
        return Tone(440)
    try:
        if spec == "mic":
            return Microphone()
        return WavSource(spec)
    except MicrophoneUnavailable as exc:
        _fail(str(exc))
        raise  # not reached: _fail exits
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--audio'") from None


class _ConnectRun:
    """One ``leanjoin connect``: shows the events, and judges the end (:meth:`outcome`)."""

    def __init__(
        self,
        *,
        as_json: bool,
        stats: bool,
        seconds: float | None,
        save_frames: Path | None,
        retry: RetryPolicy,
        save_audio: wave.Wave_write | None = None,
        timeouts: Timeouts,
        initial_state: bool,
        query_params: Mapping[str, str],
        integration: str | None,
    ) -> None:
        self._query_params = query_params
        self._integration = integration
        self._json = as_json
        self._stats = stats
        self._seconds = seconds
        self._save = save_frames
        self._save_audio = save_audio
        self._retry = retry
        self._timeouts = timeouts
        self._console = Console(stderr=as_json)
        self._view = StatusView()
        self._live: Live | None = None
        self._start = 0.0
        self._fatal: str | None = None
        self._save_failed: str | None = None  # writing a frame or the audio failed
        self._connected = False
        # The initial image/prompt: None while unanswered, else (accepted, why not).
        self._asked = initial_state
        self._answer: tuple[bool, str] | None = None
        # Made in run() (anyio events belong to its loop): the answer came (or
        # cannot come any more); the user asked to leave, or the session ended.
        self._answered: anyio.Event | None = None
        self._leave: anyio.Event | None = None

    def outcome(self, failure: str | None = None) -> tuple[ExitCode, str | None]:
        """The exit code and the line that explains it (None: nothing to say)."""
        if failure is not None:
            return ExitCode.FAILED, failure
        if self._fatal is not None:
            return ExitCode.FAILED, self._fatal
        if self._save_failed is not None:
            return ExitCode.FAILED, self._save_failed
        if not self._connected:
            return ExitCode.FAILED, "interrupted before connecting"
        if self._asked and self._answer is not None and not self._answer[0]:
            return ExitCode.REJECTED, (
                f"the server did not take the initial image or prompt: {self._answer[1]}"
            )
        return ExitCode.OK, None

    def _note(self, event: SessionEvent) -> None:
        if isinstance(event, SessionStarted):
            self._connected = True
        elif isinstance(event, InitialStateAcked):
            self._answer = (True, "")
        elif isinstance(event, ErrorOccurred) and event.fatal:
            self._fatal = f"{event.kind.value}: {event.message}"
        elif isinstance(event, ErrorOccurred) and self._refuses_initial_state(event):
            self._answer = (False, f"{event.kind.value}: {event.message}")
        ended = isinstance(event, StateChanged) and event.state is ConnectionState.DISCONNECTED
        if self._answered is not None and (self._answer is not None or ended):
            self._answered.set()

    def _refuses_initial_state(self, error: ErrorOccurred) -> bool:
        if error.kind in (ErrorKind.INITIAL_STATE_REJECTED, ErrorKind.INITIAL_STATE_TIMEOUT):
            return True
        # Connected, a server error ends every wait (spec §4), an unanswered initial state's too.
        return error.kind is ErrorKind.SERVER_ERROR and self._connected and self._answer is None

    def _on_event(self, event: SessionEvent) -> None:
        self._note(event)
        if self._json:
            click.echo(event_json(event, anyio.current_time() - self._start))
            return
        self._view.update(event)
        console = self._live.console if self._live is not None else self._console
        at = anyio.current_time() - self._start
        # One line per event, however long (a stats line is): no wrapping.
        console.print(f"[dim]{at:7.3f}s[/dim] {describe(event)}", highlight=False, soft_wrap=True)

    async def run(
        self,
        url: str,
        api_key: str,
        model: ModelDefinition,
        reference: str | None,  # base64 image data, or an uploaded file id
        prompt: str | None,
        camera: VideoSource,
        media: MediaOptions,
        audio: AudioSource | None = None,
    ) -> tuple[ExitCode, str | None]:
        """Connect, stay, leave; the exit code and its reason (see :meth:`outcome`)."""
        self._start = anyio.current_time()
        self._answered = anyio.Event()
        self._leave = anyio.Event()
        if not self._asked:
            self._answered.set()
        display: contextlib.AbstractContextManager[Live | None] = (
            contextlib.nullcontext()
            if self._json
            else Live(self._view, console=self._console, refresh_per_second=8, transient=True)
        )
        failure: str | None = None
        with display as live:
            self._live = live
            async with anyio.create_task_group() as tg:
                listening: anyio.CancelScope = await tg.start(self._on_signals, tg.cancel_scope)
                try:
                    async with connect(
                        url,
                        api_key=api_key,
                        model=model,
                        image=reference,
                        prompt=prompt,
                        camera=camera,
                        audio=audio,
                        media=media,
                        retry=self._retry,
                        timeouts=self._timeouts,
                        query_params=self._query_params,
                        integration=self._integration,
                        on_event=self._on_event,
                        stats_interval=DEFAULT_STATS_INTERVAL if self._stats else None,
                    ) as session:
                        await self._stay(session)
                except LeanJoinError as exc:
                    failure = str(exc)
                finally:
                    tg.cancel_scope.cancel()
                    listening.cancel()
        return self.outcome(failure)

    async def _stay(self, session: Session) -> None:
        assert self._leave is not None and self._answered is not None
        async with anyio.create_task_group() as tg:
            if self._save is not None:
                tg.start_soon(self._saving, "--save-frames", _save_frames(session, self._save))
            if self._save_audio is not None:
                tg.start_soon(self._saving, "--save-audio", _save_audio(session, self._save_audio))
            tg.start_soon(self._until_closed, session)
            with anyio.move_on_after(math.inf if self._seconds is None else self._seconds):
                await self._leave.wait()
            # What was asked for is not known before its answer (bounded by the
            # engine's initial-state ack deadline; a signal or the end stops the wait).
            await self._answered.wait()
            tg.cancel_scope.cancel()

    async def _saving(self, option: str, save: Coroutine[Any, Any, None]) -> None:
        """Run ``save``; a write that fails (a full disk, a directory gone) ends
        the session with one line naming ``option``."""
        try:
            await save
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            self._save_failed = f"{option}: cannot write{where}: {exc.strerror or exc}"
            self._stop_waiting()

    async def _until_closed(self, session: Session) -> None:
        async for _ in session.events():
            pass
        self._stop_waiting()

    def _stop_waiting(self) -> None:
        assert self._leave is not None and self._answered is not None
        self._leave.set()
        self._answered.set()

    async def _on_signals(
        self,
        connecting: anyio.CancelScope,
        *,
        task_status: anyio.abc.TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """SIGTERM ends the session as Ctrl-C (SIGINT) does. Connected, the
        session is left normally: ``connect()`` says goodbye to the server
        (``client disconnect``) and reports the last events. Still connecting
        (or at a second signal), the connect is cancelled, which closes
        whatever it opened (shielded, bounded: a room join in progress is
        waited out, up to the LiveKit client's own deadline). A signal after
        that quits at once: the server has been told goodbye or lost the
        socket, and the process's end takes the native room along."""
        # Shielded from ``connecting``, which it cancels: it listens on while the
        # cancelled connect closes; the caller cancels this scope when all is done.
        listening = anyio.CancelScope(shield=True)
        if threading.current_thread() is not threading.main_thread():
            task_status.started(listening)
            return  # signal handlers belong to the main thread (a test runner's worker)
        with listening, anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started(listening)
            async for _ in signals:
                if connecting.cancel_called:
                    quit_now(
                        "leanjoin: interrupted again: quit without waiting for the room "
                        "connect to end",
                        ExitCode.FAILED,
                    )
                if not self._connected or self._leave is None or self._leave.is_set():
                    connecting.cancel()
                else:
                    self._stop_waiting()


async def _save_frames(session: Session, directory: Path) -> None:
    count = 0
    next_at = 0.0
    async for frame in session.frames():
        now = anyio.current_time()
        if now < next_at:
            continue
        next_at = now + 1.0
        count += 1
        await anyio.to_thread.run_sync(write_png, directory / f"frame_{count:05d}.png", frame)


async def _save_audio(session: Session, out: wave.Wave_write) -> None:
    # Chunks of 10 ms are small: written on the loop. The caller closes ``out``.
    async for frame in session.audio_frames():
        out.writeframes(frame.samples.astype("<i2").tobytes())


# ---- demo ----------------------------------------------------------------------------


DEMO_EXIT_CODES: Final = (
    "\b\nExit status:\n  0  demo passed: the model's output showed each prompt and the image\n"
    "  1  demo failed (the line says which step), or was interrupted"
)


@main.command("demo", epilog=DEMO_EXIT_CODES)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("out/demo-contact-sheet.png"),
    show_default=True,
    help="Where to write the PNG contact sheet.",
)
@click.option("--codec", type=click.Choice(["h264", "vp8"]), default="h264", show_default=True)
def demo_command(out: Path, codec: str) -> None:
    """Run the reference server in-process, connect, change the prompt, check the pixels."""
    _make_directory(out.parent, "--out")  # before the run, not once it is over
    try:
        from .demo import DemoFailed, Step, run_demo
    except ModuleNotFoundError as exc:
        reason = _missing_extra("demo", exc)
        if reason is None:
            raise
        _fail(reason)
        return

    console = Console()
    console.print("[bold]leanjoin demo[/bold]: reference server + echo model + real LiveKit client")

    def show(step: Step) -> None:
        console.print(f"  [green]✓[/green] {step.name}", highlight=False)

    try:
        result = anyio.run(functools.partial(run_demo, out=out, codec=codec, on_step=show))
    except DemoFailed as exc:
        _fail(f"demo failed: {exc}")
        return
    except KeyboardInterrupt:
        _fail("demo interrupted")
        return
    except Exception as exc:  # anything else still ends in one line, not a traceback
        _fail(f"demo failed: {type(exc).__name__}: {exc}")
        return
    table = Table(title=f"session {result.session_id}: phase timeline", title_justify="left")
    table.add_column("phase")
    table.add_column("at", justify="right")
    table.add_column("since previous", justify="right")
    previous = 0.0
    for step in result.steps:
        table.add_row(
            step.name, f"{step.at * 1000:8.1f} ms", f"+{(step.at - previous) * 1000:.1f} ms"
        )
        previous = step.at
    console.print(table)
    for pixel_check in result.checks:
        console.print(f"[green]pixel check[/green] {pixel_check}", highlight=False)
    for error in result.errors:
        console.print(f"[yellow]error event:[/yellow] {error}", highlight=False)
    console.print(f"contact sheet: {result.sheet}", highlight=False)
    console.print("[bold green]demo passed[/bold green]")


def entry() -> None:
    """The ``leanjoin`` console script: run the command, then leave without
    interpreter finalization. The native LiveKit client's threads can call into
    a finalizing interpreter and abort the process ("panic in a function that
    cannot unwind") after a session that ended cleanly; everything is closed
    by then, so only buffers need flushing. The native libraries' own writes to
    stderr go through :func:`~.native_stderr.filtered_stderr` meanwhile."""
    with filtered_stderr():
        try:
            main()
            status = 0
        except SystemExit as exc:
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
                status = 1
            else:
                status = 0 if exc.code is None else exc.code
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)
