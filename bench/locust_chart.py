"""A PNG of a Locust run of ``leanjoin.adapters.load``, from Locust's CSV history.

Reads ``<prefix>_stats_history.csv`` (written by ``--csv <prefix>
--csv-full-history``: one row a second per request type) and draws three
panels over the run's seconds: users; sessions connected and prompt acks per
second; and the 95th percentile of each phase (Locust's rolling window of the
last 10 s), on a log scale.

    .venv/bin/python bench/locust_chart.py out/locust bench/locust_run.png

Pillow only (the server extra has it): no plotting library for one figure.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from PIL import Image, ImageDraw, ImageFont

WIDTH: Final = 1200
PANEL: Final = 230  # height of one panel's plot area
LEFT: Final = 90
RIGHT: Final = 230  # the legend's column
TOP: Final = 60
GAP: Final = 70
COLOURS: Final = {
    "users": (60, 60, 60),
    "connected": (31, 119, 180),
    "prompt_ack": (255, 127, 14),
    "room_info": (44, 160, 44),
    "queue_wait": (214, 39, 40),
    "initial_state_ack": (148, 103, 189),
    "session": (140, 86, 75),
}
LATENCY_TYPES: Final = ("room_info", "connected", "queue_wait", "initial_state_ack", "prompt_ack")

Series = list[tuple[float, float]]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def read_history(path: Path) -> tuple[Series, dict[str, Series], dict[str, Series]]:
    """Users over time; requests per second and p95 (ms) per request type."""
    users: Series = []
    rates: dict[str, Series] = defaultdict(list)
    p95: dict[str, Series] = defaultdict(list)
    with path.open() as file:
        rows = list(csv.DictReader(file))
    if not rows:
        raise SystemExit(f"{path}: no rows (was the run made with --csv-full-history?)")
    start = int(rows[0]["Timestamp"])
    for row in rows:
        second = float(int(row["Timestamp"]) - start)
        kind = row["Type"]
        if not kind:  # the Aggregated row: one a second, carries the user count
            users.append((second, float(row["User Count"])))
            continue
        rates[kind].append((second, float(row["Requests/s"])))
        if row["95%"] not in ("N/A", ""):
            p95[kind].append((second, float(row["95%"])))
    return users, dict(rates), dict(p95)


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power


def _panel(
    draw: ImageDraw.ImageDraw,
    top: int,
    title: str,
    series: Sequence[tuple[str, str, Series]],
    x_max: float,
    font: Font,
    small: Font,
    *,
    log: bool = False,
    layered: bool = False,
    unit: str = "",
) -> None:
    right = WIDTH - RIGHT
    bottom = top + PANEL
    draw.text((LEFT, top - 30), title, fill=(0, 0, 0), font=font)
    values = [v for _, _, points in series for _, v in points if not log or v > 0]
    if not values:
        values = [1.0]
    if log:
        low = 10.0 ** math.floor(math.log10(min(values)))
        high = 10.0 ** math.ceil(math.log10(max(values)))
        if high <= low:
            high = low * 10

        def y_of(v: float) -> float:
            return (
                bottom
                - (math.log10(max(v, low)) - math.log10(low))
                / (math.log10(high) - math.log10(low))
                * PANEL
            )

        ticks = [low * 10**i for i in range(round(math.log10(high / low)) + 1)]
    else:
        step = _nice_step(max(values) or 1.0)
        high = math.ceil((max(values) or 1.0) / step) * step

        def y_of(v: float) -> float:
            return bottom - v / high * PANEL

        ticks = [step * i for i in range(round(high / step) + 1)]

    def x_of(second: float) -> float:
        return LEFT + second / x_max * (right - LEFT)

    for tick in ticks:
        y = y_of(tick)
        draw.line([(LEFT, y), (right, y)], fill=(225, 225, 225))
        label = f"{tick:g}{unit}"
        draw.text((LEFT - 8, y), label, fill=(80, 80, 80), font=small, anchor="rm")
    x_step = _nice_step(x_max, 10)
    second = 0.0
    while second <= x_max + 1e-9:
        x = x_of(second)
        draw.line([(x, bottom), (x, bottom + 5)], fill=(80, 80, 80))
        draw.text((x, bottom + 8), f"{second:g}", fill=(80, 80, 80), font=small, anchor="mt")
        second += x_step
    draw.rectangle([(LEFT, top), (right, bottom)], outline=(120, 120, 120))
    for index, (label, colour_key, points) in enumerate(series):
        colour = COLOURS.get(colour_key, (0, 0, 0))
        line = [(x_of(s), y_of(v)) for s, v in points if not log or v > 0]
        # Layered: the first series widest, so a line a later one covers still shows.
        width = max(2, 6 - 2 * index) if layered else 2
        if len(line) > 1:
            draw.line(line, fill=colour, width=width)
        y = top + 10 + index * 22
        draw.line([(right + 15, y), (right + 40, y)], fill=colour, width=3)
        draw.text((right + 48, y), label, fill=(0, 0, 0), font=small, anchor="lm")


def draw_chart(prefix: Path, out: Path, title: str | None = None) -> None:
    users, rates, p95 = read_history(Path(f"{prefix}_stats_history.csv"))
    x_max = max([s for s, _ in users] + [1.0])
    height = TOP + 3 * PANEL + 3 * GAP + 10
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=16)
    small = ImageFont.load_default(size=13)
    heading = title or f"leanjoin signaling-only users on Locust ({prefix.name})"
    draw.text((LEFT, 12), heading, fill=(0, 0, 0), font=font)
    top = TOP + 20
    _panel(draw, top, "users", [("users", "users", users)], x_max, font, small)
    top += PANEL + GAP
    throughput = [
        (f"{kind} /s", kind, rates[kind]) for kind in ("connected", "prompt_ack") if kind in rates
    ]
    _panel(
        draw,
        top,
        "sessions connected and prompts acked, per second",
        throughput,
        x_max,
        font,
        small,
    )
    top += PANEL + GAP
    latency = [(kind, kind, p95[kind]) for kind in LATENCY_TYPES if kind in p95]
    _panel(
        draw,
        top,
        "95th percentile, ms (last 10 s; log scale)",
        latency,
        x_max,
        font,
        small,
        log=True,
        layered=True,
    )
    draw.text(
        ((LEFT + WIDTH - RIGHT) / 2, height - 18),
        "seconds since the start",
        fill=(80, 80, 80),
        font=small,
        anchor="mm",
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix", type=Path, help="the --csv prefix of the Locust run")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--title", help="the chart's heading")
    args = parser.parse_args()
    draw_chart(args.prefix, args.out, args.title)
    print(args.out)


if __name__ == "__main__":
    main()
