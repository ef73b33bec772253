"""The capture-device camera (:class:`Camera`) and the still image, without
LiveKit and without a camera (issue #14).

This machine has no capture device, so the device errors are tested on paths
that are missing or are no capture device, and the reading code itself on an
input PyAV opens without hardware: FFmpeg's ``lavfi`` test source (or, in a
PyAV build without lavfi, a video file). Every wait is bounded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import av
import numpy as np
import pytest
from click.testing import CliRunner

from leanjoin.adapters import (
    Camera,
    CameraError,
    LeanJoinError,
    StillImage,
    VideoSource,
    connect,
    open_camera,
)
from leanjoin.adapters.cli.main import main
from leanjoin.adapters.client.camera import default_device
from leanjoin.adapters.client.errors import InvalidArgument

pytestmark = pytest.mark.anyio

WAIT = 10.0
LINUX_ONLY = pytest.mark.skipif(sys.platform != "linux", reason="v4l2 paths are Linux's")


async def take(frames: AsyncIterator[np.ndarray], count: int) -> list[np.ndarray]:
    taken: list[np.ndarray] = []
    with anyio.fail_after(WAIT):
        async for frame in frames:
            taken.append(frame)
            if len(taken) == count:
                break
    return taken


def capture_input(tmp_path: Path) -> tuple[str, str]:
    """An input PyAV opens like a device: lavfi's moving test source at 30 fps
    (``realtime`` paces it as a camera is paced), else a short video file."""
    if "lavfi" in av.formats_available:
        return "testsrc=size=320x240:rate=30,realtime", "lavfi"
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(30):
            image = np.full((240, 320, 3), (i * 8, 80, 160), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return str(path), "mp4"


# ---- errors: no camera ------------------------------------------------------------------


@LINUX_ONLY
def test_camera_error_for_a_missing_device() -> None:
    with pytest.raises(CameraError) as caught:
        Camera("/dev/video-leanjoin-none", format="v4l2")
    message = str(caught.value)
    assert "/dev/video-leanjoin-none" in message and "no such device" in message
    assert isinstance(caught.value, LeanJoinError)
    assert caught.value.device == "/dev/video-leanjoin-none"


@LINUX_ONLY
@pytest.mark.parametrize("path", ["/dev/null", "regular file"])
def test_camera_error_for_a_path_that_is_no_capture_device(path: str, tmp_path: Path) -> None:
    if path == "regular file":
        path = str(tmp_path / "notes.txt")
        Path(path).write_text("not a camera")
    with pytest.raises(CameraError) as caught:
        Camera(path, format="v4l2")
    assert str(caught.value).startswith(f"{path} is not a video capture device")


def test_camera_error_for_an_input_format_this_ffmpeg_lacks() -> None:
    with pytest.raises(CameraError) as caught:
        Camera("0", format="leanjoin-no-such-format")
    assert "leanjoin-no-such-format" in str(caught.value)


def test_camera_refuses_half_a_size_and_bad_rates() -> None:
    with pytest.raises(InvalidArgument, match="both width and height"):
        Camera("/dev/video0", width=640)
    with pytest.raises(InvalidArgument, match="fps"):
        Camera("/dev/video0", fps=0)
    with pytest.raises(InvalidArgument, match="even"):
        Camera("/dev/video0", width=641, height=480)


def test_default_device_per_platform() -> None:
    assert default_device("linux") == ("/dev/video0", "v4l2")
    assert default_device("darwin") == ("0", "avfoundation")
    with pytest.raises(CameraError, match="video="):
        default_device("win32")  # DirectShow names cameras: no default to guess


# ---- the capture path --------------------------------------------------------------------


async def test_camera_capture_yields_frames_of_the_requested_size(tmp_path: Path) -> None:
    device, form = capture_input(tmp_path)
    with Camera(device, format=form, width=160, height=96, fps=30) as camera:
        assert isinstance(camera, VideoSource)
        assert (camera.width, camera.height, camera.fps) == (160, 96, 30.0)
        frames = await take(camera.frames(), 5)
    assert all(f.shape == (96, 160, 3) and f.dtype == np.uint8 for f in frames)
    assert all(f.flags.c_contiguous for f in frames)
    assert len({f.tobytes() for f in frames}) > 1  # a moving source: real reads, not a copy


async def test_camera_capture_at_the_native_size_and_reading_stays_off_the_loop(
    tmp_path: Path,
) -> None:
    device, form = capture_input(tmp_path)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0)

    with Camera(device, format=form) as camera:
        assert (camera.width, camera.height) == (320, 240)
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            frames = await take(camera.frames(), 10)
            tg.cancel_scope.cancel()
    assert all(f.shape == (240, 320, 3) for f in frames)
    # The loop ran other tasks while frames were read (in a worker thread).
    assert ticks > 10


async def test_open_camera_in_a_worker_thread(tmp_path: Path) -> None:
    device, form = capture_input(tmp_path)
    with await open_camera(device, format=form, width=64, height=48) as camera:
        (frame,) = await take(camera.frames(), 1)
    assert frame.shape == (48, 64, 3)
    missing = str(tmp_path / "no-camera")
    with pytest.raises(CameraError) as caught:  # raised through the thread
        await open_camera(missing, format=form)
    assert caught.value.device == missing and str(caught.value).startswith(missing)


async def test_camera_close_releases_the_device_and_ends_reading(tmp_path: Path) -> None:
    device, form = capture_input(tmp_path)
    camera = Camera(device, format=form)
    await take(camera.frames(), 2)
    camera.close()
    camera.close()  # idempotent
    assert camera.closed
    assert await take(camera.frames(), 1) == []  # a closed camera yields nothing


async def test_connect_refuses_what_is_no_camera_before_opening_anything() -> None:
    with pytest.raises(InvalidArgument, match="LocalVideoTrack, got str"):
        async with connect(
            "ws://127.0.0.1:9/v1/stream",
            api_key="k",
            model="echo",
            camera="/dev/video0",  # type: ignore[arg-type]  # the mistake under test
        ):
            raise AssertionError("must not connect")


# ---- the still image -----------------------------------------------------------------------


async def test_still_image_repeats_its_frame() -> None:
    red = np.full((48, 64, 3), (200, 40, 40), dtype=np.uint8)
    still = StillImage(red, fps=50)
    assert (still.width, still.height, still.fps) == (64, 48, 50.0)
    frames = await take(still.frames(), 3)
    assert all(np.array_equal(f, red) for f in frames)
    with pytest.raises(InvalidArgument):
        StillImage(np.zeros((48, 64), dtype=np.uint8))


# ---- the command line ------------------------------------------------------------------------


def cli(*args: str) -> tuple[int, str]:
    env = {**os.environ, "LEANJOIN_API_KEY": "camera-test-key"}
    result = CliRunner(env=env).invoke(
        main, ["connect", "ws://127.0.0.1:9/v1/stream", "--model", "echo", *args]
    )
    return result.exit_code, result.output


@LINUX_ONLY
def test_cli_connect_camera_without_a_camera_fails_in_one_line() -> None:
    code, output = cli("--camera", "/dev/video-leanjoin-none")
    assert code == 1
    assert output.strip().count("\n") == 0
    assert output.startswith("leanjoin: camera: /dev/video-leanjoin-none")
    if not Path("/dev/video0").exists():  # the default device of Linux
        code, output = cli("--camera")
        assert code == 1 and "/dev/video0" in output and output.strip().count("\n") == 0


def test_cli_connect_camera_and_video_are_exclusive(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    code, output = cli("--camera", "--video", str(video))
    assert code == 2 and "--camera" in output and "--video" in output
    code, output = cli("--camera-format", "lavfi")
    assert code == 2 and "give --camera too" in output


def test_cli_connect_camera_format_names_the_input() -> None:
    code, output = cli("--camera=0", "--camera-format", "leanjoin-no-such-format")
    assert code == 1 and output.strip().count("\n") == 0
    assert "leanjoin-no-such-format" in output
