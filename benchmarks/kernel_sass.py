"""Registers and SASS instructions of the Triton kernels as the launchers run them on an H100 or
H200 (sm_90), on any machine: ``python -m benchmarks.kernel_sass``.

Triton's CUDA backend, its ptxas and its nvdisasm run without a GPU, so a session without one can
still see what a kernel change does to the code the GPU would run. For each kernel, at the tiles
its launcher chooses for the paper's sizes (bf16; D = 768, decoder channels 1536 ... 96), this
prints ptxas's registers a thread and spill bytes, and the SASS instructions of the kernel and of
its main loop's body (the longest; the whole kernel if it has none), per output a thread
computes. These are static counts, not times: what a compute-bound kernel's time follows, once
the GPU confirms it is compute-bound.

``tests/kernels/test_gpu_compilation.py`` compiles the kernels through :func:`compile_for_sm90` and
:func:`ptxas_figures` as well. Run without ``TRITON_INTERPRET=1``: under it the kernels are
interpreted functions, which cannot be compiled.
"""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import tempfile
from collections import Counter

FLOAT_ARGUMENTS = {"scale", "scale_h", "scale_w", "negative_slope"}
DIVISIBLE_SIZES = ("C", "C_out", "D", "DP")  # channel counts Triton sees divisible by 16 at the presets' sizes


