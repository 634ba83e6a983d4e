"""One training step of the whole model (forward, loss, backward, AdamW) at batch 8, bf16 autocast.

Sizes: 480/16 (the paper's), 480/8 (3,600 patch tokens), 640/16. Each case times the
implementations of :mod:`benchmarks.workloads`, baselines first, so ``fast`` gets its ratios to
``reference`` and ``eager-sdpa`` of the same run; ``extra_info`` adds images/s, peak memory and
TFLOP/s (3 x 2 x the reference's MACs per image).

Cost on one H200, from DESIGN.md section 2 (about 10 steps per case, plus building the model):
    480/16: reference 77 ms/step ~1.5 s, eager-sdpa 53 ms ~1 s, fast ~1 s
    480/8:  eager-sdpa 137 ms ~2 s, fast ~1.5 s (reference skipped: 614 ms and 121.5 GB a step;
            the memory group records its peak from one step)
    640/16: reference ~150 ms ~2 s, eager-sdpa 78 ms ~1.3 s, fast ~1 s
    compile (480/16, the reference model): ~50-60 s of compilation, then ~1 s. It runs last in the
            suite (marker ``costly``) and only while the time budget allows (conftest.time_left).
Group total: about 12 s, about 75 s with the compile case.
"""
from __future__ import annotations

import contextlib
import signal

import pytest
import torch

from .conftest import out_of_memory_reason, release_memory, requires_gpu, skip_unless_time, time_left
from .workloads import BATCH, forward_macs, model_for, optimizer_for, random_batch, train_step

CASE_S = 10  # budget check per eager case (estimates above, with margin)
COMPILE_S = 90  # compilation ~50-60 s on an H200, plus margin for a slower host
ROUNDS = 5

REFERENCE_P8 = "reference at 480/8: ~614 ms and 121.5 GB per step on an H200 (more than an H100 has); " \
               "the memory group records its peak from one step"
CASES = [  # (image size, patch size, impl), the baselines first in each case
    (480, 16, "reference"), (480, 16, "eager-sdpa"), (480, 16, "fast"),
    (480, 8, "reference"), (480, 8, "eager-sdpa"), (480, 8, "fast"),
    (640, 16, "reference"), (640, 16, "eager-sdpa"), (640, 16, "fast"),
]
PARAMS = [pytest.param(*case, id=f"{case[2]}-{case[0]}-p{case[1]}",
                       marks=[pytest.mark.skip(reason=REFERENCE_P8)] if case == (480, 8, "reference") else [])
          for case in CASES]


@requires_gpu
@pytest.mark.benchmark(group="train_step")
@pytest.mark.parametrize("image_size, patch_size, impl", PARAMS)
def test_train_step(benchmark, measure, image_size, patch_size, impl):
    skip_unless_time(CASE_S)
    run_case(benchmark, measure, impl, image_size, patch_size)


@requires_gpu
@pytest.mark.costly
@pytest.mark.benchmark(group="train_step")
def test_train_step_compile(benchmark, measure):
    """torch.compile of the reference model at 480/16; compiled in two warm-up steps under a deadline."""
    skip_unless_time(COMPILE_S)
    run_case(benchmark, measure, "compile", 480, 16)


def run_case(benchmark, measure, impl: str, image_size: int, patch_size: int) -> None:
    """Time training steps of ``impl``; an out-of-memory skips the case with the reason."""
    release_memory()
    model = model_for(impl, image_size, patch_size)
    optimizer = optimizer_for(model, impl)
    forward = torch.compile(model) if impl == "compile" else model
    step = train_step(model, forward, optimizer, random_batch(model.config, BATCH))
    flop = 3 * 2 * forward_macs(image_size, patch_size) * BATCH
    failure = None
    try:
        if impl == "compile":
            with deadline(time_left() - 10):
                step(), step()  # compiles forward and backward
        median = measure(step, impl=impl, case=f"{image_size}-p{patch_size}-b{BATCH}", flop=flop,
                         rounds=ROUNDS, round_s=0.05)
    except Exception as error:  # noqa: BLE001 - only the two expected failures are kept
        failure = expected_failure(error)
        if failure is None:
            raise
    if failure is not None:  # outside the except block, so the error's frames (and tensors) are freed
        del model, optimizer, forward, step
        release_memory()
        pytest.skip(failure)
    benchmark.extra_info["images_per_s"] = BATCH / median
    benchmark.extra_info.update(image_size=image_size, patch_size=patch_size, batch=BATCH)


def expected_failure(error: Exception) -> str | None:
    """The skip reason for an out-of-memory or an overrun time budget (torch.compile may wrap the
    TimeoutError in its own exception), else None."""
    budget_lines = [line for line in str(error).splitlines() if "time budget" in line]
    return out_of_memory_reason(error) or (budget_lines[0].strip() if budget_lines else None)


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise TimeoutError in the block after ``seconds`` (SIGALRM), so a compilation that would
    overrun the suite's time limit (and lose every result) stops and its case skips instead."""
    if seconds <= 0:
        raise TimeoutError("time budget: no time left for the compilation")

    def on_alarm(signum, frame):
        raise TimeoutError(f"time budget: compilation still running after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
