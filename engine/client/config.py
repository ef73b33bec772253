"""Session configuration: where to connect, what to send first, timers, retries.

All values are plain data validated at construction (misuse raises
``ValueError`` naming the field). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import quote, urlencode, urlsplit

import attrs

from ..messages import ABSENT, Absent, ClientCapabilities, Prompt, SetImage
from ..validators import at_least, count, positive, positive_or_none

PERMANENT_ERROR_MARKERS: Final = (
    "permission denied",
    "not allowed",
    "invalid session",
    "401",
    "invalid api key",
    "unauthorized",
)
# A server's refusal of what it was sent: a retry sends it again (spec §6.3).
FUTILE_RETRY_MARKERS: Final = ("exceeds the maximum",)

# Answers to the WebSocket upgrade a retry may see change: a timeout, rate
# limiting, a server error (5xx). Any other status (a wrong path's 404, a web
# page's 200, ...) answers the same every time (spec §6.3).
RETRYABLE_UPGRADE_STATUS: Final = frozenset({408, 425, 429})
CLOSE_MESSAGE_TOO_BIG: Final = 1009  # RFC 6455: the peer refused a frame as too big


def upgrade_refusal_reason(status: int, body: bytes | bytearray) -> str:
    """The failure text for an upgrade refused with ``status``: the start of the
    body too, since it usually says why ("invalid api key") and §6.3's markers
    are read in it. Transports scrub it of the URL and key before reporting."""
    detail = body[:300].decode("utf-8", errors="replace").strip()
    return f"HTTP {status}: {detail}" if detail else f"HTTP {status}"


def upgrade_refusal_is_permanent(status: int) -> bool:
    """Whether the HTTP status that refused the WebSocket upgrade is one no
    retry changes. Both transports (anyio and gevent) classify by this."""
    return status not in RETRYABLE_UPGRADE_STATUS and status < 500


@attrs.frozen
class RetryPolicy:
    """Exponential backoff for failed connect attempts (protocol-facts: up to 5
    retries, factor 2 from 1 s, capped at 10 s). Errors whose text contains a
    permanent marker are never retried and end even a connected session; a
    server error with a futile marker ends a connect (not a connected
    session: there it answers a request)."""

    max_retries: int = attrs.field(default=5, validator=count(0))
    initial_delay: float = attrs.field(default=1.0, validator=positive)
    factor: float = attrs.field(default=2.0, validator=at_least(1.0))
    max_delay: float = attrs.field(default=10.0, validator=positive)
    permanent_markers: tuple[str, ...] = PERMANENT_ERROR_MARKERS
    futile_markers: tuple[str, ...] = FUTILE_RETRY_MARKERS

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return min(self.max_delay, self.initial_delay * self.factor ** (retry - 1))

    def is_permanent(self, text: str) -> bool:
        return _has_marker(text, self.permanent_markers)

    def is_futile(self, text: str) -> bool:
        """A server error a retry would meet again (the same frames, refused)."""
        return _has_marker(text, self.futile_markers)


def _has_marker(text: str, markers: tuple[str, ...]) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in markers)


@attrs.frozen
class Timeouts:
    """Deadlines, in seconds. A queue position suspends ``room_info`` and pauses
    ``connect``; while queued, ``queue_silence`` (re-armed by each position;
    None: never) bounds a server gone quiet and ``max_queue_wait`` (None:
    unbounded) the whole wait. ``connect`` bounds one connect or reconnect,
    retries included, queue time excluded."""

    socket_open: float = attrs.field(default=60.0, validator=positive)
    room_info: float = attrs.field(default=15.0, validator=positive)
    queue_silence: float | None = attrs.field(default=60.0, validator=positive_or_none)
    max_queue_wait: float | None = attrs.field(default=None, validator=positive_or_none)
    media: float = attrs.field(default=30.0, validator=positive)
    initial_state_ack: float = attrs.field(default=30.0, validator=positive)
    request_ack: float = attrs.field(default=30.0, validator=positive)
    connect: float = attrs.field(default=300.0, validator=positive)


def _ws_url(_inst: object, attribute: attrs.Attribute[str], value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"{attribute.name} must be a ws:// or wss:// URL")
    if parts.query or parts.fragment:
        raise ValueError(
            f"{attribute.name} must not carry a query or fragment; pass query_params "
            "(and api_key, model, ...) instead"
        )


# Query names the session sets from its own options (spec §1.1).
RESERVED_QUERY_NAMES: Final = ("api_key", "model", "resolution", "speed", "user_agent")


def _query_pairs(
    value: Mapping[str, str] | Iterable[tuple[str, str]],
) -> tuple[tuple[str, str], ...]:
    return tuple(value.items() if isinstance(value, Mapping) else value)


def _query_params(
    _inst: object,
    attribute: attrs.Attribute[tuple[tuple[str, str], ...]],
    value: tuple[tuple[str, str], ...],
) -> None:
    for name, text in value:
        if not isinstance(name, str) or not name or not isinstance(text, str):
            raise ValueError(
                f"{attribute.name} takes non-empty string names and string values; got the "
                f"name {name!r} with a value of type {type(text).__name__}"
            )
        if name in RESERVED_QUERY_NAMES:
            raise ValueError(
                f"{attribute.name} must not set {name!r}: the session sets it from its own "
                f"{name} option"
            )


@attrs.frozen
class SessionConfig:
    """Everything a session needs to connect. ``url`` is the stream endpoint
    (base URL plus model path, e.g. ``ws://127.0.0.1:8765/v1/stream``).
    ``query_params`` are extra query parameters, sent first (as the JS client
    does); they are not secret (the redacted URL shows them)."""

    url: str = attrs.field(validator=_ws_url)
    api_key: str = attrs.field(repr=False, validator=attrs.validators.min_len(1))
    model: str = attrs.field(validator=attrs.validators.min_len(1))
    resolution: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(("720p", "1080p")))
    )
    speed: str | None = None
    user_agent: str | None = None
    query_params: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=_query_pairs, validator=_query_params
    )
    client_capabilities: ClientCapabilities | Absent = ABSENT
    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    max_frame_bytes: int = attrs.field(default=1 << 20, validator=count(1024))

    # Built once: every attempt opens the same URL.
    _urls: tuple[str, str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        # Percent-encoding (a space is %20, as JS's encodeURIComponent writes
        # user_agent), never '+', which a strict RFC 3986 parser keeps as is.
        extra = urlencode(self.query_params, quote_via=quote)
        rest: list[tuple[str, str]] = [("model", self.model)]
        if self.resolution is not None:
            rest.append(("resolution", self.resolution))
        if self.speed is not None:
            rest.append(("speed", self.speed))
        if self.user_agent is not None:
            rest.append(("user_agent", self.user_agent))
        tail = urlencode(rest, quote_via=quote)

        def url(api_key: str) -> str:
            return f"{self.url}?{'&'.join(p for p in (extra, api_key, tail) if p)}"

        # The redacted URL is built, not searched and replaced: an extra
        # parameter may hold the same text as the key.
        key = urlencode({"api_key": self.api_key}, quote_via=quote)
        urls = (url(key), url("api_key=<redacted>"))
        object.__setattr__(self, "_urls", urls)

    def socket_url(self) -> str:
        """The signaling URL: extra parameters, api_key, model, then options,
        user_agent last."""
        return self._urls[0]

    def redacted_socket_url(self) -> str:
        return self._urls[1]


def _image_size(value: str | None) -> str:
    return repr(value) if value is None else f"<{len(value)} base64 chars>"


@attrs.frozen
class InitialState:
    """The reference the model should start from. ``image_data`` is base64
    without a ``data:`` prefix; ``image_ref`` an uploaded file id instead."""

    image_data: str | None = attrs.field(default=None, repr=_image_size)
    image_ref: str | None = None
    prompt: str | None = None
    enhance_prompt: bool | None = None

    def __attrs_post_init__(self) -> None:
        if self.image_data is not None and self.image_ref is not None:
            raise ValueError("initial state takes image_data or image_ref, not both")

    @property
    def has_reference(self) -> bool:
        """True iff the caller supplied a non-null image or prompt."""
        return self.image_data is not None or self.image_ref is not None or self.prompt is not None

    def frame(self) -> SetImage | Prompt | None:
        """The one initial-state message sent right behind the join (None:
        nothing to send), as the JS client sends it (spec §3.2): the prompt's
        ``enhance_prompt`` (default true) goes with the prompt, also beside an
        image; an image without a prompt carries none."""
        enhance = True if self.enhance_prompt is None else self.enhance_prompt
        if self.image_data is not None or self.image_ref is not None:
            return SetImage(
                image_data=ABSENT if self.image_data is None else self.image_data,
                image_ref=ABSENT if self.image_ref is None else self.image_ref,
                prompt=ABSENT if self.prompt is None else self.prompt,
                enhance_prompt=ABSENT if self.prompt is None else enhance,
            )
        if self.prompt is not None:
            return Prompt(prompt=self.prompt, enhance_prompt=enhance)
        return None
