"""The seed_mask kernels' blocks against their GPU time on this GPU:
``python -m benchmarks.tune_seed_mask``.

The launchers in :mod:`restr_fast.kernels.seed_mask` choose their blocks from ptxas's register
counts (``tests/kernels/test_gpu_compilation.py``). This replaces one choice (or a pair) at a time
(the forward's and the backward's elements per block, the forward's strips of several blocks a
program, prefetched, both kernels' rows read in warp-wide chunks of columns, the backward's programs
per SM and pipeline stages, the tiles of the kernel summing its partial sums; not the backward's 8
warps, 8K-element blocks, or 2 or 16 programs per SM, 0.75x, 0.97x, 0.94x and 0.89x the defaults on
an H200 before its loop was pipelined, nor the forward's 8 warps or 8K-element blocks, 0.97x and
1.01x), and times the ``seed_mask`` benchmark
group's four cases (B = 8, N = 900 and 3600, D = 768, bf16, forward and forward + backward) as that
group's ``gpu_ms`` does: a CUDA graph of calls on inputs rotating through 3x the L2 cache. Before it
is timed, each variant's outputs and gradients at both N are checked against the fp64 reference,
held to the larger error of PyTorch's and the defaults' (:mod:`benchmarks.checks`); one that fails
is listed as a wrong result and never chosen. It prints
the times in microseconds, fastest first, with the copy-bandwidth floor of each case, so that a GPU
session can confirm or replace the defaults. With ``--then-benchmark JSON``, where a variant beats
the defaults (:func:`benchmarks.tuning.best_variant`), it then runs the ``seed_mask`` benchmark
group's eager and fast cases with that variant into JSON. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import functools
import importlib

import torch

from restr_fast.kernels.seed_mask import seed_mask_reference

from .checks import Check, CheckedCase, check_against_the_defaults, largest_error
from .conftest import graphed_gpu_seconds, l2_rotation, measure_copy_bandwidth
from .test_seed_mask import bytes_moved, call, inputs
from .tuning import (Variant, add_benchmark_arguments, benchmark_fastest, print_fastest_first, time_variants,
                     variants_deadline)

seed_mask_kernels = importlib.import_module("restr_fast.kernels.seed_mask")
_blocks = seed_mask_kernels._blocks

FORWARD_ELEMENTS = [2048]  # per block (default 4096)
BACKWARD_ELEMENTS = [2048]  # (default 4096)
PROGRAMS_PER_SM = [8]  # of the backward (default 4)
STAGES_TRIED = [1, 3]  # of the backward's loop in fp16/bf16; 1: no prefetching (default 2)
# the forward in strips of several blocks a program, each prefetching its next block: (pipeline
# stages, programs per SM). One block a program leaves an SM at most 9 programs' loads in flight
# (6 KB each at D = 768, bf16), and none while a program reduces and stores; strips keep the next
# block loading meanwhile. At 2 and 3 stages, 64 registers a thread with Triton 3.6, 62 and 71 with
# 3.8 (sm_90, bf16), against 55 and 54 for one block a program: 8 or 7 programs fit an SM instead
# of 9. (In fp32 with the prefix, 3 stages take 74 KB of shared memory a program: a default of 3
# would keep fp32 at 2, as the backward keeps fp32 at 1.)
FORWARD_STRIPS = [(2, 8), (3, 7), (2, 4)]
# the forward reading its rows in chunks of the columns one warp's 16-byte loads span (256 in bf16),
# so that a warp holds whole rows: the scores need no shared memory or barrier, and no warp idles on
# the padding of a 1024-column tile (at D = 768, a quarter of it, a whole warp's). At 8 and 16 rows a
# block, 32 and 48 registers a thread (Triton 3.8, sm_90, bf16): 16 and 10 programs an SM, against 9.
FORWARD_CHUNKED_ROWS = [8, 16]
# the backward's rows read in the same chunks, in its loop's pipeline stages: 79 and 76 registers a
# thread with Triton 3.6 at 1 and 2 stages (72 and 80 with 3.8; 4 rows a block), so 6 programs an SM
# instead of 4 (121-128 registers), none of their warps idle
BACKWARD_CHUNKED_STAGES = [1, 2]
CASES = [(n, forward_only) for forward_only in (True, False) for n in (900, 3600)]
# the benchmark group run with the fastest variant: its file, and the cases the targets need
BENCHMARK = ("benchmarks/test_seed_mask.py", "not compile")


def variants() -> list[Variant]:
    """(label, replacements) for every alternative tried."""
    forward = seed_mask_kernels._forward_blocks
    # the choices not yet timed on a GPU first, in case a time bound cuts the run
    found = [(f"forward strips in {stages} pipeline stages, {k} programs per SM",
              [(seed_mask_kernels, "FORWARD_STAGES", stages),
               (seed_mask_kernels, "_forward_rows_per_program",
                functools.partial(seed_mask_kernels._rows_per_program, programs_per_sm=k))])
             for stages, k in FORWARD_STRIPS]
    found += [(f"forward rows in warp-wide chunks, {rows} rows a block",
               [(seed_mask_kernels, "_forward_chunk", seed_mask_kernels._warp_wide_chunk),
                (seed_mask_kernels, "_forward_blocks", lambda d, dp, r=rows: (r, *forward(d, dp)[1:]))])
              for rows in FORWARD_CHUNKED_ROWS]
    found += [(f"backward rows in warp-wide chunks, {stages} pipeline stage{'s' if stages > 1 else ''}, "
               f"6 programs per SM",
               [(seed_mask_kernels, "_backward_chunk", seed_mask_kernels._warp_wide_backward_chunk),
                (seed_mask_kernels, "BACKWARD_STAGES", stages),
                (seed_mask_kernels, "_rows_per_program",
                 functools.partial(seed_mask_kernels._rows_per_program, programs_per_sm=6))])
              for stages in BACKWARD_CHUNKED_STAGES]
    found += [(f"backward in {stages} pipeline stage{'s' if stages > 1 else ''}",
               [(seed_mask_kernels, "BACKWARD_STAGES", stages)]) for stages in STAGES_TRIED]
    found += [("partial sums in tiles of 16 programs x 128 channels",
               [(seed_mask_kernels, "_sum_blocks", lambda splits, d: (16, 128))])]
    found += [(f"forward blocks of {elements} elements",
               [(seed_mask_kernels, "_forward_blocks", lambda d, dp, e=elements: _blocks(d, dp, elements=e))])
              for elements in FORWARD_ELEMENTS]
    found += [(f"backward blocks of {elements} elements",
               [(seed_mask_kernels, "_backward_blocks", lambda d, e=elements: _blocks(d, None, elements=e))])
              for elements in BACKWARD_ELEMENTS]
    found += [(f"backward with {k} programs per SM",
               [(seed_mask_kernels, "_rows_per_program",
                 functools.partial(seed_mask_kernels._rows_per_program, programs_per_sm=k))])
              for k in PROGRAMS_PER_SM]
    # 2 rows a block: 80 registers a thread instead of 121 with Triton 3.8 (D = 768, bf16), so 6
    # programs fit an SM instead of 4; as many programs as fit, each with fewer rows in flight
    found += [("backward blocks of 2048 elements with 6 programs per SM",
               [(seed_mask_kernels, "_backward_blocks", lambda d: _blocks(d, None, elements=2048)),
                (seed_mask_kernels, "_rows_per_program",
                 functools.partial(seed_mask_kernels._rows_per_program, programs_per_sm=6))])]
    return found


def results_and_gradients(op, tensors: dict, dtype: torch.dtype) -> list[torch.Tensor]:
    """[logits, masked, grad patches, grad classifier] of ``op`` as the benchmark calls it, on
    ``tensors`` (from :func:`benchmarks.test_seed_mask.inputs`) cast to ``dtype``."""
    patches, classifier = (tensors[name].detach().to(dtype).requires_grad_() for name in ("patches", "classifier"))
    logits, masked = op(patches, classifier)
    grads = torch.autograd.grad([logits, masked], [patches, classifier],
                                [tensors["grad_logits"].to(dtype), tensors["grad_masked"].to(dtype)])
    return [logits.detach(), masked.detach(), *grads]


def results_check(sizes: list[int], atol: float = 1e-3) -> Check:
    """A check of the kernels as they are set when it is called, made with the defaults
    (:func:`benchmarks.checks.check_against_the_defaults`): forward and backward at each N of ``sizes``
    on fresh inputs, against the fp64 reference, with ``atol`` (the GPU tests' at these sizes)."""
    cases = []
    for n in sizes:
        tensors = inputs(n, True, seed=1000 + n)
        dtype = tensors["patches"].dtype
        exact = results_and_gradients(seed_mask_reference, tensors, torch.float64)
        same_dtype = results_and_gradients(seed_mask_reference, tensors, dtype)
        cases.append(CheckedCase(
            f"N={n} ", functools.partial(results_and_gradients, seed_mask_kernels.seed_mask, tensors, dtype), exact,
            [largest_error(values, exact_values) for values, exact_values in zip(same_dtype, exact)], [atol] * 4))
    return check_against_the_defaults(("logits", "masked", "grad patches", "grad classifier"), cases)


def case_name(n: int, forward_only: bool) -> str:
    """The table's column for a case."""
    return f"{'forward' if forward_only else 'forward+backward'} N={n} us"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_benchmark_arguments(parser, "seed_mask", timeout_s=45)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("tune_seed_mask needs a CUDA GPU")
    rotations = {case: [inputs(case[0], not case[1], seed) for seed in range(l2_rotation(bytes_moved(*case)))]
                 for case in CASES}

    def measure() -> dict[str, float]:
        return {case_name(*case): 1e6 * graphed_gpu_seconds([call(seed_mask_kernels.seed_mask, case[1], tensors)
                                                              for tensors in rotation])
                for case, rotation in rotations.items()}

    check = results_check(sorted({n for n, _ in CASES}))
    results = time_variants(variants(), measure, deadline=variants_deadline(args), check=check)
    bandwidth = measure_copy_bandwidth()
    print_fastest_first(f"seed_mask GPU time per call, B = 8, D = 768, bf16, {torch.cuda.get_device_name()}", results)
    floors = ", ".join(f"{case_name(*case)} {1e6 * bytes_moved(*case) / bandwidth:.4g}" for case in CASES)
    print(f"\ncopy-bandwidth floor ({bandwidth / 1e12:.2f} TB/s): {floors}")
    benchmark_fastest("seed_mask", results, args.then_benchmark, args.benchmark_timeout)


if __name__ == "__main__":
    main()
