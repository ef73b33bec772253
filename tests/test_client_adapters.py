"""The client I/O layer against fakes on 127.0.0.1: a scripted signaling server
(``websockets``) and the LiveKit double joined by the real ``livekit.rtc.Room``.

Every wait is bounded (``anyio.fail_after``); nothing asserts a speed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio
import av
import numpy as np
import pytest
from client_helpers import (
    WAIT,
    assert_nothing_left,
    client_tasks,
    frame_with_band,
    until,
)
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from leanjoin.adapters import (
    ArraySource,
    ConnectFailed,
    ConnectionState,
    ErrorKind,
    Event,
    FileSource,
    ImageError,
    InitialStateAcked,
    LeanJoinError,
    MediaOptions,
    ModelDefinition,
    NotConnectedError,
    QueuePositionChanged,
    RequestRejected,
    RequestTimedOut,
    RetryPolicy,
    RetryScheduled,
    SessionStarted,
    StateChanged,
    TestPattern,
    Timeouts,
    UnsupportedImageSource,
    connect,
    image_to_base64,
)
from leanjoin.adapters.client.api import TIMELINE_LENGTH, Session
from leanjoin.adapters.client.driver import Driver
from leanjoin.adapters.client.fanout import Fanout
from leanjoin.adapters.client.images import file_ref
from leanjoin.adapters.client.png import encode_png
from leanjoin.adapters.client.ws_transport import SignalSocket, SocketOptions
from leanjoin.adapters.server.echo_model import decode_reference, echo_transform
from leanjoin.adapters.server.lkdouble import LiveKitDouble
from leanjoin.engine.client.inputs import (
    AttemptId,
    FrameReceived,
    Input,
    SendFailed,
    SendId,
    SocketClosed,
    SocketOpened,
    SocketOpenFailed,
)
from leanjoin.engine.client.outputs import FramePurpose, OpenSocket, SendFrame
from leanjoin.engine.codec import Base64Text

pytestmark = [pytest.mark.anyio, pytest.mark.livekit]

T = TypeVar("T")
API_KEY = "sk-test-5ecret-key"


# ---- helpers: collecting posted inputs ---------------------------------------------


class Posted:
    """Stands in for the driver's inbox: records what a transport posts."""

    def __init__(self) -> None:
        self.items: list[Input] = []
        self.milestones: list[str] = []
        self._changed = anyio.Event()

    def __call__(self, item: Input) -> None:
        self.items.append(item)
        self._changed.set()

    def trace(self, _attempt: AttemptId, name: str) -> None:
        self.milestones.append(name)
        self._changed.set()

    def of(self, kind: type[T]) -> list[T]:
        return [item for item in self.items if isinstance(item, kind)]

    async def wait(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(WAIT):
            while not predicate():
                self._changed = anyio.Event()
                await self._changed.wait()

    async def wait_for(self, kind: type[T], count: int = 1) -> list[T]:
        await self.wait(lambda: len(self.of(kind)) >= count)
        return self.of(kind)


def open_effect(url: str, attempt: int = 1) -> OpenSocket:
    full = f"{url}?api_key={API_KEY}&model=echo"
    return OpenSocket(AttemptId(attempt), full, f"{url}?api_key=<redacted>&model=echo")


def frame(send: int, text: str, purpose: FramePurpose = FramePurpose.REQUEST) -> SendFrame:
    return SendFrame(AttemptId(1), SendId(send), purpose, text)


# ---- helpers: a scripted signaling server ------------------------------------------


class Peer:
    """One client connection as the fake server sees it."""

    def __init__(self, index: int, ws: ServerConnection) -> None:
        self.index = index
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self.prompt: str | None = None
        self.closed = anyio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.room_name = f"room-{index}"

    async def recv(self) -> dict[str, Any]:
        raw = await self.ws.recv()
        message: dict[str, Any] = json.loads(raw)
        self.received.append(message)
        if isinstance(message.get("prompt"), str):
            self.prompt = message["prompt"]
        return message

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def room_info(self, lk: LiveKitDouble) -> None:
        prompt_of = self  # the echo model follows whatever prompt this peer last got
        lk.room(self.room_name).set_transform(
            lambda f: echo_transform(f, prompt=prompt_of.prompt, reference=None, passthrough=True)
        )
        token = lk.mint_token(room=self.room_name, identity=f"client-{self.index}")
        await self.send(
            type="livekit_room_info",
            livekit_url=lk.url,
            token=token,
            room_name=self.room_name,
            session_id=f"session-{self.index}",
        )

    async def ack(self, message: dict[str, Any], *, success: bool = True) -> None:
        error = None if success else "reference rejected"
        if message["type"] == "prompt":
            await self.send(
                type="prompt_ack", prompt=message["prompt"], success=success, error=error
            )
        else:
            await self.send(type="set_image_ack", success=success, error=error)

    async def join(self) -> dict[str, Any] | None:
        """Read the join and, unless passthrough, the initial-state frame after it."""
        join = await self.recv()
        assert join["type"] == "livekit_join"
        return None if join["passthrough"] else await self.recv()

    async def serve_requests(self, *, reject: bool = False) -> None:
        """Ack every runtime request until the client leaves."""
        while True:
            message = await self.recv()
            if message["type"] in ("prompt", "set_image"):
                await self.ack(message, success=not reject)


Script = Callable[[Peer], Awaitable[None]]


class FakeSignaling:
    """A signaling server on 127.0.0.1 that runs ``script`` for each connection."""

    def __init__(
        self,
        script: Script,
        *,
        refuse: tuple[int, str] | None = None,
        max_size: int | None = None,
    ) -> None:
        self._script = script
        self._refuse = refuse
        self._max_size = max_size
        self.peers: list[Peer] = []
        self.queries: list[str] = []
        self._server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/v1/stream"

    async def __aenter__(self) -> FakeSignaling:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._route,
            max_size=self._max_size,
            compression=None,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        with anyio.fail_after(WAIT):  # a handler stuck in a script must not hang the run
            await self._server.wait_closed()

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        self.queries.append(request.path)
        if self._refuse is not None:
            status, body = self._refuse
            return connection.respond(status, body)
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        peer = Peer(len(self.peers) + 1, ws)
        self.peers.append(peer)
        try:
            await self._script(peer)
            async for _ in ws:  # after the script: keep the connection until the client goes
                pass
        except ConnectionClosed:
            pass
        finally:
            peer.close_code = ws.close_code
            peer.close_reason = ws.close_reason
            peer.closed.set()


async def healthy(
    peer: Peer,
    lk: LiveKitDouble,
    *,
    queue_updates: int = 0,
    queue_interval: float = 0.05,
    ack_early: bool = False,
    reject_initial: bool = False,
    reject_requests: bool = False,
) -> None:
    initial = await peer.join()
    for left in range(queue_updates, 0, -1):
        await peer.send(type="queue_position", position=left, queue_size=queue_updates)
        await anyio.sleep(queue_interval)
    if initial is not None and ack_early:
        await peer.ack(initial, success=not reject_initial)
    await peer.room_info(lk)
    if initial is not None and not ack_early:
        await peer.ack(initial, success=not reject_initial)
    await peer.serve_requests(reject=reject_requests)


# ---- helpers: session settings -----------------------------------------------------------


def small_camera() -> TestPattern:
    return TestPattern(320, 240, fps=15)


def fast_timeouts(**overrides: float) -> Timeouts:
    values: dict[str, float] = {"socket_open": 5, "room_info": 5, "media": 15}
    values.update(overrides)
    return Timeouts(**values)


def quick_retry(max_retries: int = 3) -> RetryPolicy:
    return RetryPolicy(max_retries=max_retries, initial_delay=0.05, max_delay=0.2)


@pytest.fixture
async def lk() -> AsyncIterator[LiveKitDouble]:
    async with LiveKitDouble() as double:
        yield double


# =========================================================================================
# The WebSocket adapter on its own
# =========================================================================================


def fake_connect(url: str, **options: Any) -> AbstractAsyncContextManager[Session]:
    """``connect`` with what every test here passes: the test key, the echo model
    and a small synthetic camera."""
    return connect(url, api_key=API_KEY, model="echo", camera=small_camera(), **options)


async def test_socket_reports_open_frames_and_the_peers_close() -> None:
    async def script(peer: Peer) -> None:
        await peer.send(type="queue_position", position=1, queue_size=1)
        await peer.ws.send(b"\x00binary")
        await peer.ws.close(4001, "server says bye")

    posted = Posted()
    async with FakeSignaling(script) as server, anyio.create_task_group() as tg:
        socket = SignalSocket(open_effect(server.url), posted, trace=posted.trace)
        tg.start_soon(socket.run)
        closed = await posted.wait_for(SocketClosed)
    assert isinstance(posted.items[0], SocketOpened)
    frames = posted.of(FrameReceived)
    assert json.loads(frames[0].frame)["type"] == "queue_position"
    assert frames[1].frame == b"\x00binary"
    assert (closed[0].code, closed[0].reason) == (4001, "server says bye")
    assert socket.done
    assert "api_key" in server.queries[0]  # the key travels in the query, as specified


async def test_socket_open_refused_by_http_status_names_it_without_the_key() -> None:
    async def never(_peer: Peer) -> None:
        raise AssertionError("no connection expected")

    posted = Posted()
    refusal = (401, f"invalid api key {API_KEY}\n")  # a server echoing the key back
    async with FakeSignaling(never, refuse=refusal) as server:
        socket = SignalSocket(open_effect(server.url), posted)
        with anyio.fail_after(WAIT):
            await socket.run()
    (failed,) = posted.of(SocketOpenFailed)
    assert "401" in failed.reason and "invalid api key" in failed.reason
    assert API_KEY not in failed.reason
    assert API_KEY not in repr(socket)


@pytest.mark.parametrize(
    ("status", "permanent"),
    # A wrong path, a bad request, a plain web server (a LiveKit URL pasted in):
    # the same upgrade meets the same answer. Busy or broken servers may recover.
    [
        *((status, True) for status in (404, 400, 403, 200)),
        *((status, False) for status in (408, 429, 500, 503)),
    ],
)
async def test_an_upgrade_refusal_a_retry_cannot_change_is_permanent(
    status: int, permanent: bool
) -> None:
    async def never(_peer: Peer) -> None:
        raise AssertionError("no connection expected")

    posted = Posted()
    async with FakeSignaling(never, refuse=(status, "no\n")) as server:
        socket = SignalSocket(open_effect(server.url), posted)
        with anyio.fail_after(WAIT):
            await socket.run()
    (failed,) = posted.of(SocketOpenFailed)
    assert f"HTTP {status}" in failed.reason
    assert failed.permanent is permanent


async def test_a_frame_refused_as_too_big_is_permanent() -> None:
    """The peer closes with 1009 (message too big) part way through a fragmented frame."""

    async def script(peer: Peer) -> None:
        await peer.recv()

    posted = Posted()
    huge = json.dumps({"type": "set_image", "image_data": "A" * (2 << 20)})
    async with FakeSignaling(script, max_size=64 * 1024) as server, anyio.create_task_group() as tg:
        socket = SignalSocket(open_effect(server.url), posted)
        tg.start_soon(socket.run)
        await posted.wait_for(SocketOpened)
        socket.send(frame(1, huge, FramePurpose.INITIAL_STATE))
        (closed,) = await posted.wait_for(SocketClosed)
        with anyio.fail_after(WAIT):
            await socket.wait_done()
    assert (closed.code, closed.permanent) == (1009, True)
    assert all(failed.permanent for failed in posted.of(SendFailed))


async def test_socket_open_failure_on_a_closed_port() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # the port is now (almost certainly) closed
    posted = Posted()
    socket = SignalSocket(open_effect(f"ws://127.0.0.1:{port}/v1/stream"), posted)
    with anyio.fail_after(WAIT):
        await socket.run()
    (failed,) = posted.of(SocketOpenFailed)
    assert API_KEY not in failed.reason


async def test_reading_goes_on_while_a_huge_frame_is_being_written() -> None:
    resume = anyio.Event()
    big = base64.b64encode(os.urandom(18 * 1024 * 1024)).decode()
    received: list[str | bytes] = []

    async def script(peer: Peer) -> None:
        assert peer.ws.transport is not None
        peer.ws.transport.pause_reading()  # the client's write must block
        await peer.send(type="queue_position", position=2, queue_size=2)
        await peer.send(type="livekit_room_info", livekit_url="ws://127.0.0.1:1", token="t")
        await resume.wait()
        peer.ws.transport.resume_reading()
        await peer.recv()
        received.append(await peer.ws.recv())

    posted = Posted()
    async with FakeSignaling(script) as server, anyio.create_task_group() as tg:
        socket = SignalSocket(open_effect(server.url), posted, trace=posted.trace)
        tg.start_soon(socket.run)
        await posted.wait_for(SocketOpened)
        socket.send(frame(1, '{"type":"livekit_join","passthrough":false}', FramePurpose.JOIN))
        socket.send(frame(2, big, FramePurpose.INITIAL_STATE))
        await posted.wait_for(FrameReceived, 2)
        # Both server frames were read while the initial state was still being written.
        assert "initial_state_sent" not in posted.milestones
        resume.set()
        await posted.wait(lambda: "initial_state_sent" in posted.milestones)
        await until(lambda: bool(received))
        assert server.peers[0].received[0] == {"type": "livekit_join", "passthrough": False}
        # Sent as a fragmented message; the peer reassembles exactly the frame.
        assert len(received) == 1 and received[0] == big
        socket.close(1000, "done")
    assert not posted.of(SendFailed)


async def test_a_write_that_fails_reports_its_send_id() -> None:
    big = base64.b64encode(os.urandom(18 * 1024 * 1024)).decode()

    async def script(peer: Peer) -> None:
        assert peer.ws.transport is not None
        peer.ws.transport.pause_reading()
        await anyio.sleep(0.3)  # let the client's write fill the buffers, then drop it
        peer.ws.transport.abort()

    posted = Posted()
    async with FakeSignaling(script) as server, anyio.create_task_group() as tg:
        socket = SignalSocket(open_effect(server.url), posted)
        tg.start_soon(socket.run)
        await posted.wait_for(SocketOpened)
        socket.send(frame(7, big, FramePurpose.INITIAL_STATE))
        (failed,) = await posted.wait_for(SendFailed)
        await posted.wait_for(SocketClosed)
        # Once the socket is gone a send fails at once, with its own id.
        socket.send(frame(8, "{}"))
        await posted.wait_for(SendFailed, 2)
    assert failed.send == SendId(7)
    assert posted.of(SendFailed)[1].send == SendId(8)
    assert API_KEY not in failed.reason


async def test_close_before_the_handshake_abandons_it_silently() -> None:
    accepted = anyio.Event()

    async def silent(stream: anyio.abc.SocketStream) -> None:
        accepted.set()
        await anyio.sleep_forever()  # accepts TCP, never answers the upgrade

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    posted = Posted()
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, silent)
        socket = SignalSocket(open_effect(f"ws://127.0.0.1:{port}/v1/stream"), posted)
        tg.start_soon(socket.run)
        with anyio.fail_after(WAIT):
            await accepted.wait()
        socket.close(1000, "client disconnect")
        with anyio.fail_after(WAIT):
            await socket.wait_done()
        tg.cancel_scope.cancel()
    assert posted.items == []


