"""Audio (issue #14): the client publishes a microphone track and receives the
model's audio; the reference server's LiveKit double echoes the client's audio
back as the model participant's audio track.

Checked on decoded samples: the dominant frequency of what comes back (FFT),
and that it is not silence. Every wait is bounded; no speed is asserted.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from click.testing import CliRunner, Result
from client_helpers import LEANJOIN, WAIT, served, server_idle, session_args, until

from leanjoin.adapters import (
    AudioFrame,
    Event,
    InvalidArgument,
    LeanJoinError,
    Microphone,
    MicrophoneUnavailable,
    Session,
    SessionStarted,
    Tone,
    Viewer,
    WavSource,
    connect,
    watch,
    watch_room,
)
from leanjoin.adapters.cli.main import main
from leanjoin.adapters.server.reference import ReferenceServer

pytestmark = [pytest.mark.anyio, pytest.mark.livekit]

# Enough of the echo for a clean FFT: 0.5 s at 48 kHz gives 2 Hz bins.
ANALYSED_SAMPLES = 24_000


def dominant_frequency(samples: np.ndarray[Any, Any], sample_rate: int) -> float:
    mono = samples.astype(np.float64).mean(axis=1)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    spectrum[0] = 0.0  # the DC offset is no tone
    return float(np.fft.rfftfreq(len(mono), 1 / sample_rate)[int(np.argmax(spectrum))])


def rms(samples: np.ndarray[Any, Any]) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def first_sound(samples: np.ndarray[Any, Any], count: int) -> np.ndarray[Any, Any]:
    """``count`` samples from the first 10 ms chunk that is not silence."""
    chunks = len(samples) // 480
    loud = [i for i in range(chunks) if rms(samples[i * 480 : (i + 1) * 480]) > 300]
    assert loud, "nothing but silence"
    start = loud[0] * 480
    assert len(samples) - start >= count, f"only {len(samples) - start} samples after the silence"
    return samples[start : start + count]


async def received_audio(session: Session | Viewer, count: int) -> np.ndarray[Any, Any]:
    """The next ``count`` samples of the model's audio that are not silence
    (the echo starts once the renegotiated track flows)."""
    kept: list[AudioFrame] = []
    with anyio.fail_after(WAIT):
        async for frame in session.audio_frames():
            assert frame.sample_rate == 48_000 and frame.channels == 1
            if kept or rms(frame.samples) > 300:
                kept.append(frame)
            if sum(len(f.samples) for f in kept) >= count:
                return np.concatenate([f.samples for f in kept])[:count]
    raise AssertionError("the session ended before enough of the model's audio arrived")


# ---- the round trip ------------------------------------------------------------------


async def test_model_audio_echoes_published_tone(server: ReferenceServer) -> None:
    async with connect(server.url, audio=Tone(440), **session_args(server)) as session:
        samples = await received_audio(session, ANALYSED_SAMPLES)
        room = server.livekit.rooms[0]
        assert room.client_track_kinds == ("video", "audio")
        assert room.client_audio_frames > 0
        # The camera's publication is reported before the microphone is published.
        steps = [m.name for m in session.timeline]
        assert steps.index("tracks_published") < steps.index("audio_published")
    await server_idle(server, session.room_name)  # the audio feed and reader ended too
    assert rms(samples) > 1000, "the echo is (nearly) silent"
    assert abs(dominant_frequency(samples, 48_000) - 440) < 10


async def test_viewers_hear_the_model_audio_too(server: ReferenceServer) -> None:
    # A viewer in the room when the model starts publishing audio is offered it
    # then; one joining later gets it at once. Both hear the echoed tone.
    async with connect(server.url, audio=Tone(440), **session_args(server)) as session:
        assert session.room_name is not None and session.subscribe_token
        early = server.livekit.mint_viewer_token(room=session.room_name)
        async with watch_room(server.livekit.url, early) as first:
            heard_first = await received_audio(first, ANALYSED_SAMPLES)
            async with watch(session.subscribe_token, server.url, api_key=server.api_key) as late:
                heard_late = await received_audio(late, ANALYSED_SAMPLES)
        own = await received_audio(session, 4_800)  # the session's own echo goes on
    await server_idle(server, session.room_name)
    for samples in (heard_first, heard_late):
        assert rms(samples) > 1000, "the viewer's audio is (nearly) silent"
        assert abs(dominant_frequency(samples, 48_000) - 440) < 10
    assert rms(own) > 1000


async def test_a_viewer_of_a_session_without_audio_gets_video_only(
    server: ReferenceServer,
) -> None:
    async with connect(server.url, **session_args(server)) as session:
        assert session.subscribe_token
        async with watch(session.subscribe_token, server.url, api_key=server.api_key) as viewer:
            with anyio.fail_after(WAIT):
                await anext(aiter(viewer.frames()))
            with anyio.move_on_after(1.0) as quiet:
                await anext(aiter(viewer.audio_frames()))
            assert quiet.cancelled_caught, "audio from a session that publishes none"


async def test_model_audio_comes_back_after_a_reconnect(server: ReferenceServer) -> None:
    # Each attempt publishes the one audio source anew and reads its own room's model audio.
    events: list[Event] = []
    async with connect(server.url, audio=Tone(660), **session_args(server, events)) as session:
        await received_audio(session, 4_800)
        lost = session.room_name
        assert lost is not None
        await server.livekit.room(lost).disconnect_participants("room_deleted")
        await until(lambda: sum(isinstance(e, SessionStarted) for e in events) == 2)
        samples = await received_audio(session, ANALYSED_SAMPLES)
        room = server.livekit.find_room(session.room_name or "")
        assert room is not None and room.client_track_kinds == ("video", "audio")
        renewed = session.room_name
    assert abs(dominant_frequency(samples, 48_000) - 660) < 10
    await server_idle(server, lost, renewed)


async def test_session_without_audio_publishes_only_video(server: ReferenceServer) -> None:
    async with connect(server.url, **session_args(server)) as session:
        assert session.audio is None
        room = server.livekit.rooms[0]
        await room.wait_client_video()
        # Published video has been decoded: any audio add_track would have come first.
        with anyio.move_on_after(0.5):
            async for _ in session.audio_frames():
                raise AssertionError("a session without audio received model audio")
        assert room.client_track_kinds == ("video",)
        assert room.client_audio_frames == 0


async def test_the_audio_argument_must_be_an_audio_source(server: ReferenceServer) -> None:
    with pytest.raises(InvalidArgument, match="audio must be an AudioSource"):
        async with connect(server.url, audio="tone", **session_args(server)):  # type: ignore[arg-type]
            pass


# ---- sources -------------------------------------------------------------------------


async def test_tone_is_a_paced_sine_of_10_ms_chunks() -> None:
    tone = Tone(1000, amplitude=0.5)
    chunks: list[AudioFrame] = []
    async for frame in tone.frames():
        chunks.append(frame)
        if len(chunks) == 10:
            break
    assert all(f.samples.shape == (480, 1) and f.samples.dtype == np.int16 for f in chunks)
    samples = np.concatenate([f.samples for f in chunks])
    assert abs(dominant_frequency(samples, 48_000) - 1000) < 10
    assert np.array_equal(chunks[3].samples, tone.frame_at(3).samples)
    assert abs(int(samples.max()) - 16384) < 50


def write_wav(
    path: Path, samples: np.ndarray[Any, Any], rate: int = 48_000, width: int = 2
) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(samples.shape[1])
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(samples.astype(f"<i{width}").tobytes())
    return path


async def test_wav_source_plays_the_file_in_a_loop(tmp_path: Path) -> None:
    tone = np.concatenate([Tone(440, sample_rate=16_000).frame_at(i).samples for i in range(5)])
    stereo = np.repeat(tone, 2, axis=1)
    source = WavSource(write_wav(tmp_path / "tone.wav", stereo, rate=16_000))
    assert (source.sample_rate, source.channels) == (16_000, 2)
    chunks: list[AudioFrame] = []
    async for frame in source.frames():
        chunks.append(frame)
        if len(chunks) == 12:  # 5 chunks in the file: it loops twice
            break
    assert all(f.samples.shape == (160, 2) for f in chunks)
    played = np.concatenate([f.samples for f in chunks])
    assert np.array_equal(played[: len(stereo)], stereo)
    assert np.array_equal(played[len(stereo) : 2 * len(stereo)], stereo)


async def test_wav_source_without_loop_ends(tmp_path: Path) -> None:
    samples = np.zeros((250, 1), dtype=np.int16)  # 2.5 chunks at 8 kHz... of 80 samples
    source = WavSource(write_wav(tmp_path / "short.wav", samples, rate=8_000), loop=False)
    got = [f async for f in source.frames()]
    assert sum(len(f.samples) for f in got) == 250


def test_wav_source_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"cannot read WAV file .*nothing\.wav"):
        WavSource(tmp_path / "nothing.wav")


def test_wav_source_refuses_what_is_no_wav(tmp_path: Path) -> None:
    path = tmp_path / "fake.wav"
    path.write_bytes(b"not a RIFF file at all")
    with pytest.raises(InvalidArgument, match="not a WAV file leanjoin can read"):
        WavSource(path)


def test_wav_source_refuses_24_bit_samples(tmp_path: Path) -> None:
    path = tmp_path / "deep.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(3)
        wav.setframerate(48_000)
        wav.writeframes(bytes(300))
    with pytest.raises(InvalidArgument, match="24-bit samples; leanjoin reads 16-bit PCM"):
        WavSource(path)


def test_wav_source_refuses_more_than_two_channels(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "surround.wav", np.zeros((480, 6), dtype=np.int16))
    with pytest.raises(InvalidArgument, match="mono or stereo, got 6 channels"):
        WavSource(path)


def test_wav_source_refuses_an_empty_file(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "empty.wav", np.zeros((0, 1), dtype=np.int16))
    with pytest.raises(InvalidArgument, match="holds no audio"):
        WavSource(path)


@pytest.mark.parametrize(
    "samples",
    [np.zeros(480, dtype=np.int16), np.zeros((480, 1), dtype=np.float32), [[0], [1]]],
    ids=["flat", "float", "list"],
)
def test_audio_frame_refuses_what_is_no_int16_channel_array(samples: Any) -> None:
    with pytest.raises(InvalidArgument, match=r"\(n, channels\) int16 array"):
        AudioFrame(samples, 48_000)


def test_audio_frame_repr_shows_the_shape_not_the_samples() -> None:
    # Samples are what a microphone heard: user content, kept out of reprs and logs.
    frame = AudioFrame(np.full((480, 1), 12345, dtype=np.int16), 48_000)
    text = repr(frame)
    assert "12345" not in text
    assert "480" in text and "48000" in text


def test_tone_refuses_a_frequency_above_nyquist() -> None:
    with pytest.raises(InvalidArgument, match="tone frequency"):
        Tone(30_000)


# ---- the microphone --------------------------------------------------------------------


def test_microphone_without_the_audio_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    with pytest.raises(MicrophoneUnavailable, match=r"pip install 'leanjoin\[audio\]'"):
        Microphone()


def test_microphone_without_portaudio_names_the_system_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What sounddevice does when the system's PortAudio is absent: OSError on import.
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MicrophoneUnavailable, match=r"PortAudio library .* libportaudio2"):
        Microphone()


def test_microphone_on_a_machine_without_sound_card_says_what_is_missing() -> None:
    # CI has no sound card (and may lack PortAudio or the extra): whichever is
    # missing, the error is a LeanJoinError that names it; never a raw OSError.
    with pytest.raises(LeanJoinError) as refused:
        Microphone()
    assert isinstance(refused.value, MicrophoneUnavailable)
    reasons = ("no audio input device", "PortAudio library", "leanjoin[audio]")
    assert any(reason in str(refused.value) for reason in reasons), str(refused.value)


# ---- the command line ------------------------------------------------------------------

KEY = "audio-test-key"


def test_cli_audio_tone_round_trip_saves_the_echo(tmp_path: Path) -> None:
    out = tmp_path / "model.wav"
    with served(KEY) as url:
        run = subprocess.run(
            [
                str(LEANJOIN),
                "connect",
                url,
                "--model",
                "echo",
                "--json",
                "--seconds",
                "3",
                "--audio",
                "tone",
                "--save-audio",
                str(out),
            ],
            env={**os.environ, "LEANJOIN_API_KEY": KEY},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr
    with wave.open(str(out), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (48_000, 1, 2)
        data = wav.readframes(wav.getnframes())
    samples = np.frombuffer(data, dtype="<i2").reshape(-1, 1)
    echo = first_sound(samples, ANALYSED_SAMPLES)
    assert rms(echo) > 1000
    assert abs(dominant_frequency(echo, 48_000) - 440) < 10


def cli_connect(*args: str) -> Result:
    # No server is needed: each of these fails before anything is opened.
    runner = CliRunner(env={"LEANJOIN_API_KEY": KEY})
    return runner.invoke(main, ["connect", "ws://127.0.0.1:9/v1/stream", "--model", "echo", *args])


def test_cli_audio_refuses_a_file_that_is_no_wav(tmp_path: Path) -> None:
    path = tmp_path / "song.mp3"
    path.write_bytes(b"ID3 not a wav")
    result = cli_connect("--audio", str(path))
    assert result.exit_code == 2
    assert "Invalid value for '--audio'" in result.output
    assert "not a WAV file leanjoin can read" in result.output


def test_cli_audio_refuses_a_missing_file(tmp_path: Path) -> None:
    result = cli_connect("--audio", str(tmp_path / "absent.wav"))
    assert result.exit_code == 2
    assert "cannot read WAV file" in result.output and "absent.wav" in result.output


def test_cli_save_audio_refuses_a_missing_directory(tmp_path: Path) -> None:
    result = cli_connect("--audio", "tone", "--save-audio", str(tmp_path / "no" / "out.wav"))
    assert result.exit_code == 2
    assert "Invalid value for '--save-audio'" in result.output


def test_cli_audio_mic_without_a_microphone_says_what_is_missing() -> None:
    result = cli_connect("--audio", "mic")
    assert result.exit_code == 1
    assert result.output.startswith("leanjoin: ")
    reasons = ("no audio input device", "PortAudio library", "leanjoin[audio]")
    assert any(reason in result.output for reason in reasons), result.output


NULL_DEVICE_ALSA_CONFIG = """
pcm.!default { type null }
"""

MICROPHONE_PROBE = """
import anyio, json
from leanjoin.adapters import Microphone

