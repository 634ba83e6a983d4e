"""Matrix products that read ``leaky_relu(up(t))`` without writing it to memory.

A decoder block's activation ``y = leaky_relu(up(t))`` (B, 2h, 2w, C) is the largest tensor at
its resolution, and the next block's product ``y W^T`` only reads it once. The default path
writes ``y`` (the upsample-act kernel) and hands it to cuBLAS; :func:`upsample_act_matmul`
instead computes each (BLOCK_P, BLOCK_K) tile of ``y`` in registers, in y's dtype, as the A
operand of ``tl.dot``: it saves writing and reading ``y``, 8 of the 11 bytes a block's forward
moves per byte of ``t``, at the cost of recomputing the tile once per BLOCK_N output channels.
Which of the two is faster on a GPU is for :mod:`benchmarks.tune_decoder` to measure; the
decoder (:mod:`restr_fast.kernels.decoder`) uses them where ``FUSED_PRODUCTS`` says so.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .bilinear import leaky_relu, scales, upsampled_row
from .jit_helpers import fp32
from .op_registry import launcher, unit_stride
from .sizes import cdiv, next_power_of_2


@triton.jit
def _upsample_act_matmul_kernel(
    T, W, OUT, C, C_out, h, w, scale_h, scale_w, negative_slope,
    stride_tb, stride_th, stride_tw, stride_wn, stride_ob, stride_oh, stride_ow,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """OUT[b, o, p] = leaky_relu(up(T)[b, o, p]) W^T, the activation rounded to T's dtype as the
    unfused path stores it; programs: (B * 2h output rows, column tiles, output-channel tiles)."""
    scale_h, scale_w, negative_slope = fp32(scale_h), fp32(scale_w), fp32(negative_slope)
    b = tl.program_id(0) // (2 * h)
    o = tl.program_id(0) % (2 * h)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)  # output columns
    n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels
    p_ok = p < 2 * w
    n_ok = n < C_out
    t_image = T + b.to(tl.int64) * stride_tb
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for start in range(0, C, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)  # input channels
        k_ok = k < C
        u = upsampled_row(t_image, o, p, k, p_ok[:, None] & k_ok[None, :], h, w, scale_h, scale_w,
                          stride_th, stride_tw)  # (BLOCK_P, BLOCK_K), zero where masked
        y = leaky_relu(u, negative_slope).to(T.dtype.element_ty)
        weight = tl.load(W + n[None, :] * stride_wn + k[:, None], mask=k_ok[:, None] & n_ok[None, :],
                         other=0.0)  # (BLOCK_K, BLOCK_N) = W^T tile
        acc = tl.dot(y, weight, acc, input_precision="ieee")
    out_row = OUT + b.to(tl.int64) * stride_ob + o.to(tl.int64) * stride_oh
    tl.store(out_row + (p * stride_ow)[:, None] + n[None, :], acc.to(OUT.dtype.element_ty),
             mask=p_ok[:, None] & n_ok[None, :])


@triton.jit
def _upsample_act_weight_grad_kernel(
    T, GO, PARTIAL, C, C_out, h, w, rows, rows_per_program, scale_h, scale_w, negative_slope,
    stride_tb, stride_th, stride_tw, stride_gb, stride_gh, stride_gw,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """PARTIAL[g] = sum over the output rows r = b * 2h + o of group g of
    GO[b, o]^T leaky_relu(up(T)[b, o]), (C_out, C) fp32, the activation rounded to T's dtype;
    programs: (groups of ``rows_per_program`` output rows, output-channel tiles, channel tiles)."""
    scale_h, scale_w, negative_slope = fp32(scale_h), fp32(scale_w), fp32(negative_slope)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels
    k = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)  # input channels
    n_ok = n < C_out
    k_ok = k < C
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    first = tl.program_id(0) * rows_per_program
    for r in range(first, tl.minimum(first + rows_per_program, rows)):
        b = r // (2 * h)
        o = r % (2 * h)
        t_image = T + b.to(tl.int64) * stride_tb
        g_row = GO + b.to(tl.int64) * stride_gb + o.to(tl.int64) * stride_gh
        for start in range(0, 2 * w, BLOCK_P):
            p = start + tl.arange(0, BLOCK_P)  # output columns
            p_ok = p < 2 * w
            u = upsampled_row(t_image, o, p, k, p_ok[:, None] & k_ok[None, :], h, w, scale_h, scale_w,
                              stride_th, stride_tw)  # (BLOCK_P, BLOCK_K), zero where masked
            y = leaky_relu(u, negative_slope).to(T.dtype.element_ty)
            grad = tl.load(g_row + (p * stride_gw)[None, :] + n[:, None], mask=n_ok[:, None] & p_ok[None, :],
                           other=0.0)  # (BLOCK_N, BLOCK_P) = GO^T tile
            acc = tl.dot(grad, y, acc, input_precision="ieee")
    partial = PARTIAL + tl.program_id(0).to(tl.int64) * C_out * C
    tl.store(partial + n[:, None] * C + k[None, :], acc, mask=n_ok[:, None] & k_ok[None, :])


PRODUCT_COLUMNS = 64  # BLOCK_P of the product
WEIGHT_GRAD_COLUMNS = 32  # of the weight gradient: 64 takes 170-200 registers a thread, one 8-warp program per SM


def _blocks(in_channels: int, out_channels: int, columns: int, max_out_channels: int = 128) -> tuple[int, int, int, int]:
    """(BLOCK_P, BLOCK_N, BLOCK_K, num_warps): ``columns`` output columns by up to 128 output
    channels (96 in one tile; 192 in two, the second half empty), 64 input channels, 8 warps. On
    sm_90, in bf16, that is two warpgroups' wgmma, 111-122 registers a thread (4 warps: 175-190 for
    the product; 32 input channels a step serialises its wgmma)."""
    block_n = min(max_out_channels, max(16, next_power_of_2(out_channels)))
    block_k = min(64, max(16, next_power_of_2(in_channels)))
    return columns, block_n, block_k, 8


def upsample_act_matmul(t: torch.Tensor, weight: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """leaky_relu(up(t)) W^T without writing the activation: t (B, h, w, C), W (C_out, C) ->
    (B, 2h, 2w, C_out) in t's dtype."""
    t, weight = unit_stride(t), unit_stride(weight)
    B, h, w, C = t.shape
    C_out = weight.shape[0]
    out = t.new_empty((B, 2 * h, 2 * w, C_out))
    block_p, block_n, block_k, warps = _blocks(C, C_out, PRODUCT_COLUMNS)
    grid = (B * 2 * h, cdiv(2 * w, block_p), cdiv(C_out, block_n))
    launcher(_upsample_act_matmul_kernel)[grid](
        t, weight, out, C, C_out, h, w, *scales(h, w), negative_slope,
        t.stride(0), t.stride(1), t.stride(2), weight.stride(0), out.stride(0), out.stride(1), out.stride(2),
        BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
    )
    return out


