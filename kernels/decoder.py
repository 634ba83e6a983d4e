"""Fused coarse-to-fine decoder: bilinear x2 upsampling (align_corners=True), Linear, LeakyReLU.

A decoder block is ``y = leaky_relu(up(x) W^T + b)`` on a channels-last map. Bilinear weights sum
to one, so the Linear commutes with the upsampling: ``up(x) W^T + b = up(x W^T + b)``. The fast
path uses that three ways:

1. every matrix product runs at the low resolution: 4x fewer FLOPs, 4x smaller operands;
2. upsampling and activation are one Triton kernel reading the low-resolution product
   (:func:`upsample_linear_act`, one block);
3. the whole decoder (:func:`fused_decoder`) keeps, per block, only its low-resolution product
   ``t_k``; the backward recomputes ``leaky_relu(up(t_k))`` where it needs it, and the last block's
   upsampling and activation fuse with the C -> 1 head, so the largest map (H x W x 2D/P) is never
   written to memory, forward or backward.

Why this variant: the decoder is memory-bound (DESIGN.md section 2), and this one moves the fewest
bytes: the published order (upsample, then Linear) reads and writes 4x larger maps at every block,
and storing the upsampled maps for the backward costs about 6x the memory of the inputs per block.

The backward kernels gather instead of scattering (no atomics, deterministic): each
low-resolution pixel sums the gradients of the upsampled pixels that read it, weighted by the same
bilinear ("tent") weights, recomputing the activation's pre-image from the 3 x 3 neighbourhood
those pixels read.
"""
from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Sequence

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import wrap_triton

from restr_fast.models.decoder import upsample2x

from . import op_registry
from .jit_helpers import fp32
from .op_registry import eager_autograd, register_triton_op

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# Triton kernels. Maps are channels-last (B, h, w, C) with unit channel stride; pixels are
# flattened over (B, rows, columns) and tiled BLOCK_P at a time, channels BLOCK_C at a time.
# --------------------------------------------------------------------------------------------

@triton.jit
def _source_rows(o, scale, size):
    """The two input rows (or columns) upsampled output index ``o`` reads, and the weight of the
    second, exactly as PyTorch's bilinear upsampling with align_corners=True computes them."""
    src = o.to(tl.float32) * scale
    i0 = tl.minimum(src.to(tl.int32), size - 1)  # floor: src >= 0
    i1 = tl.minimum(i0 + 1, size - 1)
    return i0, i1, src - i0.to(tl.float32)


@triton.jit
def _upsampled_tile(T, o00, o01, o10, o11, ly, lx, cols, ok):
    """fp32 (BLOCK_P, BLOCK_C) tile of up(t) from its four source-pixel offsets and weights."""
    c = cols[None, :]
    t00 = tl.load(T + o00[:, None] + c, mask=ok, other=0.0).to(tl.float32)
    t01 = tl.load(T + o01[:, None] + c, mask=ok, other=0.0).to(tl.float32)
    t10 = tl.load(T + o10[:, None] + c, mask=ok, other=0.0).to(tl.float32)
    t11 = tl.load(T + o11[:, None] + c, mask=ok, other=0.0).to(tl.float32)
    ly = ly[:, None]
    lx = lx[:, None]
    return (1.0 - ly) * ((1.0 - lx) * t00 + lx * t01) + ly * ((1.0 - lx) * t10 + lx * t11)


@triton.jit
def _source_offsets(pix, h, w, scale_h, scale_w, stride_tb, stride_th, stride_tw):
    """Offsets of the four input pixels each output pixel ``pix`` (flat over (B, 2h, 2w)) reads,
    the row and column weights, and the output's (b, row, column)."""
    wo = 2 * w
    hwo = 4 * h * w
    b = pix // hwo
    oy = (pix % hwo) // wo
    ox = pix % wo
    y0, y1, ly = _source_rows(oy, scale_h, h)
    x0, x1, lx = _source_rows(ox, scale_w, w)
    base = b * stride_tb
    o00 = base + y0 * stride_th + x0 * stride_tw
    o01 = base + y0 * stride_th + x1 * stride_tw
    o10 = base + y1 * stride_th + x0 * stride_tw
    o11 = base + y1 * stride_th + x1 * stride_tw
    return o00, o01, o10, o11, ly, lx, b, oy, ox


