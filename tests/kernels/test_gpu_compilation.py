"""Every Triton kernel compiles for a GPU (an H100, sm_90), on any machine: Triton's CUDA backend
and its ptxas run without a GPU. Float arguments are typed as Triton's own launcher types
them (fp32) and as torch.compile's generated launchers do (fp64).

ptxas also reports each kernel's registers per thread and spills, and Triton its shared memory (the
pipelined loops' buffers). Compiled as the model launches them (on bf16, fp16 or fp32 tensors;
pointers, strides and channel counts divisible by 16, as Triton specialises them for the presets'
sizes; that also lets loads be vectorised), no kernel may spill, and each must leave registers and
shared memory for at least 16 resident warps per SM (a quarter of sm_90's 64):
kernels that gather from memory need warps to hide its latency. (The decoder's first backward kernel took 254-255 registers a
thread: two 4-warp programs, 8 warps, per SM; with channel counts not a multiple of 16 it also
spilled.)

The compilation runs in a subprocess without ``TRITON_INTERPRET``, under which the kernels would
be interpreted functions that cannot be compiled, through ``benchmarks/kernel_sass.py``
(``python -m benchmarks.kernel_sass`` prints the launched kernels' figures and SASS instruction
counts)."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from restr_fast.kernels import op_registry
from restr_fast.kernels.sizes import cdiv

# (module, kernel, pointer arguments, constexprs and num_warps as the host code launches them on a
# GPU, element types): each case compiles with its pointers to each element type, but those marked
# ":fp32" (partial sums, the bias gradient), which are fp32 whatever the inputs. bf16 or fp16 as
# autocast runs the decoder; fp32 as a model trained without autocast runs it, and as the model
# always runs seed_mask.
ANY = ("bf16", "fp16", "fp32")
HALF = ("bf16", "fp16")
KERNELS = [
    # the forward's prefetched strips (2 and 3 stages) and its rows in warp-wide chunks (8 and 16 rows a
    # block) are tune_seed_mask's variants, timed in bf16; in fp32 with a prefix, 3 stages take 74 KB of
    # shared memory a program: 3 programs an SM
    *[("seed_mask", "_seed_mask_fwd_kernel", "Z C BIAS PREFIX LOGITS OUT",
       dict(HAS_BIAS=True, HAS_PREFIX=True, SIGMOID=True, BLOCK_N=block_n, BLOCK_D=1024, BLOCK_DP=1024, CHUNK=chunk,
            CHUNKS=cdiv(768, chunk) if chunk else 1, PREFIX_CHUNKS=cdiv(768, chunk) if chunk else 0, STRIPS=strips,
            NUM_STAGES=stages), 4, elements)
      for block_n, chunk, strips, stages, elements in (
          (4, 0, False, 1, ANY), (4, 0, True, 2, ANY), (4, 0, True, 3, HALF), (8, 256, False, 1, HALF),
          (16, 256, False, 1, HALF), (8, 128, False, 1, ("fp32",)))],
    *[("seed_mask", "_seed_mask_bwd_kernel",
       "Z C BIAS GRAD_LOGITS GRAD_MASKED GRAD_Z GRAD_C_PARTIAL:fp32 GRAD_BIAS_PARTIAL:fp32",
       dict(HAS_BIAS=True, HAS_GRAD_LOGITS=True, HAS_GRAD_MASKED=True, SIGMOID=True, BLOCK_N=4, BLOCK_D=1024,
            NUM_STAGES=stages), 4, elements) for stages, elements in ((2, HALF), (1, ("fp32",)))],
    # its rows in warp-wide chunks: tune_seed_mask's variants, timed in bf16 (in fp32 its 4 chunks are two
    # warps wide, and with Triton 3.8 and torch.compile's fp64 scale ptxas spills 12 bytes: not a default as is)
    *[("seed_mask", "_seed_mask_bwd_kernel_in_chunks",
       "Z C BIAS GRAD_LOGITS GRAD_MASKED GRAD_Z GRAD_C_PARTIAL:fp32 GRAD_BIAS_PARTIAL:fp32",
       dict(HAS_BIAS=True, HAS_GRAD_LOGITS=True, HAS_GRAD_MASKED=True, SIGMOID=True, BLOCK_N=4, CHUNK=256, CHUNKS=3,
            NUM_STAGES=stages), 4, HALF) for stages in (1, 2)],
    *[("seed_mask", "_seed_mask_bwd_sum_kernel", "GRAD_C_PARTIAL:fp32 GRAD_BIAS_PARTIAL:fp32 GRAD_C GRAD_BIAS:fp32",
       dict(HAS_BIAS=True, BLOCK_S=s, BLOCK_D=d), 4, ANY) for s, d in ((64, 64), (128, 32))],
    *[("decoder", "_upsample_act_fwd_kernel", "T Y", dict(BLOCK_Q=q, BLOCK_C=c), 8, ANY)
      for q, c in ((32, 64), (64, 32))],
    *[("decoder", "_upsample_act_head_fwd_kernel", "T WEIGHT BIAS OUT", dict(HAS_BIAS=True, BLOCK_Q=q, BLOCK_C=c), 8,
       ANY) for q, c in ((32, 64), (64, 32))],
    # with HEAD, GY is the head's contiguous (B, 2h, 2w) gradient: Triton makes its unit stride a constant;
    # the pipelined walks are tune_decoder's variants
    *[("decoder", "_upsample_act_bwd_kernel", "T GY WEIGHT GT WEIGHT_PARTIAL:fp32",
       dict(HEAD=head, BLOCK_J=j, BLOCK_C=c, NUM_STAGES=stages, **({"stride_gw": 1} if head else {})), warps, elements)
      for head in (False, True)
      for j, c, warps, stages, elements in ((16, 64, 8, 1, HALF), (32, 32, 8, 1, HALF), (16, 32, 4, 1, ("fp32",)),
                                            (16, 64, 8, 2, HALF), (16, 64, 8, 3, HALF))],
    # its lanes on column pairs: tune_decoder's variants, at the default tiles and with 4 warps (the head
    # at 4 warps as at 480/16, its 96 channels in 32-channel tiles: 64-channel tiles, as at patch 8's 192
    # channels, take 138-168 registers a thread, 12 resident warps per SM)
    *[("decoder", "_upsample_act_bwd_pairs_kernel", "T GY WEIGHT GT WEIGHT_PARTIAL:fp32",
       dict(HEAD=head, BLOCK_Q=q, BLOCK_C=c, NUM_STAGES=1, **({"stride_gw": 1} if head else {})), warps, elements)
      for head in (False, True)
      for q, c, warps, elements in ((16, 64, 8, HALF), (32, 32, 8, HALF), (16, 32, 4, ("fp32",)), (32, 32, 4, HALF),
                                    *([] if head else [(16, 64, 4, HALF)]))],
]
FLOAT_TYPES = ("fp32", "fp64")
REGISTERS_PER_SM = 65536  # sm_90
REGISTER_GRANULE = 8  # registers a thread are allocated in steps of 8 (256 a warp)
SHARED_PER_SM = 228 * 1024  # sm_90's shared memory
SHARED_RESERVED = 1024  # taken for each resident program besides the shared memory it asks for
MIN_RESIDENT_WARPS = 16

ROOT = Path(__file__).resolve().parents[2]  # where benchmarks/ is (not an installed package)
sys.path.insert(0, str(ROOT))
from benchmarks.kernel_sass import ptxas_missing  # noqa: E402
COMPILE_ALL = r"""
import concurrent.futures, json, os, sys

