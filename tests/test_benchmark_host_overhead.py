"""``python -m benchmarks.host_overhead`` runs on a CPU and prints both launch paths."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/ is not an installed package


def run(*args, interpreted: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1" if interpreted else "0"}
    return subprocess.run([sys.executable, "-m", "benchmarks.host_overhead", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_prints_host_time_of_both_launch_paths():
    result = run("--calls", "20", "--rounds", "3", interpreted=False)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {}
    for line in result.stdout.splitlines():
        if match := re.match(r"(bare \(eager calls\)|through wrap_triton's higher-order op)\s+([\d.]+)\s+([\d.]+)$", line):
            rows[match[1]] = (float(match[2]), float(match[3]))
    assert len(rows) == 2, result.stdout
    bare, wrapped = rows["bare (eager calls)"], rows["through wrap_triton's higher-order op"]
    assert 0 < bare[0] < wrapped[0] and 0 < bare[1] < wrapped[1], rows  # the higher-order op costs host time


@pytest.mark.usefixtures("interpreter_can_run")
def test_refuses_the_interpreter():
    result = run(interpreted=True)
    assert result.returncode != 0 and "without TRITON_INTERPRET=1" in result.stderr