@triton.jit
def _leaky_relu(u, negative_slope):
    return tl.where(u > 0, u, u * negative_slope)


@triton.jit
def _upsample_act_fwd_kernel(
    T, Y, n_pixels, C, h, w, scale_h, scale_w, negative_slope,
    stride_tb, stride_th, stride_tw, stride_yb, stride_yh, stride_yw,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    scale_h, scale_w, negative_slope = fp32(scale_h), fp32(scale_w), fp32(negative_slope)
    pix = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)  # output pixels
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = (pix < n_pixels)[:, None] & (cols < C)[None, :]
    o00, o01, o10, o11, ly, lx, b, oy, ox = _source_offsets(pix, h, w, scale_h, scale_w, stride_tb, stride_th, stride_tw)
    y = _leaky_relu(_upsampled_tile(T, o00, o01, o10, o11, ly, lx, cols, ok), negative_slope)
    out = b * stride_yb + oy * stride_yh + ox * stride_yw
    tl.store(Y + out[:, None] + cols[None, :], y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _upsample_act_head_fwd_kernel(
    T, WEIGHT, BIAS, OUT, n_pixels, C, h, w, scale_h, scale_w, negative_slope,
    stride_tb, stride_th, stride_tw,
    HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    scale_h, scale_w, negative_slope = fp32(scale_h), fp32(scale_w), fp32(negative_slope)
    pix = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pix_ok = pix < n_pixels
    o00, o01, o10, o11, ly, lx, b, oy, ox = _source_offsets(pix, h, w, scale_h, scale_w, stride_tb, stride_th, stride_tw)
    acc = tl.zeros([BLOCK_P], dtype=tl.float32)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        col_ok = cols < C
        y = _leaky_relu(_upsampled_tile(T, o00, o01, o10, o11, ly, lx, cols, pix_ok[:, None] & col_ok[None, :]), negative_slope)
        weight = tl.load(WEIGHT + cols, mask=col_ok, other=0.0).to(tl.float32)
        acc += tl.sum(y * weight[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(BIAS).to(tl.float32)
    tl.store(OUT + pix, acc.to(OUT.dtype.element_ty), mask=pix_ok)  # OUT: contiguous (B, 2h, 2w)


@triton.jit
def _head_weight_grad_kernel(
    T, G, PARTIAL, n_pixels, C, h, w, scale_h, scale_w, negative_slope, pixels_per_program,
    stride_tb, stride_th, stride_tw,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """PARTIAL[program] = sum over this program's output pixels of grad * leaky_relu(up(t))."""
    scale_h, scale_w, negative_slope = fp32(scale_h), fp32(scale_w), fp32(negative_slope)
    program = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    first = program.to(tl.int64) * pixels_per_program
    for start in range(0, pixels_per_program, BLOCK_P):
        pix = first + start + tl.arange(0, BLOCK_P)
        pix_ok = pix < n_pixels
        o00, o01, o10, o11, ly, lx, b, oy, ox = _source_offsets(pix, h, w, scale_h, scale_w, stride_tb, stride_th, stride_tw)
        y = _leaky_relu(_upsampled_tile(T, o00, o01, o10, o11, ly, lx, cols, pix_ok[:, None] & col_ok[None, :]), negative_slope)
        g = tl.load(G + pix, mask=pix_ok, other=0.0).to(tl.float32)  # G: contiguous (B, 2h, 2w)
        acc += tl.sum(y * g[:, None], axis=0)
    tl.store(PARTIAL + program * C + cols, acc, mask=col_ok)


@triton.jit
def _tent(x):
    """Bilinear weight of an input row at distance ``x`` from the source coordinate."""
    return tl.maximum(1.0 - tl.abs(x), 0.0)


@triton.jit
def _neighbour(T, b_off, r, c, h, w, cols, ok, stride_th, stride_tw):
    """fp32 tile of t at row r, column c; zero outside the map."""
    inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    offset = b_off + r * stride_th + c * stride_tw
    return tl.load(T + offset[:, None] + cols[None, :], mask=ok & inside[:, None], other=0.0).to(tl.float32)


@triton.jit
def _upsample_act_bwd_kernel(
    T, GY, G, WEIGHT, GT, n_pixels, C, h, w, scale_h, scale_w, negative_slope,
    stride_tb, stride_th, stride_tw, stride_gb, stride_gh, stride_gw, stride_gtb, stride_gth, stride_gtw,
    HEAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """grad_t = up^T(grad_y * leaky_relu'(up(t))), gathered per low-resolution pixel.

    Output rows reading input row i lie in [2i - 2, 2i + 3] (their source coordinate is within 1
    of i, and the scale is (h - 1) / (2h - 1) in (1/3, 1/2)), likewise for columns: 6 x 6 taps.
    With HEAD, grad_y is the head's grad_logits (B, 2h, 2w) times its weight vector (C,).
    """
    scale_h, scale_w, negative_slope = fp32(scale_h), fp32(scale_w), fp32(negative_slope)
    pix = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)  # low-resolution pixels
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pix_ok = pix < n_pixels
    col_ok = cols < C
    ok = pix_ok[:, None] & col_ok[None, :]
    b = pix // (h * w)
    i = ((pix % (h * w)) // w).to(tl.int32)
    j = (pix % w).to(tl.int32)
    b_t = b * stride_tb
    if HEAD:
        head_weight = tl.load(WEIGHT + cols, mask=col_ok, other=0.0).to(tl.float32)

    # the 3 x 3 neighbourhood of t that every upsampled pixel reading (i, j) reads from
    t_mm = _neighbour(T, b_t, i - 1, j - 1, h, w, cols, ok, stride_th, stride_tw)
    t_m0 = _neighbour(T, b_t, i - 1, j, h, w, cols, ok, stride_th, stride_tw)
    t_mp = _neighbour(T, b_t, i - 1, j + 1, h, w, cols, ok, stride_th, stride_tw)
    t_0m = _neighbour(T, b_t, i, j - 1, h, w, cols, ok, stride_th, stride_tw)
    t_00 = _neighbour(T, b_t, i, j, h, w, cols, ok, stride_th, stride_tw)
    t_0p = _neighbour(T, b_t, i, j + 1, h, w, cols, ok, stride_th, stride_tw)
    t_pm = _neighbour(T, b_t, i + 1, j - 1, h, w, cols, ok, stride_th, stride_tw)
    t_p0 = _neighbour(T, b_t, i + 1, j, h, w, cols, ok, stride_th, stride_tw)
    t_pp = _neighbour(T, b_t, i + 1, j + 1, h, w, cols, ok, stride_th, stride_tw)

    fi = i.to(tl.float32)
    fj = j.to(tl.float32)
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for a in tl.static_range(6):
        o = 2 * i - 2 + a  # output row
        src_o = o.to(tl.float32) * scale_h
        row_ok = (o >= 0) & (o < 2 * h)
        wy_m = _tent(src_o - (fi - 1.0))[:, None]
        wy_0 = _tent(src_o - fi)
        wy_p = _tent(src_o - (fi + 1.0))[:, None]
        # up(t) at output row o, combined over rows, for the input columns j - 1, j, j + 1
        v_m = wy_m * t_mm + wy_0[:, None] * t_0m + wy_p * t_pm
        v_0 = wy_m * t_m0 + wy_0[:, None] * t_00 + wy_p * t_p0
        v_p = wy_m * t_mp + wy_0[:, None] * t_0p + wy_p * t_pp
        for e in tl.static_range(6):
            p = 2 * j - 2 + e  # output column
            src_p = p.to(tl.float32) * scale_w
            wx_0 = _tent(src_p - fj)
            u = _tent(src_p - (fj - 1.0))[:, None] * v_m + wx_0[:, None] * v_0 + _tent(src_p - (fj + 1.0))[:, None] * v_p
            reads = wy_0 * wx_0  # how much output (o, p) reads input (i, j)
            tap_ok = pix_ok & row_ok & (p >= 0) & (p < 2 * w) & (reads > 0)
            g_off = b * stride_gb + o * stride_gh + p * stride_gw
            if HEAD:
                g = tl.load(G + g_off, mask=tap_ok, other=0.0).to(tl.float32)[:, None] * head_weight[None, :]
            else:
                g = tl.load(GY + g_off[:, None] + cols[None, :], mask=tap_ok[:, None] & col_ok[None, :],
                            other=0.0).to(tl.float32)
            acc += reads[:, None] * tl.where(u > 0, g, g * negative_slope)

    out = b * stride_gtb + i * stride_gth + j * stride_gtw
    tl.store(GT + out[:, None] + cols[None, :], acc.to(GT.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------------------------
# Host launchers
# --------------------------------------------------------------------------------------------

def _scales(h: int, w: int) -> tuple[float, float]:
    """Source coordinate per output index of x2 upsampling with align_corners=True."""
    return (h - 1) / (2 * h - 1), (w - 1) / (2 * w - 1)


def _tile(channels: int, gpu_channels: int, gpu_elements: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C): tiles sized for a GPU's registers; under the interpreter, which runs
    programs one after another at a cost per operation rather than per element, 16x larger."""
    scale = 16 if op_registry.INTERPRETED else 1
    block_c = min(gpu_channels * scale, triton.next_power_of_2(channels))
    return max(16, gpu_elements * scale // block_c), block_c


def _pixel_blocks(channels: int) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C): up to 64 channels per tile, about 2K elements per tile."""
    return _tile(channels, 64, 2048)


def _launch_upsample_act(t: torch.Tensor, y: torch.Tensor, negative_slope: float) -> None:
    B, h, w, C = t.shape
    block_p, block_c = _pixel_blocks(C)
    n_pixels = B * 4 * h * w
    wrap_triton(_upsample_act_fwd_kernel)[(triton.cdiv(n_pixels, block_p), triton.cdiv(C, block_c))](
        t, y, n_pixels, C, h, w, *_scales(h, w), negative_slope,
        t.stride(0), t.stride(1), t.stride(2), y.stride(0), y.stride(1), y.stride(2),
        BLOCK_P=block_p, BLOCK_C=block_c,
    )


def _launch_upsample_act_backward(t: torch.Tensor, grad: torch.Tensor, head_weight: torch.Tensor | None,
                                  grad_t: torch.Tensor, negative_slope: float) -> None:
    """grad: (B, 2h, 2w, C) upstream gradient of leaky_relu(up(t)), or with ``head_weight`` (C,)
    the (B, 2h, 2w) gradient of the head's logits."""
    B, h, w, C = t.shape
    block_p, block_c = _tile(C, 32, 512)  # nine neighbour tiles live in registers
    n_pixels = B * h * w
    head = head_weight is not None
    wrap_triton(_upsample_act_bwd_kernel)[(triton.cdiv(n_pixels, block_p), triton.cdiv(C, block_c))](
        t, grad, grad, head_weight if head else t, grad_t, n_pixels, C, h, w, *_scales(h, w), negative_slope,
        t.stride(0), t.stride(1), t.stride(2), grad.stride(0), grad.stride(1), grad.stride(2),
        grad_t.stride(0), grad_t.stride(1), grad_t.stride(2),
        HEAD=head, BLOCK_P=block_p, BLOCK_C=block_c,
    )


def _launch_head(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
                 negative_slope: float) -> None:
    B, h, w, C = t.shape
    block_p, block_c = _pixel_blocks(C)
    n_pixels = B * 4 * h * w
    wrap_triton(_upsample_act_head_fwd_kernel)[(triton.cdiv(n_pixels, block_p),)](
        t, weight, weight if bias is None else bias, out, n_pixels, C, h, w, *_scales(h, w), negative_slope,
        t.stride(0), t.stride(1), t.stride(2),
        HAS_BIAS=bias is not None, BLOCK_P=block_p, BLOCK_C=block_c,
    )


def _pixels_per_program(n_pixels: int, block_p: int, column_blocks: int, device: torch.device) -> int:
    """Output pixels each head-weight-gradient program sums over: about four programs per SM."""
    programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    per_program = triton.cdiv(n_pixels, max(1, programs // column_blocks))
    return triton.cdiv(per_program, block_p) * block_p


def _head_weight_grad(t: torch.Tensor, grad: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """sum over output pixels of grad (B, 2h, 2w) * leaky_relu(up(t)): fp32 (C,)."""
    B, h, w, C = t.shape
    block_p, block_c = _pixel_blocks(C)
    n_pixels = B * 4 * h * w
    column_blocks = triton.cdiv(C, block_c)
    per_program = _pixels_per_program(n_pixels, block_p, column_blocks, t.device)
    programs = triton.cdiv(n_pixels, per_program)
    partial = t.new_empty((programs, C), dtype=torch.float32)
    wrap_triton(_head_weight_grad_kernel)[(programs, column_blocks)](
        t, grad, partial, n_pixels, C, h, w, *_scales(h, w), negative_slope, per_program,
        t.stride(0), t.stride(1), t.stride(2),
        BLOCK_P=block_p, BLOCK_C=block_c,
    )
    return partial.sum(0)


def _upsampled_shape(t: torch.Tensor, channels: int | None = None) -> tuple[int, ...]:
    B, h, w, C = t.shape
    return (B, 2 * h, 2 * w, C if channels is None else channels)


# --------------------------------------------------------------------------------------------
# Ops registered with torch.library (autograd included)
# --------------------------------------------------------------------------------------------

def _upsample_act_fake(t, negative_slope):
    return t.new_empty(_upsampled_shape(t))


def _upsample_act(t: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """leaky_relu(up(t)): (B, h, w, C) -> (B, 2h, 2w, C)."""
    y = t.new_empty(_upsampled_shape(t))
    _launch_upsample_act(t, y, negative_slope)
    return y


def _upsample_act_backward_fake(t, grad_y, negative_slope):
    return torch.empty_like(t)


def _upsample_act_backward(t: torch.Tensor, grad_y: torch.Tensor, negative_slope: float) -> torch.Tensor:
    grad_t = torch.empty_like(t)
    _launch_upsample_act_backward(t, grad_y, None, grad_t, negative_slope)
    return grad_t


def _upsample_act_linear_fake(t, weight, negative_slope):
    return t.new_empty(_upsampled_shape(t, weight.shape[0]))


def _upsample_act_linear(t: torch.Tensor, weight: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """leaky_relu(up(t)) W^T: the activation of one block and the product of the next, keeping
    only t (B, h, w, C) for the backward; W: (C_out, C) -> (B, 2h, 2w, C_out)."""
    return torch.matmul(_upsample_act(t, negative_slope), weight.t())


def _head_fake(t, weight, bias, negative_slope):
    B, h, w, _ = t.shape
    return t.new_empty((B, 2 * h, 2 * w))


def _head(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, negative_slope: float) -> torch.Tensor:
    """leaky_relu(up(t)) . weight + bias: (B, h, w, C) -> logits (B, 2h, 2w), never writing up(t)."""
    out = _head_fake(t, weight, bias, negative_slope)
    _launch_head(t, weight, bias, out, negative_slope)
    return out


def _head_backward_fake(t, weight, grad, negative_slope):
    return torch.empty_like(t), weight.new_empty(weight.shape, dtype=torch.float32)


def _head_backward(t: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor,
                   negative_slope: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of t (B, h, w, C) and of the head's weight (C,) (fp32) from grad (B, 2h, 2w)."""
    grad_t = torch.empty_like(t)
    _launch_upsample_act_backward(t, grad, weight, grad_t, negative_slope)
    return grad_t, _head_weight_grad(t, grad, negative_slope)


_OPS = {  # name: (implementation, fake)
    "upsample_act": (_upsample_act, _upsample_act_fake),
    "upsample_act_backward": (_upsample_act_backward, _upsample_act_backward_fake),
    "upsample_act_linear": (_upsample_act_linear, _upsample_act_linear_fake),
    "upsample_act_head": (_head, _head_fake),
    "upsample_act_head_backward": (_head_backward, _head_backward_fake),
}
_registered = {name: register_triton_op(f"restr_fast::{name}", fake=fake)(impl) for name, (impl, fake) in _OPS.items()}
_EAGER = SimpleNamespace(**{name: impl for name, (impl, _) in _OPS.items()})  # the same, called directly


def _save_t(ctx, inputs, output) -> None:
    t, *weights, negative_slope = inputs
    ctx.save_for_backward(t, *weights)
    ctx.negative_slope = negative_slope


def _upsample_act_autograd(ctx, grad_y, ops=torch.ops.restr_fast):
    (t,) = ctx.saved_tensors
    return ops.upsample_act_backward(t, grad_y.contiguous(), ctx.negative_slope), None


def _upsample_act_linear_autograd(ctx, grad_out, ops=torch.ops.restr_fast):
    t, weight = ctx.saved_tensors
    grad_out = grad_out.contiguous()
    y = ops.upsample_act(t, ctx.negative_slope)  # recomputed (B, 2h, 2w, C)
    grad_weight = grad_out.flatten(0, 2).t() @ y.flatten(0, 2)  # (C_out, C)
    del y
    grad_y = torch.matmul(grad_out, weight)  # (B, 2h, 2w, C)
    grad_t = ops.upsample_act_backward(t, grad_y, ctx.negative_slope)
    return grad_t, grad_weight, None


def _save_head(ctx, inputs, output) -> None:
    t, weight, bias, negative_slope = inputs
    ctx.save_for_backward(t, weight)
    ctx.negative_slope = negative_slope
    ctx.bias_dtype = None if bias is None else bias.dtype


def _head_autograd(ctx, grad, ops=torch.ops.restr_fast):
    t, weight = ctx.saved_tensors
    grad = grad.contiguous()
    grad_t, grad_weight = ops.upsample_act_head_backward(t, weight, grad, ctx.negative_slope)
    grad_bias = None if ctx.bias_dtype is None else grad.sum(dtype=torch.float32).to(ctx.bias_dtype).reshape(1)
    return grad_t, grad_weight.to(weight.dtype), grad_bias, None


_AUTOGRAD = {  # differentiable op: (setup_context, backward)
    "upsample_act": (_save_t, _upsample_act_autograd),
    "upsample_act_linear": (_save_t, _upsample_act_linear_autograd),
    "upsample_act_head": (_save_head, _head_autograd),
}
for _name, (_setup, _backward) in _AUTOGRAD.items():
    _registered[_name].register_autograd(_backward, setup_context=_setup)
_eager = {name: eager_autograd(_OPS[name][0], setup, functools.partial(backward, ops=_EAGER))
          for name, (setup, backward) in _AUTOGRAD.items()}


def _call(name: str, *args):
    """Differentiable op ``name``: through torch.library under torch.compile, which traces it;
    as a plain autograd.Function in eager mode (see :func:`op_registry.eager_autograd`)."""
    if torch.compiler.is_compiling():
        return getattr(torch.ops.restr_fast, name)(*args)
    return _eager[name](*args)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

def upsample_linear_act_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                                  negative_slope: float = 0.01) -> torch.Tensor:
    """One decoder block in plain PyTorch, in the published order: upsample, Linear, LeakyReLU."""
    return F.leaky_relu(F.linear(upsample2x(x), weight, bias), negative_slope)


def upsample_linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        negative_slope: float = 0.01) -> torch.Tensor:
    """One decoder block: ``leaky_relu(linear(upsample_x2(x)))``, bilinear with align_corners=True.

    Args:
        x: (B, h, w, C) channels-last map; fp32, fp16 or bf16.
        weight: (C_out, C) Linear weight, same dtype as x.
        bias: optional (C_out,) Linear bias, same dtype.
        negative_slope: LeakyReLU slope.

    Returns:
        (B, 2h, 2w, C_out). The product runs at the low resolution and the upsampling and
        activation in one Triton kernel; on CPU tensors without Triton's interpreter, the same
        order in PyTorch.
    """
    _check_map(x, "x")
    _check_weight(weight, x, "weight", x.shape[-1])
    if bias is not None:
        _check_vector(bias, weight.shape[0], x, "bias")
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tensor.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {tensor.dtype} but x {x.dtype}: cast them to one dtype")
    t = F.linear(x, weight, bias)  # (B, h, w, C_out), low resolution
    if not op_registry.kernel_can_run(x) or t.numel() == 0:
        return F.leaky_relu(upsample2x(t), negative_slope)
    return _call("upsample_act", t.contiguous(), float(negative_slope))


def decoder_reference(x: torch.Tensor, weights: Sequence[torch.Tensor], head_weight: torch.Tensor,
                      head_bias: torch.Tensor | None = None, negative_slope: float = 0.01) -> torch.Tensor:
    """The whole decoder in plain PyTorch, published order: (B, h, w, C) -> pixel logits (B, 1, H, W)."""
    for weight in weights:
        x = upsample_linear_act_reference(x, weight, None, negative_slope)
    return F.linear(x, head_weight.reshape(1, -1), head_bias).permute(0, 3, 1, 2)


def fused_decoder(x: torch.Tensor, weights: Sequence[torch.Tensor], head_weight: torch.Tensor,
                  head_bias: torch.Tensor | None = None, negative_slope: float = 0.01) -> torch.Tensor:
    """The whole coarse-to-fine decoder: K blocks of (upsample x2, Linear without bias,
    LeakyReLU), then the Linear C -> 1 head.

    Args:
        x: (B, h, w, C) channels-last decoder input ([z_v, z_masked] on the patch grid); fp32,
            fp16 or bf16.
        weights: the K block weights, (C/2, C), (C/4, C/2), ...; cast to the compute dtype (x's,
            or autocast's), as are the head's.
        head_weight: (1, C / 2^K) or (C / 2^K,) head weight; head_bias: optional (1,).
        negative_slope: LeakyReLU slope.

    Returns:
        pixel logits (B, 1, 2^K h, 2^K w) in the compute dtype. Only the low-resolution products are kept
        for the backward; the final full-resolution map is never materialised. On CPU tensors
        without Triton's interpreter, the same low-resolution order in PyTorch.
    """
    _check_map(x, "x")
    if len(weights) == 0:
        raise ValueError("fused_decoder needs at least one block weight")
    channels = x.shape[-1]
    for k, weight in enumerate(weights):
        _check_weight(weight, x, f"weights[{k}]", in_channels=channels)
        channels = weight.shape[0]
    head_weight = head_weight.reshape(-1) if head_weight.dim() == 2 and head_weight.shape[0] == 1 else head_weight
    _check_vector(head_weight, channels, x, "head_weight")
    if head_bias is not None:
        _check_vector(head_bias, 1, x, "head_bias")

    slope = float(negative_slope)
    t = F.linear(x, weights[0].to(x.dtype))  # (B, h, w, C/2), low resolution; autocast may change its dtype
    # the rest in t's dtype, as autocast would run them
    weights = [weight.to(t.dtype) for weight in weights]
    head_weight = head_weight.to(t.dtype)
    head_bias = None if head_bias is None else head_bias.to(t.dtype)
    if not op_registry.kernel_can_run(x) or t.numel() == 0:
        for weight in weights[1:]:
            t = F.linear(F.leaky_relu(upsample2x(t), slope), weight)
        logits = F.linear(F.leaky_relu(upsample2x(t), slope), head_weight[None], head_bias)
        return logits.permute(0, 3, 1, 2)
    t = t.contiguous()
    for weight in weights[1:]:
        t = _call("upsample_act_linear", t, weight, slope)  # (B, 2h, 2w, C_k)
    return _call("upsample_act_head", t, head_weight, head_bias, slope).unsqueeze(1)


def _check_map(x, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a channels-last (B, h, w, C) map, got {shape}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; the decoder kernels support float32, float16 and bfloat16")


def _check_weight(weight, x: torch.Tensor, name: str, in_channels: int) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != in_channels:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        channels_first = isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[1] == x.shape[1]
        hint = " (x looks channels-first: the decoder takes (B, h, w, C), use x.permute(0, 2, 3, 1))" if channels_first else ""
        raise ValueError(f"{name} must be a (C_out, {in_channels}) Linear weight for an input of "
                         f"{in_channels} channels, got {shape}{hint}")
    _check_like(weight, x, name)


def _check_vector(vector, size: int, x: torch.Tensor, name: str) -> None:
    if not isinstance(vector, torch.Tensor) or vector.shape != (size,):
        shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
        raise ValueError(f"{name} must have shape ({size},), got {shape}")
    _check_like(vector, x, name)


def _check_like(tensor: torch.Tensor, x: torch.Tensor, name: str) -> None:
    if tensor.device != x.device:
        raise ValueError(f"{name} is on {tensor.device} but x on {x.device}")
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} has dtype {tensor.dtype}; the decoder kernels support float32, float16 and bfloat16")
