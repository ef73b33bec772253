"""The HTTP side of the service: uploaded files and viewers' credentials.

:class:`FilesClient` uploads a reference image once (``upload``) so that
sessions name it by id (``connect(image="file_...")`` sends it as
``image_ref``), and gets or deletes it; :func:`watch_credentials` asks for a
viewer's subscribe-only LiveKit credentials of a session's room. As the JS
client 0.1.20 does: base URL ``https://api.decart.ai`` (watch-stream:
``https://api3.decart.ai``), the api key in ``X-API-KEY``, a ``User-Agent``.

HTTP goes through httpx, which runs on anyio (asyncio or trio), as the rest of
the client does. Errors are :class:`HttpApiError` (a :class:`LeanJoinError`)
with the status and the server's text; neither they nor any ``repr`` here
quote the api key or a token.
"""

from __future__ import annotations

import json
import math
import mimetypes
import os
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal, TypeAlias
from urllib.parse import quote, urlsplit

import anyio.to_thread
import attrs
import httpx

from leanjoin.engine.client.session import NotASubscribeToken, room_of_subscribe_token
from leanjoin.engine.errors import InvalidArgument, LeanJoinError

from .endpoint import API_KEY_ENV_VARS, api_key_from_env, default_user_agent
from .errors import redact

__all__ = [
    "DEFAULT_API_BASE_URL",
    "DEFAULT_WATCH_BASE_URL",
    "FileNotFound",
    "FileReference",
    "FilesClient",
    "HttpApiError",
    "WatchCredentials",
    "room_of",
    "watch_credentials",
]

DEFAULT_API_BASE_URL: Final = "https://api.decart.ai"
"""The JS client 0.1.20's ``baseUrl`` (files, process, queue, tokens)."""

DEFAULT_WATCH_BASE_URL: Final = "https://api3.decart.ai"
"""Where the JS client asks for watch-stream credentials when given no
``baseUrl``: its realtime base URL with ``https``."""

MIN_TTL_SECONDS: Final = 60
MAX_TTL_SECONDS: Final = 720 * 60 * 60
DEFAULT_TIMEOUT: Final = 30.0  # seconds for each request
_DETAIL_CHARS: Final = 300  # of a server's error text quoted in an exception

Upload: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]"
Ttl: TypeAlias = "int | Literal['persistent']"


class HttpApiError(LeanJoinError):
    """A files or watch-stream request failed: ``status`` is the HTTP status
    (None: no answer, e.g. the host was unreachable), ``detail`` the server's
    text (its JSON ``detail`` when it sent one) or the transport's reason;
    ``request`` the method and URL asked (no credentials), which tells a base
    URL's typo from a missing file."""

    def __init__(
        self, operation: str, status: int | None, detail: str, request: str | None = None
    ) -> None:
        where = f"{status} - " if status is not None else ""
        asked = f" ({request})" if request else ""
        super().__init__(f"{operation} failed: {where}{detail}{asked}")
        self.operation = operation
        self.status = status
        self.detail = detail
        self.request = request


class FileNotFound(HttpApiError):
    """404: no file has that id (never uploaded, deleted or expired)."""


def _redacted(_value: object) -> str:
    return "<redacted>"


@attrs.frozen
class FileReference:
    """An uploaded file, as the service describes it (its FileReference JSON);
    pass ``id`` as ``image=`` to ``connect()`` or ``set_image()``. Dates are
    the service's ISO 8601 strings; ``expires_at`` None: kept until deleted."""

    id: str
    filename: str | None
    mime_type: str
    size_bytes: int
    created_at: str
    expires_at: str | None

    @classmethod
    def from_json(cls, value: object) -> FileReference:
        """The reference in a server's answer; ValueError naming a bad field."""
        if not isinstance(value, dict):
            raise ValueError("the answer is not a JSON object")
        expected: dict[str, tuple[type, ...]] = {
            "id": (str,),
            "filename": (str, type(None)),
            "mime_type": (str,),
            "size_bytes": (int,),
            "created_at": (str,),
            "expires_at": (str, type(None)),
        }
        for name, types in expected.items():
            field = value.get(name)
            if not isinstance(field, types) or isinstance(field, bool):
                raise ValueError(f"the answer's {name!r} is missing or not a {types[0].__name__}")
        return cls(**{name: value[name] for name in expected})


@attrs.frozen
class WatchCredentials:
    """Where a viewer joins a session's room, and its subscribe-only token."""

    livekit_url: str
    token: str = attrs.field(repr=_redacted)
    room_name: str


def _base_url(url: str | None, default: str) -> str:
    base = (url or default).strip().rstrip("/")  # pasted with a space or a newline
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgument(
            f"base_url must be an http:// or https:// URL (such as {default}); "
            f"it has {f'the scheme {parts.scheme!r}' if parts.scheme else 'no scheme'}"
        )
    if parts.query or parts.fragment:
        raise InvalidArgument("base_url must not carry a query or fragment")
    return base


