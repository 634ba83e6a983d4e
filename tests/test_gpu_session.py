"""``benchmarks/gpu_session.sh``, the one call of a GPU session, dry-run on the CPU: a stand-in for
``gpu-check.sh`` records what it is asked to run, and the tuning tools stop for want of a GPU."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAND_IN = """
printf '%s\\n' "$TEST_S" $TEST_CMD > "$OUT/test_cmd"
printf '%s\\n' "$BENCH_S" $BENCH_CMD > "$OUT/bench_cmd"
printf '%s\\n' $REPORT_CMD > "$OUT/report_cmd"
touch "$OUT/gpu.txt" "$OUT/tests.log" "$OUT/bench.log"
"""


def test_dry_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "gpu-check.sh").write_text(STAND_IN)
    env = {**os.environ, "OUT": str(out), "GPU_CHECK": str(tmp_path / "gpu-check.sh"),
           "PATH": os.pathsep.join([str(tmp_path / "bin"), os.environ["PATH"]])}
    (tmp_path / "bin").mkdir()
    python3 = tmp_path / "bin" / "python3"  # this environment's Python, as the script calls it
    python3.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python3.chmod(0o755)
    env.pop("TRITON_INTERPRET", None)
    env["CUDA_VISIBLE_DEVICES"] = ""  # the tools stop for want of a GPU on a GPU machine too
    result = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.stderr == "", result.stderr

    test_s, *test_cmd = (out / "test_cmd").read_text().split()
    assert test_cmd[:3] == ["python3", "-m", "pytest"] and int(test_s) >= 150
    paths = [argument.removeprefix("--ignore=") for argument in test_cmd if argument.startswith(("tests", "--ignore="))]
    assert "tests/kernels" in paths and all((ROOT / path).exists() for path in paths), paths
    bench_s, *bench_cmd = (out / "bench_cmd").read_text().split()
    assert bench_cmd[:3] == ["python3", "-m", "pytest"] and f"--benchmark-json={out}/bench.json" in bench_cmd
    assert shlex.join(bench_cmd).count("-m kernels") == 1 and int(bench_s) >= 100
    assert f"benchmarks.report {out}/bench.json" in " ".join((out / "report_cmd").read_text().split())

    # what comes back: gpu-check.sh's files but bench.log, and the tools' log (the JSON files need a GPU)
    assert sorted(path.name for path in out.iterdir()) == ["bench_cmd", "gpu.txt", "report_cmd", "test_cmd",
                                                           "tests.log", "tune.txt"]
    assert (out / "tune.txt").read_text().splitlines() == [
        "tune_decoder needs a CUDA GPU", "tune_seed_mask needs a CUDA GPU", "profile_step needs a CUDA GPU"]
