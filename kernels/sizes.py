"""Integer arithmetic of the launchers' grids and blocks, on the host.

``triton.cdiv`` and ``triton.next_power_of_2`` are constexpr functions, callable from kernels too:
on the host each call costs about 5 us of dispatch (Triton 3.6 and 3.8, on a 2-core AMD EPYC), and
a seed_mask forward + backward made twelve of them, for a few microseconds of GPU work. These are
the same functions in plain Python."""


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for a >= 0, b > 0 (in Triton's form, which torch.compile's symbolic sizes take too)."""
    return (a + b - 1) // b


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n, and 1 for n <= 1."""
    return 1 << (n - 1).bit_length() if n > 1 else 1