def _api_key(api_key: str | None) -> str:
    key = api_key if api_key is not None else api_key_from_env()
    if not key:
        names = " or ".join(API_KEY_ENV_VARS)
        raise InvalidArgument(f"no api key: pass api_key= or set {names}")
    # A header carries visible ASCII only; the HTTP library's own error would
    # quote the header, key and all. Not echoed here either.
    if not all("!" <= char <= "~" for char in key):
        raise InvalidArgument(
            "the api key has a space, a newline or a non-ASCII character, which an "
            "HTTP header cannot carry (a key read from a file keeps its newline)"
        )
    return key


def _check_timeout(timeout: float) -> float:
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise InvalidArgument(f"timeout must be a positive number of seconds, not {timeout!r}")
    return timeout


def _check_ttl(ttl_seconds: Ttl | None) -> None:
    if ttl_seconds is None or ttl_seconds == "persistent":
        return
    if (
        not isinstance(ttl_seconds, int)
        or isinstance(ttl_seconds, bool)
        or not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS
    ):
        raise InvalidArgument(
            f"ttl_seconds must be an integer in [{MIN_TTL_SECONDS}, {MAX_TTL_SECONDS}] "
            'or "persistent"'
        )


_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
)


def _mime_type(data: bytes, filename: str | None) -> str:
    """What the bytes are (their first bytes), else what their name says."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    guessed = mimetypes.guess_type(filename)[0] if filename else None
    return guessed or "application/octet-stream"


def _read_upload(file: Upload) -> tuple[bytes, str | None]:
    """The bytes to upload and their file name (None for bare bytes)."""
    if isinstance(file, bytes | bytearray | memoryview):
        return bytes(file), None
    if isinstance(file, str | os.PathLike):
        path = Path(file)
        try:
            return path.read_bytes(), path.name
        except OSError as exc:  # the path is the caller's own: naming it is safe
            raise InvalidArgument(f"cannot read {str(path)!r}: {exc.strerror}") from None
    if callable(getattr(file, "read", None)):
        try:
            data = file.read()
        except UnicodeDecodeError:  # a text-mode file of an image
            data = None
        if not isinstance(data, bytes):
            raise InvalidArgument("the file object must be opened in binary mode ('rb')")
        name = getattr(file, "name", None)
        return data, os.path.basename(name) if isinstance(name, str) else None
    raise InvalidArgument(
        f"cannot upload a {type(file).__name__}: pass a path, bytes or a binary file object"
    )


class _Caller:
    """Requests with the key and user agent, and failures turned into :class:`HttpApiError`."""

    def __init__(self, api_key: str, integration: str | None, timeout: float) -> None:
        self.__api_key = api_key
        self._headers = {"User-Agent": default_user_agent(integration), "X-API-KEY": api_key}
        self._timeout = timeout
        self.client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return "<_Caller>"

    def scrub(self, text: str) -> str:
        return redact(text, self.__api_key)

    async def call(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        content_type: str | None = None,
        not_found: type[HttpApiError] = HttpApiError,
        **request: Any,
    ) -> httpx.Response:
        """The answer, when a success; else an :class:`HttpApiError`
        (``not_found``'s kind for a 404)."""
        operation = self.scrub(operation)  # it may quote what the caller passed
        headers = dict(self._headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            if self.client is not None:
                response = await self.client.request(method, url, headers=headers, **request)
            else:
                async with httpx.AsyncClient(timeout=self._timeout) as client:
                    response = await client.request(method, url, headers=headers, **request)
        except httpx.HTTPError as exc:
            reason = self.scrub(str(exc)) or "no answer"
            asked = self.asked(method, url)
            if isinstance(exc, httpx.RemoteProtocolError) and "files" in request:
                # What a WebSocket server does with a request that has a body.
                reason += " (is the base URL the HTTP API's, not the stream's port?)"
            raise HttpApiError(operation, None, f"{type(exc).__name__}: {reason}", asked) from None
        if response.is_success:
            return response
        detail = self.scrub(_error_text(response))
        kind = not_found if response.status_code == 404 else HttpApiError
        raise kind(operation, response.status_code, detail, self.asked(method, url))

    def asked(self, method: str, url: str) -> str:
        """``METHOD URL`` for a message: no user or password, clipped."""
        parts = urlsplit(url)
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        shown = shown if len(shown) <= _DETAIL_CHARS else shown[: _DETAIL_CHARS - 3] + "..."
        return self.scrub(f"{method} {shown}")

    def json(self, operation: str, response: httpx.Response) -> Any:
        try:
            return response.json()
        except (ValueError, RecursionError):  # RecursionError: nested past the parser
            raise self.failure(operation, response, "the answer is not JSON") from None

    def failure(self, operation: str, response: httpx.Response, detail: str) -> HttpApiError:
        """An answer that is no use: ``detail`` says why."""
        asked = self.asked(response.request.method, str(response.request.url))
        return HttpApiError(self.scrub(operation), response.status_code, detail, asked)


def _error_text(response: httpx.Response) -> str:
    """The server's ``detail`` when it sent JSON with one, else its text (one
    line, clipped); an HTML page is some other web server's, not quoted."""
    if response.headers.get("content-type", "").startswith("text/html"):
        reason = response.reason_phrase or "an error"
        return f"{reason} (an HTML page, not the API's answer: is the base URL right?)"
    text = " ".join(response.text.split())
    try:
        detail = json.loads(text).get("detail")
    except (ValueError, AttributeError, RecursionError):
        detail = None
    if isinstance(detail, str) and detail:
        text = detail
    text = text or response.reason_phrase or "no reason given"
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 3] + "..."


class FilesClient:
    """The files API: ``upload``, ``get``, ``delete``.

    ``base_url`` defaults to ``https://api.decart.ai``; ``api_key`` to
    ``LEANJOIN_API_KEY`` or ``DECART_API_KEY``; ``integration`` joins the
    ``User-Agent``. Used as ``async with FilesClient() as files:`` its
    requests share one connection pool; without ``async with``, each call
    opens and closes its own."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        integration: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = _base_url(base_url, DEFAULT_API_BASE_URL)
        self._caller = _Caller(_api_key(api_key), integration, _check_timeout(timeout))
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"FilesClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> FilesClient:
        self._caller.client = httpx.AsyncClient(timeout=self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._caller.client = self._caller.client, None
        if client is not None:
            await client.aclose()

    async def upload(
        self, file: Upload, ttl_seconds: Ttl | None = None, *, filename: str | None = None
    ) -> FileReference:
        """Upload an image (a path, bytes or a binary file object); kept for
        ``ttl_seconds`` (60 s to 30 days, or ``"persistent"``; None: the
        server's default, 24 h). ``filename`` overrides the name sent."""
        _check_ttl(ttl_seconds)
        data, name = await anyio.to_thread.run_sync(_read_upload, file)
        name = filename or name or "upload"
        form = {} if ttl_seconds is None else {"ttl_seconds": str(ttl_seconds)}
        operation = "file upload"
        response = await self._caller.call(
            operation,
            "POST",
            f"{self.base_url}/v1/files",
            files={"file": (name, data, _mime_type(data, name))},
            data=form,
        )
        return self._reference(operation, response)

    async def get(self, file_id: str) -> FileReference:
        """The metadata of an uploaded file; :class:`FileNotFound` when there is none."""
        operation = f"file get of {file_id[:64]!r}"
        response = await self._caller.call(
            operation, "GET", self._file_url(file_id), not_found=FileNotFound
        )
        return self._reference(operation, response)

    async def delete(self, file_id: str) -> None:
        """Delete an uploaded file; :class:`FileNotFound` when there is none."""
        operation = f"file delete of {file_id[:64]!r}"
        await self._caller.call(
            operation, "DELETE", self._file_url(file_id), not_found=FileNotFound
        )

    def _file_url(self, file_id: str) -> str:
        if not file_id:
            raise InvalidArgument("file_id is empty")
        return f"{self.base_url}/v1/files/{quote(file_id, safe='')}"

    def _reference(self, operation: str, response: httpx.Response) -> FileReference:
        try:
            return FileReference.from_json(self._caller.json(operation, response))
        except ValueError as exc:
            raise self._caller.failure(operation, response, str(exc)) from None


def room_of(subscribe_token_or_room: str) -> str:
    """The room a subscribe token names (``SessionStarted.subscribe_token``),
    or the argument itself when it is no token at all: a room name."""
    value = subscribe_token_or_room.strip()
    if not value:
        raise InvalidArgument("no room: the subscribe token or room name is empty")
    try:
        return room_of_subscribe_token(value)
    except NotASubscribeToken:
        return value


async def watch_credentials(
    subscribe_token_or_room: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    integration: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> WatchCredentials:
    """A viewer's credentials for the room of a session (``POST
    /watch-stream/{room}``): its LiveKit URL and a subscribe-only token.
    ``base_url`` defaults to ``https://api3.decart.ai`` (the JS client's);
    for ``leanjoin serve`` it is the server's HTTP API URL."""
    room = room_of(subscribe_token_or_room)
    base = _base_url(base_url, DEFAULT_WATCH_BASE_URL)
    caller = _Caller(_api_key(api_key), integration, _check_timeout(timeout))
    operation = f"watch-stream of room {room[:64]!r}"
    response = await caller.call(
        operation,
        "POST",
        f"{base}/watch-stream/{quote(room, safe='')}",
        content_type="application/json",  # as the JS client sends it, with no body
    )
    answer = caller.json(operation, response)
    fields = ("livekit_url", "token", "room_name")
    if not isinstance(answer, dict) or not all(
        isinstance(answer.get(name), str) and answer[name] for name in fields
    ):
        raise caller.failure(operation, response, f"the answer lacks one of {fields}")
    return WatchCredentials(answer["livekit_url"], answer["token"], answer["room_name"])
