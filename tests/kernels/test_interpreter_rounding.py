"""Kernels cast fp32 to bf16 as a GPU does: to the nearest value, ties to even (on the CPU, through
the interpreter's conversion that tests/conftest.py replaces; Triton's own truncates)."""
import pytest
import torch
import triton
import triton.language as tl

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _store_as_bf16_kernel(X, Y, n, EXPLICIT: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(X + offsets, mask=offsets < n)  # fp32
    if EXPLICIT:
        x = x.to(tl.bfloat16)
    tl.store(Y + offsets, x, mask=offsets < n)  # the store converts to Y's bf16 where x is fp32


def hard_cases() -> torch.Tensor:
    """fp32 values at the edges of bf16's rounding: ties (to even, up and down), just off ties, the
    carry into the exponent, overflow to infinity, subnormals, zeros, infinities, NaN."""
    half_ulp = 2.0 ** -8  # half of bf16's spacing above 1
    values = [1 + half_ulp, 1 + 3 * half_ulp, 1 + half_ulp * (1 + 2 ** -15), 1 + half_ulp * (1 - 2 ** -15),
              2 - half_ulp / 2, 3.3961776e38, 3.4028235e38, 1e-39, -1e-39, 1e-45, 0.0, -0.0,
              float("inf"), float("-inf"), float("nan")]
    values += [-v for v in values[:6]]
    generator = torch.Generator().manual_seed(7)
    random = torch.randn(1000, generator=generator) * 10.0 ** torch.randint(-30, 30, (1000,), generator=generator)
    return torch.cat([torch.tensor(values), random]).to(DEVICE)


@pytest.mark.parametrize("explicit", [False, True], ids=["store", "cast"])
def test_fp32_to_bf16_rounds_to_nearest_even_as_torch_does(explicit):
    x = hard_cases()
    y = torch.full_like(x, float("nan"), dtype=torch.bfloat16)
    _store_as_bf16_kernel[(triton.cdiv(x.numel(), 256),)](x, y, x.numel(), EXPLICIT=explicit, BLOCK=256)
    expected = x.to(torch.bfloat16)
    same = (y.view(torch.int16) == expected.view(torch.int16)) | (y.isnan() & expected.isnan())
    wrong = (~same).nonzero().flatten().tolist()
    assert not wrong, ("fp32 -> bf16 differs from round-to-nearest-even (torch's, a GPU's) at "
                       + ", ".join(f"{x[i].item()!r}: {y[i].item()!r} instead of {expected[i].item()!r}" for i in wrong[:5])
                       + f" ({len(wrong)} of {x.numel()}); on the CPU, tests/conftest.py could not make Triton "
                       f"{triton.__version__}'s interpreter round")
