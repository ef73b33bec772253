"""Time to connected and to the first styled frame, leanjoin vs decart 0.2.4 (issue #4).

The reference server runs as its own process (``leanjoin serve``) with a
simulated 20 Mbit/s signaling uplink (``--uplink-bytes-per-second 2500000``)
and a 1 s LiveKit media setup delay, and with its frame and reference limits
raised so an 8 MB image (about 10.7 MB as base64) is accepted. For each
reference image size (0 = prompt only) both clients connect with the same
prompt, image and camera size, one after the other, ``--repeats`` times:

* leanjoin: ``leanjoin.adapters.connect`` in this process (a ``TestPattern``
  camera); the lean join sends the image next to ``livekit_join``;
* decart: the ``RealtimeClient`` of the published ``decart`` package 0.2.4,
  run by ``bench/decart_probe.py`` in a separate venv
  (``.venv-bench-decart``, made here on first use); it sends ``set_image``
  after ``livekit_room_info`` and joins the room only after the image's ack.

Measured from just before each client's connect call: *connected* (the
session is usable, the camera published) and *first styled frame* (the first
decoded output frame whose top band is the prompt colour and whose bottom
band is the reference image's mean colour, within the demo's tolerance).
Reference images are random noise PNGs (incompressible) sized to N MB
(10^6 bytes); their channels are confined to distinct ranges so the mean
colour is far from the camera's.

The floor is max(upload, media setup): upload = bytes of the image's base64
on the wire / uplink rate (what the server's throttle charges); the raw-byte
floor is printed below the table too. Media setup is taken two ways: the
nominal 1 s the double is told to wait, and the *measured* media setup, the
median time to the first output frame of a passthrough session (no prompt, no
image: nothing to upload or apply, so only the signaling, the room join, the
double's delay and one frame's trip through both codecs), run in every repeat.
The nominal floor leaves out what this machine's real WebRTC stack costs on
top of the simulated delay; the measured one counts it. Only loopback traffic.

    .venv/bin/python bench/bench_first_frame.py
    .venv/bin/python bench/bench_first_frame.py --sizes 0,8 --repeats 1 --no-decart

Prints a markdown table of medians, then every run.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import anyio
import attrs
import numpy as np
from server_process import ServerProcess

from leanjoin.adapters.cli.demo import TOLERANCE
from leanjoin.adapters.client.api import Session, connect
from leanjoin.adapters.client.png import encode_png
from leanjoin.adapters.client.video_sources import TestPattern
from leanjoin.adapters.server.echo_model import (
    Colour,
    colours_close,
    decode_reference,
    mean_colour,
    output_bands,
    prompt_colour,
)

ROOT: Final = Path(__file__).resolve().parent.parent
DECART_VENV: Final = ROOT / ".venv-bench-decart"
DECART_REQUIREMENT: Final = "decart[realtime]==0.2.4"
DECART_VERSION: Final = "0.2.4"
DECART_MODEL: Final = "lucy-2.5"  # any name decart knows; the echo server accepts any
PROBE: Final = ROOT / "bench" / "decart_probe.py"

UPLINK: Final = 2_500_000  # bytes/s: 20 Mbit/s
MEDIA_SETUP: Final = 1.0  # seconds the LiveKit double waits before answering a join
SERVER_LIMIT: Final = 32 * 1024 * 1024  # frame and reference limits on the server
MB: Final = 1_000_000
PROMPT: Final = "a lighthouse at dusk, watercolour"
WIDTH, HEIGHT, FPS = 640, 360, 30
RUN_TIMEOUT: Final = 60.0  # one client's connect and first styled frame
SETTLE: Final = 1.0  # seconds between runs, for the previous room to close
# Noise channels: R in 128..255, G in 32..159, B in 0..127 (mean ~ 192, 96, 64).
NOISE_LOW: Final = (128, 32, 0)


@attrs.frozen
class Reference:
    size_mb: float
    png: bytes | None
    mean: Colour | None  # decoded by the echo model's own decoder
    decode_s: float

    @property
    def wire_bytes(self) -> int:
        """Bytes of its base64 in the set_image frame."""
        return 0 if self.png is None else len(base64.b64encode(self.png))


PASSTHROUGH: Final = "leanjoin-passthrough"  # the media-setup probe's client name


@attrs.frozen
class Run:
    client: str
    size_mb: float
    connected: float | None
    first_styled: float | None
    first_frame: float | None = None
    ack: float | None = None
    room_connected: float | None = None
    published: float | None = None
    error: str | None = None


# ---- reference images --------------------------------------------------------------------


def make_reference(size_mb: float, seed: int) -> Reference:
    """A noise PNG of about ``size_mb`` MB (within 0.5%); none for 0."""
    if size_mb <= 0:
        return Reference(size_mb, None, None, 0.0)
    target = round(size_mb * MB)
    rng = np.random.default_rng(seed)
    low = np.array(NOISE_LOW, dtype=np.uint8)
    width = 1024

    def noise(height: int) -> bytes:
        pixels = rng.integers(0, 128, (height, width, 3), dtype=np.uint8) + low
        return encode_png(pixels.astype(np.uint8))

    sample = noise(32)
    height = max(1, round(target / (len(sample) / 32)))
    png = noise(height)
    if abs(len(png) - target) > target * 0.005:
        height = max(1, round(height * target / len(png)))
        png = noise(height)
    began = time.perf_counter()
    decoded = decode_reference(png)
    decode_s = time.perf_counter() - began
    return Reference(size_mb, png, mean_colour(decoded), decode_s)


# ---- the decart venv ---------------------------------------------------------------------


def decart_python() -> Path:
    """The separate venv's interpreter, with decart 0.2.4 installed (made on first use)."""
    python = DECART_VENV / "bin" / "python"
    check = [str(python), "-c", "import importlib.metadata as m; print(m.version('decart'))"]
    if python.exists():
        found = subprocess.run(check, capture_output=True, text=True, check=False)
        if found.returncode == 0 and found.stdout.strip() == DECART_VERSION:
            return python
    print(f"# creating {DECART_VENV} with {DECART_REQUIREMENT} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(DECART_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", DECART_REQUIREMENT], check=True)
    return python


