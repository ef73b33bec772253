"""Both engines' configurations refuse bad values, naming the field."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import parse_qsl

import pytest
from click.testing import CliRunner

from leanjoin.adapters.cli.serve import knobs_from_options, serve
from leanjoin.engine.client.config import RetryPolicy, SessionConfig, Timeouts
from leanjoin.engine.server.knobs import FaultPhase, MediaFailurePhase, ServerKnobs


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda v: Timeouts(room_info=v), "room_info"),
        (lambda v: Timeouts(queue_silence=v), "queue_silence"),
        (lambda v: RetryPolicy(initial_delay=v), "initial_delay"),
        (lambda v: ServerKnobs(tick_interval=v), "tick_interval"),
        (lambda v: ServerKnobs(uplink_bytes_per_second=v), "uplink_bytes_per_second"),
    ],
)
@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, True, "5"])
def test_positive_fields_refuse_what_is_not_a_positive_number(
    make: Any, field: str, value: object
) -> None:
    with pytest.raises(ValueError, match=field):
        make(value)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda v: ServerKnobs(room_info_delay=v), "room_info_delay"),
        (lambda v: ServerKnobs(media_setup_delay=v), "media_setup_delay"),
        (lambda v: ServerKnobs(join_answer_delay=v), "join_answer_delay"),
        (lambda v: ServerKnobs(publish_delay=v), "publish_delay"),
    ],
)
def test_delays_may_be_zero_but_not_negative_or_not_a_number(make: Any, field: str) -> None:
    assert getattr(make(0), field) == 0
    for value in (-0.1, math.nan, math.inf, True, "1"):
        with pytest.raises(ValueError, match=field):
            make(value)


def test_none_only_where_it_means_something() -> None:
    assert Timeouts(queue_silence=None, max_queue_wait=None).queue_silence is None
    assert (
        ServerKnobs(max_queue=None, fault_connections=None, admissions_per_second=None).max_queue
        is None
    )
    with pytest.raises(ValueError, match="room_info"):
        Timeouts(room_info=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity"):
        ServerKnobs(capacity=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda: RetryPolicy(max_retries=True),
        lambda: RetryPolicy(max_retries=1.5),  # type: ignore[arg-type]
        lambda: RetryPolicy(factor=0.5),
        lambda: ServerKnobs(max_queue=-1),
        lambda: SessionConfig(url="ws://h/v1/stream", api_key="k", model="m", max_frame_bytes=10),
    ],
)
def test_counts_and_bounds(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


def test_media_failure_at_takes_only_phases_in_which_the_client_is_in_its_room() -> None:
    for media in MediaFailurePhase:
        assert media.phase.value == media.value
        assert ServerKnobs(media_failure_at=media).without_faults().media_failure_at is None
    for wrong in (FaultPhase.BEFORE_ROOM_INFO, FaultPhase.PUBLISHING, "publishing"):
        with pytest.raises(TypeError, match="media_failure_at"):
            ServerKnobs(media_failure_at=wrong)  # type: ignore[arg-type]


def test_media_failure_at_is_a_serve_option_with_its_phases_only() -> None:
    help_text = CliRunner().invoke(serve, ["--help"]).output
    assert "--media-failure-at [publishing|client_video|generating]" in help_text
    knobs = knobs_from_options({"media_failure_at": "client_video"})
    assert knobs.media_failure_at is MediaFailurePhase.CLIENT_VIDEO
    refused = CliRunner().invoke(serve, ["--media-failure-at", "queued"])
    assert refused.exit_code == 2 and "queued" in refused.output


# ---- the socket URL (spec §1.1) ----------------------------------------------------------


def test_socket_url_puts_extra_parameters_first_and_user_agent_last() -> None:
    config = SessionConfig(
        url="wss://h/v1/stream",
        api_key="k",
        model="lucy-2.5",
        resolution="720p",
        speed="fast",
        user_agent="leanjoin/0.1.0 lang/python my-app/2 runtime/cpython/3.11.9",
        query_params={"region": "eu west", "trace": "1"},
    )
    query = config.socket_url().partition("?")[2]
    assert [pair.partition("=")[0] for pair in query.split("&")] == [
        *("region", "trace", "api_key", "model", "resolution", "speed", "user_agent"),
    ]
    # Percent-encoded as JS's encodeURIComponent writes user_agent: never '+'.
    assert "region=eu%20west" in query
    assert query.endswith(
        "user_agent=leanjoin%2F0.1.0%20lang%2Fpython%20my-app%2F2%20runtime%2Fcpython%2F3.11.9"
    )
    assert parse_qsl(query)[-1] == ("user_agent", config.user_agent)


@pytest.mark.parametrize("name", ["api_key", "model", "resolution", "speed", "user_agent"])
def test_extra_parameters_cannot_set_what_the_session_sets(name: str) -> None:
    with pytest.raises(ValueError, match=f"query_params must not set '{name}'"):
        SessionConfig(url="ws://h/v1/stream", api_key="k", model="m", query_params={name: "x"})


def test_extra_parameters_are_strings_with_names() -> None:
    for bad in ({"": "x"}, {"n": 1}, [("n", None)]):
        with pytest.raises(ValueError, match="query_params takes non-empty string names"):
            SessionConfig(url="ws://h/v1/stream", api_key="k", model="m", query_params=bad)  # type: ignore[arg-type]


def test_the_redacted_url_hides_the_key_even_when_an_extra_parameter_repeats_it() -> None:
    key = "sk live/&=key"
    config = SessionConfig(
        url="ws://h/v1/stream", api_key=key, model="m", query_params={"x_api_key": key}
    )
    redacted = config.redacted_socket_url()
    assert ("api_key", "<redacted>") in parse_qsl(redacted.partition("?")[2])
    assert ("api_key", key) in parse_qsl(config.socket_url().partition("?")[2])
    assert redacted.count("<redacted>") == 1  # the extra parameter is not a secret


def test_a_url_with_a_query_points_to_query_params() -> None:
    with pytest.raises(ValueError, match="pass query_params"):
        SessionConfig(url="ws://h/v1/stream?region=eu", api_key="k", model="m")
