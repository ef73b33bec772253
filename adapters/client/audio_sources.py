"""Local audio for the room: what the client publishes as its "microphone".

A source yields :class:`AudioFrame` chunks of 10 ms (WebRTC's audio frame size)
at its own pace. Three kinds:

* :class:`Tone`: a sine wave, deterministic per frame index;
* :class:`WavSource`: a 16-bit PCM WAV file (stdlib ``wave``), looped;
* :class:`Microphone`: an input device through ``sounddevice`` (the ``audio``
  extra: ``pip install 'leanjoin[audio]'``, plus the system's PortAudio).

None of them knows about LiveKit; :mod:`.room_audio` converts frames.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import wave
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Protocol, runtime_checkable

import anyio
import attrs
import numpy as np
import numpy.typing as npt

from .errors import InvalidArgument, MicrophoneUnavailable

Samples = npt.NDArray[np.int16]

FRAMES_PER_SECOND: Final = 100  # 10 ms chunks, what WebRTC's audio pipeline works in
AUDIO_EXTRA: Final = "pip install 'leanjoin[audio]'"


def _check_samples(_instance: object, _attribute: object, samples: Samples) -> None:
    if (
        not isinstance(samples, np.ndarray)
        or samples.dtype != np.int16
        or samples.ndim != 2
        or samples.shape[1] not in (1, 2)
    ):
        raise InvalidArgument(
            f"audio samples must be an (n, channels) int16 array with 1 or 2 channels, "
            f"got {getattr(samples, 'shape', type(samples).__name__)} "
            f"{getattr(samples, 'dtype', '')}"
        )


def _shape(samples: Samples) -> str:
    # What a microphone heard is user content: a repr (a log line) shows its shape only.
    return f"<{samples.shape[0]}x{samples.shape[1]} int16>"


@attrs.frozen(eq=False)
class AudioFrame:
    """A chunk of audio: ``samples`` is (samples per channel, channels) int16."""

    samples: Samples = attrs.field(validator=_check_samples, repr=_shape)
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


@runtime_checkable
class AudioSource(Protocol):
    """Something that yields :class:`AudioFrame` chunks of one rate and channel count."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def channels(self) -> int: ...

    def frames(self) -> AsyncIterator[AudioFrame]: ...


def _check_format(sample_rate: int, channels: int) -> None:
    if not 8_000 <= sample_rate <= 192_000:
        raise InvalidArgument(f"sample rate must be in 8000..192000 Hz, got {sample_rate}")
    if channels not in (1, 2):
        raise InvalidArgument(f"audio must be mono or stereo, got {channels} channels")


async def _paced() -> AsyncIterator[int]:
    """Chunk indices every 10 ms. A late consumer gets the missed chunks at once
    (audio must not skip: a gap is a click); the sink's queue absorbs the burst."""
    start = anyio.current_time()
    index = 0
    while True:
        yield index
        index += 1
        await anyio.sleep(max(0.0, start + index / FRAMES_PER_SECOND - anyio.current_time()))


class _Format:
    _sample_rate: int
    _channels: int

    @property
    def sample_rate(self) -> int:
        return self._sample_rate

    @property
    def channels(self) -> int:
        return self._channels


class Tone(_Format):
    """A sine wave of ``frequency`` Hz; :meth:`frame_at` rebuilds any chunk."""

    def __init__(
        self,
        frequency: float = 440.0,
        *,
        sample_rate: int = 48_000,
        channels: int = 1,
        amplitude: float = 0.3,
    ) -> None:
        _check_format(sample_rate, channels)
        if not 0 < frequency < sample_rate / 2:
            raise InvalidArgument(
                f"tone frequency must be in (0, {sample_rate / 2:g}) Hz, got {frequency}"
            )
        if not 0 < amplitude <= 1:
            raise InvalidArgument(f"amplitude must be in (0, 1], got {amplitude}")
        self.frequency = float(frequency)
        self._sample_rate = sample_rate
        self._channels = channels
        self._amplitude = amplitude
        self._chunk = sample_rate // FRAMES_PER_SECOND

    def __repr__(self) -> str:
        return f"Tone({self.frequency:g} Hz, {self._sample_rate} Hz x{self._channels})"

    def frame_at(self, index: int) -> AudioFrame:
        n = np.arange(index * self._chunk, (index + 1) * self._chunk, dtype=np.float64)
        wave_ = np.sin(2 * math.pi * self.frequency * n / self._sample_rate)
        mono = np.round(wave_ * self._amplitude * 32767).astype(np.int16)
        return AudioFrame(np.repeat(mono[:, None], self._channels, axis=1), self._sample_rate)

    async def frames(self) -> AsyncIterator[AudioFrame]:
        async for index in _paced():
            yield self.frame_at(index)