async def main():
    mic = Microphone()
    shapes = []
    with anyio.fail_after(10):
        async for frame in mic.frames():
            shapes.append([*frame.samples.shape, str(frame.samples.dtype), frame.sample_rate])
            if len(shapes) == 20:
                break
    print(json.dumps({"name": mic.name, "rate": mic.sample_rate, "shapes": shapes}))

anyio.run(main, backend="asyncio")
"""


def test_microphone_records_10_ms_chunks_from_an_input_device(tmp_path: Path) -> None:
    # No sound card here: ALSA's null plugin, made the default device in a
    # process of its own, is a real input device that PortAudio opens.
    try:
        importlib.import_module("sounddevice")  # loads PortAudio
    except (ImportError, OSError) as exc:
        pytest.skip(f"sounddevice or PortAudio not installed: {exc}")
    config = tmp_path / "asound.conf"
    config.write_text(NULL_DEVICE_ALSA_CONFIG)
    run = subprocess.run(
        [sys.executable, "-c", MICROPHONE_PROBE],
        env={**os.environ, "ALSA_CONFIG_PATH": str(config)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.splitlines()[-1])
    rate = report["rate"]
    assert report["name"] == "default"
    assert len(report["shapes"]) == 20
    assert all(shape == [rate // 100, 1, "int16", rate] for shape in report["shapes"])
