"""The deep preflight (``probe_session``, ``leanjoin preflight --deep``): a
short real session against the reference server, graded on the JS client's
bands. Speeds are not asserted: a loaded machine may make a good link fair."""

from __future__ import annotations

import os
import subprocess

import pytest
from client_helpers import LEANJOIN, served

from leanjoin.adapters.client.errors import InvalidArgument
from leanjoin.adapters.client.preflight import Quality
from leanjoin.adapters.client.session_probe import grade, judge, probe_session
from leanjoin.adapters.server.reference import ReferenceServer

pytestmark = [pytest.mark.anyio, pytest.mark.livekit]


async def test_a_working_session_is_measured_and_passes(server: ReferenceServer) -> None:
    report = await probe_session(server.url, model="echo", api_key=server.api_key, duration=20)
    assert report.quality in (Quality.GOOD, Quality.FAIR), report
    assert report.time_to_first_frame is not None and report.time_to_first_frame > 0
    assert report.samples >= 5 and report.frames_per_second is not None
    assert report.packet_loss is not None and report.round_trip_time is not None
    assert server.connections == 0 or not list(server.livekit.rooms)  # the session was left


async def test_a_session_that_cannot_open_is_critical_and_says_why(
    server: ReferenceServer,
) -> None:
    report = await probe_session(server.url, model="echo", api_key="not-the-key-4411")
    assert report.quality is Quality.CRITICAL and report.time_to_first_frame is None
    assert report.reasons[0].startswith("could not establish a realtime session")
    assert "invalid api key" in report.reasons[0] and "not-the-key-4411" not in report.reasons[0]


async def test_bad_arguments_raise_before_any_session() -> None:
    with pytest.raises(InvalidArgument, match="duration"):
        await probe_session("ws://127.0.0.1:9/v1/stream", model="echo", api_key="k", duration=0)
    with pytest.raises(ValueError, match="did you mean 'echo'"):
        await probe_session("ws://127.0.0.1:9/v1/stream", model="ecoh", api_key="k")


@pytest.mark.parametrize(
    ("value", "higher", "quality"),
    [
        (4.0, False, Quality.GOOD),
        (4.1, False, Quality.FAIR),
        (10.0, False, Quality.POOR),
        (10.1, False, Quality.CRITICAL),
        (20.0, True, Quality.GOOD),
        (12.0, True, Quality.FAIR),
        (5.0, True, Quality.POOR),
        (4.9, True, Quality.CRITICAL),
    ],
)
def test_each_dimension_is_graded_on_the_js_bands(
    value: float, higher: bool, quality: Quality
) -> None:
    bands = (20.0, 12.0, 5.0) if higher else (4.0, 6.0, 10.0)
    assert grade(value, bands, higher_is_better=higher) is quality


def test_the_verdict_is_the_worst_dimension_and_says_which() -> None:
    report = judge(1.0, 0.02, 0.03, 25.0, 5)  # 3% loss: poor; all else good
    assert report.quality is Quality.POOR
    assert report.reasons == ("3.0% of the model's video packets were lost (good <= 0.1%)",)
    assert judge(1.0, 0.02, 0.0, 25.0, 5).reasons == ()
    dark = judge(None, 0.02, None, None, 3)
    assert dark.quality is Quality.CRITICAL and "no model video" in dark.reasons[0]


def test_cli_deep_probe_against_serve() -> None:
    key = "deep-probe-key-31"
    with served(key) as url:
        env = {**os.environ, "LEANJOIN_API_KEY": key}
        done = subprocess.run(
            [str(LEANJOIN), "preflight", "--deep", url, "--model", "echo"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(("good: first frame ", "fair: first frame ")), done.stdout
    assert key not in done.stdout + done.stderr
    usage = subprocess.run(
        [str(LEANJOIN), "preflight", "--deep", url], capture_output=True, text=True, timeout=60
    )
    assert usage.returncode == 2 and "--model" in usage.stderr
    typo = subprocess.run(
        [str(LEANJOIN), "preflight", "--deep", url, "--model", "ecoh"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LEANJOIN_API_KEY": key},
    )
    assert typo.returncode == 2 and "did you mean 'echo'" in typo.stderr
    assert "Traceback" not in typo.stderr