def _rows_per_program(rows: int, width: int, out_channels: int, tiles: int, pixels_per_channel: int = 16) -> int:
    """Output rows a weight-gradient program sums: about 16 * C_out pixels, so that its (C_out, C)
    fp32 partial sum, written and read back, costs an eighth of the activation it never writes;
    fewer where that leaves under 264 programs (two per SM of an H100/H200)."""
    by_size = cdiv(pixels_per_channel * out_channels, width)
    by_count = cdiv(rows, cdiv(264, tiles))
    return max(1, min(by_size, by_count))


def upsample_act_weight_grad(t: torch.Tensor, grad_out: torch.Tensor, negative_slope: float) -> torch.Tensor:
    """The gradient of W in leaky_relu(up(t)) W^T without writing the activation: t (B, h, w, C),
    grad_out (B, 2h, 2w, C_out) -> (C_out, C) fp32."""
    t, grad_out = unit_stride(t), unit_stride(grad_out)
    B, h, w, C = t.shape
    C_out = grad_out.shape[-1]
    block_p, block_n, block_k, warps = _blocks(C, C_out, WEIGHT_GRAD_COLUMNS)
    tiles = cdiv(C_out, block_n) * cdiv(C, block_k)
    rows = B * 2 * h
    rows_per_program = _rows_per_program(rows, 2 * w, C_out, tiles)
    groups = cdiv(rows, rows_per_program)
    partial = t.new_empty((groups, C_out, C), dtype=torch.float32)
    launcher(_upsample_act_weight_grad_kernel)[(groups, cdiv(C_out, block_n), cdiv(C, block_k))](
        t, grad_out, partial, C, C_out, h, w, rows, rows_per_program, *scales(h, w), negative_slope,
        t.stride(0), t.stride(1), t.stride(2), grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
    )
    return partial.sum(0)
