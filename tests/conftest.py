from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from leanjoin.adapters.server.reference import ReferenceServer

# Test helpers (engine_script) import by name from this folder.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def anyio_backend() -> str:
    """anyio tests run on asyncio: websockets and livekit.rtc are asyncio libraries."""
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[ReferenceServer]:
    """A ReferenceServer with default knobs on 127.0.0.1 (for anyio tests); a
    module that needs other knobs defines its own ``server``."""
    from leanjoin.adapters.server.reference import ReferenceServer  # the server extra, if used
    from leanjoin.engine.server.knobs import ServerKnobs

    async with ReferenceServer(host="127.0.0.1", port=0, knobs=ServerKnobs()) as running:
        yield running


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A process that loaded the native LiveKit client ends without interpreter
    finalization, as the ``leanjoin`` command does (BUG-3 in
    specs/fault-matrix.md): its threads can call into a finalizing interpreter
    and abort the process ("panic in a function that cannot unwind") after
    every test passed. Last of all hooks: the summary and reports are written."""
    if "livekit.rtc" not in sys.modules:
        return
    status = getattr(config, "_leanjoin_exit_status", 0)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(status))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._leanjoin_exit_status = exitstatus  # type: ignore[attr-defined]
