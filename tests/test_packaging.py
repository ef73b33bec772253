"""Packaging: the client installs without the server stack, which is the `server`
extra (`pip install 'leanjoin[server]'`), and `leanjoin connect` never imports it."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest

from leanjoin.adapters.cli.main import LAZY_COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
# Import names of the server extra's packages (and of the server adapters themselves).
SERVER_MODULES = ("aiortc", "PIL", "livekit.api", "livekit.protocol", "leanjoin.adapters.server")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (nothing imported by this test run)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def _name(requirement: str) -> str:
    """The distribution name of a requirement string, normalized (PEP 503)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def test_connect_does_not_import_the_server_stack() -> None:
    done = _python(
        """
        import json, sys
        from click.testing import CliRunner
        from leanjoin.adapters.cli.main import main
        result = CliRunner().invoke(main, ["connect", "--help"])
        print(json.dumps({"code": result.exit_code, "output": result.output,
                          "modules": sorted(sys.modules)}))
        """
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["code"] == 0, report["output"]
    assert "Usage: main connect [OPTIONS] [URL]" in report["output"]
    imported = [
        module
        for module in report["modules"]
        if any(module == name or module.startswith(name + ".") for name in SERVER_MODULES)
    ]
    assert imported == []
    # The client itself (what connect runs) is loaded: the check above means something.
    assert "leanjoin.adapters.client.room_transport" in report["modules"]
    # The microphone's library loads PortAudio: only a Microphone imports it.
    assert "leanjoin.adapters.client.audio_sources" in report["modules"]
    assert "sounddevice" not in report["modules"]


def test_the_server_stack_is_the_server_extra_not_a_base_dependency() -> None:
    project = _project()
    base = {_name(requirement) for requirement in project["dependencies"]}
    server = {_name(requirement) for requirement in project["optional-dependencies"]["server"]}
    only_server = {"aiortc", "pillow", "livekit-api", "livekit-protocol"}
    assert only_server <= server
    assert not only_server & base
    # What the client imports stays in the base dependencies.
    assert {"livekit", "av", "numpy", "websockets", "anyio"} <= base


def test_dev_installs_the_server_load_and_audio_extras() -> None:
    # `./dev test` and `./dev demo` run the reference server; tests/test_load.py runs
    # Locust; tests/test_audio.py makes a Microphone with the real sounddevice.
    assert "'.[dev,server,load,audio]'" in (ROOT / "dev").read_text()


def test_the_microphone_library_is_the_audio_extra_not_a_base_dependency() -> None:
    project = _project()
    base = {_name(requirement) for requirement in project["dependencies"]}
    assert {_name(r) for r in project["optional-dependencies"]["audio"]} == {"sounddevice"}
    assert "sounddevice" not in base


@pytest.mark.parametrize(
    "args",
    [["serve", "--help"], ["serve", "--port", "0"], ["demo", "--out", "out/unused.png"]],
    ids=" ".join,
)
def test_server_commands_without_the_extra_fail_in_one_line(args: list[str]) -> None:
    # aiortc "not installed": an import of it raises ModuleNotFoundError.
    done = _python(
        f"""
        import sys
        sys.modules["aiortc"] = None
        sys.argv = ["leanjoin", *{args!r}]
        from leanjoin.adapters.cli.main import entry
        entry()
        """
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"leanjoin: `leanjoin {args[0]}` needs the server extra (aiortc is not installed): "
        "pip install 'leanjoin[server]'"
    ]


def test_help_lists_a_server_command_without_the_extra_with_the_fix() -> None:
    done = _python(
        """
        import sys
        sys.modules["aiortc"] = None
        from leanjoin.adapters.cli.main import main
        main(["--help"], prog_name="leanjoin")
        """
    )
    assert done.returncode == 0, done.stderr
    (serve,) = [line for line in done.stdout.splitlines() if line.strip().startswith("serve")]
    assert "pip install 'leanjoin[server]'" in serve


def test_every_lazy_command_loads_under_its_own_name() -> None:
    with click.Context(main) as ctx:
        assert set(LAZY_COMMANDS) <= set(main.list_commands(ctx))
        for name in LAZY_COMMANDS:
            command = main.get_command(ctx, name)
            assert isinstance(command, click.Command)
            assert command.name == name


def test_ctrl_c_while_the_command_is_still_importing_ends_it_without_a_traceback() -> None:
    # The first second of `leanjoin ...` is imports; a Ctrl-C then ends the
    # process as the signal does (no Python traceback), as one later does.
    done = _python(
        """
        import sys

        class CtrlC:  # the user's Ctrl-C, arriving while the client API is imported
            def find_spec(self, name, path=None, target=None):
                if name == "leanjoin.adapters.client.api":
                    raise KeyboardInterrupt
                return None

        sys.meta_path.insert(0, CtrlC())
        sys.argv = ["leanjoin", "watch"]
        from leanjoin.adapters.cli.launch import entry
        entry()
        """
    )
    assert done.returncode == -signal.SIGINT
    assert done.stdout == "" and done.stderr == ""
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"] == {
        "leanjoin": "leanjoin.adapters.cli.launch:entry"
    }
