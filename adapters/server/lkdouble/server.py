"""The LiveKit double's HTTP/WebSocket front: routing, admission, lifecycle.

Routes:

* ``/rtc/v1...`` -> HTTP 404, so the real client falls back to the dual peer
  connection ("v0") path, the only one this double serves;
* ``/rtc`` -> token check (HTTP 401 with the reason when refused; HTTP 503 when
  the room ``refuses_joins``: the ``refuse_media`` fault), then the signal
  WebSocket (:mod:`.session`);
* ``/rtc/validate`` -> the same checks as plain HTTP: the client calls it after a
  failed upgrade and puts the body into its connect error.

The token comes in ``Authorization: Bearer`` or the ``access_token`` query
parameter. Request lines are never logged, since the query may hold a token.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import weakref
from types import TracebackType
from urllib.parse import parse_qs

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from leanjoin.adapters.wire_log import wire_logger

from . import ice, tokens
from .room import RoomHandle, leave_reason
from .session import SignalSession

log = logging.getLogger(__name__)

VIEWER_PREFIX = "viewer-"
REFUSE_MEDIA_REASON = "media server unavailable: joins are refused (refuse_media fault)"


class LiveKitDouble:
    """A local stand-in for a LiveKit server that the real ``livekit.rtc.Room`` joins."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "devkey",
        api_secret: str | None = None,
        media_setup_delay: float = 0.0,
        join_answer_delay: float = 0.0,
        publish_delay: float = 0.0,
        model_identity: str = "inference-server-echo",
    ) -> None:
        self._host = host
        self._port = port
        self._api_key = api_key
        self.__secret = api_secret if api_secret is not None else secrets.token_urlsafe(32)
        self.__minter = tokens.Minter(api_key, self.__secret)
        self._media_setup_delay = media_setup_delay
        self._join_answer_delay = join_answer_delay
        self._publish_delay = publish_delay
        self._model_identity = model_identity
        self._rooms: dict[str, RoomHandle] = {}
        self._held: set[str] = set()  # asked for by room(), kept even empty until released
        self._bound: dict[str, int] = {}  # signal sessions of each room, joined or joining
        self._sessions: set[SignalSession] = set()
        # Weak keys: a connection whose handshake fails after admission just vanishes.
        self._admitted: weakref.WeakKeyDictionary[ServerConnection, tokens.JoinGrant] = (
            weakref.WeakKeyDictionary()
        )
        self._server: Server | None = None
        self._closing = False

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "not started"
        return f"LiveKitDouble({where}, api_key={self._api_key!r})"

    async def __aenter__(self) -> LiveKitDouble:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0: any free port)."""
        if self._server is not None:
            raise RuntimeError("LiveKitDouble already started")
        ice.install_loopback_gathering()
        self._server = await serve(
            self._serve_session,
            self._host,
            self._port,
            process_request=self._route,
            logger=wire_logger(log),
        )
        sockname = self._server.sockets[0].getsockname()
        self._port = int(sockname[1])
        log.info("LiveKit double listening on %s", self.url)

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self._port}"

    def mint_token(
        self, *, room: str, identity: str, ttl_seconds: int = 600, can_publish: bool = True
    ) -> str:
        """A real join token for this double: publish, subscribe and data, or, with
        ``can_publish=False``, a viewer's (subscribe only)."""
        return self.__minter.mint(
            room=room, identity=identity, ttl_seconds=ttl_seconds, can_publish=can_publish
        )

    def mint_viewer_token(
        self, *, room: str, identity: str | None = None, ttl_seconds: int = 600
    ) -> str:
        """A subscribe-only join token: its bearer receives the model's output video
        of ``room`` and may publish nothing. ``identity`` defaults to a fresh
        ``viewer-…``; one given must start with ``viewer-``."""
        if identity is None:
            identity = f"{VIEWER_PREFIX}{secrets.token_hex(6)}"
        elif not identity.startswith(VIEWER_PREFIX):
            raise ValueError(f"a viewer's identity must start with {VIEWER_PREFIX!r}")
        return self.mint_token(
            room=room, identity=identity, ttl_seconds=ttl_seconds, can_publish=False
        )

    @property
    def rooms(self) -> tuple[RoomHandle, ...]:
        """The rooms the double holds now, for inspection: each one asked for with
        :meth:`room` and not released, and each one a client has joined or is joining."""
        return tuple(self._rooms.values())

    def room(self, name: str) -> RoomHandle:
        """The room called ``name``, created on first use.

        A room asked for here is kept, even while empty (its transform with it),
        until :meth:`release_room`; a room that only a client's join created is
        forgotten once its last client's session ended, as a LiveKit server
        closes an empty room.
        """
        self._held.add(name)
        return self._room(name)

    def find_room(self, name: str) -> RoomHandle | None:
        """The room called ``name`` if the double holds it; never creates one."""
        return self._rooms.get(name)

    def release_room(self, name: str) -> None:
        """The room is no longer needed: forget it now if no client is in it or
        joining it, else once the last one's session ended."""
        self._held.discard(name)
        self._forget_if_unused(name)

    async def disconnect_all(self, reason: str = "room_deleted") -> None:
        """Room loss everywhere: every client of every room is made to leave (see
        :meth:`RoomHandle.disconnect_participants`). Returns once they are gone."""
        rooms = list(self._rooms.values())
        log.info("disconnecting the participants of %d room(s): %s", len(rooms), reason)
        await asyncio.gather(*(room.disconnect_participants(reason) for room in rooms))

    def _room(self, name: str) -> RoomHandle:
        handle = self._rooms.get(name)
        if handle is None:
            handle = self._rooms[name] = RoomHandle(name, self._model_identity)
        return handle

    def _forget_if_unused(self, name: str) -> None:
        if name not in self._held and not self._bound.get(name):
            self._rooms.pop(name, None)
            self._bound.pop(name, None)

    async def aclose(self) -> None:
        """Make every client leave, close every peer connection and socket, stop listening."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing = True
        shutdown = leave_reason("server_shutdown")
        await asyncio.gather(*(s.leave(shutdown, "server shutdown") for s in list(self._sessions)))
        server.close()
        await server.wait_closed()
        self._admitted.clear()
        log.info("LiveKit double at port %d closed", self._port)

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path.startswith("/rtc/v1"):
            return connection.respond(404, "this server speaks only the /rtc signal path\n")
        if path not in ("/rtc", "/rtc/validate"):
            return connection.respond(404, "not found\n")
        if self._closing:
            return connection.respond(503, "server shutting down\n")
        try:
            grant = tokens.verify(self._api_key, self.__secret, _token(request, query))
        except tokens.TokenRefused as refused:
            log.info("join refused: %s", refused)
            return connection.respond(401, f"{refused}\n")
        room = self.find_room(grant.room)
        if room is not None and room.refuses_joins:
            log.info("join of %r refused: its room refuses joins", grant.identity)
            return connection.respond(503, f"{REFUSE_MEDIA_REASON}\n")
        if path == "/rtc/validate":
            return connection.respond(200, "success\n")
        self._admitted[connection] = grant
        return None

    async def _serve_session(self, connection: ServerConnection) -> None:
        grant = self._admitted.pop(connection, None)
        if grant is None or self._closing:
            await connection.close()
            return
        name = grant.room
        session = SignalSession(
            connection,
            grant,
            self._room(name),
            media_setup_delay=self._media_setup_delay,
            join_answer_delay=self._join_answer_delay,
            publish_delay=self._publish_delay,
        )
        self._bound[name] = self._bound.get(name, 0) + 1  # kept while joined or joining
        self._sessions.add(session)
        log.info("%r joins room %r", grant.identity, grant.room)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)
            self._bound[name] -= 1
            self._forget_if_unused(name)


def _token(request: Request, query: str) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    values = parse_qs(query).get("access_token")
    return values[0] if values else None