async def test_close_sends_the_code_and_reason_and_reports_nothing() -> None:
    async def script(peer: Peer) -> None:
        await peer.recv()

    posted = Posted()
    async with FakeSignaling(script) as server, anyio.create_task_group() as tg:
        socket = SignalSocket(open_effect(server.url), posted)
        tg.start_soon(socket.run)
        await posted.wait_for(SocketOpened)
        socket.send(frame(1, '{"type":"prompt","prompt":"x"}'))
        await until(lambda: bool(server.peers and server.peers[0].received))
        socket.close(1000, "client disconnect")
        with anyio.fail_after(WAIT):
            await server.peers[0].closed.wait()
    peer = server.peers[0]
    assert (peer.close_code, peer.close_reason) == (1000, "client disconnect")
    assert [type(i) for i in posted.items] == [SocketOpened]


async def test_socket_options_never_use_a_proxy_for_loopback() -> None:
    # With a proxy configured, a loopback URL must still go straight to the server.
    async def script(peer: Peer) -> None:
        await peer.send(type="queue_position", position=1, queue_size=1)

    posted = Posted()
    options = SocketOptions(proxy="http://127.0.0.1:9")  # nothing listens there
    async with FakeSignaling(script) as server, anyio.create_task_group() as tg:
        socket = SignalSocket(open_effect(server.url), posted, options)
        tg.start_soon(socket.run)
        await posted.wait_for(FrameReceived)
        socket.close()


