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


def _assert_rounded_once(ours, fp32, exact, name):
    """Each element of ``ours`` (bf16 or fp16) is the exact value rounded once to its dtype, as a
    computation in fp32 that rounds only when it stores gives: within half a unit in the last place
    of the exact value, plus twice fp32 PyTorch's largest error on the same inputs. The tolerance
    rule's bound is set by the largest elements and by PyTorch's own roundings; this one holds each
    element, so a product or a sum rounded to the low precision on the way fails it by units."""
    info = torch.finfo(ours.dtype)
    _, exponent = torch.frexp(exact.abs().clamp_min(info.tiny))  # |exact| = m 2^e, m in [0.5, 1)
    ulp = torch.ldexp(torch.full_like(exact, info.eps / 2), exponent)  # the dtype's spacing at |exact|
    error = (ours.double() - exact).abs()
    bound = ulp / 2 + 2 * (fp32.double() - exact).abs().max().item()
    worst = (error / bound).flatten().argmax()
    assert (error <= bound).all(), (
        f"{name}: {error.flatten()[worst].item():.3g} from the exact {exact.flatten()[worst].item():.6g}, "
        f"{(error / ulp).flatten()[worst].item():.2f} units in the last place of {ours.dtype}; "
        f"bound {bound.flatten()[worst].item():.3g}")


@pytest.fixture
def assert_rounded_once():
    """assert_rounded_once(ours, torch_fp32, exact, name): each element one rounding from the exact value."""
    return _assert_rounded_once


@pytest.fixture
def assert_within_rule():
    """assert_within_rule(ours, torch_same_dtype, exact, atol, name): the tolerance rule of DESIGN.md 6."""
    return _assert_within_rule
