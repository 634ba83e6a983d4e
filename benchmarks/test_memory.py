"""Memory scaling: peak GPU memory of one batch-8 training step (bf16 autocast, AdamW) over image
sizes 320, 480, 640, 800 and patch sizes 16, 8, for ``reference``, ``fast`` and ``fast`` with
activation checkpointing (``fast-checkpointing``).

Each configuration runs two steps: the first allocates the optimizer's state, the second is the one
measured (peak memory allocated by PyTorch, and its time as ``step_ms``: one step, not a timing to
quote). An out-of-memory is recorded (``extra_info["oom"]``), not raised. The benchmark's own timing
covers the whole case (model construction and both steps) and means nothing; ``python -m
benchmarks.report`` reads ``extra_info`` and finds, for a memory budget, the largest configuration
each implementation trains.

Cost on one H200 (scaled from DESIGN.md section 2): steps from ~20 ms (320/16) to ~1 s (fast at
800/8); the reference's explicit attention needs ~120 GB at 480/8 (~0.6 s a step) and runs out of
memory within a second at 640/8 and 800/8. 24 configurations, about 25 s in all.
"""
from __future__ import annotations

import pytest
import torch

from .conftest import is_out_of_memory, release_memory, requires_gpu, skip_unless_time, synchronized_timer
from .workloads import BATCH, model_for, optimizer_for, random_batch, train_step

IMAGE_SIZES = (320, 480, 640, 800)
PATCH_SIZES = (16, 8)
IMPLS = ("reference", "fast", "fast-checkpointing")
CASES = [(p, size, impl) for p in PATCH_SIZES for size in IMAGE_SIZES for impl in IMPLS]
CASE_S = 8  # budget check per configuration


@requires_gpu
@pytest.mark.benchmark(group="memory")
@pytest.mark.parametrize("patch_size, image_size, impl", CASES,
                         ids=[f"{impl}-{size}-p{p}" for p, size, impl in CASES])
def test_memory(benchmark, patch_size, image_size, impl):
    skip_unless_time(CASE_S)
    release_memory()
    result: dict = {}
    benchmark._timer = synchronized_timer  # pytest-benchmark reads its timer from this attribute
    benchmark.pedantic(lambda: result.update(two_steps(impl, image_size, patch_size)), rounds=1, iterations=1)
    release_memory()
    benchmark.extra_info.update(impl=impl, case=f"{image_size}-p{patch_size}-b{BATCH}", image_size=image_size,
                                patch_size=patch_size, batch=BATCH, **result)


def two_steps(impl: str, image_size: int, patch_size: int) -> dict:
    """Build ``impl``'s model, run two training steps; the second one's peak memory and time, or
    ``oom`` with the allocator's message. Everything allocated here is freed on return."""
    base = "fast" if impl == "fast-checkpointing" else impl
    try:
        model = model_for(base, image_size, patch_size)
        model.set_grad_checkpointing(impl == "fast-checkpointing")
        step = train_step(model, model, optimizer_for(model, base), random_batch(model.config, BATCH))
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = synchronized_timer()
        step()
        seconds = synchronized_timer() - start
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        return {"oom": True, "error": str(error).splitlines()[0]}
    return {"oom": False, "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9, "step_ms": seconds * 1e3}