# =========================================================================================
# Images, PNG, video sources, fan-out
# =========================================================================================


def _png_bytes() -> bytes:
    image = np.zeros((8, 12, 3), dtype=np.uint8)
    image[:, :, 0] = 200
    return encode_png(image)


def test_png_encoder_round_trips_through_pyav() -> None:
    image = np.random.default_rng(1).integers(0, 255, (17, 23, 3), dtype=np.uint8)
    assert np.array_equal(decode_reference(encode_png(image)), image)


def test_images_become_plain_base64(tmp_path: Path) -> None:
    png = _png_bytes()
    expected = base64.b64encode(png).decode()
    path = tmp_path / "ref.png"
    path.write_bytes(png)
    assert image_to_base64(png) == expected
    assert image_to_base64(path) == expected
    assert image_to_base64(str(path)) == expected
    assert image_to_base64(f"data:image/png;base64,{expected}") == expected
    assert image_to_base64(expected) == expected
    assert image_to_base64(base64.urlsafe_b64encode(png).decode().rstrip("=")) == expected
    array = np.full((8, 8, 3), 90, dtype=np.uint8)
    assert np.array_equal(decode_reference(base64.b64decode(image_to_base64(array))), array)


def test_an_image_is_converted_once_and_small_pngs_never_pass_for_paths(tmp_path: Path) -> None:
    # Issue #14: the CLI's base64 went through image_to_base64 again and was tried
    # as a file path; about 1 in 20 small PNGs has a '/'-separated run of more than
    # 255 characters, and the OS refused it ("File name too long", content quoted).
    rng = np.random.default_rng(14)
    for index in range(40):
        height, width = rng.integers(8, 40, 2)
        png = encode_png(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        path = tmp_path / f"small-{index}.png"
        path.write_bytes(png)
        once = image_to_base64(path)
        assert isinstance(once, Base64Text)
        assert image_to_base64(once) is once  # passed through, not converted again
        assert image_to_base64(str(once)) == once  # base64 given as plain text
    long_run = "!" * 300 + "/" + "x" * 300
    with pytest.raises(ImageError) as caught:
        image_to_base64(long_run)
    assert "!!!" not in str(caught.value) and "xxx" not in str(caught.value)


def test_file_ids_are_image_refs_not_image_data(tmp_path: Path) -> None:
    # As the official clients' isFileRefId ("file_..."), narrowed to an id's
    # characters: a local file named file_photo.png is still a file.
    assert file_ref("file_01HXYZ-abc_9") == "file_01HXYZ-abc_9"
    for not_a_ref in ("file_photo.png", "dir/file_abc", "file_", " file_abc", b"file_abc"):
        assert file_ref(not_a_ref) is None
    assert file_ref(tmp_path / "file_abc") is None  # a path is a path
    with pytest.raises(ImageError, match="uploaded file"):
        image_to_base64("file_01HXYZ")


@pytest.mark.parametrize(
    "source",
    [
        "http://example.invalid/cat.png",
        "https://example.invalid/cat.png?sig=secret",
        "file:///etc/passwd",
        "ftp://example.invalid/x.png",
        "s3://bucket/key.png",
    ],
)
def test_urls_are_refused_not_fetched(source: str) -> None:
    with pytest.raises(UnsupportedImageSource) as caught:
        image_to_base64(source)
    assert "secret" not in str(caught.value)
    assert "example.invalid" not in str(caught.value)


def test_bad_images_name_the_problem_not_the_content(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not found"):
        image_to_base64(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="not an image"):
        image_to_base64("data:text/plain;base64,aGVsbG8=")
    with pytest.raises(ImageError) as caught:
        image_to_base64("this is not base64 at all!")
    assert "this is not" not in str(caught.value)
    with pytest.raises(ImageError, match="empty"):
        image_to_base64(b"")


def test_test_pattern_is_deterministic_and_moves() -> None:
    pattern = TestPattern(64, 48, fps=10)
    first, again, later = pattern.frame_at(0), pattern.frame_at(0), pattern.frame_at(5)
    assert first.shape == (48, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, later)


async def test_test_pattern_yields_paced_frames() -> None:
    frames = []
    with anyio.fail_after(WAIT):
        async for out in TestPattern(32, 32, fps=50).frames():
            frames.append(out)
            if len(frames) == 5:
                break
    assert len(frames) == 5


async def test_array_source_yields_the_newest_pushed_frame() -> None:
    source = ArraySource(32, 32)
    got: list[int] = []

    async def consume() -> None:
        async for out in source.frames():
            got.append(int(out[0, 0, 0]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        for value in (1, 2, 3):  # pushed without yielding: only the newest is kept
            source.push(np.full((32, 32, 3), value, dtype=np.uint8))
        await anyio.sleep(0.05)
        source.push(np.full((32, 32, 3), 9, dtype=np.uint8))
        await anyio.sleep(0.05)
        source.close()
    assert got == [3, 9]
    with pytest.raises(ValueError):
        source.push(np.zeros((4, 4), dtype=np.uint8))


async def test_file_source_decodes_and_loops(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 64, 48
        stream.pix_fmt = "yuv420p"
        for i in range(3):
            image = np.full((48, 64, 3), 40 + 60 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    source = FileSource(path, fps=100)
    assert (source.width, source.height) == (64, 48)
    levels = []
    with anyio.fail_after(WAIT):
        async for out in source.frames():
            levels.append(int(out[24, 32, 0]))
            if len(levels) == 6:
                break
    assert levels[:3] == levels[3:]  # looped
    assert levels[0] < levels[1] < levels[2]
    with pytest.raises(ValueError):
        FileSource(tmp_path / "missing.mp4")


async def test_fanout_backlog_goes_to_the_first_subscriber_and_close_ends_it() -> None:
    fanout: Fanout[int] = Fanout(maxlen=None, backlog=100)
    fanout.publish(1)
    fanout.publish(2)
    seen: list[int] = []

    async def consume() -> None:
        async for item in fanout.subscribe():
            seen.append(item)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.sleep(0.01)
        fanout.publish(3)
        fanout.close()
    assert seen == [1, 2, 3]

    latest: Fanout[int] = Fanout(maxlen=2)
    iterator = latest.subscribe()
    first = asyncio.ensure_future(iterator.__anext__())
    await anyio.sleep(0)
    for item in range(5):
        latest.publish(item)
    assert await first == 3  # a slow consumer skips to the newest items
    assert await iterator.__anext__() == 4


# =========================================================================================
# The session: driver, WebSocket and the real LiveKit client against the double
# =========================================================================================


async def test_connect_runs_the_lean_join_and_the_output_follows_the_prompt(
    lk: LiveKitDouble,
) -> None:
    seen: list[Event] = []
    async with FakeSignaling(lambda peer: healthy(peer, lk)) as server:
        async with fake_connect(
            server.url,
            prompt="a red fox",
            timeouts=fast_timeouts(),
            on_event=seen.append,
        ) as session:
            assert session.state is ConnectionState.CONNECTED
            assert session.session_id == "session-1"
            assert client_tasks()  # the leak detector does see the session's tasks
            assert session.subscribe_token is not None
            assert json.loads(base64.b64decode(session.subscribe_token)) == {"room_name": "room-1"}
            await frame_with_band(session, "a red fox")
            await session.set_prompt("a blue whale")
            await frame_with_band(session, "a blue whale")
            milestones = [m.name for m in session.timeline]
        peer = server.peers[0]
        with anyio.fail_after(WAIT):
            await peer.closed.wait()
    # The lean join: join first, then the one initial-state frame, without waiting.
    assert peer.received[0] == {"type": "livekit_join", "passthrough": False}
    assert peer.received[1] == {"type": "prompt", "prompt": "a red fox", "enhance_prompt": True}
    assert peer.close_code == 1000
    for name in ("socket_opened", "join_sent", "room_info", "room_connected", "connected"):
        assert name in milestones
    assert "first_output_frame" in milestones
    assert any(isinstance(e, InitialStateAcked) for e in seen)
    assert not any(API_KEY in repr(e) for e in seen)
    await assert_nothing_left(lk, "room-1")


async def test_a_file_id_is_sent_as_an_image_ref_at_connect_and_later(lk: LiveKitDouble) -> None:
    # Issue #14: "file_..." was decoded as URL-safe base64 and sent as image_data.
    async with FakeSignaling(lambda peer: healthy(peer, lk)) as server:
        async with fake_connect(
            server.url, image="file_01HXYZ-abc_9", prompt="p", timeouts=fast_timeouts()
        ) as session:
            await session.set_image("file_second")
        peer = server.peers[0]
        with anyio.fail_after(WAIT):
            await peer.closed.wait()
    initial, request = peer.received[1], peer.received[2]
    assert initial["image_ref"] == "file_01HXYZ-abc_9" and "image_data" not in initial
    assert request["image_ref"] == "file_second" and "image_data" not in request
    await assert_nothing_left(lk, "room-1")


async def test_events_raised_while_connecting_are_delivered_to_the_iterator(
    lk: LiveKitDouble,
) -> None:
    async with (
        FakeSignaling(lambda peer: healthy(peer, lk, queue_updates=2)) as server,
        fake_connect(
            server.url,
            timeouts=fast_timeouts(),
        ) as session,
    ):
        events: list[Event] = []
        with anyio.fail_after(WAIT):
            async for event in session.events():
                events.append(event)
                if isinstance(event, SessionStarted):
                    break
    kinds = [type(e) for e in events]
    assert kinds[0] is StateChanged and events[0].state is ConnectionState.CONNECTING  # type: ignore[union-attr]
    assert kinds.count(QueuePositionChanged) == 2
    assert server.peers[0].received[0] == {"type": "livekit_join", "passthrough": True}
    await assert_nothing_left(lk, "room-1")


async def test_rejected_requests_raise_and_the_session_stays_up(lk: LiveKitDouble) -> None:
    async with (
        FakeSignaling(lambda peer: healthy(peer, lk, reject_requests=True)) as server,
        fake_connect(
            server.url,
            image=_png_bytes(),
            timeouts=fast_timeouts(),
        ) as session,
    ):
        with anyio.fail_after(WAIT), pytest.raises(RequestRejected) as caught:
            await session.set_prompt("nope")
        assert caught.value.kind is ErrorKind.REQUEST_REJECTED
        with anyio.fail_after(WAIT), pytest.raises(RequestRejected):
            await session.set_image(_png_bytes(), prompt="with a prompt")
        assert session.state is ConnectionState.CONNECTED
    initial = server.peers[0].received[1]
    assert initial["type"] == "set_image"
    assert initial["image_data"] == base64.b64encode(_png_bytes()).decode()
    await assert_nothing_left(lk, "room-1")


async def test_an_unanswered_request_times_out_and_a_late_ack_is_ignored(
    lk: LiveKitDouble,
) -> None:
    late: list[dict[str, Any]] = []

    async def script(peer: Peer) -> None:
        await peer.join()
        await peer.room_info(lk)
        late.append(await peer.recv())  # the request: not answered in time

    async with (
        FakeSignaling(script) as server,
        fake_connect(
            server.url,
            timeouts=fast_timeouts(request_ack=0.3),
        ) as session,
    ):
        with anyio.fail_after(WAIT), pytest.raises(RequestTimedOut) as caught:
            await session.set_prompt("anyone?")
        assert caught.value.kind is ErrorKind.REQUEST_TIMEOUT
        await server.peers[0].ack(late[0])  # too late: dropped, nothing breaks
        await anyio.sleep(0.1)
        assert session.state in (ConnectionState.CONNECTED, ConnectionState.GENERATING)
    await assert_nothing_left(lk, "room-1")


async def test_a_queue_longer_than_the_room_info_timeout_does_not_retry(
    lk: LiveKitDouble,
) -> None:
    seen: list[Event] = []
    script = lambda peer: healthy(peer, lk, queue_updates=6, queue_interval=0.1)  # noqa: E731
    async with (
        FakeSignaling(script) as server,
        fake_connect(
            server.url,
            prompt="patience",
            timeouts=fast_timeouts(room_info=0.2, initial_state_ack=0.2),
            retry=quick_retry(),
            on_event=seen.append,
        ) as session,
    ):
        assert session.state is ConnectionState.CONNECTED
        with anyio.fail_after(WAIT):
            while not any(isinstance(e, InitialStateAcked) for e in seen):
                await anyio.sleep(0.02)
    assert len(server.peers) == 1
    assert not any(isinstance(e, RetryScheduled) for e in seen)
    await assert_nothing_left(lk, "room-1")


async def test_an_ack_before_room_info_is_claimed_after_it(lk: LiveKitDouble) -> None:
    seen: list[Event] = []
    async with (
        FakeSignaling(lambda peer: healthy(peer, lk, ack_early=True)) as server,
        fake_connect(
            server.url,
            prompt="early",
            timeouts=fast_timeouts(),
            on_event=seen.append,
        ),
    ):
        pass
    acked = [e for e in seen if isinstance(e, InitialStateAcked)]
    assert len(acked) == 1
    assert not any(getattr(e, "fatal", None) is not None for e in seen)
    assert len(server.peers) == 1
    await assert_nothing_left(lk, "room-1")


async def test_a_silent_server_is_retried_and_the_stale_attempt_never_speaks(
    lk: LiveKitDouble,
) -> None:
    async def script(peer: Peer) -> None:
        if peer.index == 1:
            await peer.join()  # never sends room_info
            return
        await healthy(peer, lk)

    seen: list[Event] = []
    async with (
        FakeSignaling(script) as server,
        fake_connect(
            server.url,
            prompt="again",
            timeouts=fast_timeouts(room_info=0.3),
            retry=quick_retry(),
            on_event=seen.append,
        ) as session,
    ):
        assert session.session_id == "session-2"
        first = server.peers[0]
        with anyio.fail_after(WAIT):
            await first.closed.wait()
        await frame_with_band(session, "again")
    assert first.close_code == 1001
    retries = [e for e in seen if isinstance(e, RetryScheduled)]
    assert [r.kind for r in retries] == [ErrorKind.ROOM_INFO_TIMEOUT]
    # After the second attempt started, nothing of the first reaches the user.
    start = next(i for i, e in enumerate(seen) if e.attempt == 2)
    assert all(e.attempt == 2 for e in seen[start:])
    # The retry replays the initial state on the new socket.
    assert server.peers[1].received[1]["prompt"] == "again"
    await assert_nothing_left(lk, "room-1", "room-2")


async def test_a_failed_initial_state_send_fails_the_attempt_before_any_room(
    lk: LiveKitDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Attempt 1's initial-state write fails while its socket stays up and the
    # server answers at once with room_info: the attempt must not join a room.
    real_send = SignalSocket.send

    def failing_send(self: SignalSocket, effect: SendFrame) -> None:
        if self.attempt == 1 and effect.purpose is FramePurpose.INITIAL_STATE:
            self._post(SendFailed(self.attempt, effect.send, "injected write failure"))
            return
        real_send(self, effect)

    monkeypatch.setattr(SignalSocket, "send", failing_send)

    async def script(peer: Peer) -> None:
        join = await peer.recv()
        await peer.room_info(lk)  # answers before any initial state could arrive
        if not join["passthrough"] and peer.index > 1:
            await peer.ack(await peer.recv())
        await peer.serve_requests()

    seen: list[Event] = []
    async with (
        FakeSignaling(script) as server,
        fake_connect(
            server.url,
            prompt="must arrive",
            timeouts=fast_timeouts(),
            retry=quick_retry(),
            on_event=seen.append,
        ) as session,
    ):
        assert session.session_id == "session-2"
        await frame_with_band(session, "must arrive")
    (retry,) = [e for e in seen if isinstance(e, RetryScheduled)]
    assert retry.kind is ErrorKind.SEND_FAILED and retry.attempt == 1
    assert lk.room("room-1").client_video_frames == 0  # attempt 1 never joined its room
    await assert_nothing_left(lk, "room-1", "room-2")


async def test_a_permanent_error_fails_connect_with_its_kind_and_leaves_nothing() -> None:
    async def script(peer: Peer) -> None:
        await peer.join()
        await peer.send(type="error", error="invalid api key")

    seen: list[Event] = []
    async with FakeSignaling(script) as server:
        with anyio.fail_after(WAIT), pytest.raises(ConnectFailed) as caught:
            async with fake_connect(
                server.url,
                prompt="x",
                retry=quick_retry(),
                on_event=seen.append,
            ):
                raise AssertionError("must not connect")
    assert caught.value.kind is ErrorKind.SERVER_ERROR
    assert "invalid api key" in str(caught.value)
    assert API_KEY not in str(caught.value)
    assert len(server.peers) == 1  # permanent: no retry
    assert isinstance(seen[-1], StateChanged) and seen[-1].state is ConnectionState.DISCONNECTED
    await assert_nothing_left()


async def test_the_socket_open_timeout_retries_then_gives_up() -> None:
    async def silent(stream: anyio.abc.SocketStream) -> None:
        await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    seen: list[Event] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, silent)
        with anyio.fail_after(WAIT), pytest.raises(ConnectFailed) as caught:
            async with fake_connect(
                f"ws://127.0.0.1:{port}/v1/stream",
                timeouts=fast_timeouts(socket_open=0.2),
                retry=quick_retry(max_retries=2),
                on_event=seen.append,
            ):
                raise AssertionError("must not connect")
        tg.cancel_scope.cancel()
    assert caught.value.kind is ErrorKind.SOCKET_OPEN_TIMEOUT
    assert len([e for e in seen if isinstance(e, RetryScheduled)]) == 2
    await assert_nothing_left()


async def test_room_loss_reconnects_and_replays_the_initial_state(lk: LiveKitDouble) -> None:
    async def script(peer: Peer) -> None:
        if peer.index < 3:
            await healthy(peer, lk)
        else:  # the third connection stays queued: the session stays reconnecting
            await peer.join()
            await peer.send(type="queue_position", position=1, queue_size=1)

    seen: list[Event] = []
    async with (
        FakeSignaling(script) as server,
        fake_connect(
            server.url,
            prompt="first",
            timeouts=fast_timeouts(),
            retry=quick_retry(),
            on_event=seen.append,
        ) as session,
    ):
        await session.set_prompt("second")  # a reconnect must replay the latest state
        await lk.room("room-1").disconnect_participants("room_deleted")
        await until(lambda: session.session_id == "session-2")
        assert session.state in (ConnectionState.CONNECTED, ConnectionState.GENERATING)
        await frame_with_band(session, "second")
        await lk.room("room-2").disconnect_participants("room_deleted")
        await until(lambda: session.state is ConnectionState.RECONNECTING)
        with anyio.fail_after(WAIT), pytest.raises(NotConnectedError):
            await session.set_prompt("while away")
    states = [e.state for e in seen if isinstance(e, StateChanged)]
    assert states[:3] == [
        ConnectionState.CONNECTING,
        ConnectionState.CONNECTED,
        ConnectionState.RECONNECTING,
    ]
    replayed = server.peers[1].received
    assert replayed[0] == {"type": "livekit_join", "passthrough": False}
    assert replayed[1]["type"] == "prompt" and replayed[1]["prompt"] == "second"
    await assert_nothing_left(lk, "room-1", "room-2")


async def test_an_abandoned_room_connect_is_disconnected_when_it_completes() -> None:
    # The double answers joins after 1 s; the engine's media timeout is shorter,
    # so attempt 1 abandons its room while Room.connect is still running.
    async with LiveKitDouble(media_setup_delay=1.0) as slow:

        async def script(peer: Peer) -> None:
            await healthy(peer, slow)

        seen: list[Event] = []
        async with FakeSignaling(script) as server:
            with anyio.fail_after(WAIT * 2), pytest.raises(ConnectFailed) as caught:
                async with fake_connect(
                    server.url,
                    timeouts=fast_timeouts(media=0.3),
                    retry=quick_retry(max_retries=1),
                    on_event=seen.append,
                ):
                    raise AssertionError("must not connect")
        assert caught.value.kind is ErrorKind.MEDIA_TIMEOUT
        # Both abandoned rooms finished connecting and were then left.
        await assert_nothing_left(slow, "room-1", "room-2")


async def _cancel_connect_once(
    url: str, reached: anyio.Event, watch: Callable[[Event], None]
) -> None:
    """Start connect(), cancel it once ``reached`` is set."""

    async def run() -> None:
        async with fake_connect(
            url,
            timeouts=fast_timeouts(),
            retry=RetryPolicy(initial_delay=30),
            on_event=watch,
        ):
            raise AssertionError("must not connect")

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(WAIT):
            await reached.wait()
        await anyio.sleep(0.1)  # let the client get going in that phase
        tg.cancel_scope.cancel()


async def test_cancelling_connect_while_opening_leaves_nothing() -> None:
    reached = anyio.Event()

    async def accept(stream: anyio.abc.SocketStream) -> None:
        reached.set()
        await anyio.sleep_forever()  # the upgrade is never answered

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, accept)
        await _cancel_connect_once(f"ws://127.0.0.1:{port}/v1/stream", reached, lambda e: None)
        tg.cancel_scope.cancel()
    await assert_nothing_left()


@pytest.mark.parametrize("phase", ["joining", "queued", "room_connecting", "backoff"])
async def test_cancelling_connect_in_any_phase_leaves_nothing(phase: str) -> None:
    reached = anyio.Event()
    async with LiveKitDouble(media_setup_delay=1.0) as double:

        async def script(peer: Peer) -> None:
            await peer.join()
            if phase == "queued":
                await peer.send(type="queue_position", position=3, queue_size=3)
            elif phase == "backoff":
                await peer.ws.close(1011, "try again")
                return
            elif phase == "room_connecting":
                await peer.room_info(double)  # the double answers the join after 1 s
            reached.set()
            await peer.ws.wait_closed()  # until the client leaves

        def watch(event: Event) -> None:
            if phase == "backoff" and isinstance(event, RetryScheduled):
                reached.set()

        async with FakeSignaling(script) as server:
            await _cancel_connect_once(server.url, reached, watch)
            await assert_nothing_left(double, "room-1")
            for peer in server.peers:
                with anyio.fail_after(WAIT):
                    await peer.closed.wait()


async def test_an_exception_in_the_body_propagates_as_itself(lk: LiveKitDouble) -> None:
    async with FakeSignaling(lambda peer: healthy(peer, lk)) as server:
        with anyio.fail_after(WAIT), pytest.raises(KeyError):
            async with connect(server.url, api_key=API_KEY, model="echo", camera=small_camera()):
                raise KeyError("mine")
    await assert_nothing_left(lk, "room-1")


async def test_an_internal_failure_ends_the_session_with_a_clear_error(
    lk: LiveKitDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An engine or adapter bug in the engine's task must surface, not hang or leak.
    real_step = Driver._step

    def broken_step(self: Driver, item: object) -> None:
        if isinstance(item, FrameReceived):
            raise RuntimeError("simulated bug")
        real_step(self, item)  # type: ignore[arg-type]

    monkeypatch.setattr(Driver, "_step", broken_step)
    async with FakeSignaling(lambda peer: healthy(peer, lk)) as server:
        with anyio.fail_after(WAIT), pytest.raises(LeanJoinError, match="internally") as caught:
            async with connect(server.url, api_key=API_KEY, model="echo", camera=small_camera()):
                raise AssertionError("must not connect")
        assert isinstance(caught.value.__cause__, BaseException)
        with anyio.fail_after(WAIT):
            await server.peers[0].closed.wait()
    await assert_nothing_left()


async def test_session_closed_after_exit(lk: LiveKitDouble) -> None:
    async with (
        FakeSignaling(lambda peer: healthy(peer, lk)) as server,
        connect(server.url, api_key=API_KEY, model="echo", camera=small_camera()) as session,
    ):
        pass
    assert session.closed
    assert session.state is ConnectionState.DISCONNECTED
    with anyio.fail_after(WAIT):
        events = [e async for e in session.events()]
    assert isinstance(events[-1], StateChanged)
    assert events[-1].state is ConnectionState.DISCONNECTED
    with pytest.raises(Exception, match="closed"):
        await session.set_prompt("late")


def test_bad_arguments_fail_before_anything_opens() -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            async with connect("http://127.0.0.1:1/v1/stream", api_key="k", model="echo"):
                pass
        with pytest.raises(UnsupportedImageSource):
            async with connect(
                "ws://127.0.0.1:1/v1/stream",
                api_key="k",
                model="echo",
                image="https://x.invalid/a.png",
            ):
                pass
        with pytest.raises(ValueError):
            MediaOptions(codec="av1")  # type: ignore[arg-type]

    anyio.run(main)


def test_every_error_the_public_api_raises_is_a_leanjoin_error() -> None:
    # Issue #14: NotConnectedError (and UsageError) came from the engine and were no
    # LeanJoinError, so `except LeanJoinError` let them through.
    import leanjoin.adapters as public

    exported = [getattr(public, name) for name in public.__all__]
    errors = [
        obj
        for obj in exported
        if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, Warning)
    ]
    assert NotConnectedError in errors and ConnectFailed in errors
    assert [e.__name__ for e in errors if not issubclass(e, LeanJoinError)] == []
    # What the option values and connect() refuse is one of them too.
    for bad in (
        lambda: Timeouts(connect=-1),
        lambda: RetryPolicy(max_retries=-1),
        lambda: MediaOptions(codec="av1"),  # type: ignore[arg-type]
        lambda: MediaOptions(max_bitrate=0),
        lambda: TestPattern(15, 15),
        lambda: ModelDefinition(name="m", width=15, height=16),
    ):
        with pytest.raises(LeanJoinError) as caught:
            bad()
        assert isinstance(caught.value, ValueError)  # and still a ValueError


@pytest.mark.parametrize(
    "args",
    [
        {"url": "http://127.0.0.1:1/v1/stream"},  # not a WebSocket URL
        {"url": "ws://127.0.0.1:1/v1/stream?x=1"},  # options go in query_params
        {"api_key": ""},
        {"query_params": {"model": "other"}},  # a name the session sets itself
        {"resolution": "4k"},
        {"image": np.zeros((0, 4, 3), dtype=np.uint8)},  # an empty array
        {"model": ModelDefinition(name="m", width=16, height=16, fps=30.0)},  # fine: control
    ],
    ids=["http-url", "query", "empty-key", "reserved-param", "resolution", "empty-array", "ok"],
)
def test_bad_arguments_of_connect_are_leanjoin_errors(args: dict[str, Any]) -> None:
    async def main() -> None:
        options: dict[str, Any] = {"url": "ws://127.0.0.1:1/v1/stream", "api_key": "k"}
        options |= {"model": "echo"} | args
        retry = RetryPolicy(max_retries=0)
        async with connect(**options, retry=retry, timeouts=fast_timeouts(socket_open=1)):
            raise AssertionError("nothing listens there")

    with pytest.raises(LeanJoinError) as caught:
        anyio.run(main)
    if "model" in args:
        assert isinstance(caught.value, ConnectFailed)  # the arguments were fine
    else:
        assert isinstance(caught.value, ValueError), caught.value
        assert "k" not in str(caught.value).split()  # no secret quoted


async def test_a_long_session_keeps_a_bounded_timeline(lk: LiveKitDouble) -> None:
    """Every request adds a milestone; hours of prompts must not grow the session."""
    async with (
        FakeSignaling(lambda peer: healthy(peer, lk)) as server,
        fake_connect(
            server.url,
            timeouts=fast_timeouts(),
        ) as session,
    ):
        for number in range(TIMELINE_LENGTH + 40):
            await session.set_prompt(f"prompt {number}")
        timeline = session.timeline
    assert len(timeline) == TIMELINE_LENGTH
    assert timeline[-1].name == "request_sent"  # the newest are the ones kept


async def test_cancelling_a_connected_session_says_goodbye(lk: LiveKitDouble) -> None:
    # A caller's cancel scope (a timeout around the session, a cancelled task) is
    # a normal way to leave: the server hears the same clean close as a return.
    async with FakeSignaling(lambda peer: healthy(peer, lk)) as server:
        with anyio.move_on_after(WAIT) as scope:
            async with connect(
                server.url, api_key=API_KEY, model="echo", camera=small_camera()
            ) as session:
                scope.deadline = anyio.current_time() + 0.2
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert session.closed
        peer = server.peers[0]
        with anyio.fail_after(WAIT):
            await peer.closed.wait()
        assert (peer.close_code, peer.close_reason) == (1000, "client disconnect")
    await assert_nothing_left(lk, "room-1")


async def test_converting_an_image_leaves_the_event_loop_free(
    lk: LiveKitDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reading and encoding a big image (tens of ms at 20 MB; slowed to 0.4 s
    # here) runs beside the event loop, at connect and at set_image: the
    # application's other tasks keep running meanwhile.
    import time

    from leanjoin.adapters.client.images import image_to_base64 as real

    def slow(image: Any, **kwargs: Any) -> Base64Text:
        time.sleep(0.4)
        return real(image, **kwargs)

    monkeypatch.setattr("leanjoin.adapters.client.api.image_to_base64", slow)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    png = encode_png(np.full((16, 16, 3), 200, dtype=np.uint8))
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        async with FakeSignaling(lambda peer: healthy(peer, lk)) as server:
            before = ticks
            async with connect(
                server.url, api_key=API_KEY, model="echo", camera=small_camera(), image=png
            ) as session:
                assert ticks - before >= 5, "the loop stood still while the image was converted"
                before = ticks
                await session.set_image(png)
                assert ticks - before >= 5
        tg.cancel_scope.cancel()
