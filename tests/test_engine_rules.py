"""Rule 1 of the engine (the header of engine/client/session.py): no I/O, no clock, no
threads, no event loop. Checked on the source and on what importing it loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "engine"

# Pure computation only: what the engine may import (top-level module names).
ALLOWED = frozenset(
    {
        "__future__",
        "attrs",
        "base64",
        "binascii",
        "collections",
        "copy",
        "enum",
        "functools",
        "hmac",
        "itertools",
        "json",
        "math",
        "pybase64",
        "re",
        "transitions",
        "typing",
        "urllib",
    }
)
# Loaded by nothing the engine imports, directly or not.
IO_FRAMEWORKS = ("asyncio", "anyio", "websockets", "livekit", "aiortc", "av", "socket", "ssl")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    "path", sorted(ENGINE.rglob("*.py")), ids=lambda p: str(p.relative_to(ENGINE))
)
def test_engine_module_imports_only_pure_computation(path: Path) -> None:
    """engine_has_no_io: no socket, clock, thread, randomness or event loop is
    imported by an engine module, anywhere in it (function bodies included)."""
    assert _imports(path) <= ALLOWED, f"{path} imports {_imports(path) - ALLOWED}"


def test_importing_the_engine_loads_no_io_framework() -> None:
    """Nor does anything the engine imports pull one in (a fresh interpreter)."""
    probe = (
        "import importlib, pkgutil, sys\n"
        "import leanjoin.engine as engine\n"
        "for module in pkgutil.walk_packages(engine.__path__, 'leanjoin.engine.'):\n"
        "    importlib.import_module(module.name)\n"
        f"print(sorted(n for n in sys.modules if n.split('.')[0] in {IO_FRAMEWORKS!r}))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"
