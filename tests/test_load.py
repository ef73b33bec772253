"""Locust drives the engine on gevent (``leanjoin.adapters.load``) against
``leanjoin serve``: a headless master and 2 worker processes, on 127.0.0.1
only, bounded in time; the counts come from Locust's CSV statistics.

Locust monkey-patches the standard library for gevent when it is imported,
so nothing here imports it: every Locust runs in processes of its own.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from client_helpers import served

pytestmark = pytest.mark.load

_MISSING = [name for name in ("locust", "websocket") if importlib.util.find_spec(name) is None]
if _MISSING:
    pytest.skip(
        f"the load extra is not installed ({' and '.join(_MISSING)} missing): "
        "pip install 'leanjoin[load]'",
        allow_module_level=True,
    )

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "adapters" / "load" / "locustfile.py"  # the one the README runs
API_KEY = "load-test-key-7c41e9"  # distinctive: searched for in everything Locust wrote
PHASES = ("queue_wait", "room_info", "connected", "initial_state_ack", "prompt_ack", "session")
USERS = 30
SESSIONS = 2  # per user: every session started ends before --run-time (see locust_user.py)
PROMPTS = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _environment(api_key: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LOCUST_", "LEANJOIN_")) and name != "DECART_API_KEY"
    }
    return {**env, "LEANJOIN_API_KEY": api_key, "PYTHONUNBUFFERED": "1"}


def _locust(out: Path, api_key: str, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args]
    with out.open("w") as output:
        return subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            env=_environment(api_key),
            cwd=out.parent,
        )


def _finish(process: subprocess.Popen[str], timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def _stats(prefix: Path) -> dict[str, dict[str, str]]:
    """Locust's per-request-type rows (the Aggregated row left out), by type."""
    with Path(f"{prefix}_stats.csv").open() as file:
        rows = [row for row in csv.DictReader(file) if row["Type"]]
    return {row["Type"]: row for row in rows}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as file:
        return list(csv.DictReader(file))


def _locust_wrote(directory: Path) -> str:
    """Every log and CSV file the Locust processes wrote (the server's log left out)."""
    paths = sorted(p for p in directory.iterdir() if p.name != "serve.log")
    return "\n".join(path.read_text(errors="replace") for path in paths)


def test_a_master_and_two_workers_count_every_phase_of_every_session(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    port = _free_port()
    # 30 users for 10 slots: many sessions queue, and all get through.
    with served(API_KEY, "--capacity", "10", log=out / "serve.log") as url:
        master = _locust(
            out / "master.log",
            API_KEY,
            "--master",
            "--master-bind-host=127.0.0.1",
            f"--master-bind-port={port}",
            "--expect-workers=2",
            "--expect-workers-max-wait=30",
            "--headless",
            f"--users={USERS}",
            "--spawn-rate=15",
            "--run-time=8s",
            "--stop-timeout=5",
            f"--host={url}",
            f"--csv={out / 'run'}",
            "--leanjoin-session-seconds=0.5",
            f"--leanjoin-prompts={PROMPTS}",
            f"--leanjoin-sessions={SESSIONS}",
        )
        workers = [
            _locust(
                out / f"worker{index}.log",
                API_KEY,
                "--worker",
                "--master-host=127.0.0.1",
                f"--master-port={port}",
            )
            for index in (1, 2)
        ]
        try:
            code = _finish(master, timeout=60)
        finally:
            worker_codes = [_finish(worker, timeout=30) for worker in workers]
    output = (out / "master.log").read_text()
    assert code == 0, output[-3000:]
    assert worker_codes == [0, 0], [(out / f"worker{i}.log").read_text()[-2000:] for i in (1, 2)]

    stats = _stats(out / "run")
    counts = {kind: int(row["Request Count"]) for kind, row in stats.items()}
    failures = {kind: int(row["Failure Count"]) for kind, row in stats.items()}
    assert set(counts) == set(PHASES), counts
    assert failures == dict.fromkeys(PHASES, 0), _rows(Path(f"{out / 'run'}_failures.csv"))
    assert _rows(Path(f"{out / 'run'}_failures.csv")) == []
    assert _rows(Path(f"{out / 'run'}_exceptions.csv")) == []
    started = USERS * SESSIONS
    for phase in ("room_info", "connected", "initial_state_ack", "session"):
        assert counts[phase] == started, (phase, counts)
    assert counts["prompt_ack"] == PROMPTS * started, counts
    assert 0 < counts["queue_wait"] <= started, counts
    assert f"({USERS} total users)" in output, output[-3000:]
    assert API_KEY not in _locust_wrote(out)
    assert "Traceback" not in (out / "serve.log").read_text()


def test_failures_are_counted_by_error_kind_and_never_show_the_key(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    wrong_key = "wrong-key-0d93aa"
    with served(API_KEY, log=out / "serve.log") as url:
        locust = _locust(
            out / "locust.log",
            wrong_key,
            "--headless",
            "--users=3",
            "--spawn-rate=3",
            "--run-time=3s",
            f"--host={url}",
            f"--csv={out / 'run'}",
            "--leanjoin-sessions=3",
        )
        code = _finish(locust, timeout=60)
    assert code == 1  # Locust's exit code when requests failed
    failures = _rows(Path(f"{out / 'run'}_failures.csv"))
    # The server refuses the key with an error frame: a permanent server error,
    # so each session fails once, before room_info.
    assert {row["Method"] for row in failures} == {"room_info", "session"}, failures
    assert {row["Error"] for row in failures} == {"SessionFailure('server_error')"}, failures
    assert {row["Name"] for row in failures} == {"echo"}
    stats = _stats(out / "run")
    assert {
        kind: (int(row["Request Count"]), int(row["Failure Count"])) for kind, row in stats.items()
    } == {
        "room_info": (9, 9),  # 3 users, 3 sessions each
        "session": (9, 9),
    }
    assert wrong_key not in _locust_wrote(out)
    assert _rows(Path(f"{out / 'run'}_exceptions.csv")) == []


def test_the_load_adapter_imports_no_asyncio() -> None:
    # A second, independent adapter stack: gevent and websocket-client only.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, leanjoin.adapters.load; print(json.dumps(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_environment(API_KEY),
    )
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout.splitlines()[-1])
    banned = ("asyncio", "anyio", "websockets", "livekit", "leanjoin.adapters.client.api")
    assert [m for m in modules if m.startswith(banned)] == []
    assert "gevent" in modules and "websocket" in modules