from benchmarks.kernel_sass import compile_for_sm90, ptxas_figures


def compile_case(case):
    try:
        compiled = compile_for_sm90(*case)
    except Exception as error:
        return dict(result=f"{type(error).__name__}: {error}")
    if "cubin" not in compiled.asm:
        return dict(result=f"no cubin: {sorted(compiled.asm)}")
    return dict(result="cubin", shared=compiled.metadata.shared, **ptxas_figures(compiled.asm["ptx"]))


if __name__ == "__main__":
    with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        print(json.dumps(list(pool.map(compile_case, json.loads(sys.argv[1])))))
"""

CASES = [(module, name, pointers, constexprs, warps, element, float_type)
         for module, name, pointers, constexprs, warps, elements in KERNELS
         for element in elements for float_type in FLOAT_TYPES]
IDS = ["-".join([name, element, *(k if v is True else f"{k}={v}" for k, v in c.items() if v is not False), t])
       for _, name, _, c, _, element, t in CASES]


@pytest.fixture(scope="module")
def compilation_results():
    """The outcome of compiling every case, in one subprocess: "cubin" and ptxas's figures, or the error."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_ALL, json.dumps(CASES)], env=environment, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if "No module named 'triton" in last or ptxas_missing(last):
            pytest.skip(f"Triton cannot compile for CUDA on this machine: {last}")
        pytest.fail(f"the compiling subprocess failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compiled(results, index) -> dict:
    result = results[index]["result"]
    if ptxas_missing(result):
        pytest.skip(f"Triton's ptxas is not available here: {result.splitlines()[0]}")
    assert result == "cubin", result
    return results[index]


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_kernel_compiles_for_an_h100(compilation_results, index):
    compiled(compilation_results, index)


@pytest.mark.parametrize("index", range(len(CASES)), ids=IDS)
def test_kernel_neither_spills_nor_starves_the_sm(compilation_results, index):
    outcome = compiled(compilation_results, index)
    assert outcome["registers"] is not None and outcome["spill_bytes"] is not None, outcome["report"]
    assert outcome["spill_bytes"] == 0, f"spills registers: {outcome['report']}"
    warps = CASES[index][4]
    allocated = -(-outcome["registers"] // REGISTER_GRANULE) * REGISTER_GRANULE
    programs = min(REGISTERS_PER_SM // (allocated * 32 * warps), SHARED_PER_SM // (outcome["shared"] + SHARED_RESERVED))
    assert programs * warps >= MIN_RESIDENT_WARPS, (
        f"{outcome['registers']} registers a thread, {outcome['shared']} bytes of shared memory a program: "
        f"{programs} programs of {warps} warps per SM, "
        f"fewer than {MIN_RESIDENT_WARPS} resident warps")


@pytest.mark.parametrize("column_pairs", [False, True], ids=["decoder backward on input columns", "on column pairs"])
def test_the_cases_use_the_tiles_the_launchers_choose_on_a_gpu(monkeypatch, column_pairs):
    """KERNELS above must describe real launches: the paper's sizes (D = 768, decoder channels
    1536 ... 96) outside the interpreter, with either form of the decoder's backward."""
    decoder, seed_mask = (importlib.import_module(f"restr_fast.kernels.{name}") for name in ("decoder", "seed_mask"))
    monkeypatch.setattr(op_registry, "INTERPRETED", False)
    monkeypatch.setattr(decoder, "BACKWARD_ON_COLUMN_PAIRS", column_pairs)
    launched = {(name, element, tuple(sorted(c.items())), warps)
                for _, name, _, c, warps, elements in KERNELS for element in elements}

    def assert_case(name, warps, elements=ANY, **constexprs):
        for element in elements:
            assert (name, element, tuple(sorted(constexprs.items())), warps) in launched, (
                f"{name} launches on {element} with {constexprs}, num_warps={warps}: not in KERNELS")

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=132))
    block_n, block_d, warps = seed_mask._forward_blocks(768, 768)
    for n in (900, 3600):  # B = 8 on an H200
        strips = seed_mask._forward_rows_per_program(8, n, block_n, torch.device("cuda")) > block_n
        for dtype, element in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
            chunk = seed_mask._forward_chunk(768, 768, dtype.itemsize)
            chunks = dict(CHUNK=chunk, CHUNKS=cdiv(768, chunk), PREFIX_CHUNKS=cdiv(768, chunk)) if chunk else dict(
                CHUNK=0, CHUNKS=1, PREFIX_CHUNKS=0)
            assert_case("_seed_mask_fwd_kernel", warps, (element,), HAS_BIAS=True, HAS_PREFIX=True, SIGMOID=True,
                        BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DP=block_d, STRIPS=strips,
                        NUM_STAGES=seed_mask.FORWARD_STAGES if strips else 1, **chunks)
    block_n, block_d, warps = seed_mask._backward_blocks(768)
    for dtype, element in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
        chunk = seed_mask._backward_chunk(768, dtype.itemsize)
        kernel, tiles = (("_seed_mask_bwd_kernel_in_chunks", dict(CHUNK=chunk, CHUNKS=cdiv(768, chunk))) if chunk
                         else ("_seed_mask_bwd_kernel", dict(BLOCK_D=block_d)))
        assert_case(kernel, warps, (element,), HAS_BIAS=True, HAS_GRAD_LOGITS=True, HAS_GRAD_MASKED=True,
                    SIGMOID=True, BLOCK_N=block_n, NUM_STAGES=seed_mask._backward_stages(dtype), **tiles)
    for splits in (57, 65):  # B = 8 on an H200's 132 SMs, N = 900 and 3600
        block_s, block_d = seed_mask._sum_blocks(splits, 768)
        assert_case("_seed_mask_bwd_sum_kernel", seed_mask.SUM_WARPS, HAS_BIAS=True, BLOCK_S=block_s, BLOCK_D=block_d)
    for channels in (1536, 768, 384, 192, 96):
        block_q, block_c, warps = decoder._row_blocks(channels)
        assert_case("_upsample_act_fwd_kernel", warps, BLOCK_Q=block_q, BLOCK_C=block_c)
        assert_case("_upsample_act_head_fwd_kernel", warps, HAS_BIAS=True, BLOCK_Q=block_q, BLOCK_C=block_c)
        for dtype, element in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (torch.float32, "fp32")):
            lanes, block_c, warps = decoder._backward_blocks(channels, dtype)
            kernel, lane_name = (("_upsample_act_bwd_pairs_kernel", "BLOCK_Q") if decoder.BACKWARD_ON_COLUMN_PAIRS
                                 else ("_upsample_act_bwd_kernel", "BLOCK_J"))
            stages = decoder.BACKWARD_STAGES
            assert_case(kernel, warps, (element,), HEAD=False, **{lane_name: lanes}, BLOCK_C=block_c, NUM_STAGES=stages)
            assert_case(kernel, warps, (element,), HEAD=True, **{lane_name: lanes}, BLOCK_C=block_c, NUM_STAGES=stages,
                        stride_gw=1)
