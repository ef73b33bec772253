"""The local LiveKit double, driven by the real ``livekit.rtc.Room`` client.

Every wait is bounded with ``anyio.fail_after``; every connected room is
disconnected in ``finally``. Decoded colours are compared with a tolerance
because the echo track is VP8-coded on its way back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import numpy as np
import numpy.typing as npt
import pytest
from livekit import rtc
from livekit.protocol import models
from livekit.protocol import rtc as proto
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from leanjoin.adapters.server.echo_model import echo_transform, mean_colour, prompt_colour
from leanjoin.adapters.server.lkdouble import LiveKitDouble, RoomHandle, ice, sdp

Frame = npt.NDArray[np.uint8]
# The real LiveKit client runs here: a process of its own (tests/run_suite.py).
pytestmark = pytest.mark.livekit

MODEL = "inference-server-echo"
TOLERANCE = 24
WIDTH, HEIGHT = 320, 240
LEFT, RIGHT = (200, 60, 60), (60, 60, 200)


# --- helpers -----------------------------------------------------------------


def _camera_rgba() -> bytes:
    frame = np.full((HEIGHT, WIDTH, 4), 255, dtype=np.uint8)
    frame[:, : WIDTH // 2, :3] = LEFT
    frame[:, WIDTH // 2 :, :3] = RIGHT
    return frame.tobytes()


async def _feed(source: rtc.VideoSource) -> None:
    data = _camera_rgba()
    while True:
        source.capture_frame(rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, data))
        await anyio.sleep(1 / 15)


async def _publish_camera(room: rtc.Room, options: rtc.TrackPublishOptions) -> rtc.VideoSource:
    source = rtc.VideoSource(WIDTH, HEIGHT)
    track = rtc.LocalVideoTrack.create_video_track("camera", source)
    with anyio.fail_after(15):
        await room.local_participant.publish_track(track, options)
    return source


def _vp8(simulcast: bool | None = False) -> rtc.TrackPublishOptions:
    options = rtc.TrackPublishOptions(
        source=rtc.TrackSource.SOURCE_CAMERA, video_codec=rtc.VideoCodec.VP8
    )
    if simulcast is not None:
        options.simulcast = simulcast
    return options


def _rgb(event: rtc.VideoFrameEvent) -> Frame:
    frame = event.frame.convert(rtc.VideoBufferType.RGB24)
    pixels = np.frombuffer(frame.data, dtype=np.uint8)
    return pixels.reshape(frame.height, frame.width, 3)


def _median(region: Frame) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in np.median(region.reshape(-1, 3), axis=0))
    return (r, g, b)


def _close(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    return all(abs(x - y) <= TOLERANCE for x, y in zip(a, b, strict=True))


def _bands(frame: Frame) -> dict[str, tuple[int, int, int]]:
    """Median colours well inside the top band, bottom band and both middle halves."""
    h, w = frame.shape[:2]
    inset_w = slice(w // 16, w - w // 16)
    return {
        "top": _median(frame[h // 32 : h // 4 - h // 32, inset_w]),
        "bottom": _median(frame[h - h // 4 + h // 32 : h - h // 32, inset_w]),
        "left": _median(frame[h // 3 : 2 * h // 3, w // 16 : w // 2 - w // 16]),
        "right": _median(frame[h // 3 : 2 * h // 3, w // 2 + w // 16 : w - w // 16]),
    }


async def _first_matching(
    stream: rtc.VideoStream, check: Callable[[dict[str, tuple[int, int, int]]], bool]
) -> dict[str, tuple[int, int, int]]:
    async for event in stream:
        bands = _bands(_rgb(event))
        if check(bands):
            return bands
    raise AssertionError("video stream ended")


class _Client:
    """A real rtc.Room plus what the tests observe of it."""

    def __init__(self) -> None:
        self.room = rtc.Room()
        self.disconnected = anyio.Event()
        self.reason: int | None = None
        self.model_track: asyncio.Future[rtc.RemoteVideoTrack] = (
            asyncio.get_running_loop().create_future()
        )
        self.room.on("disconnected", self._on_disconnected)
        self.room.on("track_subscribed", self._on_track)

    def _on_disconnected(self, reason: int) -> None:
        self.reason = reason
        self.disconnected.set()

    def _on_track(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if (
            isinstance(track, rtc.RemoteVideoTrack)
            and participant.identity == MODEL
            and not self.model_track.done()
        ):
            self.model_track.set_result(track)

    async def connect(self, lk: LiveKitDouble, room: str, identity: str = "alice") -> None:
        with anyio.fail_after(20):
            await self.room.connect(lk.url, lk.mint_token(room=room, identity=identity))


@asynccontextmanager
async def _client() -> AsyncIterator[_Client]:
    client = _Client()
    try:
        yield client
    finally:
        with anyio.fail_after(10):
            await client.room.disconnect()


# --- end to end with the real client ------------------------------------------


@pytest.mark.e2e
@pytest.mark.anyio
async def test_echo_track_round_trip_follows_the_transform() -> None:
    async with LiveKitDouble() as lk, anyio.create_task_group() as tg:
        handle = lk.room("echo")
        handle.set_transform(
            lambda f: echo_transform(f, prompt="a red fox", reference=None, passthrough=False)
        )
        async with _client() as client:
            await client.connect(lk, "echo")
            names = {p.identity for p in client.room.remote_participants.values()}
            assert names == {MODEL}
            assert handle.participants == 1
            tg.start_soon(_feed, await _publish_camera(client.room, _vp8()))
            with anyio.fail_after(15):
                await handle.wait_client_video()
                track = await client.model_track
            stream = rtc.VideoStream(track)
            try:
                fox = prompt_colour("a red fox")
                with anyio.fail_after(20):
                    bands = await _first_matching(stream, lambda b: _close(b["top"], fox))
                # Mirrored: the camera's right half shows on the left.
                assert _close(bands["left"], RIGHT) and _close(bands["right"], LEFT)

                reference = np.zeros((8, 8, 3), dtype=np.uint8)
                reference[:] = (40, 170, 120)
                handle.set_transform(
                    lambda f: echo_transform(
                        f, prompt="a blue whale", reference=reference, passthrough=False
                    )
                )
                whale, ref = prompt_colour("a blue whale"), mean_colour(reference)
                assert not _close(whale, fox)
                with anyio.fail_after(20):
                    await _first_matching(
                        stream, lambda b: _close(b["top"], whale) and _close(b["bottom"], ref)
                    )
            finally:
                await stream.aclose()
            assert handle.client_video_frames > 0
            tg.cancel_scope.cancel()


@pytest.mark.e2e
@pytest.mark.anyio
async def test_default_simulcast_h264_publication_is_decoded() -> None:
    # The client's default options enable simulcast: the double must still decode it.
    async with LiveKitDouble() as lk, anyio.create_task_group() as tg:
        handle = lk.room("h264")
        frames: list[tuple[int, ...]] = []

        def record(frame: Frame) -> None:
            frames.append(frame.shape)

        handle.set_transform(record)
        options = rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA, video_codec=rtc.VideoCodec.H264
        )
        async with _client() as client:
            await client.connect(lk, "h264")
            tg.start_soon(_feed, await _publish_camera(client.room, options))
            with anyio.fail_after(15):
                await handle.wait_client_video()
            assert frames and frames[0][2] == 3
            tg.cancel_scope.cancel()


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.parametrize("codec", [rtc.VideoCodec.VP9, rtc.VideoCodec.AV1], ids=["vp9", "av1"])
async def test_vp9_and_av1_publications_are_refused(
    codec: rtc.VideoCodec.ValueType, caplog: pytest.LogCaptureFixture
) -> None:
    async with LiveKitDouble() as lk, anyio.create_task_group() as tg:
        handle = lk.room("codec")
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, video_codec=codec)
        async with _client() as client:
            await client.connect(lk, "codec")
            tg.start_soon(_feed, await _publish_camera(client.room, options))
            with anyio.fail_after(15):
                await client.disconnected.wait()
            assert client.reason == rtc.DisconnectReason.MEDIA_FAILURE
            assert handle.client_video_frames == 0
            assert "not supported by this double" in caplog.text
            tg.cancel_scope.cancel()


@pytest.mark.e2e
@pytest.mark.anyio
async def test_bad_tokens_are_refused_with_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-of-the-double-long-enough-for-hs256"
    async with LiveKitDouble(api_secret=secret) as lk:
        foreign = LiveKitDouble(api_secret="another-secret-long-enough-for-hs256!").mint_token(
            room="r", identity="eve"
        )
        for token, reason in [(foreign, "signature"), ("not-a-jwt", "malformed")]:
            room = rtc.Room()
            try:
                with anyio.fail_after(20), pytest.raises(rtc.ConnectError) as refused:
                    await room.connect(lk.url, token)
                assert "401" in refused.value.message and reason in refused.value.message
            finally:
                await room.disconnect()
        good = lk.mint_token(room="r", identity="bob")
        assert lk.room("r").participants == 0
        ours = [r.getMessage() for r in caplog.records if r.name.startswith("leanjoin")]
        for needle in (secret, foreign, good):
            assert all(needle not in message for message in ours)
            assert needle not in repr(lk)


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_room_that_refuses_joins_fails_the_real_clients_connect_with_the_reason() -> None:
    async with LiveKitDouble() as lk:
        lk.room("r").refuses_joins = True
        room = rtc.Room()
        try:
            with anyio.fail_after(20), pytest.raises(rtc.ConnectError) as refused:
                await room.connect(lk.url, lk.mint_token(room="r", identity="alice"))
            assert "503" in refused.value.message and "refuse_media" in refused.value.message
        finally:
            await room.disconnect()


@pytest.mark.e2e
@pytest.mark.anyio
async def test_media_setup_delay_holds_back_the_join() -> None:
    async with LiveKitDouble(media_setup_delay=0.5) as lk, _client() as client:
        started = time.monotonic()
        await client.connect(lk, "slow")
        assert time.monotonic() - started >= 0.5
        assert lk.room("slow").participants == 1


def _signal_socket(lk: LiveKitDouble, room: str, identity: str = "raw") -> ws_connect:
    """A raw signal socket of a client allowed into ``room`` (no media)."""
    token = lk.mint_token(room=room, identity=identity)
    headers = {"Authorization": f"Bearer {token}"}
    return ws_connect(f"{lk.url}/rtc?protocol=16", additional_headers=headers)


async def _attached(handle: RoomHandle) -> float:
    """When the double put the client in the room (polled: no event announces it)."""
    while handle.participants == 0:
        await anyio.sleep(0.01)
    return time.monotonic()


@pytest.mark.e2e
@pytest.mark.anyio
async def test_join_answer_delay_puts_the_client_in_the_room_then_holds_its_answer() -> None:
    async with LiveKitDouble(join_answer_delay=0.5) as lk:
        handle = lk.room("held-join")
        with anyio.fail_after(10):
            async with _signal_socket(lk, "held-join") as ws:
                attached = await _attached(handle)
                assert (await _recv(ws)).WhichOneof("message") == "join"
                assert time.monotonic() - attached >= 0.5 - 0.02  # the poll's own slack


@pytest.mark.e2e
@pytest.mark.anyio
async def test_publish_delay_holds_track_published_and_the_room_hears_of_it_at_once() -> None:
    async with LiveKitDouble(publish_delay=0.5) as lk:
        handle = lk.room("held-publish")
        with anyio.fail_after(10):
            async with _signal_socket(lk, "held-publish") as ws:
                assert [(await _recv(ws)).WhichOneof("message") for _ in range(2)] == [
                    "join",
                    "offer",
                ]
                track = proto.AddTrackRequest(cid="cam-1", name="camera", width=320, height=240)
                sent = time.monotonic()
                await ws.send(proto.SignalRequest(add_track=track).SerializeToString())
                with anyio.fail_after(0.4):  # well before the answer
                    await handle.wait_client_publishing()
                published = (await _recv(ws)).track_published
                assert published.cid == "cam-1"
                assert time.monotonic() - sent >= 0.5


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.parametrize("held", ["join", "publish"])
async def test_a_room_loss_drops_a_held_answer(held: str) -> None:
    hold = 30.0  # far beyond the test's bound: the loss must not wait for it
    join_answer_delay, publish_delay = (hold, 0.0) if held == "join" else (0.0, hold)
    async with LiveKitDouble(
        join_answer_delay=join_answer_delay, publish_delay=publish_delay
    ) as lk:
        handle = lk.room("lost-while-held")
        with anyio.fail_after(10):
            async with _signal_socket(lk, "lost-while-held") as ws:
                await _attached(handle)
                if held == "publish":
                    for _ in ("join", "offer"):
                        await _recv(ws)
                    track = proto.AddTrackRequest(cid="cam-1", name="camera")
                    await ws.send(proto.SignalRequest(add_track=track).SerializeToString())
                    await handle.wait_client_publishing()
                await handle.disconnect_participants("room_deleted")
                assert (await _recv(ws)).WhichOneof("message") == "leave"
                await ws.wait_closed()
        assert handle.participants == 0


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_room_that_refuses_joins_answers_503_and_other_rooms_do_not() -> None:
    async with LiveKitDouble() as lk:
        lk.room("refusing").refuses_joins = True
        with anyio.fail_after(10):
            with pytest.raises(InvalidStatus) as refused:
                await _signal_socket(lk, "refusing")
            assert refused.value.response.status_code == 503
            async with _signal_socket(lk, "taking") as ws:
                assert (await _recv(ws)).WhichOneof("message") == "join"


@pytest.mark.e2e
@pytest.mark.anyio
async def test_disconnect_participants_ends_the_client_room() -> None:
    async with LiveKitDouble() as lk:
        handle = lk.room("lost")
        async with _client() as client:
            await client.connect(lk, "lost")
            assert handle.participants == 1
            with anyio.fail_after(10):
                await handle.disconnect_participants("fault")
            assert handle.participants == 0
            with anyio.fail_after(10):
                await client.disconnected.wait()
            assert client.reason == rtc.DisconnectReason.ROOM_DELETED


@pytest.mark.e2e
@pytest.mark.anyio
async def test_fail_media_makes_a_publishing_client_leave_with_media_failure() -> None:
    async with LiveKitDouble() as lk, anyio.create_task_group() as tg:
        handle = lk.room("media")
        async with _client() as client:
            await client.connect(lk, "media")
            tg.start_soon(_feed, await _publish_camera(client.room, _vp8()))
            with anyio.fail_after(15):
                await handle.wait_client_video()
            with anyio.fail_after(10):
                await handle.fail_media()
            assert handle.participants == 0
            with anyio.fail_after(10):
                await client.disconnected.wait()
            assert client.reason == rtc.DisconnectReason.MEDIA_FAILURE
            tg.cancel_scope.cancel()


@pytest.mark.e2e
@pytest.mark.anyio
async def test_connection_quality_is_excellent_once_publishing_then_what_the_room_says() -> None:
    # A LiveKit server sends ConnectionQualityUpdate for the local participant;
    # the client reports it as connection_quality_changed.
    async with LiveKitDouble() as lk:
        handle = lk.room("quality")
        async with _client() as client:
            seen: list[rtc.ConnectionQuality] = []
            changed = anyio.Event()

            def on_quality(participant: rtc.Participant, quality: rtc.ConnectionQuality) -> None:
                if participant.identity == "alice":
                    seen.append(quality)
                    changed.set()

            client.room.on("connection_quality_changed", on_quality)
            await client.connect(lk, "quality")
            await _publish_camera(client.room, _vp8())
            with anyio.fail_after(10):
                await changed.wait()
            assert seen == [rtc.ConnectionQuality.QUALITY_EXCELLENT]
            changed = anyio.Event()
            await handle.set_connection_quality("poor")
            with anyio.fail_after(10):
                await changed.wait()
            assert seen[-1] == rtc.ConnectionQuality.QUALITY_POOR
            assert client.room.local_participant.connection_quality == seen[-1]
            with pytest.raises(ValueError, match="excellent, good, poor, lost"):
                await handle.set_connection_quality("splendid")


def _double_tasks(baseline: set[asyncio.Task[object]]) -> list[asyncio.Task[object]]:
    # The real client's own Python tasks are not the double's business.
    current = asyncio.current_task()
    return [
        t
        for t in asyncio.all_tasks()
        if t not in baseline
        and t is not current
        and "/livekit/rtc/" not in t.get_coro().cr_code.co_filename  # type: ignore[union-attr]
    ]


@pytest.mark.e2e
@pytest.mark.anyio
async def test_aclose_closes_everything_and_leaves_no_task() -> None:
    baseline = set(asyncio.all_tasks())
    lk = LiveKitDouble()
    await lk.start()
    async with _client() as client:
        await client.connect(lk, "closing")
        assert _double_tasks(baseline)
        with anyio.fail_after(15):
            await lk.aclose()
        assert _double_tasks(baseline) == []
        with anyio.fail_after(10):
            await client.disconnected.wait()
        assert client.reason == rtc.DisconnectReason.SERVER_SHUTDOWN
        assert lk.room("closing").participants == 0


# --- the signal protocol without the real client ------------------------------


async def _recv(ws: ClientConnection) -> proto.SignalResponse:
    raw = await ws.recv()
    assert isinstance(raw, bytes)
    return proto.SignalResponse.FromString(raw)


@pytest.mark.e2e
@pytest.mark.anyio
async def test_signal_protocol_by_hand() -> None:
    async with LiveKitDouble() as lk:
        with pytest.raises(InvalidStatus) as not_found:
            await ws_connect(f"{lk.url}/rtc/v1?join_request=x")
        assert not_found.value.response.status_code == 404

        token = lk.mint_token(room="raw", identity="raw-client")
        headers = {"Authorization": f"Bearer {token}"}
        with anyio.fail_after(10):
            async with ws_connect(f"{lk.url}/rtc?protocol=16", additional_headers=headers) as ws:
                join = (await _recv(ws)).join
                model = join.other_participants[0]
                assert join.participant.identity == "raw-client"
                # As a real LiveKit server answers a /rtc client allowed to subscribe and publish.
                assert join.subscriber_primary and join.fast_publish
                assert model.identity == MODEL and model.tracks[0].sid.startswith("TR_")

                offer = (await _recv(ws)).offer
                msid = f"a=msid:{model.sid}|{model.tracks[0].sid} {model.tracks[0].sid}"
                assert msid in offer.sdp
                candidates = [ln for ln in offer.sdp.splitlines() if "a=candidate:" in ln]
                assert candidates and all(" 127.0.0.1 " in ln for ln in candidates)

                ping = proto.SignalRequest(ping_req=proto.Ping(timestamp=1234))
                await ws.send(ping.SerializeToString())
                pong = await _recv(ws)
                assert pong.pong_resp.last_ping_timestamp == 1234

                track = proto.AddTrackRequest(cid="cam-1", name="camera", width=320, height=240)
                await ws.send(proto.SignalRequest(add_track=track).SerializeToString())
                published = (await _recv(ws)).track_published
                assert published.cid == "cam-1" and published.track.sid.startswith("TR_")
                assert lk.room("raw").participants == 1

                leave = proto.SignalRequest(leave=proto.LeaveRequest())
                await ws.send(leave.SerializeToString())
                await ws.wait_closed()
        with anyio.fail_after(10):
            while lk.room("raw").participants:
                await anyio.sleep(0.05)


async def _raw_join(lk: LiveKitDouble, room: str, identity: str) -> ClientConnection:
    """A signal socket joined to ``room`` (no media), once the double sent its offer."""
    token = lk.mint_token(room=room, identity=identity)
    headers = {"Authorization": f"Bearer {token}"}
    with anyio.fail_after(10):
        ws = await ws_connect(f"{lk.url}/rtc?protocol=16", additional_headers=headers)
        assert (await _recv(ws)).WhichOneof("message") == "join"
        assert (await _recv(ws)).WhichOneof("message") == "offer"
    return ws


@pytest.mark.e2e
@pytest.mark.anyio
async def test_rooms_are_forgotten_once_empty_and_not_held() -> None:
    async with LiveKitDouble() as lk:
        held = lk.room("held")  # held: kept, transform and all, until released
        held.set_transform(lambda frame: frame)
        in_held = await _raw_join(lk, "held", "alice")
        joined_only = await _raw_join(lk, "joined-only", "bob")
        assert {room.name for room in lk.rooms} == {"held", "joined-only"}
        assert lk.find_room("joined-only") is not None and held.participants == 1

        with anyio.fail_after(10):
            await lk.disconnect_all("room_deleted")
        for ws in (in_held, joined_only):
            leave = (await _recv(ws)).leave
            assert leave.reason == models.ROOM_DELETED and not leave.can_reconnect
            with anyio.fail_after(10):
                await ws.wait_closed()
        with anyio.fail_after(10):
            while lk.find_room("joined-only") is not None:  # its last session ended
                await anyio.sleep(0.02)
        assert lk.find_room("held") is held and held.participants == 0

        lk.release_room("held")  # no client left: forgotten at once
        assert lk.rooms == () and lk.find_room("held") is None
        assert lk.room("held") is not held  # asking again makes a new one


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_released_room_is_kept_until_its_last_client_left() -> None:
    async with LiveKitDouble() as lk:
        lk.room("busy")
        ws = await _raw_join(lk, "busy", "carol")
        lk.release_room("busy")
        assert lk.find_room("busy") is not None  # carol is still in it
        await ws.send(proto.SignalRequest(leave=proto.LeaveRequest()).SerializeToString())
        with anyio.fail_after(10):
            await ws.wait_closed()
            while lk.rooms:
                await anyio.sleep(0.02)


@pytest.mark.e2e
@pytest.mark.anyio
async def test_room_handle_is_shared_and_defaults_to_no_output() -> None:
    async with LiveKitDouble() as lk:
        handle = lk.room("same")
        assert isinstance(handle, RoomHandle) and handle is lk.room("same")
        assert handle.on_client_frame(np.zeros((4, 4, 3), np.uint8)) is None
        assert handle.client_video_frames == 1


# --- SDP / ICE helpers ------------------------------------------------------------

_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "m=video 9 UDP/TLS/RTP/SAVPF 98 96 97",
        "a=mid:0",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=sendonly",
        "a=rtpmap:98 {first}/90000",
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:97 rtx/90000",
        "a=rid:q send",
        "a=rid:h send",
        "a=simulcast:send q;h",
        "a=candidate:1 1 udp 2122260223 192.0.2.77 50000 typ host",
        "a=candidate:2 1 udp 2122260223 abcd.local 50001 typ host",
        "",
    ]
)


def test_unsupported_codec_detection() -> None:
    assert sdp.unsupported_video_codec(_OFFER.format(first="VP9")) == "VP9"
    assert sdp.unsupported_video_codec(_OFFER.format(first="AV1")) == "AV1"
    assert sdp.unsupported_video_codec(_OFFER.format(first="H264")) is None
    recvonly = _OFFER.format(first="VP9").replace("a=sendonly", "a=recvonly")
    assert sdp.unsupported_video_codec(recvonly) is None


def test_answer_is_patched_for_single_layer_simulcast() -> None:
    answer = "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=recvonly\r\n"
    patched = sdp.patch_publisher_answer(_OFFER.format(first="VP8"), answer)
    assert "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in patched
    assert "a=rid:h recv\r\na=simulcast:recv h\r\n" in patched


def test_only_local_host_candidates_are_used() -> None:
    allowed = frozenset({"127.0.0.1", "192.0.2.5"})
    kept = sdp.filter_candidates(
        _OFFER.format(first="VP8"), lambda line: ice.candidate_is_local(line, allowed)
    )
    assert "a=candidate" not in kept
    host = '{"candidate":"candidate:1 1 udp 2122260223 192.0.2.5 5000 typ host","sdpMid":"0"}'
    candidate = ice.parse_trickle(host, allowed)
    assert candidate is not None and candidate.ip == "192.0.2.5" and candidate.sdpMid == "0"
    for rejected in (
        host.replace("192.0.2.5", "198.51.100.1"),
        host.replace("192.0.2.5", "abcd.local"),
        host.replace("typ host", "typ srflx raddr 0.0.0.0 rport 0"),
        '{"candidate":"","sdpMid":"0"}',
        "not json",
    ):
        assert ice.parse_trickle(rejected, allowed) is None
