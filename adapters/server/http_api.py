"""The reference server's HTTP API (aiohttp), on a port of its own.

As the service splits them (api.decart.ai for HTTP, api3.decart.ai for the
realtime socket): the WebSocket server cannot take request bodies, so the
files API and the viewers' watch-stream endpoint live here.

Routes (the official JS client's files and subscribe clients call them):

* ``POST /v1/files``: multipart field ``file`` (+ ``ttl_seconds``: an integer
  in [60, 2592000] or ``persistent``) -> the FileReference JSON;
* ``GET /v1/files/{id}`` -> its FileReference; ``DELETE /v1/files/{id}`` -> 204;
* ``POST /watch-stream/{room_name}`` -> ``{livekit_url, token, room_name}``, a
  subscribe-only token for that room.

Every route wants the api key in ``X-API-KEY``. Errors answer
``{"detail": "..."}`` (the service's shape) with 400, 401, 404, 413 (over the
byte limit, or over :data:`MAX_PIXELS` once decoded) or 415;
no answer or log line quotes the key, a token or file content.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import BodyPartReader, web
from PIL import Image, UnidentifiedImageError

from .echo_model import MAX_PIXELS
from .file_store import DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS, MIN_TTL_SECONDS, FileStore

__all__ = ["MAX_PIXELS", "HttpApi", "TooManyPixels", "ViewerMinter", "make_app", "ttl_from_form"]

log = logging.getLogger("leanjoin.server.http")

FILES_PATH: Final = "/v1/files"
WATCH_PATH: Final = "/watch-stream"
# What the echo model decodes (echo_model.decode_reference), by Pillow's format name.
_IMAGE_TYPES: Final = {"PNG": "image/png", "JPEG": "image/jpeg"}
_CHUNK: Final = 1 << 16
_FIELD_BYTES: Final = 64  # a form field other than the file (ttl_seconds) is short

ViewerMinter = Callable[[str], Awaitable[tuple[str, str] | None]]
"""Given a room name: (LiveKit URL, subscribe-only token), or None: no such room."""

_API_KEY: Final = web.AppKey("api_key", str)
_FILES: Final = web.AppKey("files", FileStore)
_MAX_BYTES: Final = web.AppKey("max_bytes", int)
_VIEWERS: Final[web.AppKey[ViewerMinter]] = web.AppKey("viewers")


def _problem(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status)


def ttl_from_form(text: str | None) -> int | None:
    """Seconds to keep an upload (None: until deleted) from the ``ttl_seconds``
    field; ValueError naming the accepted values."""
    if text is None:
        return DEFAULT_TTL_SECONDS
    if text == "persistent":
        return None
    accepted = f'an integer in [{MIN_TTL_SECONDS}, {MAX_TTL_SECONDS}] or "persistent"'
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"ttl_seconds must be {accepted}")
    seconds = int(text)
    if not MIN_TTL_SECONDS <= seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be {accepted}; got {seconds}")
    return seconds


class TooManyPixels(ValueError):
    """The image is small in bytes but too large once decoded."""


def image_type(data: bytes, max_pixels: int = MAX_PIXELS) -> str:
    """The MIME type of an image the model can use; ValueError saying why not
    (:class:`TooManyPixels` for one over ``max_pixels``)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind = image.format or ""
            width, height = image.size
            image.verify()
    except Image.DecompressionBombError:  # Pillow's own bound, beyond ours: its text has no size
        raise TooManyPixels(f"the image is over the limit of {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"the file is not an image ({type(exc).__name__})") from None
    if width * height > max_pixels:
        # A few hundred bytes can say so; decoding it would take width x height x 3 bytes.
        raise TooManyPixels(
            f"the image is {width}x{height} pixels, over the limit of {max_pixels} pixels"
        )
    mime = _IMAGE_TYPES.get(kind)
    if mime is None:
        raise ValueError(f"the file is a {kind} image; the model takes PNG or JPEG")
    return mime


UNAUTHORIZED: Final = "unauthorized: invalid api key (send it in the X-API-KEY header)"


def key_matches(given: str, api_key: str) -> bool:
    """Whether the X-API-KEY header ``given`` is ``api_key`` (in constant time)."""
    return hmac.compare_digest(given.encode(), api_key.encode())


async def watch_stream_answer(room_name: str, viewers: ViewerMinter) -> tuple[int, dict[str, str]]:
    """``POST /watch-stream/{room}``'s status and JSON body, the key already
    checked: a viewer's credentials, or 404. Both listeners answer with it."""
    minted = await viewers(room_name) if room_name else None
    if minted is None:
        return 404, {"detail": f"room {room_name[:64]!r} not found (no session streams in it)"}
    livekit_url, token = minted
    log.info("viewer token minted for room %r", room_name)
    return 200, {"livekit_url": livekit_url, "token": token, "room_name": room_name}


@web.middleware
async def _authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if not key_matches(request.headers.get("X-API-KEY", ""), request.app[_API_KEY]):
        return _problem(401, UNAUTHORIZED)
    return await handler(request)


async def _read_bounded(part: BodyPartReader, limit: int) -> bytes | None:
    """The part's bytes; None once they exceed ``limit`` (the rest unread)."""
    buffer = bytearray()
    while chunk := await part.read_chunk(_CHUNK):
        buffer += chunk
        if len(buffer) > limit:
            return None
    return bytes(buffer)


async def _upload(request: web.Request) -> web.Response:
    limit = request.app[_MAX_BYTES]
    if not request.content_type.startswith("multipart/"):
        return _problem(400, "expected a multipart/form-data body with a 'file' field")
    data: bytes | None = None
    filename: str | None = None
    ttl_text: str | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                return _problem(400, "nested multipart bodies are not accepted")
            if part.name == "file":
                filename = part.filename
                data = await _read_bounded(part, limit)
                if data is None:
                    return _problem(413, f"the file is over the limit of {limit} bytes")
            elif part.name == "ttl_seconds":
                raw = await _read_bounded(part, _FIELD_BYTES)
                ttl_text = None if raw is None else raw.decode("utf-8", "replace").strip()
                if ttl_text is None:
                    return _problem(400, "ttl_seconds is too long")
            else:
                await part.release()  # an unknown field is ignored
    except ValueError:  # aiohttp's word for a malformed or cut-short body
        return _problem(400, "the multipart body is malformed or cut short")
    if data is None:
        return _problem(400, "the multipart body has no 'file' field")
    if not data:
        return _problem(400, "the file is empty")
    try:
        ttl = ttl_from_form(ttl_text)
    except ValueError as exc:
        return _problem(400, str(exc))
    try:
        mime = await asyncio.to_thread(image_type, data)
    except TooManyPixels as exc:
        return _problem(413, str(exc))
    except ValueError as exc:
        return _problem(415, str(exc))
    stored = await asyncio.to_thread(
        request.app[_FILES].put, data, filename=filename, mime_type=mime, ttl_seconds=ttl
    )
    log.info("file %s stored (%d bytes, %s)", stored.id, stored.size_bytes, mime)
    return web.json_response(stored.reference())


def _not_found(file_id: str) -> web.Response:
    return _problem(404, f"file {file_id[:64]!r} not found (never uploaded, deleted or expired)")


async def _get(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    stored = await asyncio.to_thread(request.app[_FILES].get, file_id)
    return _not_found(file_id) if stored is None else web.json_response(stored.reference())


async def _delete(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    if not await asyncio.to_thread(request.app[_FILES].delete, file_id):
        return _not_found(file_id)
    log.info("file %s deleted", file_id)
    return web.Response(status=204)


async def _watch_stream(request: web.Request) -> web.Response:
    status, body = await watch_stream_answer(request.match_info["room_name"], request.app[_VIEWERS])
    return web.json_response(body, status=status)


def make_app(
    *, api_key: str, files: FileStore, max_file_bytes: int, viewers: ViewerMinter
) -> web.Application:
    """The HTTP API's routes over ``files`` and ``viewers``."""
    app = web.Application(middlewares=[_authenticate])
    app[_API_KEY] = api_key
    app[_FILES] = files
    app[_MAX_BYTES] = max_file_bytes
    app[_VIEWERS] = viewers
    app.router.add_post(FILES_PATH, _upload)
    app.router.add_get(FILES_PATH + "/{file_id}", _get)
    app.router.add_delete(FILES_PATH + "/{file_id}", _delete)
    app.router.add_post(WATCH_PATH + "/{room_name}", _watch_stream)
    return app


class HttpApi:
    """``app`` listening on ``host:port`` (0: a free port), with ``SO_REUSEPORT``
    when ``reuse_port`` (workers of ``leanjoin serve`` share the port)."""

    def __init__(self, app: web.Application, host: str, port: int, *, reuse_port: bool) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        # The socket is made here so its port is known when 0 was asked for.
        sock = socket.create_server(
            (self._host, self._port), reuse_port=self._reuse_port, backlog=1024
        )
        self._port = int(sock.getsockname()[1])
        # No access log: a request line per upload says what our own lines say.
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._runner = runner
        log.info("HTTP API listening on %s", self.url)

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
