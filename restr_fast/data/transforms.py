"""Image loading, letterboxing to the model's square input, and mapping predictions back."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

MEAN = STD = 0.5  # the paper's normalisation, per channel
EXIF_ORIENTATION = 0x0112  # the EXIF tag
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # orientations that turn the stored image by a quarter turn


@dataclass(frozen=True)
class Letterbox:
    """Where an original (height, width) image sits inside the square model input."""

    height: int  # original size
    width: int
    top: int  # offset of the resized image in the input
    left: int
    resized_height: int
    resized_width: int


def load_image(path: str | Path, upright: bool = False) -> Image.Image:
    """An RGB PIL image from a file; grayscale, RGBA, palette and 16-bit images are converted.
    With ``upright``, turned by its EXIF orientation as image viewers show it (datasets' masks are
    drawn on the stored pixels, so they leave it off)."""
    with _opened(path) as image:
        image.load()
        sixteen_bit_pgm = image.mode == "I" and image.format == "PPM"  # Pillow scales its samples to 0..65535
        image = ImageOps.exif_transpose(image) if upright else image
        if sixteen_bit_pgm:  # as I;16, which to_rgb takes on 0..65535
            image = Image.fromarray(np.asarray(image).astype(np.uint16))
        return to_rgb(image)


def image_header_size(path: str | Path, upright: bool = False) -> tuple[int, int]:
    """(width, height) of an image file as stored, or with ``upright`` as shown turned by its EXIF
    orientation, from its header (without ``upright`` no pixel is decoded; Pillow may decode a PNG's to
    look for its EXIF)."""
    with _opened(path) as image:
        turned = upright and image.getexif().get(EXIF_ORIENTATION) in TRANSPOSING_ORIENTATIONS
        return image.size[::-1] if turned else image.size


@contextlib.contextmanager
def _opened(path: str | Path) -> Iterator[Image.Image]:
    """The image file at ``path`` opened by Pillow; a missing, unreadable or oversized file is a clear error."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            yield image
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    except Image.DecompressionBombError as error:  # not an OSError
        raise ValueError(f"cannot read image {path}: {error}; if the file is trusted, raise "
                         f"PIL.Image.MAX_IMAGE_PIXELS (or resize the image first)") from error


# The value each high-bit-depth PIL mode takes as full brightness (255 in 8 bits): 16-bit images
# (I;16, as Pillow opens 16-bit PNGs and TIFFs, and as load_image reads 16-bit PGMs) on their range; 32-bit
# integer and float images (I, F) on the 8-bit scale, as Pillow's own conversions to and from "L" take them.
_FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 255.0, "F": 255.0}


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of any PIL image; alpha is dropped. 16-bit grayscale (``I;16``) is scaled from 0..65535
    to 0..255; 32-bit integer and float grayscale (``I``, ``F``) are taken on the 0..255 scale, as Pillow
    takes them; values beyond are clipped."""
    if image.mode in _FULL_SCALE:
        values = np.asarray(image, dtype=np.float64) * (255.0 / _FULL_SCALE[image.mode])
        image = Image.fromarray(np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8))
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image has no pixels (size {image.width}x{image.height})")
    return image if image.mode == "RGB" else image.convert("RGB")


def letterbox_box(height: int, width: int, size: int) -> Letterbox:
    """Scale the long side to ``size`` and centre the image on a size x size canvas."""
    scale = size / max(height, width)
    resized_h, resized_w = max(1, round(height * scale)), max(1, round(width * scale))
    return Letterbox(height, width, (size - resized_h) // 2, (size - resized_w) // 2, resized_h, resized_w)


def letterbox_image(image: Image.Image, size: int) -> tuple[torch.Tensor, Letterbox]:
    """(3, size, size) float input normalised with mean = std = 0.5 (padding is 0, mid-grey), and its box.
    Images of any mode are converted to RGB first (:func:`to_rgb`)."""
    image = to_rgb(image)
    box = letterbox_box(image.height, image.width, size)
    resized = image.resize((box.resized_width, box.resized_height), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32)).permute(2, 0, 1) / 255.0  # (3, h, w)
    canvas = torch.zeros(3, size, size, dtype=torch.float32)  # whatever torch's default dtype
    canvas[:, box.top: box.top + box.resized_height, box.left: box.left + box.resized_width] = (pixels - MEAN) / STD
    return canvas, box


def letterbox_mask(mask: np.ndarray, box: Letterbox, size: int) -> torch.Tensor:
    """(1, size, size) float {0, 1} mask resized with nearest neighbours into the box; ``mask`` is
    (height, width), non-zero where the object is (bool, {0, 1} or {0, 255})."""
    mask = np.asarray(mask)
    if mask.shape != (box.height, box.width):
        raise ValueError(f"mask of shape {mask.shape} does not match its image's (height, width) "
                         f"= {(box.height, box.width)}")
    resized = Image.fromarray((mask != 0).astype(np.uint8) * 255).resize((box.resized_width, box.resized_height),
                                                                   Image.NEAREST)
    canvas = torch.zeros(1, size, size, dtype=torch.float32)
    canvas[0, box.top: box.top + box.resized_height, box.left: box.left + box.resized_width] = \
        torch.from_numpy(np.asarray(resized) > 127).float()
    return canvas


def unletterbox(logits: torch.Tensor, box: Letterbox) -> torch.Tensor:
    """Model-input logits (..., size, size) -> logits at the original (..., height, width).

    The padding is cut away, then the logits are resized bilinearly."""
    inside = logits[..., box.top: box.top + box.resized_height, box.left: box.left + box.resized_width]
    leading = inside.shape[:-2]
    inside = inside.reshape(-1, 1, *inside.shape[-2:]).float()
    restored = F.interpolate(inside, size=(box.height, box.width), mode="bilinear", align_corners=False)
    return restored.reshape(*leading, box.height, box.width)
