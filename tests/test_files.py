"""The files API and the watch-stream endpoint: the reference server's HTTP API
(in-process, on 127.0.0.1) against the client's FilesClient and raw httpx.

No LiveKit client runs here: the watch-stream room is one the LiveKit double
holds, as a session's room is held from its admission on.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import io
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from aiohttp import web
from click.testing import CliRunner
from client_helpers import WAIT, served_with_http
from PIL import Image
from websockets.asyncio.client import connect as ws_connect

from leanjoin.adapters import (
    FileNotFound,
    FileReference,
    FilesClient,
    HttpApiError,
    InvalidArgument,
    LeanJoinError,
    WatchCredentials,
    watch_credentials,
)
from leanjoin.adapters.cli.main import _image_option, main
from leanjoin.adapters.cli.serve import http_port_for
from leanjoin.adapters.client.files import room_of
from leanjoin.adapters.client.png import encode_png
from leanjoin.adapters.server.file_store import FileStore
from leanjoin.adapters.server.http_api import MAX_PIXELS
from leanjoin.adapters.server.lkdouble import tokens
from leanjoin.adapters.server.reference import ReferenceServer
from leanjoin.adapters.server.shared_rooms import SharedRooms
from leanjoin.engine.client.session import subscribe_token
from leanjoin.engine.server.knobs import ServerKnobs

pytestmark = pytest.mark.anyio

KEY = "files-secret-key-7"
LIMIT = 4096
PNG = encode_png(np.full((16, 16, 3), (10, 200, 90), dtype=np.uint8))


def pillow_image(kind: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (250, 20, 20)).save(out, format=kind)
    return out.getvalue()


@pytest.fixture
async def server() -> AsyncIterator[ReferenceServer]:
    knobs = ServerKnobs(max_reference_bytes=LIMIT)
    async with ReferenceServer(api_key=KEY, knobs=knobs) as running:
        yield running


def files_of(server: ReferenceServer, key: str = KEY) -> FilesClient:
    return FilesClient(base_url=server.http_url, api_key=key)


def parse_date(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


# ---- upload, get, delete -----------------------------------------------------------------


async def test_upload_get_delete_round_trip(server: ReferenceServer, tmp_path: Path) -> None:
    path = tmp_path / "swatch.png"
    path.write_bytes(PNG)
    async with files_of(server) as files:
        ref = await files.upload(path)
        assert ref.id.startswith("file_") and ref.filename == "swatch.png"
        assert ref.mime_type == "image/png" and ref.size_bytes == len(PNG)
        assert ref.expires_at is not None  # the default: 24 h
        lifetime = parse_date(ref.expires_at) - parse_date(ref.created_at)
        assert lifetime == datetime.timedelta(hours=24)
        assert await files.get(ref.id) == ref
        assert server.files.read(ref.id) == PNG
        await files.delete(ref.id)
        with pytest.raises(FileNotFound) as gone:
            await files.get(ref.id)
        assert gone.value.status == 404 and ref.id in str(gone.value)
        with pytest.raises(FileNotFound):
            await files.delete(ref.id)


async def test_upload_takes_bytes_and_binary_file_objects(server: ReferenceServer) -> None:
    files = files_of(server)  # no `async with`: each call has a client of its own
    from_bytes = await files.upload(pillow_image("JPEG"))
    assert from_bytes.mime_type == "image/jpeg" and from_bytes.filename == "upload"
    from_object = await files.upload(io.BytesIO(PNG), filename="named.png")
    assert from_object.filename == "named.png" and from_object.mime_type == "image/png"
    with pytest.raises(InvalidArgument, match="binary mode"):
        await files.upload(io.StringIO("text"))  # type: ignore[arg-type]


async def test_the_answer_is_the_js_clients_file_reference_json(server: ReferenceServer) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"{server.http_url}/v1/files",
            headers={"x-api-key": KEY},
            files={"file": ("a.png", PNG, "image/png")},
        )
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"id", "filename", "mime_type", "size_bytes", "created_at", "expires_at"}
    assert FileReference.from_json(body).id == body["id"]


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"x-api-key": ""}])
async def test_a_missing_or_wrong_key_is_401_on_every_route(
    server: ReferenceServer, headers: dict[str, str]
) -> None:
    stored = server.files.put(PNG, filename=None, mime_type="image/png", ttl_seconds=None)
    server.livekit.room("a-room")
    base = server.http_url
    async with httpx.AsyncClient() as client:
        answers = [
            await client.post(f"{base}/v1/files", headers=headers, files={"file": PNG}),
            await client.get(f"{base}/v1/files/{stored.id}", headers=headers),
            await client.delete(f"{base}/v1/files/{stored.id}", headers=headers),
            await client.post(f"{base}/watch-stream/a-room", headers=headers),
        ]
    for answer in answers:
        assert answer.status_code == 401
        assert "invalid api key" in answer.json()["detail"]
    assert server.files.get(stored.id) == stored  # not deleted


async def test_a_wrong_key_is_a_typed_error_that_never_quotes_it(server: ReferenceServer) -> None:
    wrong = "wrong-secret-key-99"
    with pytest.raises(HttpApiError) as refused:
        await files_of(server, wrong).upload(PNG)
    assert isinstance(refused.value, LeanJoinError)
    assert refused.value.status == 401 and "401" in str(refused.value)
    assert "invalid api key" in str(refused.value)
    assert wrong not in str(refused.value) and KEY not in str(refused.value)
    assert KEY not in repr(files_of(server))


async def test_an_unknown_id_is_404(server: ReferenceServer) -> None:
    async with files_of(server) as files:
        for unknown in ("file_0123456789abcdef01234567", "file_../../etc/passwd", "nope"):
            with pytest.raises(FileNotFound) as missing:
                await files.get(unknown)
            assert missing.value.status == 404
            with pytest.raises(FileNotFound):
                await files.delete(unknown)


async def test_a_file_over_the_image_size_limit_is_413(server: ReferenceServer) -> None:
    big = encode_png(np.random.default_rng(7).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert len(big) > LIMIT
    with pytest.raises(HttpApiError) as refused:
        await files_of(server).upload(big)
    assert refused.value.status == 413 and f"limit of {LIMIT} bytes" in refused.value.detail
    assert not list(server.files.directory.iterdir())


def png_header(width: int, height: int) -> bytes:
    """A PNG that says it is ``width`` x ``height`` (1-bit grey), with one row of data:
    a few hundred bytes that would decode into width x height x 3 bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = zlib.compress(bytes(1 + (width + 7) // 8))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9_000, 20_000], ids=["81-megapixels", "400-megapixels"])
async def test_an_image_of_too_many_pixels_is_413_naming_its_size(
    server: ReferenceServer, side: int
) -> None:
    # A few hundred bytes can claim a picture of gigabytes once decoded.
    data = png_header(side, side)
    assert len(data) < LIMIT
    with pytest.raises(HttpApiError) as refused:
        await files_of(server).upload(data)
    assert refused.value.status == 413
    assert f"over the limit of {MAX_PIXELS} pixels" in refused.value.detail
    assert not list(server.files.directory.iterdir())


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"just some text, no picture", "not an image"),
        (PNG[:40], "not an image"),  # a cut PNG
        (pillow_image("GIF"), "GIF image; the model takes PNG or JPEG"),
    ],
)
async def test_a_file_that_is_no_usable_image_is_415(
    server: ReferenceServer, data: bytes, problem: str
) -> None:
    with pytest.raises(HttpApiError) as refused:
        await files_of(server).upload(data)
    assert refused.value.status == 415 and problem in refused.value.detail


