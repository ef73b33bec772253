"""Local video for the room: what the client publishes as its "camera".

A source yields HxWx3 uint8 RGB frames at its own pace. The kinds here:

* :class:`TestPattern`: a synthetic moving pattern, deterministic per frame index;
* :class:`StillImage`: one picture, repeated;
* :class:`ArraySource`: frames the application pushes from numpy arrays;
* :class:`FileSource`: frames decoded from a video file with PyAV (looped).

A capture device is :class:`~.camera.Camera`, in a module of its own.

None of them knows about LiveKit; the room adapter converts frames.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Generator
from fractions import Fraction
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio
import anyio.to_thread
import av
import numpy as np
import numpy.typing as npt

from leanjoin.engine.errors import InvalidArgument

Frame = npt.NDArray[np.uint8]


@runtime_checkable
class VideoSource(Protocol):
    """Something that yields RGB frames; ``width``/``height`` are the nominal size."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def fps(self) -> float: ...

    def frames(self) -> AsyncIterator[Frame]: ...


def _check_size(width: int, height: int) -> None:
    # Even sizes: the encoders work on 2x2 chroma blocks.
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise InvalidArgument(f"frame size must be even and at least 16x16, got {width}x{height}")


def _check_fps(fps: float) -> None:
    if not (0 < fps <= 120):
        raise InvalidArgument(f"fps must be in (0, 120], got {fps}")


def _check_frame(frame: npt.NDArray[np.generic]) -> Frame:
    arr = np.asarray(frame)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidArgument(f"expected an HxWx3 uint8 RGB frame, got {arr.shape} {arr.dtype}")
    return np.ascontiguousarray(arr)


async def _paced(fps: float) -> AsyncIterator[int]:
    """Frame indices at ``fps``; a late consumer skips ticks instead of bursting."""
    period = 1.0 / fps
    start = anyio.current_time()
    index = 0
    while True:
        yield index
        now = anyio.current_time()
        index = max(index + 1, math.floor((now - start) / period))
        await anyio.sleep(max(0.0, start + index * period - now))


class _Geometry:
    """Frame size and rate: what every source reports to the publisher."""

    _width: int
    _height: int
    _fps: float

    @property
    def width(self) -> int:
        return self._width

    @property
    def height(self) -> int:
        return self._height

    @property
    def fps(self) -> float:
        return self._fps


