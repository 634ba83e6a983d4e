"""A synthetic referring-segmentation dataset in the REFER layout.

Each image holds two to four shapes of different kinds, colours, sizes and places; each shape is
referred to by sentences that only it fits among the shapes of its image: by colour, kind,
or, when several shapes share both, by place ("on the left", "at the top") or size ("the bigger").
So the image alone never tells which shape is meant: the sentence does.

    DATA_ROOT/<name>/refs(unc).p, DATA_ROOT/<name>/instances.json, DATA_ROOT/images/<name>/*.png (or, for
    a name of the REFER datasets, their image folder: see ``refer.IMAGE_DIRS``)
"""
from __future__ import annotations

import json
import math
import pickle
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..text import tokenize
from .refer import default_image_root, polygon_mask

COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 215), "yellow": (230, 195, 25),
           "purple": (135, 55, 175)}
KINDS = ("circle", "square", "triangle")
SPLITS = ("train", "val", "testA", "testB")  # testA: two shapes per image, testB: three or four
SIZE_RATIO = 1.3 ** 2  # of areas, for "the bigger" / "the smaller"


@dataclass
class Shape:
    kind: str
    colour: str
    x: float  # centre, pixels
    y: float
    radius: float  # half the side of the bounding square

    def polygon(self) -> list[float]:
        """Outline as [x0, y0, x1, y1, ...] (COCO polygon)."""
        if self.kind == "circle":
            points = [(self.x + self.radius * math.cos(2 * math.pi * i / 32),
                       self.y + self.radius * math.sin(2 * math.pi * i / 32)) for i in range(32)]
        elif self.kind == "square":
            r = self.radius * 0.9
            points = [(self.x - r, self.y - r), (self.x + r, self.y - r), (self.x + r, self.y + r), (self.x - r, self.y + r)]
        else:
            r = self.radius
            points = [(self.x, self.y - r), (self.x + r, self.y + 0.8 * r), (self.x - r, self.y + 0.8 * r)]
        return [round(v, 2) for point in points for v in point]

    def area(self) -> float:
        """Area of the outline (square pixels): what "bigger" and "smaller" compare, as an eye does."""
        xs, ys = self.polygon()[0::2], self.polygon()[1::2]
        return abs(sum(x0 * y1 - x1 * y0 for x0, y0, x1, y1 in zip(xs, ys, xs[1:] + xs[:1], ys[1:] + ys[:1]))) / 2

    def reach(self) -> float:
        """Distance from the centre to the outline's farthest point: the square's corners lie
        0.9 * sqrt(2) * radius away, the triangle's base corners sqrt(1.64) * radius."""
        return self.radius * {"circle": 1.0, "square": 0.9 * math.sqrt(2), "triangle": math.sqrt(1.64)}[self.kind]


def describe(target: Shape, shapes: list[Shape], rng: random.Random) -> list[str]:
    """Sentences that fit ``target`` and no other shape of ``shapes`` (one to three of them): by its
    attributes when they single it out, else (and now and then anyway) by place or size."""
    others = [s for s in shapes if s is not target]
    c, k = target.colour, target.kind
    attributes = []
    if all(s.colour != c for s in others):
        attributes += [f"the {c} one", f"{c} shape", f"the {c} {k}"]
    if all(s.kind != k for s in others):
        attributes += [f"the {k}", f"{k}"]
    if all((s.colour, s.kind) != (c, k) for s in others) and not attributes:
        attributes += [f"the {c} {k}", f"{c} {k}"]
    twins = [s for s in others if (s.colour, s.kind) == (c, k)]
    group = twins if twins else others
    noun = f"{c} {k}" if twins else rng.choice(("shape", k))
    relations = []
    if all(target.x < s.x - target.radius for s in group):
        relations += [f"the {noun} on the left", f"left {noun}"]
    if all(target.x > s.x + target.radius for s in group):
        relations += [f"the {noun} on the right", f"right {noun}"]
    if all(target.y < s.y - target.radius for s in group):
        relations += [f"the {noun} at the top", f"upper {noun}"]
    if all(target.y > s.y + target.radius for s in group):
        relations += [f"the {noun} at the bottom", f"lower {noun}"]
    if all(target.area() > SIZE_RATIO * s.area() for s in group):
        relations += [f"the bigger {noun}", f"big {noun}"]
    if all(target.area() < s.area() / SIZE_RATIO for s in group):
        relations += [f"the smaller {noun}", f"small {noun}"]
    sentences = []
    for _ in range(rng.randint(1, 3)):
        pool = attributes if attributes and (not relations or rng.random() < 0.6) else relations
        if pool:
            sentences.append(pool.pop(rng.randrange(len(pool))))
    return sentences


def _place(width: int, height: int, count: int, rng: random.Random) -> list[Shape]:
    """Up to ``count`` non-overlapping shapes; duplicates of colour and kind are common on purpose."""
    shapes: list[Shape] = []
    side = min(width, height)
    for _ in range(200):
        if len(shapes) == count:
            break
        radius = side * rng.choice((rng.uniform(0.14, 0.18), rng.uniform(0.23, 0.29)))
        x, y = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        if shapes and rng.random() < 0.2:  # a twin of an earlier shape: only place or size can tell
            twin = rng.choice(shapes)
            kind, colour = twin.kind, twin.colour
        else:
            kind, colour = rng.choice(KINDS), rng.choice(list(COLOURS))
        shape = Shape(kind, colour, x, y, radius)
        if all(math.hypot(x - s.x, y - s.y) >= shape.reach() + s.reach() + 3 for s in shapes):
            shapes.append(shape)
    return shapes