def compile_for_sm90(module: str, name: str, pointers: str, constexprs: dict, num_warps: int,
                     element: str = "bf16", float_type: str = "fp32"):
    """``restr_fast.kernels.<module>.<name>`` compiled for sm_90 with ``triton.compile``.

    ``pointers``: the pointer arguments, space-separated, each to ``element`` ("bf16", "fp16",
    "fp32") or to the type after a colon ("GRAD_C_PARTIAL:fp32"); other arguments are i32 sizes and
    strides, or ``float_type`` for the float ones. Pointers, strides and channel counts are typed
    as divisible by 16, as Triton specialises them at the presets' sizes (which lets loads be
    vectorised).
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(f"restr_fast.kernels.{module}"), name)
    types, divisible = {}, {}
    pointer_types = dict((pointer.split(":") + [element])[:2] for pointer in pointers.split())
    for index, arg in enumerate(kernel.arg_names):
        if arg in constexprs:
            types[arg] = "constexpr"
        elif arg in pointer_types:
            types[arg] = f"*{pointer_types[arg]}"
        else:
            types[arg] = float_type if arg in FLOAT_ARGUMENTS else "i32"
        if arg not in constexprs and (arg in pointer_types or arg.startswith("stride") or arg in DIVISIBLE_SIZES):
            divisible[(index,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn=kernel, signature=types, constexprs=constexprs, attrs=divisible),
                          target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))


def ptxas_missing(error: str) -> bool:
    """Whether ``error`` says that this machine has no ptxas to run (rather than that ptxas failed on a kernel)."""
    error = error.lower()
    return "ptxas" in error and any(words in error for words in ("not found", "cannot find", "no such file"))


def ptxas_figures(ptx: str) -> dict:
    """ptxas's registers a thread and spill bytes (None where its report has none) for ``ptx``,
    and the report's tail.

    It runs the ptxas ``triton.compile`` used, whose PTX version it wrote: TRITON_PTXAS_PATH's,
    else Triton's own. The variable may name a newer one (inductor sets it where the torch wheel
    has torch/bin/ptxas): on the GPU machine, CUDA 13's, whose PTX Triton 3.6's ptxas (12.8) rejects.
    """
    import triton

    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as file:
            file.write(ptx)
        report = subprocess.run([triton.knobs.nvidia.ptxas.path, "-v", "--gpu-name=sm_90a", source,
                                 "-o", os.path.join(folder, "kernel.cubin")], capture_output=True, text=True).stderr
    registers = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    return dict(registers=int(registers.group(1)) if registers else None,
                spill_bytes=sum(map(int, spills.groups())) if spills else None, report=report[-500:])


def sass_instructions(cubin: bytes) -> tuple[list[str], list[tuple[int, int]]]:
    """The SASS instructions of ``cubin`` (nvdisasm), and the (first, end) indices of each loop's
    body, from an earlier label to just past the branch back to it."""
    import triton

    knob = getattr(triton.knobs.nvidia, "nvdisasm", None)
    nvdisasm = knob.path if knob is not None else os.path.join(os.path.dirname(triton.__file__),
                                                                "backends", "nvidia", "bin", "nvdisasm")
    if not os.path.isfile(nvdisasm):
        raise FileNotFoundError(f"nvdisasm not found at {nvdisasm}: Triton's CUDA backend ships it in "
                                "triton/backends/nvidia/bin; TRITON_NVDISASM_PATH can name another")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as file:
            file.write(cubin)
        listing = subprocess.run([nvdisasm, "-c", path], capture_output=True, text=True, check=True).stdout
    instructions, labels, loops = [], {}, []
    for line in listing.splitlines():
        if label := re.match(r"^\s*\.(L_x_\d+):", line):
            labels[label.group(1)] = len(instructions)
        elif instruction := re.match(r"^\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;", line):
            instructions.append(instruction.group(1))
            target = re.search(r"\bBRA\b.*?\.(L_x_\d+)", instruction.group(1))
            if target and labels.get(target.group(1), len(instructions)) < len(instructions) - 1:
                loops.append((labels[target.group(1)], len(instructions)))
    return instructions, loops


def launched_kernels() -> list[tuple[str, str, str, dict, int, int, int]]:
    """(module, kernel, pointers, constexprs, num_warps, tile elements, outputs per element and
    loop iteration) as the launchers run them on a GPU at the paper's sizes, in bf16: D = 768 for
    seed_mask, each decoder channel count once. The decoder's forward tiles hold column pairs (two
    outputs an element), its backward walks pairs of output rows (two an iteration)."""
    op_registry = importlib.import_module("restr_fast.kernels.op_registry")
    interpreted, op_registry.INTERPRETED = op_registry.INTERPRETED, False  # the launchers' GPU tiles
    try:
        import torch
        seed_mask = importlib.import_module("restr_fast.kernels.seed_mask")
        decoder = importlib.import_module("restr_fast.kernels.decoder")
        found = []
        cdiv = importlib.import_module("restr_fast.kernels.sizes").cdiv
        block_n, block_d, warps = seed_mask._forward_blocks(768, 0)
        chunk = seed_mask._forward_chunk(768, 0, torch.bfloat16.itemsize)
        chunks = cdiv(768, chunk) if chunk else 1
        found.append(("seed_mask", "_seed_mask_fwd_kernel", "Z C BIAS PREFIX LOGITS OUT",
                      dict(HAS_BIAS=False, HAS_PREFIX=False, SIGMOID=True, BLOCK_N=block_n, BLOCK_D=block_d,
                           BLOCK_DP=1, CHUNK=chunk, CHUNKS=chunks, PREFIX_CHUNKS=0, STRIPS=False, NUM_STAGES=1),
                      warps, block_n * (chunk * chunks if chunk else block_d), 1))
        block_n, block_d, warps = seed_mask._backward_blocks(768)
        chunk = seed_mask._backward_chunk(768, torch.bfloat16.itemsize)
        kernel, tiles, width = (("_seed_mask_bwd_kernel_in_chunks", dict(CHUNK=chunk, CHUNKS=cdiv(768, chunk)),
                                 chunk * cdiv(768, chunk)) if chunk else ("_seed_mask_bwd_kernel", dict(BLOCK_D=block_d), block_d))
        found.append(("seed_mask", kernel,
                      "Z C BIAS GRAD_LOGITS GRAD_MASKED GRAD_Z GRAD_C_PARTIAL:fp32 GRAD_BIAS_PARTIAL:fp32",
                      dict(HAS_BIAS=False, HAS_GRAD_LOGITS=True, HAS_GRAD_MASKED=True, SIGMOID=True, BLOCK_N=block_n,
                           **tiles, NUM_STAGES=seed_mask._backward_stages(torch.bfloat16)),
                      warps, block_n * width, 1))
        for channels in (1536, 768, 384, 192, 96):
            block_q, block_c, warps = decoder._row_blocks(channels)
            launches = [("_upsample_act_fwd_kernel", "T Y", dict(BLOCK_Q=block_q, BLOCK_C=block_c), warps),
                        ("_upsample_act_head_fwd_kernel", "T WEIGHT BIAS OUT",
                         dict(HAS_BIAS=True, BLOCK_Q=block_q, BLOCK_C=block_c), warps)]
            lanes, block_c, warps = decoder._backward_blocks(channels, torch.bfloat16)
            kernel, lane_name = (("_upsample_act_bwd_pairs_kernel", "BLOCK_Q") if decoder.BACKWARD_ON_COLUMN_PAIRS
                                 else ("_upsample_act_bwd_kernel", "BLOCK_J"))
            for head in (False, True):
                constexprs = {"HEAD": head, lane_name: lanes, "BLOCK_C": block_c, "NUM_STAGES": decoder.BACKWARD_STAGES,
                              **({"stride_gw": 1} if head else {})}
                launches.append((kernel, "T GY WEIGHT GT WEIGHT_PARTIAL:fp32", constexprs, warps))
            for name, pointers, constexprs, warps in launches:
                columns = constexprs.get("BLOCK_Q", constexprs.get("BLOCK_J"))
                case = ("decoder", name, pointers, constexprs, warps, columns * constexprs["BLOCK_C"], 2)
                if case not in found:
                    found.append(case)
        return found
    finally:
        op_registry.INTERPRETED = interpreted


def main() -> None:
    if importlib.import_module("restr_fast.kernels.op_registry").INTERPRETED:
        raise SystemExit("kernel_sass compiles the kernels for a GPU: run it without TRITON_INTERPRET=1")
    print("sm_90 (H100/H200), bf16, tiles as the launchers choose them on a GPU. Per output: the main loop's"
          " instructions (else the whole kernel's) over the outputs a thread computes in one pass of it: its tile"
          " elements, twice for the decoder's (forward: column pairs, the head's loop per output and channel;"
          " backward: pairs of output rows, per output row, input column and channel). Masked lanes of partial"
          " tiles count as work.")
    print("| kernel | constexprs | warps | registers | spill bytes | instructions | loop body | per output |"
          " most frequent in the loop |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for module, name, pointers, constexprs, warps, elements, outputs in launched_kernels():
        compiled = compile_for_sm90(module, name, pointers, constexprs, warps)
        figures = ptxas_figures(compiled.asm["ptx"])
        instructions, loops = sass_instructions(compiled.asm["cubin"])
        body = instructions[slice(*max(loops, key=lambda loop: loop[1] - loop[0], default=(0, len(instructions))))]
        per_thread = outputs * elements / (32 * warps)
        opcodes = Counter(re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0].split(".")[0] for instruction in body)
        settings = ", ".join(f"{key}={value}" for key, value in constexprs.items())
        print(f"| {name} | {settings} | {warps} | {figures['registers']} | {figures['spill_bytes']} | "
              f"{len(instructions)} | {len(body) if loops else ''} | {len(body) / per_thread:.1f} | "
              f"{', '.join(f'{op} {count}' for op, count in opcodes.most_common(5))} |")


if __name__ == "__main__":
    main()
