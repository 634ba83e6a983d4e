"""Exact (fp64) references for the decoder kernels' fp32 tests: PyTorch's fp32 interpolation weights,
and LeakyReLU's kink, where fp32 cannot tell which side a pre-activation is on."""
import contextlib
import importlib
from unittest import mock

import torch
import torch.nn.functional as F

decoder_module = importlib.import_module("restr_fast.kernels.decoder")
models_decoder_module = importlib.import_module("restr_fast.models.decoder")
SLOPE = 0.01
# Pre-activations closer to 0 than this: fp32 cannot tell which side of LeakyReLU's kink they are on
# (their fp32 error in these tests is at most 2.3e-6), and the two sides' gradients differ by 99 %.
KINK_BAND = 1e-5


def fp32_source_rows(n, device):
    """Output rows 0..2n-1 of x2 upsampling (align_corners=True) of n rows: the two source rows each
    reads and the second's weight lambda, from the source coordinate o (n - 1) / (2n - 1) in fp32, as
    PyTorch's fp32 upsampling and the kernels compute it (bit for bit). The first's weight, 1 - lambda,
    is then taken exactly, as the kernels' a + lambda (b - a) does; PyTorch rounds it to fp32 (3e-8)."""
    scale = torch.tensor(n - 1.0) / (2 * n - 1)  # fp32
    source = torch.arange(2 * n, dtype=torch.float32) * scale
    first = source.floor().long().clamp(max=n - 1)
    return first.to(device), (first + 1).clamp(max=n - 1).to(device), (source - first).double().to(device)


def upsample2x_with_fp32_weights(t):
    """fp64 upsample2x (B, h, w, C) -> (B, 2h, 2w, C) with the interpolation weights of the fp32 op:
    the exact result of what fp32 PyTorch and the kernels compute. Against exact weights, fp32's
    source coordinates are an error of their own, which grows with the map: 8e-6 at w = 30, 1e-4 at
    w = 480. So the fp32 tests hold the kernels to PyTorch's op as it is in fp32, coordinates and all:
    kernels with more accurate coordinates would fail them on large maps."""
    r0, r1, row_weight = fp32_source_rows(t.shape[1], t.device)
    c0, c1, column_weight = fp32_source_rows(t.shape[2], t.device)
    row_weight, column_weight = row_weight[None, :, None, None], column_weight[None, None, :, None]
    rows = t[:, r0] * (1 - row_weight) + t[:, r1] * row_weight  # (B, 2h, w, C)
    return rows[:, :, c0] * (1 - column_weight) + rows[:, :, c1] * column_weight


@contextlib.contextmanager
def fp32_interpolation_weights():
    """Within it, the reference decoder and the decoder module upsample with the fp32 op's weights."""
    with mock.patch.object(decoder_module, "upsample2x", upsample2x_with_fp32_weights), \
            mock.patch.object(models_decoder_module, "upsample2x", upsample2x_with_fp32_weights):
        yield


def pre_activations(x, weights):
    """Each block's fp64 pre-activations, linear(upsample(input)), for blocks of ``weights`` (None:
    upsampling alone)."""
    t, result = x.double(), []
    for weight in weights:
        up = upsample2x_with_fp32_weights(t)
        result.append(up if weight is None else F.linear(up, weight.double()))
        t = F.leaky_relu(result[-1], SLOPE)
    return result


def assert_clear_of_the_kink(x, weights):
    """Where the gradients pass through several activations (or the head's sum over channels), no
    pre-activation may be within KINK_BAND of 0: a kink fp32 put on the other side than the exact
    result would fail the gradients' comparison by far more than their rounding."""
    for k, pre in enumerate(pre_activations(x, weights)):
        closest = pre.abs().min().item()
        assert closest >= KINK_BAND, (f"block {k}: a pre-activation is {closest:.2g} from LeakyReLU's kink, closer "
                                      f"than fp32 can resolve; draw the test's inputs with another seed")


def zero_at_the_kink(grad, pre):
    """The upstream gradient ``grad`` of a single activation, zero where its pre-activation ``pre`` is
    within KINK_BAND of 0: there fp32 cannot tell the side, and either side's gradient is right."""
    return torch.where(pre.abs() < KINK_BAND, 0.0, grad.double()).to(grad.dtype)
