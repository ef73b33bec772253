"""``leanjoin demo``: the whole stack on one machine, checked on decoded pixels.

It starts the reference server in-process (with its LiveKit double), connects
with the synthetic camera, a reference image and a prompt, waits until the
model's output shows both, changes the prompt once and waits until the output
follows it. The echo model paints the top quarter in ``prompt_colour(prompt)``
and the bottom quarter in the reference's mean colour, so "follows" is a check
on real decoded frames, not on acks. It prints the phase timeline and writes a
PNG contact sheet of input and output frames.

Every wait is bounded; a failed step raises :class:`DemoFailed` with one line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

import anyio
import anyio.to_thread
import attrs
import numpy as np

from leanjoin.adapters.client.api import Session, connect
from leanjoin.adapters.client.errors import LeanJoinError
from leanjoin.adapters.client.observability import SessionEvent
from leanjoin.adapters.client.png import encode_png, write_png
from leanjoin.adapters.client.room_transport import MediaOptions
from leanjoin.adapters.client.video_sources import Frame, TestPattern
from leanjoin.adapters.server.echo_model import (
    Colour,
    colours_close,
    mean_colour,
    output_bands,
    prompt_colour,
)
from leanjoin.adapters.server.reference import ReferenceServer
from leanjoin.engine.client.outputs import ErrorOccurred, GenerationTicked, InitialStateAcked
from leanjoin.engine.server.knobs import ServerKnobs

FIRST_PROMPT: Final = "a lighthouse at dusk, watercolour"
SECOND_PROMPT: Final = "the same lighthouse in a snowstorm"
STEP_TIMEOUT: Final = 20.0
# Colour distance still counted as "the same" after two rounds of lossy video coding.
TOLERANCE: Final = 24


class DemoFailed(Exception):
    """A demo step failed; ``str()`` is the one-line reason."""


@attrs.frozen
class Step:
    at: float  # seconds since the demo started
    name: str


@attrs.define
class DemoResult:
    steps: list[Step]
    sheet: Path
    session_id: str
    errors: list[str]
    checks: list[str]


def reference_image(size: int = 96) -> Frame:
    """A warm diagonal gradient: its mean colour is what the bottom band shows."""
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float64)
    mix = (ramp[:, None] + ramp[None, :]) / 2
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:, :, 0] = (170 + 50 * mix).astype(np.uint8)
    image[:, :, 1] = (90 + 40 * mix).astype(np.uint8)
    image[:, :, 2] = (40 + 30 * mix).astype(np.uint8)
    return image


def _check(frame: Frame, prompt: str, reference: Frame) -> str:
    top, bottom = output_bands(frame)
    return (
        f"prompt {prompt!r}: top band {top} ~ expected {prompt_colour(prompt)}; "
        f"reference: bottom band {bottom} ~ expected {mean_colour(reference)}"
    )


async def _frame_showing(session: Session, top: Colour, bottom: Colour, what: str) -> Frame:
    last: tuple[Colour, Colour] | None = None
    try:
        with anyio.fail_after(STEP_TIMEOUT):
            async for frame in session.frames():
                last = output_bands(frame)
                if colours_close(last[0], top, TOLERANCE) and colours_close(
                    last[1], bottom, TOLERANCE
                ):
                    return frame
    except TimeoutError:
        pass
    seen = f"; last output bands were {last[0]} / {last[1]}" if last else "; no output frame"
    raise DemoFailed(
        f"the output never showed {what} within {STEP_TIMEOUT:g} s "
        f"(expected top {top}, bottom {bottom}{seen})"
    )


def contact_sheet(columns: list[tuple[Frame, Frame, Colour]], gap: int = 6) -> Frame:
    """Inputs on the first row, outputs on the second, each output above a swatch
    of the prompt colour it should show; grey gaps in between."""
    height, width = columns[0][1].shape[:2]
    swatch = max(8, height // 10)
    rows = height * 2 + swatch + gap * 4
    sheet = np.full((rows, gap + len(columns) * (width + gap), 3), 48, dtype=np.uint8)
    for index, (camera, output, colour) in enumerate(columns):
        x = gap + index * (width + gap)
        sheet[gap : gap + height, x : x + width] = _fit(camera, height, width)
        y = gap * 2 + height
        sheet[y : y + height, x : x + width] = _fit(output, height, width)
        y += height + gap
        sheet[y : y + swatch, x : x + width] = colour
    return sheet


def _fit(frame: Frame, height: int, width: int) -> Frame:
    """Crop or pad to height x width (the camera and the output may differ)."""
    out = np.zeros((height, width, 3), dtype=np.uint8)
    h, w = min(height, frame.shape[0]), min(width, frame.shape[1])
    out[:h, :w] = frame[:h, :w]
    return out


async def run_demo(
    *,
    out: Path,
    codec: str = "h264",
    first_prompt: str = FIRST_PROMPT,
    second_prompt: str = SECOND_PROMPT,
    on_step: Callable[[Step], None] | None = None,
) -> DemoResult:
    """Run the demo; returns its steps and the contact sheet's path."""
    start = anyio.current_time()
    steps: list[Step] = []
    errors: list[str] = []
    checks: list[str] = []

    def step(name: str, at: float | None = None) -> None:
        entry = Step((anyio.current_time() if at is None else at) - start, name)
        steps.append(entry)
        if on_step is not None:
            on_step(entry)

    acked = anyio.Event()
    ticked = anyio.Event()

    def watch(event: SessionEvent) -> None:
        if isinstance(event, InitialStateAcked):
            acked.set()
        elif isinstance(event, GenerationTicked):
            ticked.set()
        elif isinstance(event, ErrorOccurred):
            errors.append(f"{event.kind.value}: {event.message}")

    reference = reference_image()
    camera = TestPattern(320, 240, fps=30)
    async with ReferenceServer(
        host="127.0.0.1", port=0, api_key=None, knobs=ServerKnobs()
    ) as server:
        step("reference server listening")
        try:
            async with connect(
                server.url,
                api_key=server.api_key,
                model="echo",
                image=encode_png(reference),
                prompt=first_prompt,
                camera=camera,
                media=MediaOptions(codec="vp8" if codec == "vp8" else "h264"),
                on_event=watch,
            ) as session:
                session_id = session.session_id or "?"
                first = await _frame_showing(
                    session, prompt_colour(first_prompt), mean_colour(reference), "the first prompt"
                )
                first_input = session.input_frame
                step("output shows prompt 1 and the reference")
                checks.append(_check(first, first_prompt, reference))
                try:
                    with anyio.fail_after(STEP_TIMEOUT):
                        await acked.wait()
                        await ticked.wait()
                except TimeoutError:
                    raise DemoFailed("no initial-state ack or no generation tick") from None
                step("generating (first billing tick)")
                step("prompt 2 sent")
                with anyio.fail_after(STEP_TIMEOUT):
                    await session.set_prompt(second_prompt)
                step("prompt 2 acknowledged")
                second = await _frame_showing(
                    session, prompt_colour(second_prompt), mean_colour(reference), "the new prompt"
                )
                second_input = session.input_frame
                step("output follows prompt 2")
                checks.append(_check(second, second_prompt, reference))
                for milestone in session.timeline:
                    if milestone.attempt == 1:
                        steps.append(Step(milestone.at - start, milestone.name))
        except LeanJoinError as exc:
            raise DemoFailed(str(exc)) from exc
        except TimeoutError:
            raise DemoFailed(f"a step took longer than {STEP_TIMEOUT:g} s") from None
    step("disconnected, server stopped")
    assert first_input is not None and second_input is not None
    sheet = contact_sheet(
        [
            (first_input, first, prompt_colour(first_prompt)),
            (second_input, second, prompt_colour(second_prompt)),
        ]
    )
    path = await anyio.to_thread.run_sync(write_png, out, sheet)
    steps.sort(key=lambda s: s.at)
    return DemoResult(steps, path, session_id, errors, checks)