# ---- the server --------------------------------------------------------------------------


# ---- one run of each client ---------------------------------------------------------------


def _milestone(session: Session, name: str, t0: float) -> float | None:
    return next((m.at - t0 for m in session.timeline if m.name == name), None)


async def run_passthrough(url: str, key: str) -> Run:
    """The measured media setup: a session with no initial state, to its first frame."""
    connected = first = error = None
    t0 = anyio.current_time()
    try:
        with anyio.fail_after(RUN_TIMEOUT):
            async with connect(
                url, api_key=key, model="echo", camera=TestPattern(WIDTH, HEIGHT, fps=FPS)
            ) as session:
                connected = _milestone(session, "connected", t0)
                async for _frame in session.frames():
                    break
                first = _milestone(session, "first_output_frame", t0)
    except TimeoutError:
        error = f"no output frame within {RUN_TIMEOUT:g} s"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    return Run(PASSTHROUGH, 0.0, connected, first, first, error=error)


async def run_leanjoin(url: str, key: str, reference: Reference) -> Run:
    top = prompt_colour(PROMPT)
    bottom = reference.mean
    connected = styled = first = ack = room = published = None
    error = None
    t0 = anyio.current_time()
    try:
        with anyio.fail_after(RUN_TIMEOUT):
            async with connect(
                url,
                api_key=key,
                model="echo",
                image=reference.png,
                prompt=PROMPT,
                camera=TestPattern(WIDTH, HEIGHT, fps=FPS),
            ) as session:
                connected = _milestone(session, "connected", t0)
                seen = 0
                async for frame in session.frames():
                    now = anyio.current_time() - t0
                    seen += 1
                    up, down = output_bands(frame)
                    if colours_close(up, top, TOLERANCE) and (
                        bottom is None or colours_close(down, bottom, TOLERANCE)
                    ):
                        # The very first frame may have waited in the backlog for this
                        # iterator: its arrival is the first_output_frame milestone.
                        noted = _milestone(session, "first_output_frame", t0)
                        styled = noted if seen == 1 and noted is not None else now
                        break
                first = _milestone(session, "first_output_frame", t0)
                ack = _milestone(session, "initial_state_acked", t0)
                room = _milestone(session, "room_connected", t0)
                published = _milestone(session, "tracks_published", t0)
    except TimeoutError:
        error = f"no styled frame within {RUN_TIMEOUT:g} s"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    return Run("leanjoin", reference.size_mb, connected, styled, first, ack, room, published, error)


