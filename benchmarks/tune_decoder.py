"""The decoder kernels' tile sizes and forms against the decoder's forward + backward time on this
GPU: ``python -m benchmarks.tune_decoder [--image-size 480] [--patch-size 16]``.

The launchers in :mod:`restr_fast.kernels.decoder` choose tiles from static analysis (ptxas's
registers, SASS instructions per element; see ``tests/kernels/test_gpu_compilation.py``). This
replaces one choice at a time (the backward's lanes, on input columns or on column pairs, its tile
and warps, its strip height and pipeline stages, the forward's tile and warps), times the fused
decoder's forward + backward (batch 8, bf16 autocast, as in the ``decoder`` benchmark group) with
each, and prints them fastest first, the defaults marked, so that a GPU session can confirm or
replace them. Before it is timed, each variant's pixel logits and gradients (of the input and every
weight) at the same size, in bf16, are checked against the fp64 reference decoder, held to the
larger error of PyTorch's and the defaults' (:func:`results_check`); one that fails is listed as a
wrong result and never chosen. With ``--then-benchmark JSON``, where a variant
beats the defaults (:func:`benchmarks.tuning.best_variant`), it then runs the ``decoder`` benchmark
group's eager and fast cases with that variant into JSON: what making it the default would measure.
Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import statistics
from typing import Callable, Sequence

import torch

from restr_fast import get_config
from restr_fast.kernels import fused_decoder
from restr_fast.kernels.decoder import decoder_reference

from .profile_step import workload
from .checks import Check, CheckedCase, check_against_the_defaults, largest_error
from .tuning import (Variant, add_benchmark_arguments, benchmark_fastest, print_fastest_first, replaced,
                     time_variants, variants_deadline)

decoder_kernels = importlib.import_module("restr_fast.kernels.decoder")

# one dimension at a time, around the defaults (backward 16x64 with 8 warps; forward 32 column
# pairs x 64 channels with 8 warps, 64 x 32 for the head's 96 channels; strips of 24 rows on a
# GPU); forward 32x64 everywhere puts the head's 96 channels in two tiles of 64, a quarter of the
# second one's lanes idle
BACKWARD_TILES = [(16, 64, 4), (32, 32, 8), (16, 32, 4), (32, 64, 8), (8, 64, 4)]
STRIP_ROWS = [8, 16, 48]
FORWARD_TILES = [(32, 64, 8), (16, 64, 4), (64, 64, 8), (32, 32, 4)]  # (column pairs, channels, warps)
STAGES_TRIED = [2, 3]  # of the backward's walk, prefetching the next pairs' loads (default 1: none)
# the benchmark group run with the fastest variant: its file, and the cases the targets need
BENCHMARK = ("benchmarks/test_decoder.py", "not compile and not commuted")


def four_warps(channels: int, dtype: torch.dtype, default=decoder_kernels._backward_blocks) -> tuple[int, int, int]:
    """The backward's default tiles (1K elements, channels as wide as the launcher takes them) with 4
    warps instead of 8: 8 elements a thread."""
    return (*default(channels, dtype)[:2], 4)


def variants() -> list[Variant]:
    """(label, replacements) for every alternative tried."""
    # the choices not yet timed on a GPU first, in case a time bound cuts the run: the backward on column
    # pairs, at the defaults' tiles and at 8 elements a thread (4 warps; 95-128 registers on sm_90)
    column_pairs = (decoder_kernels, "BACKWARD_ON_COLUMN_PAIRS", True)
    found = [("backward on column pairs", [column_pairs]),
             ("backward on column pairs, 4 warps", [column_pairs, (decoder_kernels, "_backward_blocks", four_warps)])]
    found += [(f"backward in {stages} pipeline stages", [(decoder_kernels, "BACKWARD_STAGES", stages)])
              for stages in STAGES_TRIED]
    found += [(f"backward {j}x{c}, {w} warps",
               [(decoder_kernels, "_backward_blocks", lambda channels, dtype, t=(j, c, w): t)])
              for j, c, w in BACKWARD_TILES]
    found += [(f"strips of {rows} rows", [(decoder_kernels, "_strip_rows", lambda h, rows=rows: rows)])
              for rows in STRIP_ROWS]
    found += [(f"forward {q}x{c}, {w} warps", [(decoder_kernels, "_row_blocks", lambda channels, t=(q, c, w): t)])
              for q, c, w in FORWARD_TILES]
    return found


def results_check(batch: int, grid: int, channels: Sequence[int], negative_slope: float,
                  dtype: torch.dtype = torch.bfloat16, device: str = "cuda") -> Check:
    """A check of the fused decoder as its kernels are set when it is called, made with the defaults
    (:func:`benchmarks.checks.check_against_the_defaults`): pixel logits and the gradients of the
    input and every weight, on a random (batch, grid, grid, channels[0]) input and random weights at
    the model's initialisation scale (``channels``: entering each block), in ``dtype``, against the
    fp64 reference decoder. PyTorch's error is the larger of the decoder's in ``dtype`` in two orders:
    as published, and with the products at low resolution, where the kernels round them (on one draw
    of a 96 x 96 decoder, 4.9 and 12.9 on one gradient); the rule's atol a thousandth of the largest
    exact value (the GPU tests')."""
    generator = torch.Generator(device).manual_seed(0)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator, device=device) * scale
    weights = [rand(c // 2, c, scale=(2 / c) ** 0.5) for c in channels]
    last, size = channels[-1] // 2, grid << len(channels)
    tensors = [rand(batch, grid, grid, channels[0]), *weights, rand(1, last, scale=last ** -0.5),
               rand(1, scale=last ** -0.5)]
    upstream = rand(batch, 1, size, size)  # the pixel logits' gradient

    def results(decoder, precision):
        leaves = [t.detach().to(precision).requires_grad_() for t in tensors]
        out = decoder(leaves[0], leaves[1:-2], leaves[-2], leaves[-1], negative_slope)
        return [out.detach(), *torch.autograd.grad(out, leaves, upstream.to(precision))]
    exact = results(decoder_reference, torch.float64)
    with replaced([(decoder_kernels, "_kernels_take", lambda t: False)]):  # PyTorch, low resolution order
        low_resolution_order = results(fused_decoder, dtype)
    torch_errors = [max(largest_error(a, e), largest_error(b, e))
                    for a, b, e in zip(results(decoder_reference, dtype), low_resolution_order, exact)]
    names = ["pixel logits", "grad x", *(f"grad weight {k}" for k in range(len(weights))), "grad head weight",
             "grad head bias"]
    case = CheckedCase("", functools.partial(results, fused_decoder, dtype), exact, torch_errors,
                       [1e-3 * e.abs().max().item() for e in exact])
    return check_against_the_defaults(names, [case])


def median_ms(step: Callable[[], None], calls: int = 10, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean GPU time of ``calls`` back-to-back steps (CUDA events)."""
    for _ in range(2):  # compile this variant's kernels
        step()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=480)
    parser.add_argument("--patch-size", type=int, default=16)
    add_benchmark_arguments(parser, "decoder", timeout_s=60)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("tune_decoder needs a CUDA GPU")

    config = get_config("restr-b16", image_size=args.image_size, patch_size=args.patch_size)
    check = results_check(8, args.image_size // args.patch_size, config.decoder_channels[:-1], config.negative_slope)
    torch.cuda.empty_cache()  # the fp64 reference's maps
    step = workload("fast", args.image_size, args.patch_size, decoder_only=True)
    results = time_variants(variants(), lambda: {"ms": median_ms(step)}, deadline=variants_deadline(args),
                            check=check)
    print_fastest_first(f"fused decoder forward + backward, {args.image_size}/{args.patch_size}, batch 8, bf16, "
                        f"{torch.cuda.get_device_name()}", results)
    benchmark_fastest("decoder", results, args.then_benchmark, args.benchmark_timeout)


if __name__ == "__main__":
    main()
