"""The reference server: a ``websockets`` asyncio server around the server engine.

One :class:`~leanjoin.engine.server.session.ServerSession` per connection, one shared
:class:`~leanjoin.engine.server.admission.Admission` queue, one LiveKit double for
the media. Every entry point does the same three steps, the way aioquic's
asyncio protocol does: feed the engine, perform its outputs, re-arm its timer.

All feeding goes through one synchronous pump with a FIFO of pending inputs:
an admission notice for another connection, or an answer the adapter can give
at once (a room), is queued, never fed from inside another feed. Frames leave
through one writer task per connection, so they keep the engine's order even
when several entry points produce frames for the same connection.

Nothing here logs an api key, a token or image data: the log shows session
numbers, phases and problem texts, which the engine keeps free of secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import secrets
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qs, unquote

import attrs
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from leanjoin.adapters.wire_log import wire_logger
from leanjoin.engine.server.admission import Admission
from leanjoin.engine.server.events import (
    ClientPublishing,
    ClientVideoArrived,
    CloseConnection,
    ConfigureModel,
    CreateRoom,
    DecodeReference,
    FailMedia,
    FrameIn,
    FrameOut,
    LoadReference,
    Opened,
    PeerClosed,
    PhaseChanged,
    ProblemNoted,
    ReferenceDecoded,
    ReferenceMissing,
    ReferenceUndecodable,
    ReleaseSlot,
    RequestNumber,
    RequestSlot,
    RoomFailed,
    RoomReady,
    ServerOutput,
    SessionPhase,
    Shutdown,
    StopModel,
)
from leanjoin.engine.server.knobs import ServerKnobs
from leanjoin.engine.server.session import ServerSession

from .echo_model import Swatch, decode_reference, echo_transform, swatch
from .file_store import FileStore
from .http_api import (
    UNAUTHORIZED,
    WATCH_PATH,
    HttpApi,
    key_matches,
    make_app,
    watch_stream_answer,
)
from .listening import binding
from .lkdouble import LiveKitDouble, RoomHandle
from .reading import Prefetching, Uplink, UplinkConnection, receive
from .shared_rooms import SharedRooms

log = logging.getLogger("leanjoin.server")

STREAM_PATH: Final = "/v1/stream"
LISTEN_BACKLOG: Final = 1024
FLUSH_TIMEOUT: Final = 2.0  # seconds a closing connection gets to send its last frames
# Back-pressure on a peer that does not read what it is sent: above the high
# mark its next frame is not read until the outbox drains below the low mark;
# a peer stuck there for DEAF_PEER_TIMEOUT is dropped.
OUTBOX_HIGH_BYTES: Final = 1 << 20
OUTBOX_LOW_BYTES: Final = 1 << 18
DEAF_PEER_TIMEOUT: Final = 5.0
# websockets' INFO lines for every connection say what the session's own lines
# say ("awaiting_join", "closed"), and cost as much: two of seven lines a handshake.
_PER_CONNECTION_LINES: Final = frozenset({"connection open", "connection closed"})
_TIMER: Final = object()  # pump item: the connection's deadline is due
_ADMIT: Final = object()  # pump item: the admission rate timer is due


class _Wakeup:
    """An engine's timer as one asyncio call: ``arm`` after every feed follows
    ``get_timer()`` (cancelling the call when the deadline moves or goes, keeping
    it when it stays), ``due`` when the call has run, ``cancel`` at the end."""

    def __init__(self, get_timer: Callable[[], float | None], fire: Callable[[], None]) -> None:
        self._get_timer = get_timer
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    def arm(self) -> None:
        when = self._get_timer()
        if when == self._at:
            return
        self.cancel()
        self._at = when
        if when is not None:
            self._handle = asyncio.get_running_loop().call_at(when, self._fire)

    def due(self) -> float | None:
        """The call has run: forget it and return the deadline it was armed for."""
        at = self._at
        self._handle = self._at = None
        return at

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._at = None


class _Connection:
    """The adapter's side of one session: socket, outbox, timer, room, images."""

    def __init__(
        self,
        number: int,
        socket: ServerConnection,
        engine: ServerSession,
        feed: Callable[[_Connection, object], None],
    ) -> None:
        self.number = number
        self.socket = socket
        self.engine = engine
        # Frames to send, in order; a FailMedia is done once the frames before it
        # are sent; a CloseConnection or None (stop) ends the writer.
        self.outbox: deque[str | CloseConnection | FailMedia | None] = deque()
        self.outbox_bytes = 0  # characters of the frames waiting in the outbox
        self.drained = asyncio.Event()  # set while the outbox is below the high mark
        self.drained.set()
        self.wake = asyncio.Event()
        self.timer = _Wakeup(engine.get_timer, functools.partial(feed, self, _TIMER))
        self.room: RoomHandle | None = None
        self.references: dict[RequestNumber, Swatch] = {}  # what the model keeps of each
        # The newest message whose reference was decoded as it streamed in.
        self.prefetched: Prefetching | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<connection {self.number} {self.engine.phase.value}>"


