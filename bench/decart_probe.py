"""One realtime connect of the published ``decart`` client (0.2.4), timed.

Runs in the benchmark's separate venv (``.venv-bench-decart``, made by
``bench/bench_first_frame.py``), never in the project's: it imports ``decart``
and ``livekit`` only, not leanjoin. It reads its job as one JSON object on
stdin (so the api key stays off the command line)::

    {"base_url": "ws://127.0.0.1:PORT", "api_key": "...", "model": "lucy-2.5",
     "image": "/path/to.png" or null, "prompt": "...",
     "top": [r, g, b], "bottom": [r, g, b] or null, "tolerance": 24,
     "timeout": 60, "width": 640, "height": 360, "fps": 30}

publishes a synthetic camera (a moving colour ramp) as a ``livekit.rtc``
track, connects with ``RealtimeClient.connect`` the way a user would, decodes
the model's output and writes one JSON object to stdout::

    {"connected": s, "first_frame": s, "first_styled": s, "error": null, ...}

Times are seconds from just before ``RealtimeClient.connect`` (whose cost of
base64-encoding the image is included, as it is for leanjoin's ``connect``).
``connected``: ``connect`` returned (room joined, camera published: decart
returns only then). ``first_styled``: the first decoded output frame whose top
band is the prompt colour and whose bottom band (when ``bottom`` is given) is
the reference image's mean colour, within ``tolerance`` per channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from decart.models import models
from decart.realtime.client import RealtimeClient
from decart.realtime.types import RealtimeConnectOptions
from decart.types import ModelState, Prompt
from livekit import rtc

Colour = tuple[int, int, int]
Frame = npt.NDArray[np.uint8]


def band_colours(frame: Frame) -> tuple[Colour, Colour]:
    """Median colours of the top and bottom quarter (as leanjoin's demo measures)."""
    band = frame.shape[0] // 4

    def median(region: Frame) -> Colour:
        r, g, b = (int(v) for v in np.median(region.reshape(-1, 3), axis=0))
        return (r, g, b)

    return median(frame[:band]), median(frame[frame.shape[0] - band :])


def colour(value: list[int]) -> Colour:
    r, g, b = (int(v) for v in value)
    return (r, g, b)


def close(a: Colour, b: Colour, tolerance: int) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= tolerance


def to_array(frame: rtc.VideoFrame) -> Frame:
    data = np.frombuffer(frame.data, dtype=np.uint8)
    row = len(data) // frame.height  # >= width * 3 when rows are padded
    rows = data[: row * frame.height].reshape(frame.height, row)
    out: Frame = rows[:, : frame.width * 3].reshape(frame.height, frame.width, 3).copy()
    return out


def camera_frame(base: Frame, index: int) -> Frame:
    """A colour ramp with a sweeping bar (like leanjoin's TestPattern)."""
    frame = base.copy()
    width = frame.shape[1]
    bar = max(2, width // 32)
    x = (index * max(1, width // 90)) % (width - bar)
    frame[:, x : x + bar, :] = (223, 223, 223)
    return frame


async def pump_camera(source: rtc.VideoSource, width: int, height: int, fps: float) -> None:
    base = np.empty((height, width, 3), dtype=np.uint8)
    base[:, :, 0] = np.linspace(32, 223, width, dtype=np.float32)[None, :].astype(np.uint8)
    base[:, :, 1] = np.linspace(32, 223, height, dtype=np.float32)[:, None].astype(np.uint8)
    base[:, :, 2] = 128
    loop = asyncio.get_running_loop()
    start = loop.time()
    index = 0
    while True:
        frame = camera_frame(base, index)
        video = rtc.VideoFrame(width, height, rtc.VideoBufferType.RGB24, frame.tobytes())
        source.capture_frame(video, timestamp_us=int(loop.time() * 1_000_000))
        index += 1
        await asyncio.sleep(max(0.0, start + index / fps - loop.time()))


class Watcher:
    """Reads the model's output track and notes when the bands show the state."""

    def __init__(self, top: Colour, bottom: Colour | None, tolerance: int, t0: float) -> None:
        self.top = top
        self.bottom = bottom
        self.tolerance = tolerance
        self.t0 = t0
        self.first_frame: float | None = None
        self.first_styled: float | None = None
        self.frames = 0
        self.last_bands: tuple[Colour, Colour] | None = None
        self.styled = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    def on_remote_stream(self, track: rtc.RemoteVideoTrack) -> None:
        task = asyncio.get_running_loop().create_task(self._read(track))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _read(self, track: rtc.RemoteVideoTrack) -> None:
        stream = rtc.VideoStream(track, format=rtc.VideoBufferType.RGB24, capacity=2)
        loop = asyncio.get_running_loop()
        try:
            async for event in stream:
                now = loop.time() - self.t0
                self.frames += 1
                if self.first_frame is None:
                    self.first_frame = now
                top, bottom = self.last_bands = band_colours(to_array(event.frame))
                if (
                    self.first_styled is None
                    and close(top, self.top, self.tolerance)
                    and (self.bottom is None or close(bottom, self.bottom, self.tolerance))
                ):
                    self.first_styled = now
                    self.styled.set()
        finally:
            await stream.aclose()


async def probe(job: dict[str, Any]) -> dict[str, Any]:
    width, height, fps = int(job["width"]), int(job["height"]), float(job["fps"])
    image = Path(job["image"]).read_bytes() if job.get("image") else None
    top = colour(job["top"])
    bottom = colour(job["bottom"]) if job.get("bottom") else None
    result: dict[str, Any] = {
        "connected": None,
        "first_frame": None,
        "first_styled": None,
        "error": None,
        "image_bytes": 0 if image is None else len(image),
    }

    source = rtc.VideoSource(width, height)
    track = rtc.LocalVideoTrack.create_video_track("camera", source)
    camera = asyncio.create_task(pump_camera(source, width, height, fps))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    watcher = Watcher(top, bottom, int(job["tolerance"]), t0)
    options = RealtimeConnectOptions(
        model=models.realtime(job["model"]),
        on_remote_stream=watcher.on_remote_stream,
        initial_state=ModelState(prompt=Prompt(text=job["prompt"]), image=image),
    )
    client: RealtimeClient | None = None
    try:
        async with asyncio.timeout(float(job["timeout"])):
            client = await RealtimeClient.connect(
                base_url=job["base_url"], api_key=job["api_key"], local_track=track, options=options
            )
            result["connected"] = loop.time() - t0
            await watcher.styled.wait()
    except TimeoutError:
        result["error"] = f"timed out after {job['timeout']} s"
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        result["first_frame"] = watcher.first_frame
        result["first_styled"] = watcher.first_styled
        result["frames"] = watcher.frames
        result["last_bands"] = watcher.last_bands
        if client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await client.disconnect()
        for task in (camera, *watcher.tasks):
            task.cancel()
        await asyncio.gather(camera, *watcher.tasks, return_exceptions=True)
        await source.aclose()
    return result


def main() -> None:
    job = json.loads(sys.stdin.read())
    result = asyncio.run(probe(job))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
