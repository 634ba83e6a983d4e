"""Whole-model workloads shared by the ``train_step``, ``inference`` and ``memory`` groups: the
implementations compared, models built on the GPU, random batches, one training step, FLOP counts.

Implementations (the ``impl`` parameter of every group):
    ``reference``: eager PyTorch, explicit-softmax attention (``attention="math"``), ``fast=False``:
        the paper-era model.
    ``eager-sdpa``: eager PyTorch with SDPA attention, ``fast=False``.
    ``compile``: ``torch.compile`` of the reference model.
    ``fast``: the Triton kernels (``fast=True``) and the ``auto`` attention backend, fused AdamW.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

import restr_fast
from restr_fast import build_model, count_macs
from restr_fast.config import ATTENTION_BACKENDS

FAST_ATTENTION = "auto" if "auto" in ATTENTION_BACKENDS else "sdpa"
IMPLS = {
    "reference": dict(attention="math", fast=False),
    "eager-sdpa": dict(attention="sdpa", fast=False),
    "compile": dict(attention="math", fast=False),
    "fast": dict(attention=FAST_ATTENTION, fast=True),
}
BATCH = 8
LR, WEIGHT_DECAY = 1e-5, 5e-4  # the paper's recipe


def preset(patch_size: int) -> str:
    """The preset of the paper's model at a patch size (16 or 8)."""
    return {16: "restr-b16", 8: "restr-b16-p8"}[patch_size]


def model_for(impl: str, image_size: int, patch_size: int = 16, device: str = "cuda") -> restr_fast.ReSTR:
    """A randomly initialised ReSTR for ``impl``, built directly on ``device`` (fast to initialise)."""
    torch.manual_seed(0)
    with torch.device(device):
        return build_model(preset(patch_size), image_size=image_size, **IMPLS[impl])


def random_batch(config: restr_fast.ReSTRConfig, batch_size: int, device: str = "cuda"):
    """(images, tokens, masks): images in [-1, 1], sentences of 10 words (left-padded), masks of 0/1."""
    generator = torch.Generator(device=device).manual_seed(0)
    size, words = config.image_size, config.max_words
    images = torch.rand(batch_size, config.in_chans, size, size, generator=generator, device=device) * 2 - 1
    tokens = torch.randint(4, config.vocab_size, (batch_size, words), generator=generator, device=device)
    tokens[:, : words // 2] = 0
    masks = (torch.rand(batch_size, 1, size, size, generator=generator, device=device) > 0.7).float()
    return images, tokens, masks


def optimizer_for(model: torch.nn.Module, impl: str) -> torch.optim.AdamW:
    """AdamW with the paper's settings: fused for ``fast`` on a GPU, PyTorch's default (foreach) otherwise."""
    fused = impl == "fast" and next(model.parameters()).is_cuda
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, fused=fused or None)


def train_step(model: restr_fast.ReSTR, forward: Callable, optimizer: torch.optim.Optimizer,
               batch: tuple[torch.Tensor, ...]) -> Callable[[], None]:
    """One training step: forward and loss under bf16 autocast, backward, AdamW step.

    Args:
        model: the model (its config gives the loss settings).
        forward: ``model`` itself, or a compiled version of it.
        optimizer: over ``model``'s parameters.
        batch: (images, tokens, masks) from :func:`random_batch`.
    """
    images, tokens, masks = batch
    device_type = images.device.type

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            loss = restr_fast.loss(forward(images, tokens), masks, model.config)
        loss.backward()
        optimizer.step()

    return step


@functools.lru_cache(maxsize=None)
def forward_macs(image_size: int, patch_size: int = 16) -> int:
    """Multiply-accumulates of one image's forward pass, counted on a ``meta`` model (no compute).

    The same count serves every impl (the reference model's matrix products), so TFLOP/s compare
    like times: training is 3 x 2 x MACs per image, inference 2 x MACs.
    """
    with torch.device("meta"):
        model = build_model(preset(patch_size), image_size=image_size, attention="math", fast=False)
    return count_macs(model, image_size)
