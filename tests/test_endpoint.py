"""Where a session connects and how it introduces itself (adapters/client/endpoint.py,
spec §1.1): the default base URL and the model's path, the user agent, the key
from the environment; and the socket URL as a server receives it."""

from __future__ import annotations

import platform
import re
from urllib.parse import parse_qsl

import anyio
import pytest
from client_helpers import WAIT, refusing_server

from leanjoin.adapters import ConnectFailed, ErrorKind, RetryPolicy, connect
from leanjoin.adapters.client.endpoint import (
    DEFAULT_BASE_URL,
    api_key_from_env,
    default_user_agent,
    stream_url,
)

SECRET = "sk-endpoint-5ecret"


def test_the_default_endpoint_is_the_js_clients_base_and_the_stream_path() -> None:
    assert DEFAULT_BASE_URL == "wss://api3.decart.ai"
    assert stream_url(None) == "wss://api3.decart.ai/v1/stream"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("wss://api3.decart.ai", "wss://api3.decart.ai/v1/stream"),
        ("wss://api3.decart.ai/", "wss://api3.decart.ai/v1/stream"),
        ("ws://127.0.0.1:8765/v1/stream", "ws://127.0.0.1:8765/v1/stream"),
        ("ws://127.0.0.1:8765/v1/stream/", "ws://127.0.0.1:8765/v1/stream"),
        ("wss://proxy.example/api/decart", "wss://proxy.example/api/decart/v1/stream"),
    ],
)
def test_a_base_url_gets_the_models_path_and_an_endpoint_is_kept(given: str, expected: str) -> None:
    assert stream_url(given) == expected


def test_a_custom_models_path_goes_below_the_base() -> None:
    assert stream_url("ws://h:1", "/v2/live") == "ws://h:1/v2/live"


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        (f"https://api3.decart.ai/v1/stream?api_key={SECRET}", "the scheme 'https'"),
        ("api3.decart.ai", "no scheme"),
        (f"wss://api3.decart.ai/v1/stream?api_key={SECRET}", "pass query_params="),
    ],
)
def test_a_bad_url_is_refused_without_quoting_it(given: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)) as refused:
        stream_url(given)
    assert SECRET not in str(refused.value) and "decart.ai/v1" not in str(refused.value)


def test_the_user_agent_names_leanjoin_python_an_integration_and_the_runtime() -> None:
    agent = default_user_agent("my-app/2.0")
    pattern = r"leanjoin/\S+ lang/python my-app/2\.0 runtime/[a-z]+/\d+\.\d+\.\d+\S*"
    assert re.fullmatch(pattern, agent), agent
    assert agent.endswith(
        f"runtime/{platform.python_implementation().lower()}/{platform.python_version()}"
    )
    assert default_user_agent().split(" ")[:2] == agent.split(" ")[:2]
    assert len(default_user_agent().split(" ")) == 3


def test_the_api_key_comes_from_leanjoin_then_decart_stripped() -> None:
    assert api_key_from_env({"DECART_API_KEY": " d \n"}) == "d"
    assert api_key_from_env({"LEANJOIN_API_KEY": "l", "DECART_API_KEY": "d"}) == "l"
    assert api_key_from_env({"LEANJOIN_API_KEY": "  ", "DECART_API_KEY": "d"}) == "d"
    assert api_key_from_env({}) is None


# ---- the socket URL as a server receives it ----------------------------------------------


async def refused_connect(**kwargs: object) -> None:
    with anyio.fail_after(WAIT), pytest.raises(ConnectFailed) as failed:
        async with connect(retry=RetryPolicy(max_retries=0), **kwargs):  # type: ignore[arg-type]
            raise AssertionError("the recording server refuses every key")
    assert failed.value.kind is ErrorKind.SERVER_ERROR


@pytest.mark.anyio
async def test_the_server_receives_extras_first_the_key_from_the_environment_and_the_agent_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LEANJOIN_API_KEY", raising=False)
    monkeypatch.setenv("DECART_API_KEY", SECRET)
    async with refusing_server() as (base, recorded):
        await refused_connect(
            url=base,  # a base URL: the model's path goes below it
            model="lucy-2.5",
            resolution="720p",
            query_params={"region": "eu west"},
            integration="my-app/2.0",
        )
    (path,) = recorded.paths
    route, _, query = path.partition("?")
    assert route == "/v1/stream"
    pairs = parse_qsl(query)
    assert [name for name, _ in pairs] == [
        *("region", "api_key", "model", "resolution", "user_agent"),
    ]
    values = dict(pairs)
    assert values["region"] == "eu west" and values["api_key"] == SECRET
    assert values["model"] == "lucy-2.5"
    assert values["user_agent"] == default_user_agent("my-app/2.0")


@pytest.mark.anyio
async def test_connect_without_a_url_goes_to_the_default_base(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with refusing_server() as (base, recorded):
        # The default base, pointed here: connect() must read it, not hard-code a URL.
        monkeypatch.setattr("leanjoin.adapters.client.endpoint.DEFAULT_BASE_URL", base)
        await refused_connect(api_key="k", model="echo", user_agent="exactly this")
    (path,) = recorded.paths
    assert path.startswith("/v1/stream?")
    assert parse_qsl(path.partition("?")[2])[-1] == ("user_agent", "exactly this")
    # The upgrade's header names the same client as the query parameter.
    assert recorded.user_agents == ["exactly this"]


@pytest.mark.anyio
async def test_the_upgrade_header_carries_the_default_user_agent() -> None:
    async with refusing_server() as (base, recorded):
        await refused_connect(url=base, api_key="k", model="echo", integration="my-app/2.0")
    assert recorded.user_agents == [default_user_agent("my-app/2.0")]


def test_connect_without_any_key_says_where_one_is_read_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LEANJOIN_API_KEY", raising=False)
    monkeypatch.delenv("DECART_API_KEY", raising=False)

    async def attempt() -> None:
        async with connect("ws://127.0.0.1:9", model="echo"):
            pass

    with pytest.raises(ValueError, match="LEANJOIN_API_KEY or DECART_API_KEY"):
        anyio.run(attempt)
