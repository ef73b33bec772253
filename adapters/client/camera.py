"""A capture device as a :class:`~.video_sources.VideoSource`, read with PyAV.

FFmpeg's input devices do the capturing: ``v4l2`` on Linux, ``avfoundation``
on macOS, ``dshow`` on Windows (any other input format PyAV knows may be
named, FFmpeg's ``lavfi`` test sources among them). The device is opened when
the :class:`Camera` is made, so a missing or wrong device is a
:class:`~.errors.CameraError` at once, naming it; it stays open until
:meth:`Camera.close`. Each blocking read runs in a worker thread.

Who closes what: leanjoin never closes a source it was given. It stops
reading a camera when the session ends or the camera is replaced; the device
is released by ``close()`` (or leaving ``with Camera(...)``), which the owner
calls once the camera is no longer published.
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from fractions import Fraction
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar

import anyio
import anyio.to_thread
import av
import numpy as np

from .errors import CameraError, InvalidArgument
from .video_sources import Frame, _check_fps, _check_size, _Geometry

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Each platform's capture input and the device it opens when none is named.
_PLATFORM_INPUTS: Final[Mapping[str, tuple[str | None, str]]] = {
    "linux": ("/dev/video0", "v4l2"),
    "darwin": ("0", "avfoundation"),  # the first video device
    "win32": (None, "dshow"),  # DirectShow opens cameras by name only
}
# Inputs that take FFmpeg's capture options ``video_size`` and ``framerate``.
_CAPTURE_FORMATS: Final = frozenset({"v4l2", "video4linux2", "avfoundation", "dshow"})
_NOT_A_DEVICE: Final = frozenset(
    {errno.ENOTTY, errno.ENODEV, errno.ENXIO, errno.EISDIR, errno.EINVAL, errno.ENOTDIR}
)
# Failures that no other size or rate can mend (EINVAL can: avfoundation's refusal).
_NO_RETRY: Final = (_NOT_A_DEVICE - {errno.EINVAL}) | {
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.EBUSY,
}


def default_device(platform: str = sys.platform) -> tuple[str, str]:
    """The device and input format a :class:`Camera` opens when none is named."""
    device, form = _PLATFORM_INPUTS.get(platform, _PLATFORM_INPUTS["linux"])
    if device is None:
        raise CameraError(
            "",
            f"no default camera on {platform}: name one, as DirectShow does "
            "('video=<camera name>', listed by `ffmpeg -list_devices true -f dshow -i dummy`)",
        )
    return device, form


def _open_error(device: str, form: str, exc: av.error.FFmpegError) -> CameraError:
    """What went wrong opening ``device``, in words (never the options given)."""
    code = exc.errno
    why = exc.strerror or str(exc)
    if code == errno.ENOENT:
        return CameraError(device, f"{device}: no such device (no camera there)")
    if code in (errno.EACCES, errno.EPERM):
        return CameraError(device, f"{device}: permission denied (on Linux: the video group)")
    if code == errno.EBUSY:
        return CameraError(device, f"{device}: the device is busy (in use by another program)")
    if code in _NOT_A_DEVICE:
        return CameraError(device, f"{device} is not a video capture device ({form}: {why})")
    return CameraError(device, f"{device}: cannot open it as a {form} camera: {why}")


def _open_input(device: str, form: str, options: Mapping[str, str]) -> Any:
    try:
        return av.open(device, format=form, options=dict(options))
    except ValueError as exc:
        if isinstance(exc, av.error.FFmpegError):
            raise
        # PyAV's own refusal: FFmpeg has no such input format.
        raise CameraError(
            device, f"{device}: this FFmpeg (PyAV {av.__version__}) has no {form!r} input"
        ) from None


class Camera(_Geometry):
    """A capture device: HxWx3 uint8 RGB frames as the device delivers them.

    ``device``: a path (``/dev/video0``), an index (macOS: ``"0"``) or a name
    (Windows: ``"video=<name>"``); None opens the platform's default. ``width``
    and ``height`` (both or neither) and ``fps`` are asked of the device; frames
    of another size are scaled to the size asked for, so every frame has the
    camera's ``width`` x ``height``. ``format`` is the FFmpeg input (default:
    the platform's); ``options`` are more FFmpeg input options (for example
    ``{"input_format": "mjpeg"}``). Raises :class:`CameraError` when the device
    cannot be opened, :class:`InvalidArgument` for a bad size or rate.
    """

    def __init__(
        self,
        device: str | None = None,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        format: str | None = None,
        options: Mapping[str, str] | None = None,
    ) -> None:
        if (width is None) != (height is None):
            raise InvalidArgument("give both width and height of the camera, or neither")
        if width is not None and height is not None:
            _check_size(width, height)
        if fps is not None:
            _check_fps(fps)
        if format is None:
            format = _PLATFORM_INPUTS.get(sys.platform, _PLATFORM_INPUTS["linux"])[1]
        if device is None:
            device = default_device()[0]
        self.device = device
        self._format = format
        self._container = self._open(device, format, width, height, fps, options or {})
        stream = self._container.streams.video[0]
        native = stream.average_rate or stream.guessed_rate
        self._fps = float(fps) if fps is not None else float(Fraction(native)) if native else 30.0
        if width is None or height is None:
            # Odd sizes lose a pixel: encoders need even dimensions.
            width, height = int(stream.width) // 2 * 2, int(stream.height) // 2 * 2
        self._width, self._height = width, height
        self._packets: Iterator[Any] = self._container.demux(stream)
        self._decoded: collections.deque[av.VideoFrame] = collections.deque()
        # Held by the read in progress: close() never releases the device under it.
        self._lock = threading.Lock()
        self._closing = False

    def __repr__(self) -> str:
        return (
            f"Camera(device={self.device!r}, format={self._format!r}, "
            f"{self._width}x{self._height} @ {self._fps:g} fps)"
        )

    @staticmethod
    def _open(
        device: str,
        form: str,
        width: int | None,
        height: int | None,
        fps: float | None,
        extra: Mapping[str, str],
    ) -> Any:
        asked: dict[str, str] = {}  # of the device; dropped if it refuses them
        if form in _CAPTURE_FORMATS:
            if width is not None:
                asked["video_size"] = f"{width}x{height}"
            if fps is not None:
                asked["framerate"] = f"{fps:g}"
            elif form == "avfoundation":
                asked["framerate"] = "30"  # its default, 29.97, most Mac cameras refuse
        try:
            container = _open_input(device, form, {**asked, **extra})
        except av.error.FFmpegError as exc:
            if not asked or exc.errno in _NO_RETRY:
                raise _open_error(device, form, exc) from None
            # avfoundation and dshow refuse a size or rate the device lacks (v4l2
            # takes the nearest): open it as it is; frames are scaled to the size asked.
            log.info("%s refused %s (%s); opening it as it is", device, asked, exc.strerror)
            try:
                container = _open_input(device, form, dict(extra))
            except av.error.FFmpegError:
                raise _open_error(device, form, exc) from None
        if not container.streams.video:
            container.close()
            raise CameraError(device, f"{device} has no video stream ({form})")
        return container

    # ---- reading (in a worker thread) ------------------------------------------------

    def _read(self) -> Frame | None:
        """The next frame, or None once the camera is closed or its input ended."""
        with self._lock:
            try:
                if self._closing:
                    return None
                frame = self._next_frame()
                if frame is None:
                    return None
                rgb = frame.to_ndarray(format="rgb24", width=self._width, height=self._height)
                return np.ascontiguousarray(rgb)
            except av.error.FFmpegError as exc:
                why = exc.strerror or str(exc)
                raise CameraError(self.device, f"{self.device}: reading failed: {why}") from None
            finally:
                if self._closing:  # close() came during this read: release now
                    self._release()

    def _next_frame(self) -> av.VideoFrame | None:
        while not self._decoded:
            try:
                packet = next(self._packets)
            except StopIteration:
                return None
            except BlockingIOError:
                # An input opened non-blocking has no frame yet; its demuxer ended.
                stream = self._container.streams.video[0]
                self._packets = self._container.demux(stream)
                time.sleep(0.005)
                continue
            self._decoded.extend(f for f in packet.decode() if isinstance(f, av.VideoFrame))
        return self._decoded.popleft()

    async def frames(self) -> AsyncIterator[Frame]:
        # abandon_on_cancel: a stalled device must not hold up the session's end;
        # the abandoned read finishes on its own and close() waits for nothing.
        while True:
            frame = await anyio.to_thread.run_sync(self._read, abandon_on_cancel=True)
            if frame is None:
                return
            yield frame

    # ---- releasing the device ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Release the device (idempotent). A read in progress releases it when
        it returns; the frames iterators end."""
        self._closing = True
        if self._lock.acquire(blocking=False):
            try:
                self._release()
            finally:
                self._lock.release()

    def _release(self) -> None:
        if self._container is not None:
            self._decoded.clear()
            self._container.close()
            self._container = None

    def __enter__(self) -> Camera:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _in_worker_thread(make: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    async def made(*args: P.args, **kwargs: P.kwargs) -> T:
        return await anyio.to_thread.run_sync(functools.partial(make, *args, **kwargs))

    return made


open_camera = _in_worker_thread(Camera)
"""``await open_camera(...)``: a :class:`Camera` (same arguments) opened in a worker
thread: opening a device can take a second (macOS), which the loop should not wait out."""
