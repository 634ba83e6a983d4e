"""The ``gpu`` mark (tests/conftest.py): skipped with its reason without enough GPUs, run first with them."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_pytest(tmp_path, gpus: int, *args: str) -> subprocess.CompletedProcess:
    """pytest in a subprocess on a machine that torch says has ``gpus`` CUDA GPUs."""
    (tmp_path / "fake_gpus.py").write_text(f"import torch\ntorch.cuda.device_count = lambda: {gpus}\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "fake_gpus", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_with_a_gpu_the_gpu_tests_come_first(tmp_path):
    result = run_pytest(tmp_path, 1, "--collect-only", "-q", "tests/test_devices.py", "tests/test_cuda_graphs.py")
    assert result.returncode == 0, result.stdout + result.stderr
    names = [line.split("::")[-1] for line in result.stdout.splitlines() if "::" in line]
    gpu_tests = ["test_a_gpu_index_beyond_the_machine_is_a_clear_error",  # test_devices.py, collected first
                 "test_replays_equal_eager_calls_for_each_shape",
                 "test_calls_queued_on_different_streams_do_not_overwrite_each_others_buffers",
                 "test_another_thread_allocates_and_synchronises_during_a_capture"]
    assert names[:4] == gpu_tests, names
    assert names[4:6] == ["test_names_parse_and_auto_resolves_to_what_the_machine_has",  # then as collected
                          "test_a_gpu_asked_for_on_a_machine_without_one_is_a_clear_error"], names
    assert names[-1] == "test_inputs_must_be_on_a_gpu", names


def test_without_enough_gpus_the_tests_skip_with_their_reason(tmp_path):
    result = run_pytest(tmp_path, 1, "-q", "-rs", "tests/test_predictor.py", "-k", "second_gpu")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout and "needs two CUDA GPUs (the model on the second)" in result.stdout
