"""The coarse-to-fine decoder alone, forward + backward, bf16 autocast, batch 8: eager PyTorch (the
published order), eager PyTorch with each Linear moved before its upsampling (``eager-commuted``),
``torch.compile`` of the eager decoder, and the fused Triton decoder (``fast``).

Two times per case, as in the ``seed_mask`` group: the wall-clock time per call (``median ms``,
what the targets are checked against) and the GPU's own time per call, replayed from a CUDA graph
of one call (``gpu_ms``; one call's maps are far larger than the L2 cache). Where the two differ,
the CPU's dispatch and launches, or something else on the machine, held the GPU up.

Cost on an H200 (DESIGN.md section 2): eager about 22 ms per call at 480/16, so each case takes
a few seconds; each compile warm-up about 20-40 s, so the compile rows of 480/8 and 640/16 are
``costly``: they run after every other benchmark, where a short time budget skips them first.
"""
import pytest
import torch
import torch.nn.functional as F

from restr_fast import get_config
from restr_fast.models.decoder import Decoder, upsample2x

from .cases import DECODER_SIZES
from .conftest import requires_gpu, skip_unless_time

B = 8
IMPLS = ("eager", "eager-commuted", "compile", "fast")  # the baseline first in each case


def commuted(decoder: Decoder):
    """The eager decoder with each Linear before its upsampling (same result up to rounding)."""
    def forward(x):
        for block in decoder.blocks:
            x = F.leaky_relu(upsample2x(block.linear(x)), block.negative_slope)
        return decoder.head(x).permute(0, 3, 1, 2)
    return forward


def decoder_for(impl: str, case: str):
    size, patch = DECODER_SIZES[case]
    config = get_config("restr-b16", image_size=size, patch_size=patch, fast=impl == "fast")
    torch.manual_seed(0)
    decoder = Decoder(config).cuda()
    if impl == "compile":
        return config, decoder, torch.compile(decoder)
    if impl == "eager-commuted":
        return config, decoder, commuted(decoder)
    return config, decoder, decoder


CASES = [pytest.param(case, impl, id=f"{impl}-{case}",
                      marks=[pytest.mark.costly] if impl == "compile" and case != "480/16" else [])
         for case in DECODER_SIZES for impl in IMPLS]


@requires_gpu
@pytest.mark.kernels
@pytest.mark.benchmark(group="decoder")
@pytest.mark.parametrize("case, impl", CASES)
def test_decoder(benchmark, measure, case, impl):
    skip_unless_time(60 if impl == "compile" else 10)
    config, decoder, forward = decoder_for(impl, case)
    grid = config.image_size // config.patch_size
    x = torch.randn(B, grid, grid, 2 * config.dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(B, 1, config.image_size, config.image_size, device="cuda", dtype=torch.bfloat16)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = forward(x)
        logits.backward(grad)

    # FLOPs of the published order (forward + backward: 3x its multiply-accumulates, 2 FLOP each);
    # the commuted and fused paths do about a quarter of them
    macs = sum(B * (grid << k) ** 2 * 4 * c * (c // 2) for k, c in enumerate(config.decoder_channels[:-1]))
    macs += B * config.image_size ** 2 * config.decoder_channels[-1]
    measure(step, impl=impl, case=case, flop=6 * macs, rounds=10, round_s=0.05, graph_calls=[step])
    benchmark.extra_info["image_size"], benchmark.extra_info["patch_size"] = config.image_size, config.patch_size
