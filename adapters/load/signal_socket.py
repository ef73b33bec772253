"""The signaling WebSocket of one connect attempt, on ``websocket-client`` under gevent.

The gevent twin of ``adapters/client/ws_transport.py``: one
:class:`GeventSignalSocket` per ``OpenSocket`` effect, two greenlets of its own.

* The reader opens the socket (``websocket-client``'s blocking handshake,
  which yields to other greenlets under Locust's monkey-patching), posts
  ``SocketOpened``, then every frame as ``FrameReceived`` and, when the peer
  closes or the connection drops, one ``SocketClosed`` with its code and
  reason.
* The writer sends ``SendFrame`` payloads in order from an outbox and posts
  ``SendFailed`` (with the effect's send id) for each one it could not write,
  so a megabyte reference image never holds up reading.

``send`` and ``close`` never block: the engine's owner calls them while it
performs effects. Every frame the engine asked for is accounted for, written
or failed. The URL carries the api key: it is never logged, and failure
reasons are scrubbed of it before they reach the engine.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Final

import attrs
import gevent
import gevent.queue
import websocket

from leanjoin.adapters.client.endpoint import default_user_agent
from leanjoin.engine.client.config import (
    CLOSE_MESSAGE_TOO_BIG,
    upgrade_refusal_is_permanent,
    upgrade_refusal_reason,
)
from leanjoin.engine.client.inputs import (
    AttemptId,
    FrameReceived,
    Input,
    SendFailed,
    SocketClosed,
    SocketOpened,
    SocketOpenFailed,
)
from leanjoin.engine.client.outputs import OpenSocket, SendFrame

log = logging.getLogger(__name__)

Post = Callable[[Input], None]

_ABNORMAL_CLOSURE: Final = 1006
_NO_STATUS: Final = 1005


@attrs.frozen
class GeventSocketOptions:
    """Transport knobs. ``open_timeout`` bounds the TCP + TLS + HTTP upgrade;
    ``close_timeout`` the closing handshake."""

    open_timeout: float = 60.0
    close_timeout: float = 3.0
    #: The upgrade's ``User-Agent`` header; None: the session's ``user_agent``.
    user_agent: str | None = None


class _Close:
    """The writer's last item: send a close frame with this code and reason."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class GeventSignalSocket:
    """One attempt's WebSocket. Create, :meth:`start`, then feed it effects."""

    def __init__(self, effect: OpenSocket, post: Post, options: GeventSocketOptions) -> None:
        self.attempt: AttemptId = effect.attempt
        self._effect = effect  # its URL, and the means to scrub it from any text
        self._url = effect.url
        self._redacted_url = effect.redacted_url
        self._post = post
        self._options = options
        self._outbox: gevent.queue.Queue[SendFrame | _Close] = gevent.queue.Queue()
        self._ws: websocket.WebSocket | None = None
        self._reader: gevent.Greenlet[[], None] | None = None
        self._writer: gevent.Greenlet[[websocket.WebSocket], None] | None = None
        self._closing = False  # close() was called: report nothing more
        self._broken = False  # the connection ended: nothing more can be written

    def __repr__(self) -> str:
        return f"GeventSignalSocket(attempt={self.attempt}, url={self._redacted_url!r})"

    # ---- effects (never block) --------------------------------------------------------

    def start(self) -> None:
        self._reader = gevent.spawn(self._read)

    def send(self, effect: SendFrame) -> None:
        """Queue a frame for the writer; a socket already gone fails it at once."""
        if self._broken or self._closing:
            self._post(SendFailed(self.attempt, effect.send, "socket is closed"))
            return
        self._outbox.put(effect)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close gracefully (idempotent). Before the socket is open: abandon the open."""
        if self._closing:
            return
        self._closing = True
        if self._ws is None:
            if self._reader is not None:
                self._reader.kill(block=False)  # still in the handshake
            return
        self._outbox.put(_Close(code, reason))

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for both greenlets to end; kill them after
        that. True if they ended by themselves."""
        greenlets = [g for g in (self._reader, self._writer) if g is not None]
        done = gevent.joinall(greenlets, timeout=timeout)
        clean = len(done) == len(greenlets)
        for greenlet in greenlets:
            greenlet.kill(block=True, timeout=1.0)
        self._shutdown()
        return clean

    @property
    def done(self) -> bool:
        return all(g.dead for g in (self._reader, self._writer) if g is not None)

    # ---- the reader ---------------------------------------------------------------------

    def _read(self) -> None:
        options = self._options
        try:
            ws = websocket.create_connection(
                self._url,
                timeout=options.open_timeout,
                header=[f"User-Agent: {options.user_agent or default_user_agent()}"],
                suppress_origin=True,
            )
        except Exception as exc:
            if not self._closing:
                permanent = isinstance(exc, websocket.WebSocketBadStatusException) and (
                    upgrade_refusal_is_permanent(exc.status_code)
                )
                self._post(SocketOpenFailed(self.attempt, self._open_failure(exc), permanent))
            self._broken = True
            return
        self._ws = ws
        if self._closing:
            # Abandoned while the handshake ran: close it without reporting anything.
            self._outbox.put(_Close(1000, "client going away"))
        else:
            ws.settimeout(None)  # reads wait for the peer; gevent runs the rest meanwhile
            self._post(SocketOpened(self.attempt))
        self._writer = gevent.spawn(self._write, ws)
        code, reason = _ABNORMAL_CLOSURE, ""
        try:
            while True:
                opcode, frame = ws.recv_data_frame(control_frame=False)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code, reason = _close_status(frame.data)
                    break
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    data = frame.data
                    text = data.decode("utf-8") if isinstance(data, bytes) else data
                    self._post(FrameReceived(self.attempt, text))
                elif opcode == websocket.ABNF.OPCODE_BINARY:
                    self._post(FrameReceived(self.attempt, bytes(frame.data)))
        except (websocket.WebSocketException, OSError, UnicodeDecodeError) as exc:
            log.debug("attempt %d: the connection ended: %s", self.attempt, type(exc).__name__)
        finally:
            self._broken = True
            self._outbox.put(_Close(1000, ""))  # the writer fails what is left, then ends
        if not self._closing:
            permanent = code == CLOSE_MESSAGE_TOO_BIG  # spec §6.3: a retry is refused alike
            self._post(SocketClosed(self.attempt, code, self._scrub(reason), permanent))

    # ---- the writer ---------------------------------------------------------------------

    def _write(self, ws: websocket.WebSocket) -> None:
        while True:
            item = self._outbox.get()
            if isinstance(item, _Close):
                break
            if self._broken:
                self._post(SendFailed(self.attempt, item.send, "socket closed before the write"))
                continue
            try:
                ws.send(item.frame)
            except Exception as exc:
                self._broken = True
                reason = self._scrub(f"{type(exc).__name__}: {exc}")
                self._post(SendFailed(self.attempt, item.send, reason))
        if not self._broken and ws.connected:
            try:
                ws.send_close(item.code, item.reason.encode("utf-8")[:123])
            except Exception as exc:  # closing must never raise out of cleanup
                log.debug("attempt %d: the close frame failed: %s", self.attempt, exc)
            # The reader ends on the peer's answering close frame; bounded here.
            reader = self._reader
            if reader is not None and not reader.dead:
                reader.join(timeout=self._options.close_timeout)
        self._shutdown()
        # Every frame the engine asked for is accounted for: written or failed.
        while not self._outbox.empty():
            unsent = self._outbox.get_nowait()
            if isinstance(unsent, SendFrame):
                self._post(SendFailed(self.attempt, unsent.send, "socket closed before the write"))

    # ---- helpers ------------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._broken = True
        ws = self._ws
        if ws is not None:
            # Idempotent: the TCP socket is closed, a blocked read ends.
            ws.shutdown()  # type: ignore[no-untyped-call]  # unannotated in websocket-client

    def _scrub(self, text: str) -> str:
        return self._effect.scrub(text)

    def _open_failure(self, exc: Exception) -> str:
        if isinstance(exc, websocket.WebSocketBadStatusException):
            body = exc.resp_body or b""
            raw = body if isinstance(body, bytes) else str(body).encode()
            return self._scrub(upgrade_refusal_reason(exc.status_code, raw))
        if isinstance(exc, websocket.WebSocketTimeoutException | TimeoutError):
            return f"no WebSocket handshake within {self._options.open_timeout:g} s"
        return self._scrub(f"{type(exc).__name__}: {exc}")


def _close_status(payload: bytes) -> tuple[int, str]:
    """The code and reason of a close frame's payload (RFC 6455 §5.5.1)."""
    if len(payload) < 2:
        return _NO_STATUS, ""
    (code,) = struct.unpack("!H", payload[:2])
    return code, payload[2:].decode("utf-8", errors="replace")
