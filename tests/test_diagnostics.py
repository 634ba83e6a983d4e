"""``restr-fast doctor`` and the function behind it."""
import pytest
import torch
import triton

from restr_fast import doctor
from restr_fast.cli import main


def test_doctor_reports_versions_gpu_and_every_backend():
    report = doctor("cpu")
    lines = report.splitlines()
    assert f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})" in lines
    assert f"triton {triton.__version__}" in lines
    assert any(line.startswith("xformers ") for line in lines) and any(line.startswith("timm ") for line in lines)
    gpu = [line for line in lines if line.startswith("gpu ")]
    assert len(gpu) == 1 and ("no GPU" in gpu[0]) == (not torch.cuda.is_available())
    backends = lines[lines.index("attention backends on cpu:") + 1:]
    assert [line.split()[0] for line in backends] == ["xformers", "sdpa", "math", "auto"]
    assert backends[0].split(None, 1)[1].startswith("not available: ")  # xformers has no CPU operators
    assert backends[1].split() == ["sdpa", "available"] and backends[3].split() == ["auto", "->", "sdpa"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_doctor_on_a_missing_gpu_is_a_one_line_error(capsys):
    assert main(["doctor", "--device", "cuda"]) == 2
    assert "restr-fast doctor: error: device cuda asked for, but this machine has no usable CUDA GPU" in capsys.readouterr().err


def test_doctor_command_prints_the_report(capsys):
    assert main(["doctor", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == doctor("cpu")