def _not_per_connection(record: logging.LogRecord) -> bool:
    return record.msg not in _PER_CONNECTION_LINES


def _wire_logger() -> logging.Logger:
    """The wire logger (:func:`wire_logger`) without websockets' line per
    connection opened and closed; its other lines (server start and stop, a
    refused request, errors) still come through."""
    wire = wire_logger(log)
    if _not_per_connection not in wire.filters:
        wire.addFilter(_not_per_connection)
    return wire


def _reference_swatch(data: bytes) -> Swatch:
    """Decode a reference and keep only what the echo model derives from it."""
    return swatch(decode_reference(data))


@attrs.frozen
class _RoomNews:
    """What a session's room tells its engine (called inside the double's frame path)."""

    feed: Callable[[object], None]  # the server's pump, for this session

    def client_publishing(self) -> None:
        self.feed(ClientPublishing())

    def client_video(self) -> None:
        self.feed(ClientVideoArrived())


class ReferenceServer:
    """The lean-join signaling server with a LiveKit double for the media."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        knobs: ServerKnobs = ServerKnobs(),  # noqa: B008 - frozen, so one shared default is safe
        reuse_port: bool = False,
        http_port: int = 0,
        files_dir: Path | None = None,
        livekit_secret: str | None = None,
    ) -> None:
        """``reuse_port``: listen with ``SO_REUSEPORT`` (Linux), so that several
        processes serve one port, the kernel spreading the connections
        (``leanjoin serve --workers``, protocol §10.8); the HTTP API too.

        ``http_port``: the HTTP API's (files, watch-stream; 0: a free port).
        ``files_dir``: where uploads are kept (shared by the workers of one
        serve run); None: a temporary directory of this server's, removed at close.
        Given, the rooms are noted there too, so that a viewer's credentials come
        from any worker (whose doubles share ``livekit_secret``; None: a new one)."""
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._http_port = http_port
        self._files_dir = files_dir
        self._own_files_dir: Path | None = None
        self._http: HttpApi | None = None
        self._files: FileStore | None = None
        self._shared_rooms: SharedRooms | None = None
        self.__api_key = api_key if api_key is not None else secrets.token_urlsafe(24)
        self.knobs = knobs
        self._livekit = LiveKitDouble(
            host=host,
            api_key="leanjoin-double",
            api_secret=livekit_secret,
            media_setup_delay=knobs.media_setup_delay,
            join_answer_delay=knobs.join_answer_delay,
            publish_delay=knobs.publish_delay,
        )
        self._admission: Admission[_Connection] = Admission(
            knobs.capacity, knobs.max_queue, knobs.admissions_per_second
        )
        self._admit_timer = _Wakeup(
            self._admission.get_timer, functools.partial(self._feed, None, _ADMIT)
        )
        self._drained = asyncio.Event()  # set whenever no connection is open
        self._drained.set()
        self._connections: set[_Connection] = set()
        self._numbers = itertools.count(1)
        self._work: deque[tuple[_Connection | None, object]] = deque()
        self._pumping = False
        self._clock = float("-inf")
        self._server: Server | None = None
        self._background: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "not started"
        return f"ReferenceServer({where}, connections={len(self._connections)})"

    # ---- public API -----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The stream endpoint clients connect to (add ``?api_key=…&model=…``)."""
        return f"ws://{self._host}:{self._port}{STREAM_PATH}"

    @property
    def http_url(self) -> str:
        """The HTTP API's base URL (``http://host:port``): ``/v1/files``,
        ``/watch-stream/{room}``. Known once the server is started."""
        if self._http is None:
            raise RuntimeError("the reference server is not started")
        return self._http.url

    @property
    def files(self) -> FileStore:
        """The uploaded files (once started)."""
        if self._files is None:
            raise RuntimeError("the reference server is not started")
        return self._files

    @property
    def api_key(self) -> str:
        return self.__api_key

    @property
    def livekit(self) -> LiveKitDouble:
        return self._livekit

    @property
    def connections(self) -> int:
        """Connections currently open."""
        return len(self._connections)

    async def __aenter__(self) -> ReferenceServer:
        with binding(self._host, 0, "--host"):  # the LiveKit double: any free port
            await self._livekit.start()
        try:
            with binding(self._host, self._port, "--port"):
                self._server = await serve(
                    self._serve,
                    self._host,
                    self._port,
                    process_request=self._route,
                    # A frame somewhat over the engine's limit still reaches the engine,
                    # which answers with an error naming the limit; beyond twice the
                    # limit websockets itself closes the connection with 1009.
                    max_size=2 * self.knobs.max_frame_bytes,
                    # permessage-deflate keeps zlib contexts per connection (about 40 KiB
                    # of an idle connection, measured) for frames that are mostly base64.
                    compression=None,
                    # asyncio's default accept backlog (100) drops a burst of connects,
                    # and a dropped SYN costs its client a one-second retransmit.
                    backlog=LISTEN_BACKLOG,
                    reuse_port=self._reuse_port,
                    create_connection=UplinkConnection,
                    logger=_wire_logger(),
                )
        except BaseException:
            await self._livekit.aclose()
            raise
        self._port = int(self._server.sockets[0].getsockname()[1])
        try:
            await self._start_http()
        except BaseException:
            await self.aclose()
            raise
        log.info("reference server listening on %s", self.url)
        return self

    async def _start_http(self) -> None:
        directory = self._files_dir
        if directory is None:
            directory = self._own_files_dir = Path(tempfile.mkdtemp(prefix="leanjoin-files-"))
        else:  # a directory shared with other workers: note the rooms there too
            self._shared_rooms = SharedRooms(directory / ".rooms")
        self._files = FileStore(directory)
        app = make_app(
            api_key=self.__api_key,
            files=self._files,
            max_file_bytes=self.knobs.max_reference_bytes,
            viewers=self._viewer_credentials,
        )
        self._http = HttpApi(app, self._host, self._http_port, reuse_port=self._reuse_port)
        with binding(self._host, self._http_port, "--http-port"):
            await self._http.start()

    async def _viewer_credentials(self, room_name: str) -> tuple[str, str] | None:
        """A viewer's LiveKit URL and subscribe-only token, if a session has this
        room (here, or in another worker's double)."""
        livekit_url: str | None = None
        if self._livekit.find_room(room_name) is not None:
            livekit_url = self._livekit.url
        elif self._shared_rooms is not None:
            livekit_url = await self._shared_rooms.lookup(room_name)
        if livekit_url is None:
            return None
        return livekit_url, self._livekit.mint_viewer_token(room=room_name)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End every session politely, stop listening, close the LiveKit double."""
        server, self._server = self._server, None
        if server is None:
            return
        for connection in list(self._connections):
            self._feed(connection, Shutdown())
        # Let each connection send its goodbye (generation_ended, close frame).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_TIMEOUT):
                await self._drained.wait()
        server.close()
        await server.wait_closed()
        if self._http is not None:
            await self._http.aclose()
        if self._shared_rooms is not None:
            self._shared_rooms.close()
        if self._own_files_dir is not None:
            shutil.rmtree(self._own_files_dir, ignore_errors=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._admit_timer.cancel()
        await self._livekit.aclose()
        log.info("reference server stopped")

    # ---- the socket -------------------------------------------------------------------

    async def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if request.method == "POST" and path.startswith(WATCH_PATH + "/"):
            return await self._watch_stream(connection, request, path)
        if not path.startswith(STREAM_PATH):
            return connection.respond(404, f"not found: the stream endpoint is {STREAM_PATH}\n")
        return None

    async def _watch_stream(
        self, connection: ServerConnection, request: Request, path: str
    ) -> Response:
        """``POST /watch-stream/{room}`` on the stream's port too: the Python SDK
        derives that URL from the realtime one (wss:// -> https://, same host),
        where the JS client takes its base URL. Bodiless, so websockets parses it;
        answered as the HTTP API answers it."""
        if key_matches(request.headers.get("X-API-KEY", ""), self.__api_key):
            room_name = unquote(path[len(WATCH_PATH) + 1 :])
            status, body = await watch_stream_answer(room_name, self._viewer_credentials)
        else:
            status, body = 401, {"detail": UNAUTHORIZED}
        response = connection.respond(status, json.dumps(body))
        response.headers["Content-Type"] = "application/json"
        return response

    async def _serve(self, socket: ServerConnection) -> None:
        number = next(self._numbers)
        limit = self.knobs.fault_connections
        faults = limit is None or number <= limit
        connection = _Connection(
            number, socket, ServerSession(self.knobs, self.__api_key, faults=faults), self._feed
        )
        self._connections.add(connection)
        self._drained.clear()
        writer = asyncio.create_task(self._write(connection))
        assert socket.request is not None, "the handler runs after the opening handshake"
        query = parse_qs(socket.request.path.partition("?")[2])

        def first(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        try:
            self._feed(
                connection,
                Opened(
                    api_key=first("api_key"),
                    model=first("model"),
                    resolution=first("resolution"),
                    user_agent=first("user_agent"),
                ),
            )
            assert isinstance(socket, UplinkConnection)
            uplink = Uplink(socket, self.knobs.uplink_bytes_per_second)
            while True:
                message = await receive(socket, uplink, functools.partial(self._spawn, connection))
                if message.prefetching is not None:
                    connection.prefetched = message.prefetching
                if not connection.drained.is_set():
                    await self._wait_for_reader(connection)
                self._feed(connection, FrameIn(message.frame))
        except ConnectionClosed:
            pass  # reported below, with the code the socket saw
        finally:
            self._feed(connection, PeerClosed(socket.close_code, socket.close_reason or ""))
            connection.outbox.append(None)
            connection.wake.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_TIMEOUT):
                    await asyncio.shield(writer)
            writer.cancel()
            self._forget(connection)

    async def _wait_for_reader(self, connection: _Connection) -> None:
        """Stop reading a peer that does not read its answers; drop it if it stays so."""
        try:
            async with asyncio.timeout(DEAF_PEER_TIMEOUT):
                await connection.drained.wait()
        except TimeoutError:
            log.info("connection %d: peer does not read its frames; dropped", connection.number)
            transport = connection.socket.transport
            if transport is not None:
                transport.abort()  # a closing handshake would wait on the same full buffer
            raise ConnectionClosed(None, None) from None

    async def _write(self, connection: _Connection) -> None:
        """Send the outbox in order; a CloseConnection ends it."""
        socket = connection.socket
        try:
            while True:
                await connection.wake.wait()
                connection.wake.clear()
                while connection.outbox:
                    item = connection.outbox.popleft()
                    if item is None:
                        return
                    if isinstance(item, CloseConnection):
                        await socket.close(item.code, item.reason)
                        return
                    if isinstance(item, FailMedia):
                        self._fail_media(connection)
                        continue
                    await socket.send(item)
                    connection.outbox_bytes -= len(item)
                    if connection.outbox_bytes <= OUTBOX_LOW_BYTES:
                        connection.drained.set()
        except ConnectionClosed:
            return

    # ---- the pump: feed, perform, re-arm ----------------------------------------------------

    def _now(self) -> float:
        # One monotonic clock for every engine, which refuse time going backwards.
        self._clock = max(self._clock, asyncio.get_running_loop().time())
        return self._clock

    def _catch_up(self, deadline: float | None) -> float:
        # asyncio may run a timer up to its clock resolution early: count it as due.
        if deadline is not None:
            self._clock = max(self._clock, deadline)
        return self._clock

    def _feed(self, connection: _Connection | None, item: object) -> None:
        self._work.append((connection, item))
        if self._pumping:
            return  # the running pump takes it, in order
        self._pumping = True
        try:
            while self._work:
                target, work = self._work.popleft()
                self._step(target, work)
        finally:
            self._pumping = False

    def _step(self, connection: _Connection | None, item: object) -> None:
        now = self._now()
        if connection is None:  # the admission rate timer
            now = self._catch_up(self._admit_timer.due())
            self._work.extend(self._admission.handle_timer(now))
            self._admit_timer.arm()
            return
        try:
            if item is _TIMER:
                now = self._catch_up(connection.timer.due())
                outputs = connection.engine.handle_timer(now)
            else:
                outputs = connection.engine.handle(item, now)
            for output in outputs:
                self._perform(connection, output)
        except Exception:
            # An adapter bug must not take the server down: drop this connection.
            log.exception("session %d: internal error; closing it", connection.number)
            connection.outbox.append(CloseConnection(1011, "internal error"))
            connection.wake.set()
            return
        connection.timer.arm()

    def _perform(self, connection: _Connection, output: ServerOutput) -> None:
        if isinstance(output, FrameOut | CloseConnection | FailMedia):
            # In the outbox: a media failure comes after the frames output before it.
            if isinstance(output, FrameOut):
                connection.outbox.append(output.frame)
                connection.outbox_bytes += len(output.frame)
                if connection.outbox_bytes > OUTBOX_HIGH_BYTES:
                    connection.drained.clear()
            else:
                connection.outbox.append(output)
            connection.wake.set()
        elif isinstance(output, RequestSlot):
            self._work.extend(self._admission.request(connection, self._now()))
            self._admit_timer.arm()
        elif isinstance(output, ReleaseSlot):
            self._work.extend(self._admission.release(connection, self._now()))
            self._admit_timer.arm()
        elif isinstance(output, CreateRoom):
            self._work.append((connection, self._create_room(connection)))
        elif isinstance(output, DecodeReference):
            if not self._decoded_already(connection, output):
                self._spawn(connection, self._decode(connection, output))
        elif isinstance(output, LoadReference):
            self._spawn(connection, self._load(connection, output))
        elif isinstance(output, ConfigureModel):
            self._configure(connection, output)
        elif isinstance(output, StopModel):
            if connection.room is not None:
                connection.room.set_transform(None)
        elif isinstance(output, PhaseChanged):
            detail = f" ({output.detail})" if output.detail else ""
            log.info("session %d: %s%s", connection.number, output.phase.value, detail)
            if output.phase is SessionPhase.CLOSED:
                self._end(connection)
        elif isinstance(output, ProblemNoted):
            log.info("session %d: refused: %s", connection.number, output.detail)

    # ---- rooms, images and the model ----------------------------------------------------------

    def _create_room(self, connection: _Connection) -> RoomReady | RoomFailed:
        session_id = secrets.token_hex(8)
        room_name = f"leanjoin-{session_id[:12]}"
        try:
            token = self._livekit.mint_token(room=room_name, identity=f"client-{session_id}")
        except Exception as exc:  # answer the engine; never leak the exception text
            return RoomFailed(f"token minting failed ({type(exc).__name__})")
        room = connection.room = self._livekit.room(room_name)
        room.refuses_joins = self.knobs.refuse_media and connection.engine.faults
        room.listener = _RoomNews(functools.partial(self._feed, connection))
        if self._shared_rooms is not None:
            self._shared_rooms.note(room_name, self._livekit.url)
        return RoomReady(self._livekit.url, token, room_name, session_id)

    def _decoded_already(self, connection: _Connection, effect: DecodeReference) -> bool:
        """A prefetch that is done decoded exactly this reference (a small one,
        decoded on the loop as its message came in): answer at once, in order."""
        prefetched = connection.prefetched
        if prefetched is None or not prefetched.done:
            return False
        kept = prefetched.swatch_now(effect.data)
        if kept is None:
            return False
        connection.prefetched = None  # used: let its bytes go
        connection.references[effect.request] = kept
        self._work.append((connection, ReferenceDecoded(effect.request)))
        return True

    async def _decode(self, connection: _Connection, effect: DecodeReference) -> None:
        kept: Swatch | None = None
        prefetched = connection.prefetched
        if prefetched is not None:
            kept = await prefetched.swatch_for(effect.data)
            if kept is not None and connection.prefetched is prefetched:
                connection.prefetched = None  # used: let its bytes go
        await self._keep(connection, effect.request, effect.data if kept is None else kept)

    async def _load(self, connection: _Connection, effect: LoadReference) -> None:
        """An ``image_ref``: the uploaded file's bytes, decoded as inline data is."""
        data = await asyncio.to_thread(self.files.read, effect.file_id)
        if data is None:
            self._feed(connection, ReferenceMissing(effect.request, effect.file_id))
        else:
            await self._keep(connection, effect.request, data)

    async def _keep(
        self, connection: _Connection, request: RequestNumber, image: bytes | Swatch
    ) -> None:
        """Keep what the model uses of ``image`` (decoded here when bytes) and say so."""
        try:
            kept = (
                await asyncio.to_thread(_reference_swatch, image)
                if isinstance(image, bytes)
                else image
            )
        except ValueError as exc:
            self._feed(connection, ReferenceUndecodable(request, str(exc)))
            return
        connection.references[request] = kept
        self._feed(connection, ReferenceDecoded(request))

    def _configure(self, connection: _Connection, model: ConfigureModel) -> None:
        # Requests apply in order, so images of earlier requests are superseded;
        # later ones may be decoded already and wait for their processing time.
        if model.reference is not None:
            for stale in [r for r in connection.references if r < model.reference]:
                del connection.references[stale]
        reference = None if model.reference is None else connection.references.get(model.reference)
        if connection.room is not None:
            connection.room.set_transform(
                functools.partial(
                    echo_transform,
                    prompt=model.prompt,
                    reference=reference,
                    passthrough=model.passthrough,
                )
            )

    # ---- lifetime ---------------------------------------------------------------------------

    def _spawn(self, connection: _Connection, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        connection.tasks.add(task)
        task.add_done_callback(connection.tasks.discard)

    def _end(self, connection: _Connection) -> None:
        """The session closed: stop its timer and tasks, empty its room and let the
        double forget it (once no client of it is left)."""
        connection.timer.cancel()
        for task in list(connection.tasks):
            task.cancel()
        connection.references.clear()
        connection.prefetched = None
        room = connection.room
        if room is not None:
            room.listener = None  # the closed engine hears nothing more of it
            self._livekit.release_room(room.name)
            if self._shared_rooms is not None:
                self._shared_rooms.forget(room.name)
            if room.participants:
                self._in_background(room.disconnect_participants("session ended"))

    def _fail_media(self, connection: _Connection) -> None:
        """The ``media_failure_at`` fault: the LiveKit double makes the session's
        room participants leave with reason MEDIA_FAILURE. The session goes on;
        its client is expected to give up the attempt (or reconnect)."""
        room = connection.room
        if room is None or not room.participants:
            log.info("session %d: media failure injected; no client in the room", connection.number)
            return
        log.info("session %d: media failure injected", connection.number)
        # Not a connection task: `_end` must not cancel a leave half sent.
        self._in_background(room.fail_media())

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` past its session's end (``aclose`` cancels what is left)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _forget(self, connection: _Connection) -> None:
        self._connections.discard(connection)
        if not self._connections:
            self._drained.set()