async def test_a_body_without_a_file_is_400(server: ReferenceServer) -> None:
    async with httpx.AsyncClient() as client:
        no_file = await client.post(
            f"{server.http_url}/v1/files",
            headers={"x-api-key": KEY},
            files={"image": ("a.png", PNG, "image/png")},
            data={"ttl_seconds": "60"},
        )
        not_multipart = await client.post(
            f"{server.http_url}/v1/files", headers={"x-api-key": KEY}, content=PNG
        )
    assert no_file.status_code == 400 and "no 'file' field" in no_file.json()["detail"]
    assert not_multipart.status_code == 400 and "multipart" in not_multipart.json()["detail"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (
            "multipart/form-data; boundary=xx",
            b'--xx\r\nContent-Disposition: form-data; name="file"',
        ),
        (
            "multipart/form-data; boundary=xx",
            b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n',
        ),
        ("multipart/form-data", b"no boundary given"),
    ],
)
async def test_a_malformed_or_cut_short_multipart_body_is_400(
    server: ReferenceServer, content_type: str, body: bytes
) -> None:
    # A client's bug, or an upload cut off mid-way: the client is told, and
    # the server logs no traceback of its own.
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"{server.http_url}/v1/files",
            headers={"x-api-key": KEY, "content-type": content_type},
            content=body,
        )
    assert answer.status_code == 400, answer.text
    assert "multipart" in answer.json()["detail"]


