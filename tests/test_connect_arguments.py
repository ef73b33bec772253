"""``connect()``'s observability and shutdown arguments, given values a user
may pass by mistake (review of issue #14): each is refused before anything
is opened with :class:`InvalidArgument` (a ``LeanJoinError`` and a
``ValueError``) naming the argument, never a ``TypeError`` from a comparison
deep inside, nor taken silently."""

from __future__ import annotations

import math
from typing import Any

import pytest

from leanjoin.adapters import InvalidArgument, RetryPolicy, connect

pytestmark = pytest.mark.anyio

# Nothing listens there; no test gets as far as opening it.
URL = "ws://127.0.0.1:9/v1/stream"


BAD: list[tuple[str, Any]] = [
    *[("stats_interval", v) for v in (0, 0.1, -1, math.nan, math.inf, "1", True)],
    *[("stall_threshold", v) for v in (0, -1, math.nan, math.inf, "2", True)],
    *[("shutdown_timeout", v) for v in (0, -1, math.nan, math.inf, "3", True)],
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v!r}" for n, v in BAD])
async def test_a_bad_value_is_refused_naming_the_argument(name: str, value: Any) -> None:
    with pytest.raises(InvalidArgument, match=rf"^{name} must be"):
        async with connect(URL, api_key="k", model="echo", retry=RetryPolicy(0), **{name: value}):
            pass


@pytest.mark.parametrize(
    "good", [{"stats_interval": 0.5}, {"stall_threshold": 0.1}, {"shutdown_timeout": 1}]
)
async def test_a_good_value_passes_the_checks(good: dict[str, Any]) -> None:
    # Refused by the socket (nobody listens), not by the checks.
    with pytest.raises(Exception) as failed:
        async with connect(URL, api_key="k", model="echo", retry=RetryPolicy(0), **good):
            pass
    assert not isinstance(failed.value, InvalidArgument), failed.value