async def run_decart(
    python: Path, url: str, key: str, reference: Reference, image: Path | None
) -> Run:
    job = {
        "base_url": url.removesuffix("/v1/stream"),  # decart appends the model's url_path
        "api_key": key,
        "model": DECART_MODEL,
        "image": None if image is None else str(image),
        "prompt": PROMPT,
        "top": prompt_colour(PROMPT),
        "bottom": reference.mean,
        "tolerance": TOLERANCE,
        "timeout": RUN_TIMEOUT,
        "width": WIDTH,
        "height": HEIGHT,
        "fps": FPS,
    }
    try:
        with anyio.fail_after(RUN_TIMEOUT + 30):
            done = await anyio.run_process(
                [str(python), str(PROBE)], input=json.dumps(job).encode(), check=False
            )
    except TimeoutError:
        return Run("decart", reference.size_mb, None, None, error="the probe hung")
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        return Run("decart", reference.size_mb, None, None, error=f"probe failed: {tail}")
    return Run(
        "decart",
        reference.size_mb,
        result.get("connected"),
        result.get("first_styled"),
        result.get("first_frame"),
        error=result.get("error"),
    )


# ---- the report ---------------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if len(present) == len(values) and present else None


def _s(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def report(refs: list[Reference], runs: list[Run], command: str, decart: bool) -> None:
    def med(client: str, size: float, field: str) -> float | None:
        return _median(
            [getattr(r, field) for r in runs if r.client == client and r.size_mb == size]
        )

    media = _median([r.first_frame for r in runs if r.client == PASSTHROUGH]) or None
    print(f"command: `{command}`\n")
    print(
        "| size MB | leanjoin connected s | leanjoin first styled frame s "
        "| floor max(upload, 1 s) s | ratio first-frame/floor "
        "| measured floor max(upload, media) s | ratio first-frame/measured floor "
        "| ratio connected(size)/connected(0) | decart connected s | decart first styled frame s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = med("leanjoin", refs[0].size_mb, "connected") if refs[0].size_mb == 0 else None
    notes = []
    for ref in refs:
        connected = med("leanjoin", ref.size_mb, "connected")
        styled = med("leanjoin", ref.size_mb, "first_styled")
        upload = ref.wire_bytes / UPLINK
        floor = max(upload, MEDIA_SETUP)
        ratio = None if styled is None else styled / floor
        measured = None if media is None else max(upload, media)
        measured_ratio = None if styled is None or measured is None else styled / measured
        growth = None if connected is None or base is None else connected / base
        dc = med("decart", ref.size_mb, "connected") if decart else None
        ds = med("decart", ref.size_mb, "first_styled") if decart else None
        print(
            f"| {ref.size_mb:g} | {_s(connected)} | {_s(styled)} | {_s(floor)} | {_s(ratio)} "
            f"| {_s(measured)} | {_s(measured_ratio)} | {_s(growth)} | {_s(dc) if decart else 'not run'} | {_s(ds) if decart else 'not run'} |"
        )
        if ref.png is not None:
            raw_floor = max(len(ref.png) / UPLINK, MEDIA_SETUP)
            raw_ratio = None if styled is None else styled / raw_floor
            notes.append(
                f"- {ref.size_mb:g} MB: PNG {len(ref.png):,} B, base64 {ref.wire_bytes:,} B, "
                f"upload {upload:.2f} s (raw bytes: {len(ref.png) / UPLINK:.2f} s, "
                f"first-frame/raw-floor {_s(raw_ratio)}); echo-model decode "
                f"{ref.decode_s * 1000:.0f} ms; mean colour {ref.mean}"
            )
    print()
    print(
        f"uplink {UPLINK:,} B/s, media setup {MEDIA_SETUP:g} s nominal, {_s(media, 3)} s "
        f"measured (median passthrough first frame); medians of the runs below; "
        f"prompt colour {prompt_colour(PROMPT)}, tolerance {TOLERANCE}"
    )
    print("\n".join(notes))
    print(
        "\n| client | size MB | connected s | first output frame s | first styled frame s "
        "| initial-state ack s | room connected s | camera published s | error |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r.client} | {r.size_mb:g} | {_s(r.connected, 3)} | {_s(r.first_frame, 3)} "
            f"| {_s(r.first_styled, 3)} | {_s(r.ack, 3)} | {_s(r.room_connected, 3)} "
            f"| {_s(r.published, 3)} | {r.error or ''} |"
        )


async def _main(args: argparse.Namespace, command: str) -> None:
    sizes = [float(s) for s in args.sizes.split(",")]
    python = decart_python() if args.decart else None
    refs = [make_reference(size, seed=index + 1) for index, size in enumerate(sizes)]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-first-frame-") as tmp:
        images: dict[float, Path | None] = {}
        for ref in refs:
            path = None
            if ref.png is not None:
                path = Path(tmp) / f"reference-{ref.size_mb:g}MB.png"
                path.write_bytes(ref.png)
            images[ref.size_mb] = path
        server = ServerProcess.start(
            Path(tmp) / "server.log",
            *("--uplink-bytes-per-second", str(UPLINK), "--media-setup-delay", str(MEDIA_SETUP)),
            *("--max-frame-bytes", str(SERVER_LIMIT), "--max-reference-bytes", str(SERVER_LIMIT)),
        )
        url, key = server.url, server.api_key
        try:
            # Warm-up, not reported: first-use costs of codecs and the LiveKit FFI.
            await run_leanjoin(url, key, refs[0])
            if python is not None:
                await run_decart(python, url, key, refs[0], images[refs[0].size_mb])
            for repeat in range(args.repeats):
                await anyio.sleep(SETTLE)
                runs.append(await run_passthrough(url, key))
                print(
                    f"# {repeat + 1}/{args.repeats} passthrough: "
                    f"first frame {_s(runs[-1].first_frame, 3)}",
                    file=sys.stderr,
                    flush=True,
                )
                for ref in refs:
                    for client in ("leanjoin", "decart"):
                        if client == "decart" and python is None:
                            continue
                        await anyio.sleep(SETTLE)
                        if client == "leanjoin":
                            run = await run_leanjoin(url, key, ref)
                        else:
                            assert python is not None
                            run = await run_decart(python, url, key, ref, images[ref.size_mb])
                        runs.append(run)
                        print(
                            f"# {repeat + 1}/{args.repeats} {client} {ref.size_mb:g} MB: "
                            f"connected {_s(run.connected, 3)} styled {_s(run.first_styled, 3)}"
                            f"{' error: ' + run.error if run.error else ''}",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            server.stop()
            if args.server_log:
                Path(args.server_log).write_text((Path(tmp) / "server.log").read_text())
    report(refs, runs, command, python is not None)
    if args.json:
        Path(args.json).write_text(json.dumps([attrs.asdict(r) for r in runs], indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="0,1,4,8", help="image sizes in MB (10^6 B); 0: none")
    # Five: a single room connect varies by about ±0.1 s here, and medians of 3 carry it.
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--no-decart", dest="decart", action="store_false", help="measure leanjoin only"
    )
    parser.add_argument("--json", help="also write every run as JSON to this file")
    parser.add_argument("--server-log", help="keep the server's log in this file")
    args = parser.parse_args()
    command = " ".join([".venv/bin/python", "bench/bench_first_frame.py", *sys.argv[1:]])
    anyio.run(_main, args, command)


if __name__ == "__main__":
    main()
