"""The public client API: ``async with connect(...) as session``.

``connect`` builds the engine's configuration, starts the driver (the one task
that owns the engine) and the camera, sends ``Connect`` and returns once the
engine reports the session started, or raises :class:`ConnectFailed` with the
typed error. Leaving the ``async with`` — normally, by an exception or by
cancellation — disconnects, waits (shielded, bounded: ``shutdown_timeout``, or
a room join's own timeout while one runs) for every socket and room to close,
and stops every task it started.

Everything the engine reports is an event: delivered in order to ``on_event``
(called in the engine's task: keep it quick) and to every ``events()``
iterator. Events raised before ``connect`` returns wait in a backlog that the
first ``events()`` iterator receives, so none is lost. The same stream carries
the adapters' observability events (:mod:`.observability`: WebRTC stats,
connection quality, connect breakdown, reconnects, video stalls), in the order
they happen; a consumer that looks only for the engine's events skips them.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Final, Literal

import anyio
import anyio.abc
import anyio.to_thread
import attrs
from livekit import rtc

from leanjoin.engine.client.config import InitialState, RetryPolicy, SessionConfig, Timeouts
from leanjoin.engine.client.inputs import (
    AttemptId,
    ChangeImage,
    ChangePrompt,
    Connect,
    Disconnect,
    RequestId,
)
from leanjoin.engine.client.outputs import (
    ConnectionState,
    ErrorKind,
    ErrorOccurred,
    Event,
    InitialStateAcked,
    QueuePositionChanged,
    RemoteStream,
    RequestAcked,
    RequestFailed,
    SessionStarted,
    StateChanged,
)
from leanjoin.engine.client.session import ClientSession
from leanjoin.engine.codec import Base64Text
from leanjoin.engine.messages import ABSENT, ClientCapabilities

from .audio_sources import AudioFrame, AudioSource
from .diagnostics import LIVE_STATES, ConnectDiagnostics, StallWatch, loss_cause
from .driver import Driver
from .endpoint import api_key_from_env, default_user_agent, stream_url
from .errors import (
    ConnectFailed,
    InvalidArgument,
    LeanJoinError,
    RequestError,
    RequestRejected,
    RequestTimedOut,
    SessionClosed,
)
from .fanout import Fanout
from .images import ImageInput, file_ref, image_to_base64
from .models import ModelDefinition, resolve_model
from .observability import (
    DEFAULT_STALL_THRESHOLD,
    MIN_STATS_INTERVAL,
    ObservabilityEvent,
    SessionEvent,
)
from .room_audio import AUDIO_BUFFER, AudioFeed
from .room_transport import CameraFeed, CameraInput, MediaOptions
from .video_sources import Frame, TestPattern, VideoSource
from .ws_transport import SocketOptions

log = logging.getLogger(__name__)

EventCallback = Callable[[SessionEvent], object]

# Events kept for the first events() iterator when nobody iterates yet.
EVENT_BACKLOG: Final = 10_000


TIMELINE_LENGTH: Final = 1024


@attrs.frozen
class Milestone:
    """A step of a connect attempt, for timelines (``at``: ``anyio.current_time()``)."""

    at: float
    attempt: int
    name: str


class _Unset(enum.Enum):
    """An argument left out (where None means something: ``set(image=None)``)."""

    UNSET = "UNSET"


def _check_prompt(prompt: str) -> None:
    if not prompt:
        raise InvalidArgument("prompt must not be empty (as the JS client refuses it)")


@attrs.define(eq=False)
class _Waiter:
    done: anyio.Event = attrs.Factory(anyio.Event)
    outcome: RequestAcked | RequestFailed | None = None


class Session:
    """A connected lean-join session. Made by :func:`connect`, not directly.

    Runs on anyio's asyncio backend only: ``websockets`` (asyncio client) and
    ``livekit.rtc`` are asyncio libraries."""

    def __init__(
        self,
        config: SessionConfig,
        *,
        model: ModelDefinition,
        camera: CameraInput,
        media: MediaOptions,
        socket: SocketOptions,
        on_event: EventCallback | None,
        audio: AudioSource | None = None,
        stats_interval: float | None = None,
        stall_threshold: float | None = DEFAULT_STALL_THRESHOLD,
    ) -> None:
        self._config = config
        self._model = model
        self._camera = CameraFeed(camera)
        self._audio = None if audio is None else AudioFeed(audio)
        self._on_event_callback = on_event
        self._engine = ClientSession(config)
        self._driver = Driver(
            self._engine,
            camera=self._camera,
            on_event=self._on_event,
            on_frame=self._on_frame,
            trace=self._note,
            socket_options=socket,
            media_options=media,
            audio=self._audio,
            on_audio=self._on_audio,
            observe=self._observe,
            stats_interval=stats_interval,
        )
        self._events: Fanout[SessionEvent] = Fanout(maxlen=None, backlog=EVENT_BACKLOG)
        self._diagnostics = ConnectDiagnostics(self._diagnose)
        self._stalls = StallWatch(stall_threshold, self._diagnose)
        self._queued: set[AttemptId] = set()
        self._frames: Fanout[Frame] = Fanout(maxlen=2, backlog=1)
        self._audio_frames: Fanout[AudioFrame] = Fanout(maxlen=AUDIO_BUFFER)
        self._state = ConnectionState.DISCONNECTED
        self._started: SessionStarted | None = None
        self._fatal: ErrorOccurred | None = None
        self._settled = anyio.Event()  # connected, or failed for good
        self._waiters: dict[RequestId, _Waiter] = {}
        self._last_request = 0
        self._streams: set[AttemptId] = set()
        self._audio_streams: set[AttemptId] = set()
        self._first_frame: set[AttemptId] = set()
        # The newest milestones only: every request adds one, and a session may last hours.
        self._timeline: deque[Milestone] = deque(maxlen=TIMELINE_LENGTH)
        self._crash: BaseException | None = None
        self._closed = False
        self._tasks = anyio.CancelScope()  # replaced by _run
        self.started_at = anyio.current_time()

    def __repr__(self) -> str:
        return f"Session(state={self._state.value}, session_id={self.session_id!r})"

    # ---- what the session is --------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def model(self) -> ModelDefinition:
        """The model this session streams with (its name, size and rate)."""
        return self._model

    @property
    def session_id(self) -> str | None:
        return None if self._started is None else self._started.session_id

    @property
    def room_name(self) -> str | None:
        return None if self._started is None else self._started.room_name

    @property
    def subscribe_token(self) -> str | None:
        """base64 of ``{"room_name": ...}``: lets a viewer subscribe to the room."""
        return None if self._started is None else self._started.subscribe_token

    @property
    def closed(self) -> bool:
        """True once the session ended (left, fatal error, or internal failure)."""
        return self._closed

    @property
    def timeline(self) -> list[Milestone]:
        """Milestones of the attempts so far, oldest first (no secrets); the
        newest ``TIMELINE_LENGTH`` of them in a long session."""
        return list(self._timeline)

    @property
    def input_frame(self) -> Frame | None:
        """The camera frame most recently sent to the room (or produced before)."""
        return self._camera.latest

    @property
    def camera(self) -> CameraInput:
        """The camera set last (at connect or by :meth:`replace_camera`)."""
        return self._camera.camera

    async def replace_camera(self, camera: CameraInput) -> None:
        """Publish ``camera`` (a :class:`VideoSource` or a ``livekit.rtc.LocalVideoTrack``)
        instead of the current one, in the same socket and room, as the JS
        client's ``replaceVideoTrack``. Between sources the published track
        stays and reads the new source, so the model's input never stops; with
        a track involved, the new one is published, then the old one
        unpublished. Returns once the live room publishes it; while
        reconnecting at once: every later attempt publishes the camera set
        last. The old camera is not stopped or closed: it is the caller's.
        Raises :class:`SessionClosed` once the session ended."""
        if self._closed:
            raise SessionClosed("the session is closed")
        _check_camera(camera)
        await self._driver.camera_applied(self._camera.replace(camera))

    @property
    def audio(self) -> AudioSource | None:
        """The local audio source published as the microphone (None: no audio)."""
        return None if self._audio is None else self._audio.source

    # ---- streams ----------------------------------------------------------------------

    def events(self) -> AsyncIterator[SessionEvent]:
        """Every event in order, the engine's and the observability events; ends
        when the session ends. The first iterator also gets the events raised
        before it started (including during connect)."""
        return self._events.subscribe()

    def frames(self) -> AsyncIterator[Frame]:
        """Decoded output video of the model as HxWx3 uint8 RGB arrays; a slow
        reader skips frames. Ends when the session ends."""
        return self._frames.subscribe()

    def audio_frames(self) -> AsyncIterator[AudioFrame]:
        """The model's audio, if it publishes any, in 10 ms chunks of 48 kHz mono
        int16 (:class:`AudioFrame`) from the time of the call; a reader more
        than 2 s behind loses the oldest. Ends when the session ends."""
        return self._audio_frames.subscribe()

    # ---- requests ---------------------------------------------------------------------

    async def set_prompt(
        self, prompt: str, *, enhance: bool = True, timeout: float | None = None
    ) -> None:
        """Send a ``prompt``; return on its ack, waiting at most ``timeout``
        seconds (default: ``Timeouts.request_ack``). Raises :class:`RequestRejected`,
        :class:`RequestTimedOut`, another :class:`RequestError`,
        ``NotConnectedError`` (not connected now) or :class:`SessionClosed`."""
        _check_prompt(prompt)
        request = self._new_request()
        await self._request(request, ChangePrompt(request, prompt, enhance, timeout=timeout))

    async def set_image(
        self,
        image: ImageInput | None,
        *,
        prompt: str | None = None,
        enhance_prompt: bool | None = None,
        timeout: float | None = None,
    ) -> None:
        """Send a ``set_image`` (bytes, path, data: URL, base64 or array; see
        :func:`~leanjoin.adapters.client.images.image_to_base64`; an uploaded
        file's id, ``file_...``, goes as ``image_ref``; None clears the
        reference: ``image_data: null``); ``prompt`` and ``enhance_prompt`` are
        sent only when given. Returns on its ack; ``timeout`` as for
        :meth:`set_prompt`."""
        await self._set_image(image, prompt, enhance_prompt, timeout)

    async def set(
        self,
        *,
        prompt: str | None = None,
        image: ImageInput | Literal[_Unset.UNSET] | None = _Unset.UNSET,
        enhance: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Set the model's state in one ``set_image`` request, as the JS
        client's ``set()``: the prompt if given, ``enhance_prompt`` always, and
        the image, or ``image_data: null`` without one (a reference set before
        is cleared, also when only a prompt is given). Needs ``prompt`` or
        ``image`` (``image=None``: only clear the reference). Returns on its
        ack; ``timeout`` as for :meth:`set_prompt`."""
        if image is _Unset.UNSET and prompt is None:
            raise InvalidArgument("set() needs prompt= or image= (image=None clears the reference)")
        if prompt is not None:
            _check_prompt(prompt)
        await self._set_image(None if image is _Unset.UNSET else image, prompt, enhance, timeout)

    async def _set_image(
        self,
        image: ImageInput | None,
        prompt: str | None,
        enhance_prompt: bool | None,
        timeout: float | None,
    ) -> None:
        ref = None if image is None else file_ref(image)
        data = None if image is None or ref is not None else await _converted(image)
        request = self._new_request()
        command = ChangeImage(
            request,
            image_data=data,
            image_ref=ref,
            prompt=prompt,
            enhance_prompt=enhance_prompt,
            timeout=timeout,
        )
        await self._request(request, command)

    def _new_request(self) -> RequestId:
        self._last_request += 1
        return RequestId(self._last_request)

    async def _request(self, request: RequestId, command: ChangePrompt | ChangeImage) -> None:
        if self._closed:
            raise SessionClosed("the session is closed")
        waiter = self._waiters[request] = _Waiter()
        try:
            await self._driver.call(command)
            await waiter.done.wait()
        finally:
            self._waiters.pop(request, None)
        outcome = waiter.outcome
        if isinstance(outcome, RequestAcked):
            return
        if outcome is None:
            raise SessionClosed("the session closed before the request was answered")
        error: type[RequestError] = {
            ErrorKind.REQUEST_REJECTED: RequestRejected,
            ErrorKind.REQUEST_TIMEOUT: RequestTimedOut,
        }.get(outcome.kind, RequestError)
        raise error(request, outcome.kind, outcome.message)

    # ---- lifecycle (used by connect) -------------------------------------------------

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The session's tasks: the driver and the camera pump. Shielded from the
        caller's cancel scopes, so that a cancelled ``async with`` still has the
        driver to say goodbye with (``_shutdown``); :meth:`_stop` ends them."""
        with anyio.CancelScope(shield=True) as self._tasks:
            try:
                async with anyio.create_task_group() as tg:
                    await tg.start(self._driver.run)
                    tg.start_soon(self._camera.run)
                    if self._audio is not None:
                        tg.start_soon(self._audio.run)
                    tg.start_soon(self._stalls.run)
                    task_status.started()
            except Exception as exc:  # an engine or adapter bug: end the session, say so
                log.exception("leanjoin session failed internally")
                self._crash = exc
            finally:
                self._finish()

    def _stop(self) -> None:
        self._tasks.cancel()

    async def _connect(self, command: Connect) -> None:
        await self._driver.call(command)
        await self._settled.wait()
        if self._crash is not None:
            raise LeanJoinError("the session failed internally") from self._crash
        if self._started is None:
            fatal = self._fatal
            if fatal is None:
                raise SessionClosed("the session closed while connecting")
            raise ConnectFailed(fatal.kind, fatal.message, fatal.attempt)

    async def _shutdown(self, timeout: float) -> None:
        """Disconnect, then wait for sockets and rooms to close. Shielded, bounded."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
            with contextlib.suppress(SessionClosed):  # a stopped driver took its tasks along
                await self._driver.call(Disconnect())
            self._driver.abandon_all()  # stale attempts' rooms still connecting, too
            await self._driver.wait_io_idle()

    def _finish(self) -> None:
        self._closed = True
        self._state = ConnectionState.DISCONNECTED  # also when the engine's task died
        self._settled.set()
        for waiter in self._waiters.values():
            waiter.done.set()
        self._events.close()
        self._frames.close()
        self._audio_frames.close()

    # ---- from the driver (the engine's task) -----------------------------------------

    def _note(self, attempt: AttemptId, name: str) -> None:
        now = anyio.current_time()
        self._timeline.append(Milestone(now, attempt, name))
        self._diagnostics.milestone(attempt, name, now)

    def _on_event(self, event: Event) -> None:
        now = anyio.current_time()
        if isinstance(event, StateChanged):
            self._state = event.state
            if event.state not in LIVE_STATES:
                self._stalls.stop()
            self._diagnostics.before(event, now, loss_cause(self._driver.handling))
        elif isinstance(event, QueuePositionChanged) and event.attempt not in self._queued:
            self._queued.add(event.attempt)
            self._note(event.attempt, "queued")
        elif isinstance(event, SessionStarted):
            self._started = event
            self._note(event.attempt, "connected")
            self._settled.set()
        elif isinstance(event, RemoteStream):
            (self._streams if event.kind == "video" else self._audio_streams).add(event.attempt)
        elif isinstance(event, InitialStateAcked):
            self._note(event.attempt, "initial_state_acked")
        elif isinstance(event, RequestAcked | RequestFailed):
            waiter = self._waiters.get(event.request)
            if waiter is not None:
                waiter.outcome = event
                waiter.done.set()
        elif isinstance(event, ErrorOccurred) and event.fatal:
            self._fatal = event
        self._emit(event)
        self._diagnostics.after(event, now)
        if isinstance(event, StateChanged) and event.state is ConnectionState.DISCONNECTED:
            self._settled.set()
            self._finish()

    def _emit(self, event: SessionEvent) -> None:
        self._events.publish(event)
        if self._on_event_callback is not None:
            try:
                self._on_event_callback(event)
            except Exception:  # a user callback must not break the engine's task
                log.exception("on_event callback raised for %s", type(event).__name__)

    def _observe(self, event: ObservabilityEvent) -> None:
        # Measured by a room: the live attempt's only (a stale room may still sample).
        if event.attempt == self._driver.live_attempt:
            self._diagnose(event)

    def _diagnose(self, event: ObservabilityEvent) -> None:
        # Made of the engine's events and the live attempt's frames: already current.
        if not self._closed:
            self._emit(event)

    def _on_frame(self, attempt: AttemptId, frame: Frame) -> None:
        # Only the live attempt's model video: a stale room's late frame is dropped.
        if attempt != self._driver.live_attempt or attempt not in self._streams:
            return
        if attempt not in self._first_frame:
            self._first_frame.add(attempt)
            self._note(attempt, "first_output_frame")
        if self._state in LIVE_STATES:
            self._stalls.frame(attempt, anyio.current_time())
        self._frames.publish(frame)

    def _on_audio(self, attempt: AttemptId, frame: AudioFrame) -> None:
        # As for video: only the live attempt's model audio.
        if attempt == self._driver.live_attempt and attempt in self._audio_streams:
            self._audio_frames.publish(frame)


