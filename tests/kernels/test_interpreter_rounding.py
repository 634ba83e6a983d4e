"""Kernels convert between fp32 and bf16 as a GPU does: fp32 to the nearest bf16, ties to even, and
bf16 to fp32 exactly (on the CPU, through the interpreter's conversion that tests/conftest.py
replaces: Triton's own truncates, and reads subnormal bf16 values wrong)."""
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


@triton.jit
def _load_as_fp32_kernel(X, Y, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offsets, tl.load(X + offsets, mask=offsets < n).to(tl.float32), mask=offsets < n)


def assert_same_bits(ours: torch.Tensor, expected: torch.Tensor, source: torch.Tensor, what: str) -> None:
    """ours == expected bit for bit (any NaN for a NaN), naming the first values that differ."""
    bits = torch.int16 if ours.dtype == torch.bfloat16 else torch.int32
    same = (ours.view(bits) == expected.view(bits)) | (ours.isnan() & expected.isnan())
    wrong = (~same).nonzero().flatten().tolist()
    assert not wrong, (f"{what} differs from a GPU's (torch's) at "
                       + ", ".join(f"{source[i].item()!r}: {ours[i].item()!r} instead of {expected[i].item()!r}" for i in wrong[:5])
                       + f" ({len(wrong)} of {source.numel()}); on the CPU, tests/conftest.py could not correct "
                       f"Triton {triton.__version__}'s interpreter")


@pytest.mark.parametrize("explicit", [False, True], ids=["store", "cast"])
def test_fp32_to_bf16_rounds_to_nearest_even_as_torch_does(explicit):
    x = hard_cases()
    y = torch.full_like(x, float("nan"), dtype=torch.bfloat16)
    _store_as_bf16_kernel[(triton.cdiv(x.numel(), 256),)](x, y, x.numel(), EXPLICIT=explicit, BLOCK=256)
    assert_same_bits(y, x.to(torch.bfloat16), x, "fp32 -> bf16 (round to nearest, ties to even)")


def test_bf16_to_fp32_is_exact_for_every_bf16_value():
    x = torch.arange(2 ** 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).to(DEVICE)  # every bit pattern
    y = torch.full(x.shape, float("nan"), device=DEVICE)
    _load_as_fp32_kernel[(triton.cdiv(x.numel(), 4096),)](x, y, x.numel(), BLOCK=4096)
    assert_same_bits(y, x.float(), x, "bf16 -> fp32")
