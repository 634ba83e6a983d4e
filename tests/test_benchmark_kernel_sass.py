"""``python -m benchmarks.kernel_sass`` compiles every launched kernel for sm_90 on a CPU and prints
a row of registers and SASS instruction counts for each."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/ is not an installed package
sys.path.insert(0, str(ROOT))
from benchmarks.kernel_sass import launched_kernels, ptxas_missing  # noqa: E402


def run(interpreted: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1" if interpreted else "0"}
    return subprocess.run([sys.executable, "-m", "benchmarks.kernel_sass"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_row_for_every_launched_kernel():
    result = run(interpreted=False)
    if result.returncode != 0 and ptxas_missing(result.stderr):  # (a kernel ptxas cannot assemble fails the test)
        pytest.skip(f"Triton cannot compile for CUDA on this machine: {result.stderr.splitlines()[-1]}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if re.match(r"\| _\w+_kernel \|", line)]
    kernels = launched_kernels()
    assert [row[0].strip() for row in rows] == [name for _, name, *_ in kernels]
    for row in rows:
        name, _, warps, registers, spills, total, body, per_output, _ = (cell.strip() for cell in row)
        assert int(registers) > 0 and int(spills) == 0, row
        assert 0 < int(body or total) <= int(total) and float(per_output) > 0, row
    # the loops: the decoder's backward walks output rows, its head loops over channel tiles
    assert all(row[6].strip() for row in rows if row[0].strip() in ("_upsample_act_bwd_kernel",
                                                                    "_upsample_act_head_fwd_kernel"))


def test_the_kernels_are_those_the_launchers_choose():
    """One row per kernel and tile the launchers use on a GPU at the presets' sizes."""
    found = {(name, tuple(sorted(constexprs.items()))) for _, name, _, constexprs, *_ in launched_kernels()}
    names = {name for name, _ in found}
    assert names == {"_seed_mask_fwd_kernel", "_seed_mask_bwd_kernel", "_upsample_act_fwd_kernel",
                     "_upsample_act_head_fwd_kernel", "_upsample_act_bwd_kernel"}
    assert ("_upsample_act_head_fwd_kernel", (("BLOCK_C", 32), ("BLOCK_Q", 64), ("HAS_BIAS", True))) in found


@pytest.mark.usefixtures("interpreter_can_run")
def test_refuses_the_interpreter():
    result = run(interpreted=True)
    assert result.returncode != 0 and "without TRITON_INTERPRET=1" in result.stderr
