"""Local media sources given files users really have (review of issue #14):
truncated WAVs, damaged or tiny videos. Each either plays what it can or fails
with a :class:`LeanJoinError` naming the file, never a library's exception.
Every wait is bounded."""

from __future__ import annotations

import wave
from pathlib import Path

import anyio
import numpy as np
import pytest

from leanjoin.adapters import InvalidArgument, WavSource

WAIT = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the client's backend (websockets, livekit.rtc)


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
