"""Compute and size counters: multiply-accumulates of a forward pass, parameters per part."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .attention import attention_backend
from .text.vocabulary import UNK_INDEX

# The model's top-level parts, in forward order.
PARTS = ("vision", "language", "visual_proj", "text_proj", "fusion", "seed_classifier", "decoder")


def count_macs(model: nn.Module, img_size: int | tuple[int, int], batch_size: int = 1,
               by_part: bool = False) -> int | dict[str, int]:
    """Multiply-accumulates of one forward pass of a ReSTR model on ``img_size`` images.

    Matrix products are counted, the attention's q k^T and attention-times-v included (the pass runs
    with the explicit ``math`` attention so that they are plain matmuls); element-wise work,
    normalisation and interpolation are not, as in the paper's tables. Every sentence has
    ``max_words`` words. A fast model (``config.fast``) is counted as the reference model of its
    config, so that the count is the paper's operations wherever it runs (the fast path reorders the
    decoder's products and fuses some of them into kernels the counter does not see). Runs on the
    model's device; a model on the ``meta`` device is counted without computing anything.

    Returns:
        the total, or with ``by_part`` a dict of the top-level parts (``vision``, ``language``,
        ``fusion``, ...) and ``total``.
    """
    config = model.config
    if config.fast:
        with torch.device("meta"):
            model = type(model)(config.replace(fast=False))
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    parameter = next(model.parameters())
    images = torch.zeros(batch_size, config.in_chans, height, width, device=parameter.device,
                         dtype=parameter.dtype)
    tokens = torch.full((batch_size, config.max_words), UNK_INDEX, dtype=torch.long, device=parameter.device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), attention_backend("math"), counter:
        model(images, tokens)
    total = counter.get_total_flops() // 2
    if not by_part:
        return total
    flops = counter.get_flop_counts()
    root = type(model).__name__
    parts = {part: sum(flops.get(f"{root}.{part}", {}).values()) // 2 for part in PARTS}
    return {**parts, "total": total}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
