"""Both engines' configurations refuse bad values, naming the field."""

from __future__ import annotations

import math
from typing import Any

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
