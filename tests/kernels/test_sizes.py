"""The launchers' host-side integer helpers agree with Triton's own."""
import triton

from restr_fast.kernels.sizes import cdiv, next_power_of_2


def test_cdiv_and_next_power_of_2_agree_with_tritons():
    for n in range(1, 5000):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 2, 3, 7, 16, 64, 128, 1000):
            assert cdiv(n, d) == triton.cdiv(n, d), (n, d)
    assert cdiv(0, 5) == 0 and next_power_of_2(0) == 1
    for n in (2**20 - 1, 2**20, 2**20 + 1, 2**31 - 1):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
