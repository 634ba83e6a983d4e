"""Where the GPU time of one workload goes: ``python -m benchmarks.profile_step [--impl fast]``.

Profiles a few warmed-up training steps (batch 8, bf16 autocast; the same step as the
``train_step`` group) with ``torch.profiler`` and prints the kernels that take the most GPU time,
the step's wall time against the GPU's busy time (a step much longer than its GPU time is bound
by the CPU's launches), and the number of kernel launches per step. ``--decoder`` profiles the
decoder's forward + backward alone instead. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from restr_fast import get_config
from restr_fast.models.decoder import Decoder

from .workloads import IMPLS, model_for, optimizer_for, random_batch, train_step


def workload(impl: str, image_size: int, patch_size: int, decoder_only: bool):
    """A no-argument function running one step of the chosen workload on the GPU."""
    if not decoder_only:
        model = model_for(impl, image_size, patch_size)
        return train_step(model, model, optimizer_for(model, impl), random_batch(model.config, 8))
    config = get_config("restr-b16", image_size=image_size, patch_size=patch_size, fast=impl == "fast")
    decoder = Decoder(config).cuda()
    grid = image_size // patch_size
    x = torch.randn(8, grid, grid, 2 * config.dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(8, 1, image_size, image_size, device="cuda", dtype=torch.bfloat16)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = decoder(x)
        logits.backward(grad)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", default="fast", choices=[i for i in IMPLS if i != "compile"])
    parser.add_argument("--image-size", type=int, default=480)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--decoder", action="store_true", help="the decoder alone")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_step needs a CUDA GPU")

    step = workload(args.impl, args.image_size, args.patch_size, args.decoder)
    for _ in range(3):  # compile the kernels, choose the cuBLAS algorithms
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()  # timed without the profiler, which adds to every op's host time
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - start) * 1e3 / args.steps
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()

    events = profiler.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_ms = sum(e.self_device_time_total for e in kernels) / 1e3 / args.steps
    launches = sum(e.count for e in kernels) / args.steps
    what = "decoder forward + backward" if args.decoder else "training step"
    print(f"{what}, {args.impl}, {args.image_size}/{args.patch_size}, batch 8: {wall_ms:.2f} ms per step, "
          f"GPU busy {gpu_ms:.2f} ms ({100 * gpu_ms / wall_ms:.0f} %), {launches:.0f} kernels per step")
    print(events.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
