"""PNG charts of benchmark results, drawn with Pillow (matplotlib is not on every GPU machine).

Both charts follow ``training/plots.py``: a white canvas, a framed plot area, light grid lines with
value labels, PIL's default font.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

FONT = ImageFont.load_default()
COLOURS = [(120, 120, 120), (30, 90, 200), (220, 120, 20), (40, 160, 70), (170, 50, 160), (200, 40, 40)]
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 48, 64


def speedup_bars(title: str, cases: Sequence[str], series: dict[str, Sequence[float | None]],
                 path: str | Path, height: int = 420) -> None:
    """Grouped bars: for each case, one bar per implementation (its speed-up against the case's
    baseline, which is 1.0), a dashed line at 1x, and the value above each bar.

    Args:
        title: the chart's title.
        cases: the x-axis groups (their labels may hold a second line after a newline).
        series: implementation -> one value per case (None: not measured, no bar).
        path: the PNG to write.
    """
    values = [v for column in series.values() for v in column if v is not None]
    if not cases or not values:
        raise ValueError("no speed-ups to draw")
    slot = max(18, min(40, 360 // max(1, len(series))))
    width = LEFT + RIGHT + len(cases) * (slot * len(series) + 24)
    width = max(width, 480)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    ticks = _ticks(max(max(values), 1.0) * 1.1)
    high = ticks[-1]
    plot_bottom = height - BOTTOM

    def y_of(value: float) -> float:
        return plot_bottom - value / high * (plot_bottom - TOP)

    _frame(draw, width, height, title, ticks, y_of, "{:g}x")
    one = y_of(1.0)
    for x in range(LEFT, width - RIGHT, 8):  # dashed line at 1x
        draw.line((x, one, x + 4, one), fill=(60, 60, 60))
    group_width = (width - LEFT - RIGHT) / len(cases)
    for c, case in enumerate(cases):
        x0 = LEFT + c * group_width + (group_width - slot * len(series)) / 2
        for s, column in enumerate(series.values()):
            value = column[c]
            if value is None:
                continue
            x = x0 + s * slot
            draw.rectangle((x + 2, y_of(value), x + slot - 2, plot_bottom), fill=COLOURS[s % len(COLOURS)])
            draw.text((x + 1, y_of(value) - 12), f"{value:.2f}", fill="black", font=FONT)
        for line, text in enumerate(case.split("\n")):
            draw.text((x0, plot_bottom + 6 + 12 * line), text, fill="black", font=FONT)
    _legend(draw, list(series), LEFT + 4, 26)
    image.save(path)


def memory_lines(title: str, sizes: Sequence[int], series: dict[str, Sequence[float | None]],
                 path: str | Path, limits: dict[str, float] | None = None, height: int = 420) -> None:
    """Peak memory against image size, one line per implementation; a configuration that ran out
    of memory is an ``x`` marked OOM at the top of the plot.

    Args:
        title: the chart's title.
        sizes: the image sizes (x axis), increasing.
        series: implementation -> peak GB per size (``inf``: out of memory, None: not measured).
        path: the PNG to write.
        limits: optional horizontal lines, label -> GB (e.g. the card's memory).
    """
    values = [v for column in series.values() for v in column if v is not None and math.isfinite(v)]
    values += list((limits or {}).values())
    if not sizes:
        raise ValueError("no memory figures to draw")
    width = 640
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    ticks = _ticks(max(values, default=1.0) * 1.1)  # every configuration out of memory: any scale will do
    high = ticks[-1]
    plot_bottom = height - BOTTOM
    first, last = sizes[0], sizes[-1] if sizes[-1] > sizes[0] else sizes[0] + 1

    def y_of(value: float) -> float:
        return plot_bottom - value / high * (plot_bottom - TOP)

    def x_of(size: float) -> float:
        return LEFT + 20 + (size - first) / (last - first) * (width - LEFT - RIGHT - 40)

    _frame(draw, width, height, title, ticks, y_of, "{:g} GB")
    for size in sizes:
        draw.text((x_of(size) - 10, plot_bottom + 6), str(size), fill="black", font=FONT)
    draw.text((width // 2 - 40, plot_bottom + 24), "image size (px)", fill="black", font=FONT)
    for label, gb in (limits or {}).items():
        draw.line((LEFT, y_of(gb), width - RIGHT, y_of(gb)), fill=(200, 40, 40))
        draw.text((width - RIGHT - 6 * len(label) - 4, y_of(gb) - 12), label, fill=(200, 40, 40), font=FONT)
    for s, column in enumerate(series.values()):
        colour = COLOURS[(s + 1) % len(COLOURS)]
        points = [(x_of(size), y_of(gb)) for size, gb in zip(sizes, column) if gb is not None and math.isfinite(gb)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        for size, gb in zip(sizes, column):
            if gb == math.inf:  # out of memory
                x, y = x_of(size), TOP + 8 + 24 * s
                draw.line((x - 4, y - 4, x + 4, y + 4), fill=colour, width=2)
                draw.line((x - 4, y + 4, x + 4, y - 4), fill=colour, width=2)
                draw.text((x - 8, y + 5), "OOM", fill=colour, font=FONT)
    _legend(draw, list(series), LEFT + 4, 26, offset=1)
    image.save(path)


def _ticks(top: float) -> list[float]:
    """Round grid values from 0 to at least ``top``: 4 to 8 steps of 1, 2 or 5 times a power of ten."""
    step = 10.0 ** math.floor(math.log10(top / 4))
    for factor in (1, 2, 5, 10):
        if top / (step * factor) <= 8:
            step *= factor
            break
    return [round(step * i, 10) for i in range(math.ceil(top / step) + 1)]


def _frame(draw: ImageDraw.ImageDraw, width: int, height: int, title: str, ticks: Sequence[float],
           y_of, fmt: str) -> None:
    draw.rectangle((LEFT, TOP, width - RIGHT, height - BOTTOM), outline="black")
    for tick in ticks:  # horizontal grid with value labels
        y = y_of(tick)
        draw.line((LEFT + 1, y, width - RIGHT - 1, y), fill=(225, 225, 225))
        draw.text((4, y - 6), fmt.format(tick), fill="black", font=FONT)
    draw.text((LEFT, 8), title, fill="black", font=FONT)


def _legend(draw: ImageDraw.ImageDraw, names: Sequence[str], x: float, y: float, offset: int = 0) -> None:
    for i, name in enumerate(names):
        colour = COLOURS[(i + offset) % len(COLOURS)]
        draw.rectangle((x, y + 2, x + 10, y + 10), fill=colour)
        draw.text((x + 14, y), name, fill="black", font=FONT)
        x += 14 + 6 * len(name) + 16
