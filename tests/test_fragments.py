"""Fragmented frames over 1 MiB are accepted by common WebSocket servers (spec §1.5).

The real client socket (``SignalSocket`` of ``adapters/client/ws_transport.py``,
default options: permessage-deflate on) sends a ~3 MiB text frame to three
small servers on 127.0.0.1: ``websockets`` (asyncio), starlette under uvicorn
and aiohttp. Each answers a text message with its length and SHA-256, so the
test sees that the server reassembled exactly the text sent: once as a
fragmented message (the default, ``fragment_above`` = 1 MiB) and once whole
(``fragment_above=None``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import anyio
import pytest
import uvicorn
from aiohttp import WSMsgType, web
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection, serve

from leanjoin.adapters.client.ws_transport import FRAGMENT_ABOVE, SignalSocket, SocketOptions
from leanjoin.engine.client.inputs import (
    AttemptId,
    FrameReceived,
    Input,
    SendFailed,
    SendId,
    SocketOpened,
)
from leanjoin.engine.client.outputs import FramePurpose, OpenSocket, SendFrame
from leanjoin.engine.errors import InvalidArgument

pytestmark = pytest.mark.anyio

PATH: Final = "/v1/stream"
MAX_MESSAGE: Final = 16 * 1024 * 1024  # above the frame: the servers' limits are not the subject
WAIT: Final = 10.0
# Base64 text (what a reference image is sent as) of ~3 MiB.
BIG: Final = base64.b64encode(os.urandom(3 * 1024 * 1024 * 3 // 4)).decode()


def digest(text: str) -> str:
    return json.dumps({"length": len(text), "sha256": hashlib.sha256(text.encode()).hexdigest()})


def bound_socket() -> socket.socket:
    """A listening-ready TCP socket on 127.0.0.1 and a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def url_of(sock: socket.socket) -> str:
    return f"ws://127.0.0.1:{sock.getsockname()[1]}{PATH}"


# ---- the three servers: each answers a text message with digest(text) ----------------


@asynccontextmanager
async def websockets_server() -> AsyncIterator[str]:
    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            if isinstance(message, str):
                await ws.send(digest(message))

    sock = bound_socket()
    async with serve(echo, sock=sock, max_size=MAX_MESSAGE):
        yield url_of(sock)


@asynccontextmanager
async def starlette_server() -> AsyncIterator[str]:
    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await ws.send_text(digest(message["text"]))

    app = Starlette(routes=[WebSocketRoute(PATH, echo)])
    config = uvicorn.Config(
        app, ws="websockets-sansio", ws_max_size=MAX_MESSAGE, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    sock = bound_socket()
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(WAIT):
            while not server.started:
                await anyio.sleep(0.01)
        try:
            yield url_of(sock)
        finally:
            server.should_exit = True


@asynccontextmanager
async def aiohttp_server() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE)
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(digest(message.data))
        return ws

    app = web.Application()
    app.router.add_get(PATH, echo)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = bound_socket()
    try:
        await web.SockSite(runner, sock).start()
        yield url_of(sock)
    finally:
        await runner.cleanup()


SERVERS: Final[dict[str, Callable[[], AbstractAsyncContextManager[str]]]] = {
    "websockets": websockets_server,
    "uvicorn-starlette": starlette_server,
    "aiohttp": aiohttp_server,
}


# ---- the client's side -----------------------------------------------------------------


class Posted:
    """Stands in for the driver's inbox."""

    def __init__(self) -> None:
        self.items: list[Input] = []
        self.changed = anyio.Event()

    def __call__(self, item: Input) -> None:
        self.items.append(item)
        self.changed.set()

    async def wait_for(self, kind: type[Input]) -> list[Any]:
        with anyio.fail_after(WAIT):
            while not any(isinstance(item, kind) for item in self.items):
                self.changed = anyio.Event()
                await self.changed.wait()
        return [item for item in self.items if isinstance(item, kind)]


@pytest.mark.parametrize("fragment_above", [FRAGMENT_ABOVE, None], ids=["fragmented", "whole"])
@pytest.mark.parametrize("server", list(SERVERS))
async def test_a_3_mib_frame_reaches_each_server_exactly(
    monkeypatch: pytest.MonkeyPatch, server: str, fragment_above: int | None
) -> None:
    # What the client hands websockets: a str is one frame, an async iterator a
    # fragmented message.
    given: list[bool] = []
    send = ClientConnection.send

    async def spy(self: ClientConnection, message: Any, *args: Any, **kwargs: Any) -> None:
        given.append(isinstance(message, str))
        await send(self, message, *args, **kwargs)

    monkeypatch.setattr(ClientConnection, "send", spy)

    posted = Posted()
    async with SERVERS[server]() as url, anyio.create_task_group() as tg:
        effect = OpenSocket(AttemptId(1), f"{url}?api_key=k&model=echo", url)
        client = SignalSocket(effect, posted, SocketOptions(fragment_above=fragment_above))
        tg.start_soon(client.run)
        await posted.wait_for(SocketOpened)
        client.send(SendFrame(AttemptId(1), SendId(1), FramePurpose.INITIAL_STATE, BIG))
        (reply,) = await posted.wait_for(FrameReceived)
        client.close(1000, "done")
    assert json.loads(reply.frame) == json.loads(digest(BIG))
    assert given == [fragment_above is None]
    assert not [item for item in posted.items if isinstance(item, SendFailed)]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1048576"])
def test_a_bad_fragment_above_is_refused_naming_the_field(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="fragment_above"):
        SocketOptions(fragment_above=bad)  # type: ignore[arg-type]


def test_fragment_above_defaults_to_1_mib_and_may_be_none_or_zero() -> None:
    assert SocketOptions().fragment_above == FRAGMENT_ABOVE == 1 << 20
    assert SocketOptions(fragment_above=None).fragment_above is None
    assert SocketOptions(fragment_above=0).fragment_above == 0
