"""Local media sources given files users really have (review of issue #14):
truncated WAVs, damaged or tiny videos. Each either plays what it can or fails
with a :class:`LeanJoinError` naming the file, never a library's exception;
and what ``--json`` prints of what they measure. Every wait is bounded."""

from __future__ import annotations

import json
import math
import wave
from pathlib import Path

import anyio
import numpy as np
import pytest
from client_helpers import write_video

from leanjoin.adapters import FileSource, Frame, InvalidArgument, WavSource
from leanjoin.adapters.cli.display import event_json
from leanjoin.adapters.client.observability import OutboundVideoStats, WebRtcStats
from leanjoin.adapters.client.png import encode_png
from leanjoin.engine.client.inputs import AttemptId

WAIT = 10.0


def write_wav(path: Path, frames: int, rate: int = 8_000) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.arange(frames, dtype="<i2").tobytes())
    return path


@pytest.mark.anyio
async def test_a_wav_cut_short_mid_sample_plays_what_it_holds_in_a_loop(tmp_path: Path) -> None:
    # A download cut off: the header promises 400 samples, 250.5 are there.
    # Reading the half sample raised ValueError inside the session (a traceback
    # on stderr, the microphone silent).
    path = write_wav(tmp_path / "cut.wav", 400)
    path.write_bytes(path.read_bytes()[: 44 + 501])
    source = WavSource(path)
    chunks = []
    with anyio.fail_after(WAIT):
        async for chunk in source.frames():
            chunks.append(chunk.samples[:, 0])
            if len(chunks) == 8:  # 80 samples each: the file's 250 loop round
                break
    played = np.concatenate(chunks)
    assert list(played[:250]) == list(range(250))
    assert list(played[250:500]) == list(range(250))


@pytest.mark.parametrize("size", [0, 4, 30])
def test_a_wav_cut_within_its_header_is_refused_saying_so(tmp_path: Path, size: int) -> None:
    path = write_wav(tmp_path / "head.wav", 400)
    path.write_bytes(path.read_bytes()[:size])
    with pytest.raises(InvalidArgument) as refused:
        WavSource(path)
    message = str(refused.value)
    assert "head.wav" in message and "()" not in message, message
    assert "truncated" in message or "empty" in message, message


async def frames_of(source: FileSource) -> list[Frame]:
    with anyio.fail_after(WAIT):
        return [frame async for frame in source.frames()]


@pytest.mark.anyio
async def test_a_video_with_a_damaged_frame_plays_on_past_it(tmp_path: Path) -> None:
    # As players do: the damaged packet is skipped. The decoder's error ended
    # the camera (a traceback on stderr, no more video for the session).
    path = write_video(tmp_path / "scratched.mp4", damaged=range(5, 6))
    played = await frames_of(FileSource(path, loop=False, fps=60))
    assert len(played) == 19 and played[0].shape == (48, 64, 3)


def test_a_video_of_which_nothing_decodes_is_refused_naming_it(tmp_path: Path) -> None:
    path = write_video(tmp_path / "Видео ruined.mp4", damaged=range(20))
    with pytest.raises(InvalidArgument, match=r"no frame of .*Видео ruined\.mp4 could be decoded"):
        FileSource(path)


@pytest.mark.anyio
async def test_a_video_gone_while_it_plays_ends_it_naming_the_file(tmp_path: Path) -> None:
    path = write_video(tmp_path / "moved.mp4")
    source = FileSource(path, fps=60)
    path.unlink()  # the next pass (each reopens the file) finds nothing
    with pytest.raises(InvalidArgument, match=r"no frame of .*moved\.mp4 could be decoded"):
        await frames_of(source)


def test_a_video_smaller_than_16x16_is_refused_with_its_size(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"  # FFmpeg reads a picture as a video of one frame
    path.write_bytes(encode_png(np.zeros((1, 1, 3), dtype=np.uint8)))
    with pytest.raises(InvalidArgument, match=r"dot\.png is 1x1: a video must be at least 16x16"):
        FileSource(path)


def test_every_json_event_line_is_strict_json_even_with_a_non_finite_measurement() -> None:
    # libwebrtc's statistics can hold NaN or an infinity (livekit 1.2.1 chokes on
    # one, BUG-5); json.dumps wrote them as NaN / Infinity, which no strict JSON
    # reader (jq, JSON.parse) takes. An unmeasurable value is null, as a missing one.
    sample = WebRtcStats(
        AttemptId(1),
        12.5,
        OutboundVideoStats(frames_per_second=math.nan, bitrate=math.inf, frame_width=640),
        None,
        round_trip_time=-math.inf,
        available_outgoing_bitrate=1e6,
    )

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    body = json.loads(event_json(sample, 1.0), parse_constant=refuse)
    assert body["outbound_video"]["frames_per_second"] is None
    assert body["outbound_video"]["bitrate"] is None
    assert body["outbound_video"]["frame_width"] == 640
    assert body["round_trip_time"] is None and body["available_outgoing_bitrate"] == 1e6