@pytest.mark.parametrize("ttl", ["59", "2592001", "-60", "1.5", "soon", ""])
async def test_the_server_refuses_a_bad_ttl(server: ReferenceServer, ttl: str) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"{server.http_url}/v1/files",
            headers={"x-api-key": KEY},
            files={"file": ("a.png", PNG, "image/png")},
            data={"ttl_seconds": ttl},
        )
    assert answer.status_code == 400
    assert (
        'ttl_seconds must be an integer in [60, 2592000] or "persistent"' in answer.json()["detail"]
    )


@pytest.mark.parametrize("ttl", [59, 2592001, 1.5, True, "forever"])
async def test_the_client_refuses_a_bad_ttl_unsent(server: ReferenceServer, ttl: object) -> None:
    with pytest.raises(InvalidArgument, match=r"ttl_seconds must be an integer in \[60, 2592000\]"):
        await files_of(server).upload(PNG, ttl)  # type: ignore[arg-type]
    assert not list(server.files.directory.iterdir())


async def test_ttl_bounds_and_persistent(server: ReferenceServer) -> None:
    async with files_of(server) as files:
        shortest = await files.upload(PNG, 60)
        longest = await files.upload(PNG, 2592000)
        kept = await files.upload(PNG, "persistent")
    for ref, seconds in ((shortest, 60), (longest, 2592000)):
        assert ref.expires_at is not None
        lifetime = parse_date(ref.expires_at) - parse_date(ref.created_at)
        assert lifetime == datetime.timedelta(seconds=seconds)
    assert kept.expires_at is None


def test_expired_files_vanish(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = FileStore(tmp_path, clock=lambda: now[0])
    short = store.put(PNG, filename="a.png", mime_type="image/png", ttl_seconds=60)
    kept = store.put(PNG, filename="b.png", mime_type="image/png", ttl_seconds=None)
    now[0] += 59
    assert store.get(short.id) == short and store.read(short.id) == PNG
    now[0] += 1
    assert store.get(short.id) is None and store.read(short.id) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kept.id}.data", f"{kept.id}.json"]
    now[0] += 10**9
    assert store.read(kept.id) == PNG


def test_an_expired_file_is_swept_at_the_next_upload(tmp_path: Path) -> None:
    now = [0.0]
    store = FileStore(tmp_path, clock=lambda: now[0])
    old = store.put(PNG, filename=None, mime_type="image/png", ttl_seconds=60)
    now[0] = 61
    new = store.put(PNG, filename=None, mime_type="image/png", ttl_seconds=60)
    assert {p.stem for p in tmp_path.iterdir()} == {new.id}
    assert old.id != new.id


def test_stores_on_one_directory_see_each_others_files(tmp_path: Path) -> None:
    # What the workers of `leanjoin serve --workers N` rely on.
    first, second = FileStore(tmp_path), FileStore(tmp_path)
    stored = first.put(PNG, filename="x.png", mime_type="image/png", ttl_seconds=None)
    assert second.get(stored.id) == stored and second.read(stored.id) == PNG
    assert second.delete(stored.id)
    assert first.get(stored.id) is None


async def test_the_servers_own_files_directory_is_removed_at_close() -> None:
    async with ReferenceServer(api_key=KEY) as server:
        await files_of(server).upload(PNG)
        directory = server.files.directory
        assert directory.is_dir()
    assert not directory.exists()