class TestPattern(_Geometry):
    """A moving test pattern: colour ramps, a sweeping bar and a ticking block.

    Every frame is a pure function of its index (:meth:`frame_at`), so a test can
    rebuild what was sent. Colours stay in 32..223 so coding noise is small.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, width: int = 640, height: int = 360, fps: float = 30.0) -> None:
        _check_size(width, height)
        _check_fps(fps)
        self._width = width
        self._height = height
        self._fps = float(fps)
        xs = np.linspace(32, 223, width, dtype=np.float32)
        ys = np.linspace(32, 223, height, dtype=np.float32)
        self._base = np.empty((height, width, 3), dtype=np.uint8)
        self._base[:, :, 0] = xs[None, :].astype(np.uint8)
        self._base[:, :, 1] = ys[:, None].astype(np.uint8)
        self._base[:, :, 2] = 128

    def frame_at(self, index: int) -> Frame:
        frame = self._base.copy()
        bar = max(2, self._width // 32)
        x = (index * max(1, self._width // 90)) % (self._width - bar)
        frame[:, x : x + bar, :] = (223, 223, 223)
        # A block that changes colour every second: motion even for a still eye.
        side = max(8, self._height // 6)
        second = int(index // self._fps)
        frame[-side - 8 : -8, 8 : 8 + side, :] = (223, 32, 32) if second % 2 else (32, 32, 223)
        return frame

    async def frames(self) -> AsyncIterator[Frame]:
        async for index in _paced(self._fps):
            yield self.frame_at(index)


class StillImage(_Geometry):
    """One HxWx3 uint8 RGB picture, sent again ``fps`` times a second: a
    camera that shows a fixed scene (the encoder keeps a steady stream)."""

    def __init__(self, image: npt.NDArray[np.generic], fps: float = 10.0) -> None:
        self._frame = _check_frame(image)
        self._height, self._width = self._frame.shape[:2]
        _check_size(self._width, self._height)
        _check_fps(fps)
        self._fps = float(fps)

    async def frames(self) -> AsyncIterator[Frame]:
        async for _ in _paced(self._fps):
            yield self._frame


class ArraySource(_Geometry):
    """Frames pushed by the application (``push``), newest wins.

    The iterator yields each pushed frame once; a consumer slower than the
    producer sees only the latest, which is what a live camera should do.
    """

    def __init__(self, width: int, height: int, fps: float = 30.0) -> None:
        _check_size(width, height)
        self._width = width
        self._height = height
        self._fps = float(fps)
        self._latest: Frame | None = None
        self._wakeup = anyio.Event()
        self._closed = False

    def push(self, frame: npt.NDArray[np.generic]) -> None:
        """Offer a frame (HxWx3 uint8 RGB); it replaces one not yet consumed."""
        self._latest = _check_frame(frame)
        self._wakeup.set()

    def close(self) -> None:
        """End the iteration (the published track goes quiet)."""
        self._closed = True
        self._wakeup.set()

    async def frames(self) -> AsyncIterator[Frame]:
        while not self._closed:
            if self._latest is None:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
                continue
            frame, self._latest = self._latest, None
            yield frame


class FileSource(_Geometry):
    """Frames of a video file, decoded by PyAV in a worker thread, looped.

    Decoding stays off the event loop: a long GOP must not stall signaling.
    """

    def __init__(self, path: str | Path, *, loop: bool = True, fps: float | None = None) -> None:
        self._path = Path(path)
        try:
            with av.open(str(self._path)) as container:
                stream = container.streams.video[0]
                width, height = int(stream.width), int(stream.height)
                rate = stream.average_rate or stream.guessed_rate
        except (av.error.FFmpegError, IndexError) as exc:
            raise InvalidArgument(f"no decodable video stream in {self._path}") from exc
        if not (width and height):  # FFmpeg learns the size by decoding a frame
            raise InvalidArgument(f"no frame of {self._path} could be decoded")
        if width < 16 or height < 16:
            raise InvalidArgument(
                f"{self._path} is {width}x{height}: a video must be at least 16x16"
            )
        # Odd sizes are cropped by one pixel: encoders need even dimensions.
        self._width, self._height = width - width % 2, height - height % 2
        native = float(Fraction(rate)) if rate else 30.0
        self._fps = float(fps) if fps is not None else min(60.0, max(1.0, native))
        self._loop = loop

    def _decode(self) -> Generator[Frame, None, None]:
        while True:
            produced = False
            damaged: av.error.FFmpegError | None = None
            try:
                with av.open(str(self._path)) as container:
                    for packet in container.demux(video=0):
                        try:
                            decoded = packet.decode()
                        except av.error.FFmpegError as exc:
                            damaged = exc  # a damaged frame is skipped, as players do
                            continue
                        for frame in decoded:
                            rgb = frame.to_ndarray(format="rgb24")
                            produced = True
                            yield np.ascontiguousarray(rgb[: self._height, : self._width])
            except av.error.FFmpegError as exc:  # gone or damaged since it was opened
                damaged = exc
            if not produced and damaged is not None:
                why = damaged.strerror or type(damaged).__name__
                raise InvalidArgument(f"no frame of {self._path} could be decoded ({why})")
            if not (self._loop and produced):
                return

    async def frames(self) -> AsyncIterator[Frame]:
        decoder = self._decode()
        try:
            async for _ in _paced(self._fps):
                frame = await anyio.to_thread.run_sync(next, decoder, None)
                if frame is None:
                    return
                yield frame
        finally:
            # Closing runs the generator's `with` exit: the container is released.
            # Done inline: the generator is suspended, so this is quick, and it
            # must also happen when this iterator is being cancelled.
            decoder.close()
