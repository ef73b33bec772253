"""``leanjoin files``: upload, get and delete reference images (the files API).

Each subcommand prints the file's FileReference as one JSON line on stdout
(``delete``: the id deleted). The api key comes from ``LEANJOIN_API_KEY`` or
``DECART_API_KEY`` only, as for ``connect``, and is never printed. Exit
status as ``connect``'s: 0 done, 1 the request failed (one line saying why:
the HTTP status and the server's text), 2 usage (a bad option, no api key).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio
import attrs
import click

from leanjoin.adapters.client.endpoint import API_KEY_ENV_VARS, api_key_from_env
from leanjoin.adapters.client.errors import LeanJoinError
from leanjoin.adapters.client.files import (
    DEFAULT_API_BASE_URL,
    MAX_TTL_SECONDS,
    MIN_TTL_SECONDS,
    FileReference,
    FilesClient,
    Ttl,
)
from leanjoin.engine.errors import InvalidArgument

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def _ttl(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Ttl | None:
    """``--ttl``: seconds in [60, 2592000], or ``persistent``."""
    if value is None:
        return None
    if value == "persistent":
        return "persistent"
    if value.isascii() and value.isdigit() and MIN_TTL_SECONDS <= int(value) <= MAX_TTL_SECONDS:
        return int(value)
    raise click.BadParameter(
        f"{value!r} is not a number of seconds in [{MIN_TTL_SECONDS}, {MAX_TTL_SECONDS}] "
        "or 'persistent'"
    )


EXIT_STATUS: Final = """\b
Exit status:
  0  done
  1  the request failed (the HTTP status and the server's text, on stderr)
  2  usage: a bad option or argument, or no api key"""


def _base_url_option(command: F) -> F:
    return click.option(
        "--base-url",
        default=DEFAULT_API_BASE_URL,
        show_default=True,
        help="the HTTP API (leanjoin serve prints its own: http://127.0.0.1:PORT)",
    )(command)


def _client(base_url: str) -> FilesClient:
    if api_key_from_env() is None:
        names = " or ".join(API_KEY_ENV_VARS)
        raise click.UsageError(f"set the api key in the environment variable {names}")
    try:
        return FilesClient(base_url=base_url)
    except InvalidArgument as exc:
        raise click.BadParameter(str(exc), param_hint="'--base-url'") from None


def _run(call: Callable[[], Awaitable[T]]) -> T:
    """Run one request; a failure ends the command with status 1 and one line."""
    try:
        return anyio.run(call)
    except LeanJoinError as exc:
        click.echo(f"leanjoin: {exc}", err=True)
        raise SystemExit(1) from None


def _file_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """FILE_ID: not empty (an empty one is a usage error, exit 2)."""
    if not value.strip():
        raise click.BadParameter("empty: give the id that upload printed (file_...)")
    return value


def _print(reference: FileReference) -> None:
    click.echo(json.dumps(attrs.asdict(reference)))


@click.group("files", epilog=EXIT_STATUS)
def files() -> None:
    """Upload reference images once, then connect with --image file_...."""


@files.command("upload", epilog=EXIT_STATUS)
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--ttl",
    callback=_ttl,
    help="keep the file this many seconds (60 to 2592000) or 'persistent' "
    "[default: the server's, 24 h]",
)
@_base_url_option
def upload(path: Path, ttl: Ttl | None, base_url: str) -> None:
    """Upload the image PATH (PNG or JPEG); prints its FileReference."""
    client = _client(base_url)
    _print(_run(lambda: client.upload(path, ttl)))


@files.command("get", epilog=EXIT_STATUS)
@click.argument("file_id", callback=_file_id)
@_base_url_option
def get(file_id: str, base_url: str) -> None:
    """Print the FileReference of FILE_ID."""
    client = _client(base_url)
    _print(_run(lambda: client.get(file_id)))


@files.command("delete", epilog=EXIT_STATUS)
@click.argument("file_id", callback=_file_id)
@_base_url_option
def delete(file_id: str, base_url: str) -> None:
    """Delete FILE_ID."""
    client = _client(base_url)
    _run(lambda: client.delete(file_id))
    click.echo(json.dumps({"deleted": file_id}))