async def test_a_given_files_directory_is_kept(tmp_path: Path) -> None:
    async with ReferenceServer(api_key=KEY, files_dir=tmp_path) as server:
        ref = await files_of(server).upload(PNG)
    assert (tmp_path / f"{ref.id}.data").read_bytes() == PNG


# ---- watch-stream ---------------------------------------------------------------------


async def test_watch_stream_mints_a_subscribe_only_viewer_token(server: ReferenceServer) -> None:
    server.livekit.room("leanjoin-abc")  # as a session's room is held
    credentials = await watch_credentials(
        subscribe_token("leanjoin-abc"), base_url=server.http_url, api_key=KEY
    )
    assert credentials.room_name == "leanjoin-abc"
    assert credentials.livekit_url == server.livekit.url
    secret = server.livekit._LiveKitDouble__secret  # type: ignore[attr-defined]
    grant = tokens.verify("leanjoin-double", secret, credentials.token)
    assert grant.room == "leanjoin-abc" and grant.identity.startswith("viewer-")
    assert grant.can_subscribe and not grant.can_publish and not grant.can_publish_data
    again = await watch_credentials("leanjoin-abc", base_url=server.http_url, api_key=KEY)
    assert tokens.verify("leanjoin-double", secret, again.token).identity != grant.identity


async def test_watch_stream_answers_as_the_js_client_reads_it(server: ReferenceServer) -> None:
    server.livekit.room("room-1")
    async with httpx.AsyncClient() as client:
        answer = await client.post(
            f"{server.http_url}/watch-stream/room-1",
            headers={"x-api-key": KEY, "content-type": "application/json"},
        )
    assert answer.status_code == 200
    assert set(answer.json()) == {"livekit_url", "token", "room_name"}


async def test_watch_stream_of_an_unknown_room_is_404(server: ReferenceServer) -> None:
    with pytest.raises(HttpApiError) as missing:
        await watch_credentials("no-such-room", base_url=server.http_url, api_key=KEY)
    assert missing.value.status == 404 and "'no-such-room' not found" in str(missing.value)


async def test_watch_credentials_hide_the_token_and_errors_the_key(
    server: ReferenceServer,
) -> None:
    server.livekit.room("room-2")
    credentials = await watch_credentials("room-2", base_url=server.http_url, api_key=KEY)
    assert credentials.token not in repr(credentials) and "<redacted>" in repr(credentials)
    with pytest.raises(AttributeError):
        credentials.token = "x"  # type: ignore[misc]
    # A server that quotes what it was sent (here the room) never gets the key into the error.
    with pytest.raises(HttpApiError) as missing:
        await watch_credentials(KEY, base_url=server.http_url, api_key=KEY)
    assert KEY not in str(missing.value) and "<redacted>" in str(missing.value)
    assert isinstance(credentials, WatchCredentials)


def test_room_of_reads_subscribe_tokens_and_takes_room_names() -> None:
    assert room_of(subscribe_token("leanjoin-1a2b")) == "leanjoin-1a2b"
    assert room_of("leanjoin-1a2b") == "leanjoin-1a2b"
    no_room = base64.b64encode(json.dumps({"room": "x"}).encode()).decode()
    for bad in ("", "  ", no_room):
        with pytest.raises(InvalidArgument):
            room_of(bad)


async def test_an_unreachable_server_is_a_typed_error_without_status() -> None:
    with pytest.raises(HttpApiError) as failed:
        await FilesClient(base_url="http://127.0.0.1:9", api_key=KEY).get("file_1")
    assert failed.value.status is None and KEY not in str(failed.value)


