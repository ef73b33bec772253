"""Where a session connects and how it introduces itself (specs/protocol.md §1.1).

As the official clients do: the default base URL is the JS client 0.1.20's
(``wss://api3.decart.ai``), the model's path (``/v1/stream``) goes below it,
``user_agent`` is always sent, and the api key may come from
``DECART_API_KEY`` (``LEANJOIN_API_KEY`` first).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from .models import STREAM_PATH

__all__ = [
    "API_KEY_ENV_VARS",
    "DEFAULT_BASE_URL",
    "api_key_from_env",
    "default_user_agent",
    "stream_url",
]

DEFAULT_BASE_URL: Final = "wss://api3.decart.ai"
"""The JS client 0.1.20's realtime base URL (the Python client 0.2.4 uses wss://api.decart.ai)."""

API_KEY_ENV_VARS: Final = ("LEANJOIN_API_KEY", "DECART_API_KEY")
"""Where an api key not given explicitly is read from, in this order."""


def stream_url(url: str | None, path: str = STREAM_PATH) -> str:
    """The stream endpoint for ``url``: the default base URL when None; ``url``
    itself when its path already ends with ``path``
    (``ws://127.0.0.1:8765/v1/stream``); else ``url`` with ``path`` appended,
    as a base URL (``wss://api3.decart.ai``, or a proxy's ``wss://host/prefix``).
    The URL is never quoted in an error: it may carry a key."""
    if url is None:
        return DEFAULT_BASE_URL + path
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        scheme = f"the scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise ValueError(
            f"url must be a ws:// or wss:// URL (a base URL such as {DEFAULT_BASE_URL}, "
            f"or a stream endpoint ending in {path}); it has {scheme}"
        )
    if parts.query or parts.fragment:
        raise ValueError(
            "url must not carry a query or fragment: pass query_params= (and api_key=, "
            "model=, ...) instead"
        )
    base = url.rstrip("/")
    return base if parts.path.rstrip("/").endswith(path) else base + path


@functools.cache
def _version() -> str:
    try:
        return importlib.metadata.version("leanjoin")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def default_user_agent(integration: str | None = None) -> str:
    """``leanjoin/<version> lang/python [integration] runtime/<python>/<version>``,
    the shape of the JS client's ``decart-js-sdk/<v> lang/js [integration] runtime/…``."""
    runtime = f"runtime/{platform.python_implementation().lower()}/{platform.python_version()}"
    parts = [f"leanjoin/{_version()}", "lang/python"]
    if integration:
        parts.append(integration)
    parts.append(runtime)
    return " ".join(parts)


def api_key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The first non-blank of ``LEANJOIN_API_KEY`` and ``DECART_API_KEY``
    (surrounding blanks stripped, as the official clients do), else None."""
    env = os.environ if environ is None else environ
    for name in API_KEY_ENV_VARS:
        value = env.get(name, "").strip()
        if value:
            return value
    return None