class WavSource(_Format):
    """A 16-bit PCM WAV file (mono or stereo, 8-192 kHz), looped unless ``loop=False``.

    Checked when made: a file leanjoin cannot play is refused before connecting.
    """

    def __init__(self, path: str | Path, *, loop: bool = True) -> None:
        self._path = Path(path)
        try:
            with wave.open(str(self._path), "rb") as wav:
                width, channels = wav.getsampwidth(), wav.getnchannels()
                rate, count = wav.getframerate(), wav.getnframes()
        except OSError as exc:
            raise InvalidArgument(f"cannot read WAV file {self._path}: {exc.strerror}") from exc
        except (wave.Error, EOFError) as exc:
            raise InvalidArgument(
                f"{self._path} is not a WAV file leanjoin can read ({str(exc) or 'truncated'}); "
                "it reads 16-bit PCM WAV"
            ) from exc
        if width != 2:
            raise InvalidArgument(
                f"{self._path} has {8 * width}-bit samples; leanjoin reads 16-bit PCM WAV only"
            )
        try:
            _check_format(rate, channels)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{self._path}: {exc}") from None
        if count == 0:
            raise InvalidArgument(f"{self._path} holds no audio")
        self._sample_rate = rate
        self._channels = channels
        self._loop = loop

    def __repr__(self) -> str:
        return f"WavSource({self._path.name!r})"

    async def frames(self) -> AsyncIterator[AudioFrame]:
        chunk = self._sample_rate // FRAMES_PER_SECOND
        # 10 ms of a local file is a few kB: read on the loop, no thread hop per chunk.
        wav = wave.open(str(self._path), "rb")  # noqa: SIM115  (closed in finally)
        try:
            async for _ in _paced():
                data = self._read(wav, chunk)
                if len(data) < chunk * 2 * self._channels:
                    if not self._loop:
                        if data:
                            yield self._frame(data)
                        return
                    wav.rewind()
                    data += self._read(wav, chunk - len(data) // (2 * self._channels))
                yield self._frame(data)
        finally:
            wav.close()

    def _read(self, wav: wave.Wave_read, count: int) -> bytes:
        # Whole samples only: a file cut short (its header promising more) can
        # end in the middle of one.
        data = wav.readframes(count)
        return data[: len(data) - len(data) % (2 * self._channels)]

    def _frame(self, data: bytes) -> AudioFrame:
        samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
        return AudioFrame(samples.reshape(-1, self._channels), self._sample_rate)


def _sounddevice() -> ModuleType:
    """``sounddevice``, imported on first use (it loads PortAudio when imported)."""
    try:
        return importlib.import_module("sounddevice")
    except ImportError as exc:
        raise MicrophoneUnavailable(
            f"the microphone needs the audio extra (sounddevice is not installed): {AUDIO_EXTRA}"
        ) from exc
    except OSError as exc:  # sounddevice is there, the PortAudio library is not
        raise MicrophoneUnavailable(
            f"the microphone needs the PortAudio library ({exc}): install the system "
            "package (Debian/Ubuntu: libportaudio2)"
        ) from exc


class Microphone(_Format):
    """An audio input device (``device``: a name or index; None: the default one).

    Checked when made: without the extra, PortAudio or an input device it raises
    :class:`MicrophoneUnavailable`. ``sample_rate`` None takes the device's own.
    """

    def __init__(
        self, device: int | str | None = None, *, sample_rate: int | None = None, channels: int = 1
    ) -> None:
        sd = _sounddevice()
        try:
            info: Any = sd.query_devices(device, kind="input")
        except (ValueError, sd.PortAudioError) as exc:
            which = "no audio input device" if device is None else f"no input device {device!r}"
            raise MicrophoneUnavailable(f"{which} on this machine ({exc})") from exc
        if int(info["max_input_channels"]) < channels:
            raise MicrophoneUnavailable(
                f"input device {info['name']!r} has {info['max_input_channels']} channel(s), "
                f"{channels} asked for"
            )
        rate = int(info["default_samplerate"]) if sample_rate is None else sample_rate
        _check_format(rate, channels)
        self._sd = sd
        self._device = device
        self.name = str(info["name"])
        self._sample_rate = rate
        self._channels = channels

    def __repr__(self) -> str:
        return f"Microphone({self.name!r}, {self._sample_rate} Hz x{self._channels})"

    async def frames(self) -> AsyncIterator[AudioFrame]:
        # PortAudio calls back in its own thread: hand each chunk to the loop.
        loop = asyncio.get_running_loop()
        ready: deque[bytes] = deque(maxlen=FRAMES_PER_SECOND)  # a stalled reader drops the oldest
        wakeup = asyncio.Event()

        def arrived(data: bytes) -> None:
            ready.append(data)
            wakeup.set()

        def callback(indata: Any, _frames: int, _time: Any, _status: Any) -> None:
            loop.call_soon_threadsafe(arrived, bytes(indata))

        stream = self._sd.RawInputStream(
            samplerate=self._sample_rate,
            channels=self._channels,
            dtype="int16",
            blocksize=self._sample_rate // FRAMES_PER_SECOND,
            device=self._device,
            callback=callback,
        )
        with stream:
            while True:
                while ready:
                    samples = np.frombuffer(ready.popleft(), dtype=np.int16)
                    yield AudioFrame(samples.reshape(-1, self._channels), self._sample_rate)
                wakeup.clear()
                await wakeup.wait()
