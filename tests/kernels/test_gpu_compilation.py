"""Every Triton kernel compiles for a GPU (an H100, sm_90), on any machine: Triton's CUDA backend
and its bundled ptxas run without a GPU. Float arguments are typed as Triton's own launcher types
them (fp32) and as torch.compile's generated launchers do (fp64).

The compilation runs in a subprocess without ``TRITON_INTERPRET``, under which the kernels would
be interpreted functions that cannot be compiled."""
import json
import os
import subprocess
import sys

import pytest

# (module, kernel, pointer arguments, constexprs as the host code launches it on a GPU)
KERNELS = [
    ("seed_mask", "_seed_mask_fwd_kernel", "Z C BIAS PREFIX LOGITS OUT",
     dict(HAS_BIAS=True, HAS_PREFIX=True, SIGMOID=True, BLOCK_N=8, BLOCK_D=1024, BLOCK_DP=1024)),
    ("seed_mask", "_seed_mask_bwd_kernel", "Z C BIAS GRAD_LOGITS GRAD_MASKED GRAD_Z GRAD_C_PARTIAL GRAD_BIAS_PARTIAL",
     dict(HAS_BIAS=True, HAS_GRAD_LOGITS=True, HAS_GRAD_MASKED=True, SIGMOID=True, BLOCK_N=8, BLOCK_D=1024)),
    ("decoder", "_upsample_act_fwd_kernel", "T Y", dict(BLOCK_P=32, BLOCK_C=64)),
    ("decoder", "_upsample_act_head_fwd_kernel", "T WEIGHT BIAS OUT", dict(HAS_BIAS=True, BLOCK_P=32, BLOCK_C=64)),
    ("decoder", "_head_weight_grad_kernel", "T G PARTIAL", dict(BLOCK_P=32, BLOCK_C=64)),
    ("decoder", "_upsample_act_bwd_kernel", "T GY G WEIGHT GT", dict(HEAD=False, BLOCK_P=16, BLOCK_C=32)),
    ("decoder", "_upsample_act_bwd_kernel", "T GY G WEIGHT GT", dict(HEAD=True, BLOCK_P=16, BLOCK_C=32)),
]
FLOAT_TYPES = ("fp32", "fp64")

COMPILE_ALL = r"""
import concurrent.futures, importlib, json, os, sys

FLOAT_ARGUMENTS = {"scale", "scale_h", "scale_w", "negative_slope"}


def compile_case(case):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    module, name, pointers, constexprs, float_type = case
    kernel = getattr(importlib.import_module(f"restr_fast.kernels.{module}"), name)
    types = {}
    for arg in kernel.arg_names:  # pointers to bf16 (partial sums fp32), floats, sizes and strides i32
        if arg in constexprs:
            types[arg] = "constexpr"
        elif arg in pointers.split():
            types[arg] = "*fp32" if "PARTIAL" in arg else "*bf16"
        else:
            types[arg] = float_type if arg in FLOAT_ARGUMENTS else "i32"
    try:
        compiled = triton.compile(ASTSource(fn=kernel, signature=types, constexprs=constexprs),
                                  target=GPUTarget("cuda", 90, 32))
        return "cubin" if "cubin" in compiled.asm else f"no cubin: {sorted(compiled.asm)}"
    except Exception as error:
        return f"{type(error).__name__}: {error}"


if __name__ == "__main__":
    with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        print(json.dumps(list(pool.map(compile_case, json.loads(sys.argv[1])))))
"""

CASES = [(module, name, pointers, constexprs, float_type)
         for module, name, pointers, constexprs in KERNELS for float_type in FLOAT_TYPES]


@pytest.fixture(scope="module")
def compilation_results():
    """The outcome of compiling every case, in one subprocess: "cubin", or the error."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_ALL, json.dumps(CASES)], env=environment,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if "No module named" in last or "ptxas" in last.lower():
            pytest.skip(f"Triton cannot compile for CUDA on this machine: {last}")
        pytest.fail(f"the compiling subprocess failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("index", range(len(CASES)),
                         ids=[f"{name}-{'-'.join(k for k, v in c.items() if v is True)}-{t}" for _, name, _, c, t in CASES])
def test_kernel_compiles_for_an_h100(compilation_results, index):
    result = compilation_results[index]
    if "ptxas" in result.lower() and "not found" in result.lower():
        pytest.skip(f"Triton's ptxas is not available here: {result.splitlines()[0]}")
    assert result == "cubin", result
