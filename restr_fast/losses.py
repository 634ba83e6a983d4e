"""The training loss of eq. 12 and the patch labels of eq. 11."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .config import ReSTRConfig
from .models.restr import ReSTROutput


class LossTerms(NamedTuple):
    total: torch.Tensor  # patch_loss_weight * patch + pixel
    patch: torch.Tensor  # BCE of the patch logits against the patch labels
    pixel: torch.Tensor  # BCE of the pixel logits against the mask


def patch_labels(masks: torch.Tensor, patch_size: int, rule: str = "mean",
                 threshold: float = 0.8) -> torch.Tensor:
    """Patch-level labels of ground-truth masks (eq. 11).

    Args:
        masks: (B, 1, H, W) masks in {0, 1}, H and W multiples of ``patch_size``.
        rule: ``mean``: a patch is 1 when the mean of its mask exceeds ``threshold``;
            ``any``: when any of its pixels is 1.

    Returns:
        (B, 1, H/P, W/P) float labels in {0, 1}.
    """
    masks = masks.float()
    if rule == "mean":
        return (F.avg_pool2d(masks, patch_size) > threshold).float()
    if rule == "any":
        return (F.max_pool2d(masks, patch_size) > 0).float()
    raise ValueError(f"unknown patch label rule {rule!r}; choose 'mean' or 'any'")


def loss_terms(output: ReSTROutput, masks: torch.Tensor, config: ReSTRConfig) -> LossTerms:
    """lambda * BCE(patch logits, patch labels) + BCE(pixel logits, masks), from logits, in fp32.

    ``masks`` hold values in [0, 1] (a 0/255 mask is an error); the values are checked for CPU
    tensors only: on a GPU it would cost a synchronisation per step, and the datasets' masks are
    0/1 already.
    """
    if not isinstance(masks, torch.Tensor) or masks.shape != output.pixel_logits.shape:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks must have the shape of the pixel logits "
                         f"{tuple(output.pixel_logits.shape)} (B, 1, H, W), got {shape}")
    if masks.is_complex() or not (masks.is_floating_point() or masks.dtype in (torch.bool, torch.uint8)):
        raise TypeError(f"masks must be bool, uint8 or floating point in {{0, 1}}, got {masks.dtype}")
    if masks.device.type == "cpu" and not torch.compiler.is_compiling():
        if not ((masks >= 0) & (masks <= 1)).all():
            raise ValueError(f"masks must hold values in [0, 1], got values in [{float(masks.min())}, "
                             f"{float(masks.max())}]: divide a 0/255 mask by 255, or compare it with 0")
    masks = masks.float()
    labels = patch_labels(masks, config.patch_size, config.patch_label, config.patch_label_threshold)
    patch = F.binary_cross_entropy_with_logits(output.patch_logits.float(), labels)
    pixel = F.binary_cross_entropy_with_logits(output.pixel_logits.float(), masks)
    return LossTerms(config.patch_loss_weight * patch + pixel, patch, pixel)


def loss(output: ReSTROutput, masks: torch.Tensor, config: ReSTRConfig) -> torch.Tensor:
    """The scalar training loss of eq. 12; see :func:`loss_terms`."""
    return loss_terms(output, masks, config).total
