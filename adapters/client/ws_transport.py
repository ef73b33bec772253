"""The signaling WebSocket of one connect attempt, on ``websockets`` (asyncio).

One :class:`SignalSocket` per ``OpenSocket`` effect. Its task opens the socket
(bounded by ``open_timeout``), then runs a reader and a writer side by side:

* the reader posts every frame as ``FrameReceived`` and, when the peer closes
  or the connection drops, one ``SocketClosed`` with the close code and reason;
* the writer sends ``SendFrame`` payloads in order and posts ``SendFailed``
  (with the effect's send id) for each one that could not be written.

Reading never waits on a write: the initial-state frame (often megabytes) is
written by the writer task while the reader keeps taking ``queue_position``
and ``livekit_room_info``. A frame over ``SocketOptions.fragment_above``
characters (default ``FRAGMENT_ABOVE``) goes out as a fragmented message,
yielding between fragments, so handling the
``livekit_room_info`` that arrives mid-upload (and starting the room join) waits
for one fragment, not for the whole frame to be framed and copied. ``send`` and ``close`` are synchronous so the engine's
task can perform effects without awaiting anything.

The URL carries the api key: it is never logged, and failure reasons are
scrubbed of it before they reach the engine.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Final, Literal
from urllib.parse import urlsplit

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.frames import CloseCode

from leanjoin.adapters.client.endpoint import default_user_agent
from leanjoin.adapters.wire_log import wire_logger
from leanjoin.engine.client.config import upgrade_refusal_is_permanent, upgrade_refusal_reason
from leanjoin.engine.client.inputs import (
    AttemptId,
    FrameReceived,
    Input,
    SendFailed,
    SocketClosed,
    SocketOpened,
    SocketOpenFailed,
)
from leanjoin.engine.client.outputs import FramePurpose, OpenSocket, SendFrame
from leanjoin.engine.validators import count

log = logging.getLogger(__name__)

Post = Callable[[Input], None]
Trace = Callable[[AttemptId, str], None]

FRAGMENT_ABOVE: Final = 1 << 20  # characters; every frame but an image is far smaller
FRAGMENT_SIZE: Final = 1 << 18
_ABNORMAL_CLOSURE: Final = 1006


@attrs.frozen
class SocketOptions:
    """Transport knobs. ``open_timeout`` bounds the TCP + TLS + HTTP upgrade."""

    open_timeout: float = 60.0
    close_timeout: float = 3.0
    # The engine drops oversize frames itself (non-fatally); this only bounds memory.
    max_size: int = 8 * 1024 * 1024
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    compression: str | None = "deflate"
    # True: the system's proxy settings; None: none. Never used for loopback hosts.
    proxy: str | Literal[True] | None = True
    #: The upgrade's ``User-Agent`` header; None: the session's ``user_agent``
    #: (``connect`` fills it in), so the header and the query parameter agree.
    user_agent: str | None = None
    #: A frame longer than this many characters is sent as a fragmented message
    #: (``FRAGMENT_SIZE`` characters a fragment), so reading goes on while a
    #: reference image uploads (spec §1.5). ``None``: every frame whole, for a
    #: server that does not take fragmented messages (websockets, uvicorn +
    #: starlette and aiohttp do: tests/test_fragments.py). ``0``: every frame
    #: fragmented. Refused unless an integer >= 0 or None.
    fragment_above: int | None = attrs.field(
        default=FRAGMENT_ABOVE, validator=count(0, optional=True)
    )


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SignalSocket:
    """One attempt's WebSocket. Create, start :meth:`run` in a task, feed effects."""

    def __init__(
        self,
        effect: OpenSocket,
        post: Post,
        options: SocketOptions = SocketOptions(),
        trace: Trace | None = None,
    ) -> None:
        self.attempt = effect.attempt
        self._effect = effect  # its URL, and the means to scrub it from any text
        self._url = effect.url
        self._redacted_url = effect.redacted_url
        self._post = post
        self._options = options
        self._trace = trace
        outbox: tuple[MemoryObjectSendStream[SendFrame], MemoryObjectReceiveStream[SendFrame]] = (
            anyio.create_memory_object_stream(math.inf)
        )
        self._outbox_send, self._outbox_recv = outbox
        self._scope = anyio.CancelScope()
        self._opened = False
        self._broken = False  # the connection ended: nothing more can be written
        self._close_requested: tuple[int, str] | None = None
        self._close_event = anyio.Event()
        self._done = anyio.Event()

    def __repr__(self) -> str:
        return f"SignalSocket(attempt={self.attempt}, url={self._redacted_url!r})"

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait_done(self) -> None:
        await self._done.wait()

    # ---- effects (synchronous: called from the engine's task) ------------------------

    def send(self, effect: SendFrame) -> None:
        """Queue a frame for the writer; a socket already gone fails it at once."""
        if self._broken or self._done.is_set() or self._close_requested is not None:
            self._post(SendFailed(self.attempt, effect.send, "socket is closed"))
            return
        self._outbox_send.send_nowait(effect)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close gracefully (idempotent). Before the socket is open: abandon the open."""
        if self._close_requested is not None:
            return
        self._close_requested = (code, reason)
        self._close_event.set()
        if not self._opened:
            self._scope.cancel()

    # ---- the task ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            with self._scope:
                ws = await self._open()
                if ws is not None:
                    await self._serve(ws)
        finally:
            self._broken = True
            self._outbox_send.close()
            # Every frame the engine asked for is accounted for: written or failed.
            while True:
                try:
                    unsent = self._outbox_recv.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
                self._post(SendFailed(self.attempt, unsent.send, "socket closed before the write"))
            self._outbox_recv.close()
            self._done.set()

    async def _open(self) -> ClientConnection | None:
        options = self._options
        proxy = None if _is_loopback(urlsplit(self._url).hostname) else options.proxy
        try:
            ws = await ws_connect(
                self._url,
                open_timeout=options.open_timeout,
                close_timeout=options.close_timeout,
                max_size=options.max_size,
                ping_interval=options.ping_interval,
                ping_timeout=options.ping_timeout,
                compression=options.compression,
                proxy=proxy,
                user_agent_header=(
                    options.user_agent if options.user_agent is not None else default_user_agent()
                ),
                logger=wire_logger(log),
            )
        except Exception as exc:
            self._post(SocketOpenFailed(self.attempt, self._open_failure(exc), _is_permanent(exc)))
            return None
        self._opened = True
        if self._close_requested is not None:
            # Abandoned while the handshake ran: close it without reporting anything.
            await self._close_ws(ws)
            return None
        self._post(SocketOpened(self.attempt))
        self._note("socket_opened")
        return ws

    async def _serve(self, ws: ClientConnection) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read, ws, tg.cancel_scope)
                tg.start_soon(self._write, ws)
                await self._close_event.wait()
                tg.cancel_scope.cancel()
        finally:
            await self._close_ws(ws)

    async def _read(self, ws: ClientConnection, serving: anyio.CancelScope) -> None:
        try:
            async for message in ws:
                self._post(FrameReceived(self.attempt, message))
        except ConnectionClosed:
            pass  # an abnormal close: reported below, like a clean one
        self._broken = True
        if self._close_requested is None:
            code = ws.close_code if ws.close_code is not None else _ABNORMAL_CLOSURE
            reason = self._scrub(ws.close_reason or "")
            self._post(SocketClosed(self.attempt, code, reason, code == CloseCode.MESSAGE_TOO_BIG))
            self._note("socket_closed")
        # Nothing more can be read or written: end the attempt's socket task.
        serving.cancel()

    async def _write(self, ws: ClientConnection) -> None:
        async for effect in self._outbox_recv:
            try:
                frame = effect.frame
                limit = self._options.fragment_above
                await ws.send(
                    _fragments(frame) if limit is not None and len(frame) > limit else frame
                )
            except ConnectionClosed as exc:
                reason = self._closed_reason(exc)
                self._post(SendFailed(self.attempt, effect.send, reason, _is_permanent(exc)))
            except Exception as exc:  # e.g. a transport error mid-write
                reason = self._scrub(f"{type(exc).__name__}: {exc}")
                self._post(SendFailed(self.attempt, effect.send, reason))
            else:
                self._note(_SENT_MILESTONE[effect.purpose])

    async def _close_ws(self, ws: ClientConnection) -> None:
        code, reason = self._close_requested or (1000, "")
        # Shielded: a cancelled session still says goodbye, within close_timeout.
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self._options.close_timeout + 1.0):
                try:
                    await ws.close(code, reason)
                except Exception as exc:  # closing must never raise out of cleanup
                    log.debug("closing the socket of attempt %d failed: %r", self.attempt, exc)
            if ws.transport is not None and not ws.transport.is_closing():
                ws.transport.abort()

    # ---- helpers -----------------------------------------------------------------------

    def _note(self, milestone: str) -> None:
        if self._trace is not None:
            self._trace(self.attempt, milestone)

    def _scrub(self, text: str) -> str:
        return self._effect.scrub(text)

    def _closed_reason(self, exc: ConnectionClosed) -> str:
        frame = exc.rcvd or exc.sent
        if frame is None:
            return "connection lost"
        return self._scrub(f"connection closed (code {frame.code}) {frame.reason}".strip())

    def _open_failure(self, exc: Exception) -> str:
        if isinstance(exc, InvalidStatus):
            return self._scrub(
                upgrade_refusal_reason(exc.response.status_code, exc.response.body or b"")
            )
        if isinstance(exc, TimeoutError):
            return f"no WebSocket handshake within {self._options.open_timeout:g} s"
        return self._scrub(f"{type(exc).__name__}: {exc}")


def _is_permanent(exc: Exception) -> bool:
    """Whether a retry is bound to fail the same way (spec §6.3): the upgrade
    refused with a status no retry changes, a URL websockets cannot use, or
    the peer refusing a frame as too big (close code 1009)."""
    if isinstance(exc, InvalidStatus):
        return upgrade_refusal_is_permanent(exc.response.status_code)
    if isinstance(exc, ConnectionClosed):
        frame = exc.rcvd or exc.sent
        return frame is not None and frame.code == CloseCode.MESSAGE_TOO_BIG
    return isinstance(exc, InvalidURI)


_SENT_MILESTONE: Final = {
    FramePurpose.JOIN: "join_sent",
    FramePurpose.INITIAL_STATE: "initial_state_sent",
    FramePurpose.REQUEST: "request_sent",
}


async def _fragments(frame: str) -> AsyncIterator[str]:
    """``frame`` in ``FRAGMENT_SIZE`` slices, letting other tasks run between them."""
    for start in range(0, len(frame), FRAGMENT_SIZE):
        yield frame[start : start + FRAGMENT_SIZE]
        await anyio.sleep(0)
