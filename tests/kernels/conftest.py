"""Shared setup of the kernel tests (DESIGN.md section 6)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def poisoned_outputs():
    """Every torch.empty (the kernels' outputs included) is filled with NaN, so an element a
    kernel forgets to write fails the comparison."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    assert torch.empty(4).isnan().all()
    yield
    torch.use_deterministic_algorithms(previous)


def _assert_within_rule(ours, torch_same_dtype, exact, atol, name):
    """Tolerance rule: max |ours - exact| <= 2 max |torch - exact| + atol."""
    ours_error = (ours.double() - exact).abs().max().item()
    torch_error = (torch_same_dtype.double() - exact).abs().max().item()
    assert ours_error <= 2 * torch_error + atol, f"{name}: kernel error {ours_error:.3g}, torch error {torch_error:.3g}"


@pytest.fixture
def assert_within_rule():
    """assert_within_rule(ours, torch_same_dtype, exact, atol, name): the tolerance rule of DESIGN.md 6."""
    return _assert_within_rule