_OPEN_WRONG_PATH = """
from gevent import monkey; monkey.patch_all()
import sys
from leanjoin.adapters.load import GeventSignalSocket, GeventSocketOptions
from leanjoin.engine.client.inputs import AttemptId
from leanjoin.engine.client.outputs import OpenSocket
posted = []
url = sys.argv[1] + "?api_key=k&model=echo"
socket = GeventSignalSocket(OpenSocket(AttemptId(1), url, url), posted.append, GeventSocketOptions())
socket.start()
socket.join(timeout=20)
print(repr([(type(p).__name__, getattr(p, "permanent", None)) for p in posted]))
"""


def test_an_upgrade_no_retry_can_mend_is_permanent_on_gevent_too(tmp_path: Path) -> None:
    """The same classification as the anyio transport (spec §6.3): a wrong
    path's 404 fails the open permanently, so a load test does not retry it."""
    with served(API_KEY, log=tmp_path / "serve.log") as url:
        wrong = url.replace("/v1/stream", "/v1/no-such-path")
        done = subprocess.run(
            [sys.executable, "-c", _OPEN_WRONG_PATH, wrong],
            capture_output=True,
            text=True,
            timeout=60,
            env=_environment(API_KEY),
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[('SocketOpenFailed', True)]"


MEDIA_USERS = 3


def test_real_media_users_join_the_room_and_report_their_first_frame(tmp_path: Path) -> None:
    """``--leanjoin-media``: every session joins its LiveKit room (the real
    client on an asyncio thread beside gevent), publishes, decodes the echo
    model's video and reports first_frame; rooms are left when sessions end."""
    out = tmp_path / "out"
    out.mkdir()
    with served(API_KEY, log=out / "serve.log") as url:
        run = _locust(
            out / "locust.log",
            API_KEY,
            "--headless",
            f"--users={MEDIA_USERS}",
            f"--spawn-rate={MEDIA_USERS}",
            "--run-time=25s",
            "--stop-timeout=10",
            f"--host={url}",
            f"--csv={out / 'run'}",
            "--leanjoin-media",
            "--leanjoin-session-seconds=1.5",
            "--leanjoin-prompts=1",
            f"--leanjoin-sessions={SESSIONS}",
        )
        code = _finish(run, timeout=90)
    output = (out / "locust.log").read_text()
    assert code == 0, output[-3000:]
    stats = _stats(out / "run")
    counts = {kind: int(row["Request Count"]) for kind, row in stats.items()}
    failures = {kind: int(row["Failure Count"]) for kind, row in stats.items()}
    started = MEDIA_USERS * SESSIONS
    assert failures == dict.fromkeys(counts, 0), _rows(Path(f"{out / 'run'}_failures.csv"))
    for phase in ("connected", "first_frame", "session"):
        assert counts.get(phase) == started, (phase, counts)
    assert API_KEY not in _locust_wrote(out)
    assert "Traceback" not in output and "Traceback" not in (out / "serve.log").read_text()