def _background(width: int, height: int, rng: random.Random) -> Image.Image:
    base = tuple(rng.randint(170, 250) for _ in range(3))
    image = Image.new("RGB", (width, height), base)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(0, 6)):  # faint clutter, so that not every non-grey pixel is a shape
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(2, 6)
        shade = tuple(min(255, max(0, v + rng.randint(-40, 40))) for v in base)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=shade)
    return image


def generate(data_root: str | Path, images: int = 2000, seed: int = 0, name: str = "synthetic") -> dict:
    """Write ``images`` images with their refs; returns counts per split. Every tenth image goes to
    ``val``, so at least 10 are needed; the test splits share another tenth."""
    if images < 10:
        raise ValueError(f"images must be >= 10 (every tenth image goes to the val split), got {images}")
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(f"the dataset name {name!r} is not a folder name: give a name such as 'synthetic' "
                         f"(the set goes into DATA_ROOT/<name>)")
    data_root = Path(data_root)
    if data_root.exists() and not data_root.is_dir():
        raise ValueError(f"{data_root} is a file: the synthetic set needs a folder")
    image_dir = default_image_root(data_root, name)  # where ReferDataset looks (refcoco's: COCO's folder)
    dataset_dir = data_root / name
    if dataset_dir.is_dir() and any(dataset_dir.iterdir()):  # a dataset, synthetic or real, is never written over
        what = "a synthetic set" if (dataset_dir / "refs(unc).p").exists() else "a dataset"
        raise ValueError(f"{data_root} already holds {what} {name!r} ({dataset_dir} is not empty): choose another "
                         f"folder or --name (nothing is overwritten)")
    if image_dir.exists() and not image_dir.is_dir():
        raise ValueError(f"{image_dir} is a file, where the images of {name!r} go: choose another folder")
    # nor written into a real dataset's image folder; refcoco, refcoco+ and refcocog share one (COCO's)
    for path in image_dir.iterdir() if image_dir.is_dir() else ():
        own = path.name.startswith(f"{name}_")
        if own or not re.fullmatch(r".+_\d{6}\.png", path.name):  # another synthetic set's images may stay
            whose = f"{name}'s (left by an interrupted synth?)" if own else "another dataset's"
            raise ValueError(f"{image_dir} already holds {whose} images ({path.name}): choose another folder "
                             f"(nothing is overwritten)")
    rng = random.Random(seed)
    image_dir.mkdir(parents=True, exist_ok=True)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": kind} for i, kind in enumerate(KINDS)]
    records, annotations, refs = [], [], []
    counts = {split: {"images": 0, "refs": 0, "sentences": 0} for split in SPLITS}
    ann_id = ref_id = sent_id = 0
    for image_id in range(1, images + 1):
        width, height = rng.choice(((128, 128), (160, 120), (120, 160), (144, 96), (112, 112)))
        shapes: list[Shape] = []
        while len(shapes) < 2:
            shapes = _place(width, height, rng.choice((2, 2, 3, 3, 4)), rng)
        split = {0: "val", 5: "test"}.get(image_id % 10, "train")  # 80 / 10 / 10 %
        if split == "test":
            split = "testA" if len(shapes) == 2 else "testB"
        file_name = f"{name}_{image_id:06d}.png"
        pixels = np.array(_background(width, height, rng))  # (H, W, 3)
        masks = [polygon_mask([shape.polygon()], height, width) for shape in shapes]  # (H, W) each, disjoint
        for shape, mask in zip(shapes, masks):  # painted exactly where its annotation's mask is
            pixels[mask] = COLOURS[shape.colour]
        Image.fromarray(pixels).save(image_dir / file_name)
        records.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        counts[split]["images"] += 1
        for shape, mask in zip(shapes, masks):
            ann_id += 1
            polygon = shape.polygon()
            xs, ys = polygon[0::2], polygon[1::2]
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": KINDS.index(shape.kind) + 1,
                "segmentation": [polygon], "iscrowd": 0,
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                "area": int(mask.sum()),
            })
            texts = describe(shape, shapes, rng)
            if not texts:
                continue
            ref_id += 1
            sentences = []
            for text in texts:
                sent_id += 1
                sentences.append({"raw": text, "sent": text, "tokens": tokenize(text), "sent_id": sent_id})
            refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split,
                         "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences],
                         "category_id": KINDS.index(shape.kind) + 1, "file_name": file_name})
            counts[split]["refs"] += 1
            counts[split]["sentences"] += len(sentences)
    instances = {"images": records, "annotations": annotations, "categories": categories}
    (data_root / name / "instances.json").write_text(json.dumps(instances))
    with open(data_root / name / "refs(unc).p", "wb") as file:
        pickle.dump(refs, file)
    return counts
