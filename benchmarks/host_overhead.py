"""Host time of an eager seed_mask call, its kernel launches stubbed out:
``python -m benchmarks.host_overhead``.

At the benchmark's size (B = 8, N = 900, D = 768) a seed_mask call is a few microseconds of GPU
work, so the Python and torch work around its launches bounds it. This times that work on any
machine: without Triton's interpreter, CPU tensors take the kernels' path and every launch does
nothing. It prints microseconds per call (the fastest round's mean, on one CPU thread) for the
forward under ``torch.no_grad`` and for forward and backward through ``torch.autograd.grad``, with
the kernels launched bare, as eager calls launch them, and through ``wrap_triton``'s higher-order
op, as a launch outside both ``eager_launches`` and ``torch.compile`` would go.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import time
from typing import Callable, Iterator

import torch
from torch.library import wrap_triton
from triton.runtime.jit import JITFunction

op_registry = importlib.import_module("restr_fast.kernels.op_registry")
seed_mask_module = importlib.import_module("restr_fast.kernels.seed_mask")
B, N, D = 8, 900, 768


def stub_launches() -> None:
    """CPU tensors take the kernels' path, and every seed_mask kernel launch does nothing."""
    op_registry.kernel_can_run = lambda tensor: True
    for kernel in vars(seed_mask_module).values():
        if isinstance(kernel, JITFunction):
            kernel.run = lambda *args, **kwargs: None


@contextlib.contextmanager
def launched_through(launcher: Callable) -> Iterator[None]:
    """seed_mask's launches made by ``launcher(kernel)`` meanwhile."""
    original = seed_mask_module.launcher
    seed_mask_module.launcher = launcher
    try:
        yield
    finally:
        seed_mask_module.launcher = original


def host_microseconds(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """The fastest round's mean time per call of ``fn``, in microseconds."""
    for _ in range(max(1, calls // 10)):  # warm-up
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    if op_registry.INTERPRETED:
        raise SystemExit("host_overhead times the launch path of a GPU: run it without TRITON_INTERPRET=1")
    torch.set_num_threads(1)
    stub_launches()
    patches, classifier = torch.randn(B, N, D, requires_grad=True), torch.randn(B, D, requires_grad=True)
    grad_logits, grad_masked = torch.randn(B, N), torch.randn(B, N, D)

    def forward() -> None:
        with torch.no_grad():
            seed_mask_module.seed_mask(patches, classifier)

    def forward_backward() -> None:
        logits, masked = seed_mask_module.seed_mask(patches, classifier)
        torch.autograd.grad([logits, masked], [patches, classifier], [grad_logits, grad_masked])

    print(f"seed_mask host time per call, B = {B}, N = {N}, D = {D}, launches stubbed out, one CPU thread (us)")
    print(f"{'launches':<40}{'forward':>10}{'forward+backward':>18}")
    for name, launcher in (("bare (eager calls)", seed_mask_module.launcher),
                           ("through wrap_triton's higher-order op", wrap_triton)):
        with launched_through(launcher):
            times = [host_microseconds(fn, args.calls, args.rounds) for fn in (forward, forward_backward)]
        print(f"{name:<40}{times[0]:>10.1f}{times[1]:>18.1f}")


if __name__ == "__main__":
    main()
