"""Exceptions of the client API.

Messages are built from the engine's typed errors, which never quote secrets
(api key, LiveKit tokens, image data); nothing here adds any. Every one derives
from :class:`LeanJoinError` (``leanjoin.engine.errors``), the engine's misuse
errors (``UsageError``, ``NotConnectedError``) included.
"""

from __future__ import annotations

from leanjoin.engine.client.inputs import AttemptId, RequestId
from leanjoin.engine.client.outputs import ErrorKind
from leanjoin.engine.client.session import NotConnectedError, UsageError
from leanjoin.engine.errors import InvalidArgument, LeanJoinError

__all__ = [
    "CameraError",
    "ConnectFailed",
    "ImageError",
    "InvalidArgument",
    "LeanJoinError",
    "MicrophoneUnavailable",
    "NotConnectedError",
    "RequestError",
    "RequestRejected",
    "RequestTimedOut",
    "SessionClosed",
    "UnsupportedImageSource",
    "UsageError",
    "WatchFailed",
]


class ConnectFailed(LeanJoinError):
    """``connect()`` gave up: the engine reported a fatal error before the
    session was connected. ``kind`` says why (see ``ErrorKind``)."""

    def __init__(self, kind: ErrorKind, message: str, attempt: AttemptId | None = None) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message
        self.attempt = attempt


class CameraError(LeanJoinError):
    """A capture device could not be opened or read; ``device`` names it."""

    def __init__(self, device: str, message: str) -> None:
        super().__init__(message)
        self.device = device


class SessionClosed(LeanJoinError):
    """The session ended (left, failed fatally or crashed) before the call could finish."""


class RequestError(LeanJoinError):
    """A runtime ``prompt``/``set_image`` request did not succeed."""

    def __init__(self, request: RequestId, kind: ErrorKind, message: str) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.request = request
        self.kind = kind
        self.message = message


class RequestRejected(RequestError):
    """The server answered the request with ``success: false``."""


class RequestTimedOut(RequestError):
    """No ack arrived within the request-ack timeout."""


class ImageError(InvalidArgument):
    """An image argument could not be turned into base64 image data."""


class UnsupportedImageSource(ImageError):
    """A URL scheme that the client refuses to fetch (http, https, file, ...)."""


class WatchFailed(LeanJoinError):
    """A viewer could not join the room (refused, unreachable, timed out). The
    message is the LiveKit client's reason with the token masked."""


class MicrophoneUnavailable(LeanJoinError):
    """No microphone can be opened: the ``audio`` extra or the system's PortAudio
    is missing, or the machine has no audio input device. The message says which."""


def redact(text: str, secret: str) -> str:
    """``text`` with ``secret`` (a key, a token) masked, on one line: what a
    library or a server said may quote what it was given, and end in a newline."""
    return " ".join((text.replace(secret, "<redacted>") if secret else text).split())
