"""Attention alone, forward + backward, through :func:`restr_fast.attention.attention`, per backend.

B = 8, H = 12, head dim 64, bf16; N = 920 (the fusion encoder at 480/16: 900 patches + 20 words)
and 3,620 (480/8), without and with a key-padding mask (10 of the 20 words padded, as in the fusion
encoder). impl -> backend: ``reference`` -> ``math`` (explicit softmax), ``eager-sdpa`` -> ``sdpa``,
``xformers`` -> ``xformers`` (skips with the reason where it cannot run), ``fast`` -> ``auto``
(``extra_info["backend"]`` names what it chose). TFLOP/s counts 3 x the forward's 4 B H N^2 d.

Cost on one H200: 16 cases of ~0.5 s (math at N = 3,620 is ~20 ms a call, the others 0.3-5 ms);
about 10 s in all.
"""
from __future__ import annotations

import pytest
import torch

from restr_fast import attention as attention_module
from restr_fast.config import ATTENTION_BACKENDS

from .conftest import out_of_memory_reason, release_memory, requires_gpu, skip_unless_time

B, H, HEAD_DIM, PADDED_WORDS = 8, 12, 64, 10
BACKENDS = {"reference": "math", "eager-sdpa": "sdpa", "xformers": "xformers", "fast": "auto"}
CASES = [(n, masked, impl) for n in (920, 3620) for masked in (False, True) for impl in BACKENDS]


def unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run on this GPU, or None."""
    if backend not in ATTENTION_BACKENDS:
        return f"attention backend {backend!r} does not exist in this version of restr_fast"
    if backend == "xformers":
        available, reason = attention_module.xformers_status(torch.device("cuda"))
        return None if available else f"xformers: {reason}"
    return None


@requires_gpu
@pytest.mark.kernels
@pytest.mark.benchmark(group="attention")
@pytest.mark.parametrize("n, masked, impl", CASES,
                         ids=[f"{impl}-N{n}{'-keymask' if masked else ''}" for n, masked, impl in CASES])
def test_attention(benchmark, measure, n, masked, impl):
    skip_unless_time(3)
    backend = BACKENDS[impl]
    reason = unavailable(backend)
    if reason:
        pytest.skip(reason)
    release_memory()
    q, k, v = (torch.randn(B, H, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad_out = torch.randn(B, H, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    key_mask = None
    if masked:
        key_mask = torch.ones(B, n, dtype=torch.bool, device="cuda")
        key_mask[:, n - 20: n - 20 + PADDED_WORDS] = False  # the padded words of [patches, words]

    def step():  # autograd.grad: the gradients alone, no accumulation into .grad (an extra pass)
        out = attention_module.attention(q, k, v, key_mask, backend=backend)
        return torch.autograd.grad(out, (q, k, v), grad_out)

    flop = 3 * 4 * B * H * n * n * HEAD_DIM
    failure = None
    try:
        measure(step, impl=impl, case=f"N{n}{'-keymask' if masked else ''}", flop=flop, rounds=10, round_s=0.03)
    except RuntimeError as error:
        failure = out_of_memory_reason(error)
        if failure is None:
            raise
    if failure is not None:  # outside the except block, so the error's frames (and tensors) are freed
        del q, k, v, grad_out
        release_memory()
        pytest.skip(failure)
    if backend == "auto":
        benchmark.extra_info["backend"] = attention_module.resolve_backend(backend, q.device)
