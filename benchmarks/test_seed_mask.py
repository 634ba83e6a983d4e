"""Fused seed-classifier scores + sigmoid + masking against eager PyTorch and torch.compile."""
import pytest
import torch

from restr_fast.kernels import seed_mask
from restr_fast.kernels.seed_mask import seed_mask_reference

from .conftest import requires_gpu

B, D = 8, 768
CASES = [(n, p, impl) for n in (900, 3600) for p in ("forward", "forward+backward")
         for impl in ("eager", "compile", "fast")]  # the baseline first in each case

_compiled_reference = None


def implementation(impl):
    global _compiled_reference
    if impl == "eager":
        return seed_mask_reference
    if impl == "compile":
        _compiled_reference = _compiled_reference or torch.compile(seed_mask_reference)
        return _compiled_reference
    return seed_mask


@requires_gpu
@pytest.mark.kernels
@pytest.mark.benchmark(group="seed_mask")
@pytest.mark.parametrize("n, pass_, impl", CASES, ids=[f"{impl}-{p}-N{n}" for n, p, impl in CASES])
def test_seed_mask(benchmark, measure, copy_bandwidth, n, pass_, impl):
    op = implementation(impl)
    patches = torch.randn(B, n, D, device="cuda", dtype=torch.bfloat16, requires_grad=pass_ != "forward")
    classifier = torch.randn(B, D, device="cuda", dtype=torch.bfloat16, requires_grad=pass_ != "forward")
    grad_logits = torch.randn(B, n, device="cuda", dtype=torch.bfloat16)
    grad_masked = torch.randn(B, n, D, device="cuda", dtype=torch.bfloat16)

    if pass_ == "forward":
        def step():
            with torch.no_grad():
                return op(patches, classifier)
        bytes_moved = 2 * (2 * B * n * D + B * n + B * D)  # read patches, write masked and logits (bf16)
    else:
        def step():
            logits, masked = op(patches, classifier)
            torch.autograd.backward([logits, masked], [grad_logits, grad_masked])
        # forward: read patches, write masked; backward: read patches and grad masked, write grad patches
        bytes_moved = 2 * 5 * B * n * D
    median = measure(step, impl=impl, case=f"{pass_}-N{n}", bytes_moved=bytes_moved)
    # target: within 1.3x of the time the bytes take at the card's copy bandwidth
    benchmark.extra_info["time_vs_copy_floor"] = median / (bytes_moved / copy_bandwidth)
