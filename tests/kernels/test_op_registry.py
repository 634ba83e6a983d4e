"""Where the kernels can run: the interpreter's version check."""
import pytest

from restr_fast.kernels.op_registry import interpreter_incompatibility


@pytest.mark.parametrize("triton_version, numpy_version", [("3.6.0", "2.4.6"), ("3.4.1", "2.4.0rc1")])
def test_old_interpreter_with_new_numpy_is_refused_with_the_fix(triton_version, numpy_version):
    problem = interpreter_incompatibility(triton_version, numpy_version)
    assert problem is not None and "numpy<2.4" in problem and "triton>=3.7" in problem


@pytest.mark.parametrize("triton_version, numpy_version",
                         [("3.6.0", "2.3.5"), ("3.7.0", "2.4.6"), ("3.8.0", "2.4.6"), ("4.0.0", "1.26.4")])
def test_working_combinations_pass(triton_version, numpy_version):
    assert interpreter_incompatibility(triton_version, numpy_version) is None
