from __future__ import annotations

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
