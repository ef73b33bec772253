"""The model registry (adapters/client/models.py, spec §1.6): names, aliases,
sizes and rates as the official clients list them, and clear refusals."""

from __future__ import annotations

import subprocess
import sys
import warnings
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from leanjoin.adapters import (
    LeanJoinError,
    ModelDefinition,
    ModelDeprecationWarning,
    UnknownModelError,
    connect,
    is_realtime_model,
    list_models,
)
from leanjoin.adapters.cli.main import main
from leanjoin.adapters.client.models import resolve_model

# Sizes from the JS client 0.1.20's shared/model.js (and the Python client's
# for the names only it knows).
EXPECTED_SIZES = {
    "lucy-2.1": (1088, 624),
    "lucy-2.5": (1280, 720),
    "lucy-2.6": (1280, 720),
    "lucy-vton-2": (1088, 624),
    "lucy-vton-3": (1088, 624),
    "lucy-vton-3.5": (1280, 720),
    "lucy-vton-3.6": (1280, 720),
    "lucy-restyle-2": (1280, 704),
    "lucy-latest": (1088, 624),
    "lucy-vton-latest": (1280, 720),
    "lucy-restyle-latest": (1280, 704),
    "lucy-2.1-vton-2": (1088, 624),
}


def test_every_realtime_model_has_the_official_size_rate_and_path() -> None:
    models = {m.name: m for m in list_models()}
    assert set(models) == set(EXPECTED_SIZES)
    for name, (width, height) in EXPECTED_SIZES.items():
        model = models[name]
        assert (model.width, model.height, model.fps) == (width, height, 30), name
        assert model.path == "/v1/stream" and model.kind == "realtime"


def test_canonical_only_leaves_out_latest_and_deprecated_aliases() -> None:
    canonical = {m.name for m in list_models(canonical_only=True)}
    assert canonical == {
        "lucy-2.1",
        "lucy-2.5",
        "lucy-2.6",
        "lucy-vton-2",
        "lucy-vton-3",
        "lucy-vton-3.5",
        "lucy-vton-3.6",
        "lucy-restyle-2",
    }
    latest = resolve_model("lucy-latest")
    assert latest.latest and not latest.canonical


def test_is_realtime_model_knows_aliases_but_not_batch_or_local_models() -> None:
    for name in ("lucy-2.5", "lucy-latest", "lucy-2.1-vton-2"):
        assert is_realtime_model(name)
    for name in ("lucy-clip", "lucy-image-2", "echo", "LUCY-2.5", ""):
        assert not is_realtime_model(name)


def test_an_unknown_name_is_refused_with_every_known_model_listed() -> None:
    with pytest.raises(UnknownModelError) as caught:
        resolve_model("nonsense")
    message = str(caught.value)
    assert "unknown model 'nonsense'" in message
    for model in list_models():
        assert model.name in message
    assert "echo" in message and "ModelDefinition" in message
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, LeanJoinError)


def test_a_near_miss_gets_a_suggestion_and_a_batch_model_says_why_it_cannot_stream() -> None:
    with pytest.raises(UnknownModelError, match=r"did you mean 'lucy-2\.5'"):
        resolve_model("Lucy-2.5")
    with pytest.raises(UnknownModelError, match=r"batch .* not a realtime one"):
        resolve_model("lucy-clip")
    with pytest.raises(UnknownModelError, match="realtime counterpart is 'lucy-restyle-2'"):
        resolve_model("lucy-restyle-v2v")
    with pytest.raises(TypeError, match="ModelDefinition"):
        resolve_model(2.5)  # type: ignore[arg-type]


def test_a_deprecated_alias_warns_naming_its_replacement_and_is_sent_as_given() -> None:
    with pytest.warns(
        ModelDeprecationWarning, match="'lucy-2.1-vton-2' is deprecated.*'lucy-vton-2'"
    ):
        model = resolve_model("lucy-2.1-vton-2")
    assert model.name == "lucy-2.1-vton-2"  # the wire name, as the official clients send it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_model("lucy-vton-2")  # a canonical name never warns
        resolve_model("echo")


def test_the_deprecation_warning_is_shown_under_default_filters() -> None:
    """A DeprecationWarning would be hidden outside __main__: the user would never see it."""
    code = (
        "import leanjoin.adapters.client.models as m\n"
        "def library_call():\n    m.resolve_model('lucy-2.1-vton-2')\n"
        "library_call()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "ModelDeprecationWarning" in run.stderr and "lucy-vton-2" in run.stderr


def test_a_custom_definition_is_the_explicit_opt_out() -> None:
    custom = ModelDefinition("my-own-model", 320, 240, fps=15)
    assert resolve_model(custom) is custom and custom.kind == "custom"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"width": 321}, "width"),
        ({"height": 8}, "height"),
        ({"fps": 0}, "fps"),
        ({"path": "v1/stream"}, "path"),
        ({"name": ""}, "name"),
    ],
)
def test_a_definition_refuses_what_no_camera_or_url_can_take(
    changes: dict[str, Any], field: str
) -> None:
    fields: dict[str, Any] = {"name": "m", "width": 320, "height": 240, **changes}
    with pytest.raises(ValueError, match=field):
        ModelDefinition(**fields)


def test_the_reference_servers_model_is_known_by_name() -> None:
    echo = resolve_model("echo")
    assert (echo.kind, echo.width, echo.height, echo.fps) == ("local", 640, 360, 30)


def test_connect_refuses_an_unknown_model_before_opening_anything() -> None:
    async def attempt() -> None:
        # Port 9 (discard) would fail the connect with ConnectFailed, not this.
        async with connect("ws://127.0.0.1:9/v1/stream", api_key="k", model="lucy-9"):
            pass

    with pytest.raises(UnknownModelError, match="unknown model 'lucy-9'"):
        anyio.run(attempt)


def test_cli_refuses_an_unknown_model_as_misuse_listing_the_known_ones() -> None:
    result = CliRunner(env={"LEANJOIN_API_KEY": "k"}).invoke(
        main, ["connect", "ws://127.0.0.1:9/v1/stream", "--model", "lucy-9"]
    )
    assert result.exit_code == 2, result.output
    assert "lucy-9" in result.output and "lucy-restyle-2" in result.output