def _check_camera(camera: object) -> None:
    if not isinstance(camera, (VideoSource, rtc.LocalVideoTrack)):
        raise InvalidArgument(
            "camera must be a VideoSource (TestPattern, StillImage, Camera, ...) or a "
            f"livekit.rtc.LocalVideoTrack, got {type(camera).__name__}"
        )


def _seconds(value: object) -> float | None:
    """``value`` as a finite number of seconds; None when it is none (a bool,
    a string, NaN, an infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _check_durations(
    stats_interval: float | None, stall_threshold: float | None, shutdown_timeout: float
) -> None:
    interval = _seconds(stats_interval)
    if stats_interval is not None and (interval is None or interval < MIN_STATS_INTERVAL):
        raise InvalidArgument(
            f"stats_interval must be at least {MIN_STATS_INTERVAL:g} s (the JS client's "
            f"minimum) and finite, or None for no stats; got {stats_interval!r}"
        )
    threshold = _seconds(stall_threshold)
    if stall_threshold is not None and (threshold is None or threshold <= 0):
        raise InvalidArgument(
            "stall_threshold must be a positive, finite number of seconds, or None "
            f"to judge no stalls; got {stall_threshold!r}"
        )
    shutdown = _seconds(shutdown_timeout)
    if shutdown is None or shutdown <= 0:  # NaN never ran out: the leave waited forever
        raise InvalidArgument(
            "shutdown_timeout must be a positive, finite number of seconds; "
            f"got {shutdown_timeout!r}"
        )


async def _converted(image: ImageInput) -> Base64Text:
    """``image_to_base64`` in a worker thread: a 20 MB file is tens of
    milliseconds of reading and encoding the event loop should not wait through."""
    return await anyio.to_thread.run_sync(image_to_base64, image)


@contextlib.contextmanager
def _arguments_checked() -> Iterator[None]:
    """What refuses an argument of :func:`connect` (the configuration's own
    validators, attrs' among them) raises :class:`InvalidArgument`: a
    ``LeanJoinError`` and still the ``ValueError`` it was, its message kept."""
    try:
        yield
    except LeanJoinError:
        raise
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc


@asynccontextmanager
async def connect(
    url: str | None = None,
    *,
    api_key: str | None = None,
    model: str | ModelDefinition,
    image: ImageInput | None = None,
    prompt: str | None = None,
    enhance_prompt: bool | None = None,
    passthrough: bool | None = None,
    camera: CameraInput | None = None,
    audio: AudioSource | None = None,
    media: MediaOptions | None = None,
    socket: SocketOptions | None = None,
    timeouts: Timeouts | None = None,
    retry: RetryPolicy | None = None,
    resolution: str | None = None,
    speed: str | None = None,
    query_params: Mapping[str, str] | None = None,
    integration: str | None = None,
    user_agent: str | None = None,
    frame_timing: bool | None = None,
    on_event: EventCallback | None = None,
    stats_interval: float | None = None,
    stall_threshold: float | None = DEFAULT_STALL_THRESHOLD,
    shutdown_timeout: float = 10.0,
) -> AsyncIterator[Session]:
    """Connect a lean-join session; yields it once connected.

    ``url`` is the stream endpoint (``ws://host:port/v1/stream``) or a base URL
    below which the model's path goes; the default is the service's
    (``wss://api3.decart.ai``). ``api_key`` defaults to ``LEANJOIN_API_KEY``,
    then ``DECART_API_KEY``. ``query_params`` are sent first in the socket URL
    (not secret: logs show them); ``user_agent`` is always sent, by default
    ``leanjoin/<version> lang/python [integration] runtime/…``. ``image`` and
    ``prompt`` form the initial state (``passthrough`` is derived from them unless
    given; an ``image`` that is an uploaded file's id, ``file_...``, is sent as
    ``image_ref``). ``model`` is a name of the registry (:func:`~leanjoin.adapters.client.models.list_models`,
    or ``echo`` for the reference server) or a :class:`ModelDefinition` for any
    other model. ``camera`` defaults to a moving test pattern of the model's
    size and frame rate; it is a :class:`VideoSource` (a :class:`Camera`, a
    :class:`StillImage`, ...), read until the session ends or the camera is
    replaced, or a ``livekit.rtc.LocalVideoTrack``, published as it is, whose
    source the caller feeds. Either stays the caller's: leanjoin unpublishes
    it, never closes or stops it. ``audio`` (:class:`Tone`, :class:`WavSource`,
    :class:`Microphone`, ...) is published as a microphone track next to the
    camera; the model's audio comes out of :meth:`Session.audio_frames`.
    Raises :class:`ConnectFailed` when the engine gives
    up, :class:`InvalidArgument` (a ``ValueError``) for bad arguments
    (``UnknownModelError`` for a model name, ``ImageError`` for images)
    before anything is opened; every error is a :class:`LeanJoinError`.

    Observability (:mod:`~leanjoin.adapters.client.observability`): a
    ``WebRtcStats`` event every ``stats_interval`` seconds (at least 0.5; the
    JS client samples every ``DEFAULT_STATS_INTERVAL`` = 1 s), off by default
    (see the module's note: livekit 1.2.1 can abort the process while
    sampling); ``ConnectionQualityChanged`` as the media server judges the
    connection, a ``ConnectBreakdown`` per connect, ``Reconnected`` after a
    mended loss, and ``VideoStall`` / ``VideoStallEnded`` when no model frame
    came for ``stall_threshold`` seconds (None: never judged).

    Leaving: ``shutdown_timeout`` bounds the goodbye (the close frame, each room
    left). A LiveKit room join still running then is waited out, up to its own
    ``MediaOptions.connect_timeout`` (30 s), and then left: the LiveKit client's
    connect is not safe to cancel, and abandoning it would leave the room joined.
    """
    with _arguments_checked():
        _check_durations(stats_interval, stall_threshold, shutdown_timeout)
        definition = resolve_model(model)
        if api_key is None:
            api_key = api_key_from_env()
            if api_key is None:
                raise InvalidArgument(
                    "no api key: pass api_key= or set LEANJOIN_API_KEY or DECART_API_KEY"
                )
        timeouts = timeouts if timeouts is not None else Timeouts()
        socket = socket if socket is not None else SocketOptions(open_timeout=timeouts.socket_open)
        capabilities = (
            ABSENT if frame_timing is None else ClientCapabilities(frame_timing=frame_timing)
        )
        config = SessionConfig(
            url=stream_url(url, definition.path),
            api_key=api_key,
            model=definition.name,
            resolution=resolution,
            speed=speed,
            user_agent=user_agent if user_agent is not None else default_user_agent(integration),
            query_params=query_params if query_params is not None else {},
            client_capabilities=capabilities,
            timeouts=timeouts,
            retry=retry if retry is not None else RetryPolicy(),
        )
        if socket.user_agent is None:
            socket = attrs.evolve(socket, user_agent=config.user_agent)
        ref = None if image is None else file_ref(image)
        initial = InitialState(
            image_data=None if image is None or ref is not None else await _converted(image),
            image_ref=ref,
            prompt=prompt,
            enhance_prompt=enhance_prompt,
        )
        if audio is not None and not isinstance(audio, AudioSource):
            raise InvalidArgument(
                f"audio must be an AudioSource (Tone, WavSource, ...), got {audio!r}"
            )
        if camera is None:
            camera = TestPattern(definition.width, definition.height, fps=definition.fps)
        _check_camera(camera)
    session = Session(
        config,
        model=definition,
        camera=camera,
        media=media if media is not None else MediaOptions(),
        socket=socket,
        on_event=on_event,
        audio=audio,
        stats_interval=stats_interval,
        stall_threshold=stall_threshold,
    )
    # The caller's exception is kept out of the task group (which would wrap it in
    # an ExceptionGroup) and re-raised as itself once everything is closed.
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        await tg.start(session._run)
        try:
            await session._connect(Connect(initial, passthrough))
            yield session
        except Exception as exc:
            failure = exc
        finally:
            await session._shutdown(shutdown_timeout)
            session._stop()
    if failure is not None:
        raise failure
    if session._crash is not None:
        raise LeanJoinError("the session failed internally") from session._crash
