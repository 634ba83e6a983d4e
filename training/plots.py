"""PNG figures drawn with Pillow: the loss curve of a run and a grid of predictions."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT = ImageFont.load_default()


def loss_curve(steps: Sequence[int], losses: Sequence[float], path: str | Path, title: str = "training loss",
               size: tuple[int, int] = (640, 400)) -> None:
    """A line plot of loss against step, with labelled axes, written to ``path``."""
    if not steps:
        raise ValueError("no logged steps to plot")
    if not all(math.isfinite(loss) for loss in losses):
        raise ValueError("losses must be finite numbers to plot")
    width, height = size
    left, right, top, bottom = 64, 16, 32, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    low, high = min(losses), max(losses)
    high = high if high > low else low + max(abs(low) * 0.1, 1e-3)  # one loss: an axis of distinct labels
    first, last = steps[0], steps[-1] if steps[-1] > steps[0] else steps[0] + 4

    def point(step: float, loss: float) -> tuple[float, float]:
        x = left + (step - first) / (last - first) * (width - left - right)
        y = top + (high - loss) / (high - low) * (height - top - bottom)
        return x, y

    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    for i in range(5):  # horizontal grid with loss labels
        loss = low + (high - low) * i / 4
        _, y = point(first, loss)
        draw.line((left, y, width - right, y), fill=(225, 225, 225))
        draw.text((4, y - 6), f"{loss:.3f}", fill="black", font=FONT)
    for i in range(5):  # step labels
        step = first + (last - first) * i / 4
        x, _ = point(step, low)
        draw.text((x - 12, height - bottom + 6), f"{int(step)}", fill="black", font=FONT)
    points = [point(s, l) for s, l in zip(steps, losses)]
    draw.line(points, fill=(30, 90, 200), width=2)
    if len(points) == 1:  # a line of one point draws nothing
        x, y = points[0]
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(30, 90, 200))
    draw.text((left, 8), title, fill="black", font=FONT)
    draw.text((width // 2 - 12, height - 16), "step", fill="black", font=FONT)
    image.save(path)


def prediction_grid(images: Sequence[Image.Image], sentences: Sequence[str], predictions: Sequence[np.ndarray],
                    targets: Sequence[np.ndarray], path: str | Path, cell: int = 160) -> None:
    """One row per sample: the image with its sentence, then the predicted and the true mask in white
    over the dimmed image (readable whatever the colours of the image)."""
    rows = len(images)
    if rows == 0:
        raise ValueError("no samples to draw")
    header = 20
    grid = Image.new("RGB", (3 * cell, rows * (cell + header) + header), "white")
    draw = ImageDraw.Draw(grid)
    for column, name in enumerate(("image + sentence", "prediction", "ground truth")):
        draw.text((column * cell + 4, 4), name, fill="black", font=FONT)
    for row, (image, sentence, prediction, target) in enumerate(zip(images, sentences, predictions, targets)):
        y = header + row * (cell + header)
        draw.text((4, y + 2), sentence[:70], fill=(20, 20, 120), font=FONT)
        panels = (image, _highlight(image, prediction), _highlight(image, target))
        for column, panel in enumerate(panels):
            grid.paste(_fit(panel, cell), (column * cell, y + header))
    grid.save(path)


def _highlight(image: Image.Image, mask: np.ndarray) -> Image.Image:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) * 0.3
    pixels[mask.astype(bool)] = 0.3 * pixels[mask.astype(bool)] + 0.7 * 255
    return Image.fromarray(pixels.astype(np.uint8))


def _fit(image: Image.Image, cell: int) -> Image.Image:
    scale = cell / max(image.width, image.height)
    resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.NEAREST)
    canvas = Image.new("RGB", (cell, cell), (245, 245, 245))
    canvas.paste(resized, ((cell - resized.width) // 2, (cell - resized.height) // 2))
    return canvas
