"""Session configuration: where to connect, what to send first, timers, retries.

All values are plain data validated at construction (misuse raises
``ValueError`` naming the field). Nothing here does I/O.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlencode, urlsplit

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


@attrs.frozen
class RetryPolicy:
    """Exponential backoff for failed connect attempts (protocol-facts: up to 5
    retries, factor 2 from 1 s, capped at 10 s). Errors whose text contains a
    permanent marker are never retried."""

    max_retries: int = attrs.field(default=5, validator=count(0))
    initial_delay: float = attrs.field(default=1.0, validator=positive)
    factor: float = attrs.field(default=2.0, validator=at_least(1.0))
    max_delay: float = attrs.field(default=10.0, validator=positive)
    permanent_markers: tuple[str, ...] = PERMANENT_ERROR_MARKERS

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return min(self.max_delay, self.initial_delay * self.factor ** (retry - 1))

    def is_permanent(self, text: str) -> bool:
        lowered = text.lower()
        return any(marker in lowered for marker in self.permanent_markers)


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
            f"{attribute.name} must not carry a query or fragment; pass options instead"
        )


@attrs.frozen
class SessionConfig:
    """Everything a session needs to connect. ``url`` is the stream endpoint
    (base URL plus model path, e.g. ``ws://127.0.0.1:8765/v1/stream``)."""

    url: str = attrs.field(validator=_ws_url)
    api_key: str = attrs.field(repr=False, validator=attrs.validators.min_len(1))
    model: str = attrs.field(validator=attrs.validators.min_len(1))
    resolution: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.in_(("720p", "1080p")))
    )
    speed: str | None = None
    user_agent: str | None = None
    client_capabilities: ClientCapabilities | Absent = ABSENT
    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    max_frame_bytes: int = attrs.field(default=1 << 20, validator=count(1024))

    # Built once: every attempt opens the same URL.
    _urls: tuple[str, str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        url = self._build_socket_url()
        redacted = url.replace(urlencode({"api_key": self.api_key}), "api_key=<redacted>", 1)
        object.__setattr__(self, "_urls", (url, redacted))

    def socket_url(self) -> str:
        """The signaling URL: api_key and model, then options, user_agent last."""
        return self._urls[0]

    def redacted_socket_url(self) -> str:
        return self._urls[1]

    def _build_socket_url(self) -> str:
        query: list[tuple[str, str]] = [("api_key", self.api_key), ("model", self.model)]
        if self.resolution is not None:
            query.append(("resolution", self.resolution))
        if self.speed is not None:
            query.append(("speed", self.speed))
        if self.user_agent is not None:
            query.append(("user_agent", self.user_agent))
        return f"{self.url}?{urlencode(query)}"


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
        """The one initial-state message a non-passthrough join is followed by."""
        enhance: bool | Absent = ABSENT if self.enhance_prompt is None else self.enhance_prompt
        if self.image_data is not None or self.image_ref is not None:
            return SetImage(
                image_data=ABSENT if self.image_data is None else self.image_data,
                image_ref=ABSENT if self.image_ref is None else self.image_ref,
                prompt=ABSENT if self.prompt is None else self.prompt,
                enhance_prompt=enhance,
            )
        if self.prompt is not None:
            return Prompt(prompt=self.prompt, enhance_prompt=True if enhance is ABSENT else enhance)
        return None