@contextlib.asynccontextmanager
async def answering(
    status: int, body: str, content_type: str = "application/json"
) -> AsyncIterator[str]:
    """An HTTP server (not ours: a wrong base URL) that answers every request so."""

    async def answer(_request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    try:
        await web.SockSite(runner, sock).start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()
        sock.close()


@pytest.mark.parametrize("status", [200, 500])
async def test_an_answer_nested_past_the_json_parser_is_a_typed_error(status: int) -> None:
    # Whatever a server answers, the caller gets an HttpApiError, never a RecursionError.
    async with answering(status, "[" * 100_000) as url:
        with pytest.raises(HttpApiError):
            await FilesClient(base_url=url, api_key=KEY).get("file_1")
        with pytest.raises(HttpApiError):
            await watch_credentials("room-1", base_url=url, api_key=KEY)


async def test_a_failure_names_the_url_it_asked(server: ReferenceServer) -> None:
    # A base URL with a path typo answers 404 as a deleted file does: only the
    # URL asked tells the user which mistake it was. Its password is not shown.
    typo = FilesClient(base_url=f"{server.http_url}/v1", api_key=KEY)
    with pytest.raises(FileNotFound) as failed:
        await typo.get("file_1")
    assert f"(GET {server.http_url}/v1/v1/files/file_1)" in str(failed.value)
    unreachable = FilesClient(base_url="http://user:pass-word-9@127.0.0.1:9/", api_key=KEY)
    with pytest.raises(HttpApiError) as unanswered:
        await unreachable.delete("file_1")
    message = str(unanswered.value)
    assert "(DELETE http://127.0.0.1:9/v1/files/file_1)" in message
    assert "pass-word-9" not in message and KEY not in message


async def test_an_html_error_page_is_one_line_that_questions_the_base_url() -> None:
    # Some other web server at the base URL: its error page is no reason to quote.
    page = "<html>\n<head><title>404 Not Found</title></head>\n<body>Not Found</body>\n</html>\n"
    async with answering(404, page, "text/html") as url:
        with pytest.raises(FileNotFound) as failed:
            await FilesClient(base_url=url, api_key=KEY).get("file_1")
    message = str(failed.value)
    assert "\n" not in message and "<html" not in message.lower()
    assert "an HTML page, not the API's answer: is the base URL right?" in message


@pytest.mark.parametrize("key", ["sk-secret-42\n", " sk-secret-42", "sk-sécret-42"])
async def test_a_key_no_header_can_carry_is_refused_without_showing_it(key: str) -> None:
    # A key read from a file keeps its newline; the HTTP library's own error
    # then quoted the header's bytes, the key among them.
    for call in (
        lambda: FilesClient(base_url="http://127.0.0.1:9", api_key=key).get("file_1"),
        lambda: watch_credentials("room", base_url="http://127.0.0.1:9", api_key=key),
    ):
        with pytest.raises(InvalidArgument, match="api key") as refused:
            await call()
        assert "secret" not in str(refused.value)


async def test_bad_timeouts_and_text_mode_files_are_invalid_arguments(
    server: ReferenceServer, tmp_path: Path
) -> None:
    for timeout in (0.0, -1.0, float("nan")):
        with pytest.raises(InvalidArgument, match="timeout"):
            FilesClient(base_url=server.http_url, api_key=KEY, timeout=timeout)
    image = tmp_path / "a.png"
    image.write_bytes(PNG)
    with image.open() as text_mode, pytest.raises(InvalidArgument, match="binary mode"):
        await files_of(server).upload(text_mode)  # type: ignore[arg-type]
    spaced = FilesClient(base_url=f" {server.http_url}/ ", api_key=KEY)  # pasted
    assert (await spaced.upload(PNG)).mime_type == "image/png"


def test_bad_base_urls_and_no_key_are_invalid_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("ws://127.0.0.1:1", "127.0.0.1:1", "http://h/x?api_key=1"):
        with pytest.raises(InvalidArgument, match="base_url"):
            FilesClient(base_url=url, api_key=KEY)
    monkeypatch.delenv("LEANJOIN_API_KEY", raising=False)
    monkeypatch.delenv("DECART_API_KEY", raising=False)
    with pytest.raises(InvalidArgument, match="no api key"):
        FilesClient()
    monkeypatch.setenv("DECART_API_KEY", "from-env")
    assert FilesClient().base_url == "https://api.decart.ai"


# ---- the CLI's options -----------------------------------------------------------------


def test_cli_image_is_a_file_or_an_uploaded_files_id(tmp_path: Path) -> None:
    env = {"LEANJOIN_API_KEY": KEY}
    result = CliRunner(env=env).invoke(
        main, ["connect", "ws://127.0.0.1:9/v1/stream", "--model", "echo", "--image", "nothing"]
    )
    assert result.exit_code == 2
    assert "neither a file nor an uploaded file's id (file_...)" in result.output
    assert _image_option("file_abc123") == "file_abc123"  # no such file: an id
    named = tmp_path / "file_abc123"
    named.write_bytes(PNG)
    assert _image_option(str(named)) == str(named)  # a file of that name is a file


def test_cli_files_needs_a_key_and_a_valid_ttl(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(PNG)
    no_key = {"LEANJOIN_API_KEY": "", "DECART_API_KEY": ""}
    result = CliRunner(env=no_key).invoke(main, ["files", "upload", str(image)])
    assert result.exit_code == 2 and "LEANJOIN_API_KEY or DECART_API_KEY" in result.output
    for ttl in ("59", "2592001", "soon"):
        result = CliRunner(env={"LEANJOIN_API_KEY": KEY}).invoke(
            main, ["files", "upload", str(image), "--ttl", ttl]
        )
        assert result.exit_code == 2 and "is not a number of seconds" in result.output
    result = CliRunner(env={"LEANJOIN_API_KEY": KEY}).invoke(
        main, ["files", "get", "file_1", "--base-url", "ftp://host"]
    )
    assert result.exit_code == 2 and "base_url must be an http:// or https:// URL" in result.output
    for command in ("get", "delete"):  # usage, as the help's exit status says
        result = CliRunner(env={"LEANJOIN_API_KEY": KEY}).invoke(main, ["files", command, ""])
        assert result.exit_code == 2 and "'FILE_ID': empty" in result.output


def test_serve_puts_the_http_api_next_to_the_stream_port() -> None:
    assert http_port_for(8765, None) == 8766
    assert http_port_for(0, None) == 0  # any free port, as the stream's
    assert http_port_for(65535, None) == 0
    assert http_port_for(8765, 9000) == 9000


async def test_no_key_token_or_file_content_in_the_servers_log(
    server: ReferenceServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.livekit.room("room-3")
    async with files_of(server) as files:
        ref = await files.upload(PNG, "persistent")
        await files.get(ref.id)
        await files.delete(ref.id)
    credentials = await watch_credentials("room-3", base_url=server.http_url, api_key=KEY)
    with pytest.raises(HttpApiError):
        await files_of(server, "wrong-secret-key-5").upload(PNG)
    assert f"file {ref.id} stored" in caplog.text and "viewer token minted" in caplog.text
    for secret in (KEY, "wrong-secret-key-5", credentials.token, base64.b64encode(PNG).decode()):
        assert secret not in caplog.text


async def answers_watch_stream(room: str, http: str) -> bool:
    try:
        await watch_credentials(room, base_url=http, api_key=KEY)
    except HttpApiError as refused:
        assert refused.status == 404, refused
        return False
    return True


@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT spreads connections on Linux")
def test_serve_workers_answer_watch_stream_for_each_others_rooms() -> None:
    """Every worker of ``serve --workers 2`` answers a viewer of any session's
    room with the URL of the double that holds it and a token that double takes."""

    async def sessions_then_viewers(url: str, http: str) -> None:
        async with contextlib.AsyncExitStack() as stack:
            rooms: dict[str, str] = {}
            for _ in range(6):  # spread over the workers by the kernel
                socket = await stack.enter_async_context(ws_connect(f"{url}?api_key={KEY}"))
                await socket.send(json.dumps({"type": "livekit_join", "passthrough": True}))
                info = json.loads(await socket.recv())
                rooms[info["room_name"]] = info["livekit_url"]
            async with httpx.AsyncClient() as client:
                for room, livekit_url in rooms.items():
                    for _ in range(4):  # each a new connection: either worker may answer
                        viewer = await watch_credentials(room, base_url=http, api_key=KEY)
                        assert (viewer.room_name, viewer.livekit_url) == (room, livekit_url)
                        check = await client.get(
                            livekit_url.replace("ws://", "http://") + "/rtc/validate",
                            params={"access_token": viewer.token},
                        )
                        assert check.status_code == 200, check.text
        # The sessions are over (each worker hears so on its own): their rooms go.
        with anyio.fail_after(WAIT):
            for room in rooms:
                while await answers_watch_stream(room, http):
                    await anyio.sleep(0.05)

    with served_with_http(KEY, "--workers", "2") as (url, http):
        anyio.run(sessions_then_viewers, url, http)


def test_shared_rooms_are_noted_and_forgotten_in_order(tmp_path: Path) -> None:
    rooms, other = SharedRooms(tmp_path), SharedRooms(tmp_path)
    for round_ in range(50):  # the last word on a room wins
        rooms.note("leanjoin-1", f"ws://127.0.0.1:{round_}")
        rooms.forget("leanjoin-1")
    rooms.note("leanjoin-2", "ws://127.0.0.1:7880")
    rooms.note("../escape", "ws://x")  # no file name: ignored
    assert other.find("leanjoin-2") == "ws://127.0.0.1:7880"
    assert other.find("leanjoin-1") is None and other.find("../escape") is None
    assert rooms.find("leanjoin-2") == "ws://127.0.0.1:7880"
    rooms.close()  # a stopped worker's rooms are gone with it
    assert other.find("leanjoin-2") is None
    rooms.note("leanjoin-3", "ws://late")  # after close: dropped, no error
    other.close()
    assert list(tmp_path.iterdir()) == []


async def test_shared_rooms_batch_their_writes_on_an_event_loop(tmp_path: Path) -> None:
    # A burst of sessions rewrites the worker's file once, not once per room.
    rooms, other = SharedRooms(tmp_path), SharedRooms(tmp_path)
    writes = 0
    real_replace = os.replace

    def counting_replace(source: Any, target: Any) -> None:
        nonlocal writes
        writes += 1
        real_replace(source, target)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", counting_replace)
        for index in range(200):
            rooms.note(f"leanjoin-{index}", "ws://127.0.0.1:7880")
        assert other.find("leanjoin-0") is None  # not written yet
        with anyio.fail_after(WAIT):
            while other.find("leanjoin-199") is None:
                await anyio.sleep(0.02)
    assert writes == 1
    rooms.close()
    other.close()


async def test_an_upload_to_the_stream_port_says_which_url_is_wrong(
    server: ReferenceServer,
) -> None:
    # The stream's WebSocket server drops a request with a body unanswered:
    # the error names the likely mistake instead of only the protocol's words.
    wrong = server.url.replace("ws://", "http://").removesuffix("/v1/stream")
    async with FilesClient(base_url=wrong, api_key=KEY) as files:
        with pytest.raises(HttpApiError) as failed:
            await files.upload(PNG, filename="swatch.png")
    assert failed.value.status is None
    assert "not the stream's port" in str(failed.value) and KEY not in str(failed.value)


def test_the_rooms_of_a_killed_worker_are_not_offered(tmp_path: Path) -> None:
    # A worker killed outright (SIGKILL) cannot remove its file: its rooms are
    # gone with its LiveKit double, and no viewer is sent there.
    rooms, other = SharedRooms(tmp_path), SharedRooms(tmp_path)
    rooms.note("leanjoin-1", "ws://127.0.0.1:7880")
    assert other.find("leanjoin-1") == "ws://127.0.0.1:7880"
    (written,) = tmp_path.glob("*.json")
    pid_of_ended = _ended_pid()
    written.rename(tmp_path / f"{pid_of_ended}-{written.name.partition('-')[2]}")
    assert other.find("leanjoin-1") is None
    other.close()


def _ended_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("key", [KEY, "wrong-key-77"])
async def test_both_ports_answer_watch_stream_alike(server: ReferenceServer, key: str) -> None:
    # The stream's port answers /watch-stream for the Python SDK's derivation:
    # the same status and JSON as the HTTP API, whichever a client asks.
    stream_base = server.url.replace("ws://", "http://").removesuffix("/v1/stream")
    answers = []
    async with httpx.AsyncClient() as client:
        for base in (server.http_url, stream_base):
            response = await client.post(
                f"{base}/watch-stream/leanjoin-none", headers={"x-api-key": key}
            )
            answers.append((response.status_code, response.json()))
    assert answers[0] == answers[1]
    assert answers[0][0] == (404 if key == KEY else 401)
