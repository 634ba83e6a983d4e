"""The small CPU group: restr-tiny training step and inference, reference against fast.

On the CPU the fast model uses SDPA attention and the PyTorch form of the fused ops (Triton runs
on GPUs only); the reference model uses explicit-softmax attention, as in the paper's era.
"""
import pytest
import torch

import restr_fast
from restr_fast import build_model, count_macs

from .conftest import cpu_only

BATCH = 8
IMPLS = {"reference": dict(attention="math", fast=False), "fast": dict(attention="sdpa", fast=True)}


def model_and_batch(impl):
    torch.manual_seed(0)
    model = build_model("restr-tiny", **IMPLS[impl])
    size = model.config.image_size
    images = torch.rand(BATCH, 3, size, size) * 2 - 1
    tokens = torch.randint(4, model.config.vocab_size, (BATCH, model.config.max_words))
    tokens[:, :10] = 0
    masks = (torch.rand(BATCH, 1, size, size) > 0.8).float()
    return model, images, tokens, masks


@cpu_only
@pytest.mark.benchmark(group="cpu-train_step")
@pytest.mark.parametrize("impl", list(IMPLS))
def test_cpu_train_step(measure, impl):
    model, images, tokens, masks = model_and_batch(impl)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        restr_fast.loss(model(images, tokens), masks, model.config).backward()
        optimizer.step()

    flop = 3 * 2 * count_macs(model, model.config.image_size, batch_size=BATCH)  # forward + backward
    measure(step, impl=impl, case=f"restr-tiny-b{BATCH}", flop=flop, rounds=5, round_s=0.2)


@cpu_only
@pytest.mark.benchmark(group="cpu-inference")
@pytest.mark.parametrize("impl", list(IMPLS))
def test_cpu_inference(measure, impl):
    model, images, tokens, _ = model_and_batch(impl)
    model.eval()

    def predict():
        with torch.inference_mode():
            return model(images, tokens).pixel_logits > 0

    flop = 2 * count_macs(model, model.config.image_size, batch_size=BATCH)
    measure(predict, impl=impl, case=f"restr-tiny-b{BATCH}", flop=flop, rounds=5, round_s=0.2)
