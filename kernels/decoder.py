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
Between blocks, ``leaky_relu(up(t_k))`` is still written once for cuBLAS's product with the next
weight (and again for that weight's gradient). Triton matrix products that computed it in
registers instead, saving about half a block's bytes, were slower on an H200 (forward + backward,
batch 8, bf16: 5.32 against 3.44 ms at 480/8, 4.83 against 3.46 ms at 640/16), so cuBLAS does the
products.

The backward kernel gathers instead of scattering (no atomics, deterministic): each program
owns a strip of low-resolution rows and walks down the pairs of output rows that read them (both
rows of a pair read the same two), summing the gradients of the upsampled pixels with the same
bilinear weights and recomputing the activation's pre-image from those two rows. The forward
kernels likewise work on pairs of output columns; a second form of the backward does too
(``BACKWARD_ON_COLUMN_PAIRS``), sharing each pair's gradient between its two input columns as rows
are stored.
"""
from __future__ import annotations

import functools
import numbers
from types import SimpleNamespace
from typing import Sequence

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from restr_fast.models.decoder import upsample2x

from . import op_registry
from .bilinear import leaky_relu, scales, tent, upsampled_pair
from .jit_helpers import fp32
from .op_registry import eager_autograd, launcher, register_triton_op
from .sizes import cdiv, next_power_of_2

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------------
# Triton kernels. Maps are channels-last (B, h, w, C) with unit channel stride. Every program
# handles whole rows: the row and its source rows are scalars, so per-lane work is only over
# columns and channels (tiles of BLOCK_Q column pairs or BLOCK_J columns by BLOCK_C channels). Offsets of
# rows are int64, those inside a row int32.
# --------------------------------------------------------------------------------------------

@triton.jit
def _upsample_act_fwd_kernel(
    T, Y, C, h, w, scale_h, scale_w, negative_slope,
    stride_tb, stride_th, stride_tw, stride_yb, stride_yh, stride_yw,
    BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Y[b, o, p] = leaky_relu(up(T)[b, o, p]); programs: (B * 2h rows, tiles of column pairs
    (2q - 1, 2q), channel tiles)."""
    scale_h, scale_w, negative_slope = fp32(scale_h), fp32(scale_w), fp32(negative_slope)
    b = tl.program_id(0) // (2 * h)
    o = tl.program_id(0) % (2 * h)
    q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = (cols < C)[None, :]
    u_odd, u_even = upsampled_pair(T + b.to(tl.int64) * stride_tb, o, q, cols, (q <= w)[:, None] & col_ok,
                                   h, w, scale_h, scale_w, stride_th, stride_tw)
    y_row = Y + b.to(tl.int64) * stride_yb + o.to(tl.int64) * stride_yh
    odd = y_row + ((2 * q - 1) * stride_yw)[:, None] + cols[None, :]
    tl.store(odd, leaky_relu(u_odd, negative_slope).to(Y.dtype.element_ty),
             mask=((q >= 1) & (q <= w))[:, None] & col_ok)
    tl.store(odd + stride_yw, leaky_relu(u_even, negative_slope).to(Y.dtype.element_ty), mask=(q < w)[:, None] & col_ok)


@triton.jit
def _upsample_act_head_fwd_kernel(
    T, WEIGHT, BIAS, OUT, C, h, w, scale_h, scale_w, negative_slope,
    stride_tb, stride_th, stride_tw,
    HAS_BIAS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """OUT[b, o, p] = leaky_relu(up(T)[b, o, p]) . WEIGHT + BIAS, OUT contiguous (B, 2h, 2w);
    programs: (B * 2h rows, tiles of column pairs (2q - 1, 2q))."""
    scale_h, scale_w, negative_slope = fp32(scale_h), fp32(scale_w), fp32(negative_slope)
    b = tl.program_id(0) // (2 * h)
    o = tl.program_id(0) % (2 * h)
    q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = (q <= w)[:, None]
    t_image = T + b.to(tl.int64) * stride_tb
    acc_odd = tl.zeros([BLOCK_Q], dtype=tl.float32)
    acc_even = tl.zeros([BLOCK_Q], dtype=tl.float32)
    for start in range(0, C, BLOCK_C):
        cols = start + tl.arange(0, BLOCK_C)
        col_ok = cols < C
        u_odd, u_even = upsampled_pair(t_image, o, q, cols, q_ok & col_ok[None, :], h, w, scale_h, scale_w,
                                       stride_th, stride_tw)
        weight = tl.load(WEIGHT + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        acc_odd += tl.sum(leaky_relu(u_odd, negative_slope) * weight, axis=1)
        acc_even += tl.sum(leaky_relu(u_even, negative_slope) * weight, axis=1)
    if HAS_BIAS:
        bias = tl.load(BIAS).to(tl.float32)
        acc_odd += bias
        acc_even += bias
    odd = OUT + tl.program_id(0).to(tl.int64) * (2 * w) + 2 * q - 1
    tl.store(odd, acc_odd.to(OUT.dtype.element_ty), mask=(q >= 1) & (q <= w))
    tl.store(odd + 1, acc_even.to(OUT.dtype.element_ty), mask=q < w)


@triton.jit
def _store_grad_row(GT_IMAGE, row, first, end, acc, j, cols, ok, stride_gth, stride_gtw):
    """Store the finished gradient row ``row`` (scalar) if this program owns it: first <= row < end."""
    owned = (row >= first) & (row < end)
    offsets = (j * stride_gtw)[:, None] + cols[None, :]
    tl.store(GT_IMAGE + tl.cast(row, tl.int64) * stride_gth + offsets, acc.to(GT_IMAGE.dtype.element_ty),
             mask=ok & owned)


@triton.jit
def _upsample_act_bwd_kernel(
    T, GY, WEIGHT, GT, WEIGHT_PARTIAL, C, h, w, scale_h, scale_w, negative_slope, rows_per_strip, n_strips,
    stride_tb, stride_th, stride_tw, stride_gb, stride_gh, stride_gw, stride_gtb, stride_gth, stride_gtw,
    HEAD: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """grad_t = up^T(grad_y * leaky_relu'(up(t))), without atomics.

    Programs: (B * strips of ``rows_per_strip`` input rows, column tiles, channel tiles). As in the
    forward, output rows (and columns) come in pairs: 2q - 1 and 2q both read input rows q - 1 and
    q (clamped to the map). A program walks the pairs q in [first, end] of its strip [first, end):
    pair q adds to input rows q - 1 and q only, so two accumulator rows suffice, and after pair q
    row q - 1 is complete and stored (if the strip owns it). A pair loads its two input rows once
    for both output rows.

    Per output row it first reduces along the columns, for each input column j of its tile, over
    the output columns p that read j, recomputing up(t) at (o, p) for the activation's slope: p in
    [2j - 1, 2j + 2], the pairs j and j + 1. Pair j reads input columns j - 1 and j, so each
    recomputed value interpolates two columns. The weights are those of PyTorch's bilinear
    upsampling, src - floor(src), but at the last row and column, 2h - 1 and 2w - 1, whose source
    fp32 rounding can put an ulp below h - 1 or w - 1: PyTorch then gives row h - 2 or column w - 2
    that ulp of weight, left out here (row h - 1, column w - 1 get the rest).

    With HEAD, grad_y is the head's grad_logits GY (B, 2h, 2w) times its weight vector (C,), and
    WEIGHT_PARTIAL gets this program's share of the head weight's gradient,
    sum grad_logits * leaky_relu(up(t)) over the output pixels (o, p) it owns: o // 2 in its
    strip and p // 2 in its column tile, so that each pixel counts once.

    NUM_STAGES > 1 has Triton prefetch the next pair's loads into shared memory (cp.async).
    """
    scale_h, scale_w, negative_slope = fp32(scale_h), fp32(scale_w), fp32(negative_slope)
    b = (tl.program_id(0) // n_strips).to(tl.int64)
    first = (tl.program_id(0) % n_strips) * rows_per_strip  # this strip's input rows: [first, end)
    end = tl.minimum(first + rows_per_strip, h)
    j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)  # input columns
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    j_ok = j < w
    col_ok = cols < C
    ok = j_ok[:, None] & col_ok[None, :]
    t_image = T + b * stride_tb
    g_image = GY + b * stride_gb
    column_m = ((j - 1) * stride_tw)[:, None] + cols[None, :]
    column_0 = (j * stride_tw)[:, None] + cols[None, :]
    column_p = ((j + 1) * stride_tw)[:, None] + cols[None, :]
    ok_m = ok & (j >= 1)[:, None]
    ok_p = ok & (j + 1 < w)[:, None]
    fj = j.to(tl.float32)
    if HEAD:  # grad_y = grad_logits * the head weight, which multiplies whole rows as they are stored
        row_weight = tl.load(WEIGHT + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        weight_acc = tl.zeros([BLOCK_J, BLOCK_C], dtype=tl.float32)
    else:
        row_weight = 1.0

    acc_upper = tl.zeros([BLOCK_J, BLOCK_C], dtype=tl.float32)  # input row q - 1
    acc_lower = tl.zeros([BLOCK_J, BLOCK_C], dtype=tl.float32)  # input row q
    for q in tl.range(first, end + 1, num_stages=NUM_STAGES):
        upper = t_image + tl.cast(tl.maximum(q - 1, 0), tl.int64) * stride_th
        lower = t_image + tl.cast(tl.minimum(q, h - 1), tl.int64) * stride_th
        upper_m = tl.load(upper + column_m, mask=ok_m, other=0.0).to(tl.float32)
        upper_0 = tl.load(upper + column_0, mask=ok, other=0.0).to(tl.float32)
        upper_p = tl.load(upper + column_p, mask=ok_p, other=0.0).to(tl.float32)
        down_m = tl.load(lower + column_m, mask=ok_m, other=0.0).to(tl.float32) - upper_m
        down_0 = tl.load(lower + column_0, mask=ok, other=0.0).to(tl.float32) - upper_0
        down_p = tl.load(lower + column_p, mask=ok_p, other=0.0).to(tl.float32) - upper_p
        for half in tl.static_range(2):
            o = 2 * q - 1 + half  # output row
            o_ok = (o >= 0) & (o < 2 * h)
            # the lower row's weight; pair h reads row h - 1 twice, which gets the whole weight
            ly = tl.where(q < h, tl.cast(o, tl.float32) * scale_h - tl.cast(q - 1, tl.float32), 0.0)
            # t interpolated between the pair's rows, at input columns j - 1, j, j + 1
            v_m = upper_m + ly * down_m
            v_0 = upper_0 + ly * down_0
            v_p = upper_p + ly * down_p
            g_row = g_image + tl.cast(o, tl.int64) * stride_gh
            owned = (q - 1 + half >= first) & (q - 1 + half < end)  # o // 2 in this strip
            # grad_row: sum over the output columns p of reads(p, j) * leaky_relu'(u) * grad_u(o, p)
            for e in tl.static_range(4):
                p = 2 * j - 1 + e  # output column
                src = p.to(tl.float32) * scale_w
                reads = tent(src - fj)  # how much output column p reads input column j
                if e < 2:  # pair j: input columns j - 1 and j
                    u = tent(src - (fj - 1.0))[:, None] * v_m + reads[:, None] * v_0
                else:  # pair j + 1: columns j and j + 1
                    u = reads[:, None] * v_0 + tent(src - (fj + 1.0))[:, None] * v_p
                tap_ok = j_ok & (p >= 0) & (p < 2 * w) & (reads > 0) & o_ok
                positive = u > 0
                if HEAD:
                    g_pixel = tl.load(g_row + p * stride_gw, mask=tap_ok, other=0.0).to(tl.float32)
                    term = (g_pixel * reads)[:, None] * tl.where(positive, 1.0, negative_slope)
                    if e == 1 or e == 2:  # p // 2 == j: a pixel this program owns if the row is owned
                        owned_g = tl.where(tap_ok & owned, g_pixel, 0.0)
                        weight_acc += owned_g[:, None] * leaky_relu(u, negative_slope)
                else:
                    g = tl.load(g_row + (p * stride_gw)[:, None] + cols[None, :],
                                mask=tap_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
                    term = reads[:, None] * tl.where(positive, g, g * negative_slope)
                if e == 0:
                    grad_row = term
                else:
                    grad_row += term
            acc_upper += (1.0 - ly) * grad_row
            acc_lower += ly * grad_row
        _store_grad_row(GT + b * stride_gtb, q - 1, first, end, acc_upper * row_weight, j, cols, ok,
                        stride_gth, stride_gtw)
        acc_upper = acc_lower
        acc_lower = tl.zeros([BLOCK_J, BLOCK_C], dtype=tl.float32)
    if HEAD:
        program = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        tl.store(WEIGHT_PARTIAL + program.to(tl.int64) * C + cols, tl.sum(weight_acc, axis=0), mask=col_ok)


@triton.jit
def _upsample_act_bwd_pairs_kernel(
    T, GY, WEIGHT, GT, WEIGHT_PARTIAL, C, h, w, scale_h, scale_w, negative_slope, rows_per_strip, n_strips,
    stride_tb, stride_th, stride_tw, stride_gb, stride_gh, stride_gw, stride_gtb, stride_gth, stride_gtw,
    HEAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """As :func:`_upsample_act_bwd_kernel`, with lanes on pairs of output columns instead of input
    columns, so that each upsampled value is recomputed once instead of twice.

    Programs: (B * strips of ``rows_per_strip`` input rows, tiles of BLOCK_Q column pairs overlapping
    by one, channel tiles). A lane holds pair q, output columns 2q - 1 and 2q, which read input
    columns q - 1 and q. The walk sums each column's gradients (times leaky_relu') for the input rows
    as in :func:`_upsample_act_bwd_kernel`, with its weights at the last row; a finished row's sums
    split into shares of columns q (``to_right``) and q - 1 (``to_left``), the column weights
    depending on the lane alone. Input column q gets pair q's right share and pair q + 1's left
    share, brought over with ``tl.gather``; a tile's last lane only lends its left share, so a
    program stores BLOCK_Q - 1 columns. With HEAD, a pixel's share of the head weight's gradient
    counts in the program that owns its row (as there) and its pair: lanes but the last, and pair w,
    which no later tile holds.
    """
    tl.static_assert(BLOCK_Q >= 2, "a tile of column pairs stores BLOCK_Q - 1 columns")
    scale_h, scale_w, negative_slope = fp32(scale_h), fp32(scale_w), fp32(negative_slope)
    b = (tl.program_id(0) // n_strips).to(tl.int64)
    first = (tl.program_id(0) % n_strips) * rows_per_strip  # this strip's input rows: [first, end)
    end = tl.minimum(first + rows_per_strip, h)
    lane = tl.arange(0, BLOCK_Q)
    q = tl.program_id(1) * (BLOCK_Q - 1) + lane  # column pairs
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    t_ok = (q <= w)[:, None] & col_ok[None, :]
    left = (tl.maximum(q - 1, 0) * stride_tw)[:, None] + cols[None, :]
    right = (tl.minimum(q, w - 1) * stride_tw)[:, None] + cols[None, :]
    odd_ok = (q >= 1) & (q <= w)  # output column 2q - 1 exists
    even_ok = q < w  # output column 2q exists
    fq = (q - 1).to(tl.float32)
    # the right column's weight at output columns 2q - 1 and 2q; at 2w - 1 only the source coordinate's
    # rounding, an ulp of either sign: column w's share is off the map, never stored, and column w - 1
    # gets 1 - lx_odd (PyTorch: 1 - ulp to column w - 1, ulp to w - 2 where the ulp is negative)
    lx_odd = ((2 * q - 1).to(tl.float32) * scale_w - fq)[:, None]
    lx_even = ((2 * q).to(tl.float32) * scale_w - fq)[:, None]
    next_lane = tl.broadcast_to(tl.minimum(lane + 1, BLOCK_Q - 1)[:, None], (BLOCK_Q, BLOCK_C))
    store_ok = ((lane < BLOCK_Q - 1) & (q < w))[:, None] & col_ok[None, :]
    t_image = T + b * stride_tb
    g_image = GY + b * stride_gb
    if HEAD:  # grad_y = grad_logits * the head weight, which multiplies whole rows as they are stored
        row_weight = tl.load(WEIGHT + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        weight_acc = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
        counted = (lane < BLOCK_Q - 1) | (q == w)
    else:
        row_weight = 1.0

    # the gradients of output columns 2q - 1 (odd) and 2q (even), summed down the walk for input rows
    # q_row - 1 (upper) and q_row (lower); shared between input columns q - 1 and q as they are stored
    odd_upper = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
    even_upper = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
    odd_lower = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
    even_lower = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
    for q_row in tl.range(first, end + 1, num_stages=NUM_STAGES):
        upper = t_image + tl.cast(tl.maximum(q_row - 1, 0), tl.int64) * stride_th
        lower = t_image + tl.cast(tl.minimum(q_row, h - 1), tl.int64) * stride_th
        upper_left = tl.load(upper + left, mask=t_ok, other=0.0).to(tl.float32)
        upper_right = tl.load(upper + right, mask=t_ok, other=0.0).to(tl.float32)
        down_left = tl.load(lower + left, mask=t_ok, other=0.0).to(tl.float32) - upper_left
        down_right = tl.load(lower + right, mask=t_ok, other=0.0).to(tl.float32) - upper_right
        for half in tl.static_range(2):
            o = 2 * q_row - 1 + half  # output row
            o_ok = (o >= 0) & (o < 2 * h)
            ly = tl.where(q_row < h, tl.cast(o, tl.float32) * scale_h - tl.cast(q_row - 1, tl.float32), 0.0)
            v_left = upper_left + ly * down_left
            across = upper_right + ly * down_right - v_left
            u_odd = v_left + lx_odd * across
            u_even = v_left + lx_even * across
            g_row = g_image + tl.cast(o, tl.int64) * stride_gh
            if HEAD:
                g_odd = tl.load(g_row + (2 * q - 1) * stride_gw, mask=odd_ok & o_ok, other=0.0).to(tl.float32)
                g_even = tl.load(g_row + 2 * q * stride_gw, mask=even_ok & o_ok, other=0.0).to(tl.float32)
                m_odd = tl.where(u_odd > 0, g_odd[:, None], (g_odd * negative_slope)[:, None])
                m_even = tl.where(u_even > 0, g_even[:, None], (g_even * negative_slope)[:, None])
                # the head weight's gradient, over the pixels this program owns
                owned = counted & (q_row - 1 + half >= first) & (q_row - 1 + half < end)  # o // 2 in this strip
                weight_acc += tl.where(owned, g_odd, 0.0)[:, None] * leaky_relu(u_odd, negative_slope)
                weight_acc += tl.where(owned, g_even, 0.0)[:, None] * leaky_relu(u_even, negative_slope)
            else:
                g_odd = tl.load(g_row + ((2 * q - 1) * stride_gw)[:, None] + cols[None, :],
                                mask=(odd_ok & o_ok)[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
                g_even = tl.load(g_row + ((2 * q) * stride_gw)[:, None] + cols[None, :],
                                 mask=(even_ok & o_ok)[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
                m_odd = tl.where(u_odd > 0, g_odd, g_odd * negative_slope)
                m_even = tl.where(u_even > 0, g_even, g_even * negative_slope)
            odd_upper += (1.0 - ly) * m_odd
            even_upper += (1.0 - ly) * m_even
            odd_lower += ly * m_odd
            even_lower += ly * m_even
        to_right = lx_odd * odd_upper + lx_even * even_upper  # to input column q
        to_left = (1.0 - lx_odd) * odd_upper + (1.0 - lx_even) * even_upper  # to input column q - 1
        _store_grad_row(GT + b * stride_gtb, q_row - 1, first, end,
                        (to_right + tl.gather(to_left, next_lane, axis=0)) * row_weight, q, cols, store_ok,
                        stride_gth, stride_gtw)
        odd_upper, even_upper = odd_lower, even_lower
        odd_lower = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
        even_lower = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
    if HEAD:
        program = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        tl.store(WEIGHT_PARTIAL + program.to(tl.int64) * C + cols, tl.sum(weight_acc, axis=0), mask=col_ok)


# --------------------------------------------------------------------------------------------
# Host launchers
# --------------------------------------------------------------------------------------------

def _tile(channels: int, gpu_channels: int, gpu_elements: int) -> tuple[int, int]:
    """(columns, channels) of a tile sized for a GPU's registers; under the interpreter, which
    runs programs one after another at a cost per operation rather than per element, 16x larger."""
    scale = 16 if op_registry.INTERPRETED else 1
    block_c = min(gpu_channels * scale, next_power_of_2(channels))
    return max(16, gpu_elements * scale // block_c), block_c


def _channel_tile(channels: int) -> int:
    """Channels a tile on a GPU: 64, or 32 where that divides the channel count and 64 does not
    (96: three full tiles rather than two with a quarter of the lanes idle)."""
    return 32 if channels % 64 and not channels % 32 else 64


def _row_blocks(channels: int) -> tuple[int, int, int]:
    """(BLOCK_Q, BLOCK_C, num_warps) of the forward kernels: column pairs by channels, 2K in a tile,
    8 per thread (32-34 registers for the block kernel, 40-48 with the head on sm_90). A map of w
    columns has w + 1 pairs, so where w is a multiple of BLOCK_Q the last column tile holds one
    pair (640/16: the head's 320 columns in 6 tiles of 64 pairs)."""
    return (*_tile(channels, _channel_tile(channels), 2048), 8)


def _backward_blocks(channels: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(lanes, BLOCK_C, num_warps) of the backward kernel, its lanes input columns (BLOCK_J) or
    column pairs (BLOCK_Q): tiles of 1K elements, as many channels wide as :func:`_channel_tile`
    says, 4 per thread (8 warps): a pair of output rows holds both input rows' tiles, about 80-120
    registers on sm_90 with Triton 3.6 and 3.8, where 8 elements per thread took 145-166 for the
    input columns' kernel (12 resident warps per SM). In fp32, 16 x 32 with 4 warps."""
    if dtype == torch.float32:
        return (*_tile(channels, 32, 512), 4)
    return (*_tile(channels, _channel_tile(channels), 1024), 8)


# The backward kernel's lanes: input columns (_upsample_act_bwd_kernel), or with True pairs of output
# columns (_upsample_act_bwd_pairs_kernel), which recomputes each upsampled value once instead of
# twice. On sm_90 (bf16, the launchers' tiles; Triton 3.8 / 3.6), per output row, input column and
# channel: 43.7 / 43.7 SASS instructions instead of 54.2 / 56.6 for a block, 43.6 / 43.6 instead of
# 58.5 / 59.2 for the head (41.0 and 42.2 per lane: a tile of 16 or 32 pairs stores one column fewer),
# with 80 and 104 / 110 registers a thread instead of 120 / 92 and 117 / 115; but a stored row's left
# shares cross lanes through shared memory, 6 barriers a loop iteration.
# ``python -m benchmarks.tune_decoder`` times both on a GPU.
BACKWARD_ON_COLUMN_PAIRS = False

# Pipeline stages of the backward's walk: 1, no prefetching. Prefetching the next pair's loads (2
# stages) takes the block kernel from 92 / 120 to 80 / 80 registers a thread on sm_90 with Triton
# 3.6 / 3.8 (3 programs of 8 warps per SM instead of 2) but adds 8-13 % to the loop's instructions;
# ``python -m benchmarks.tune_decoder`` times both on a GPU.
BACKWARD_STAGES = 1


def _strip_rows(h: int) -> int:
    """Input rows per backward program: a strip walks one pair of output rows beyond its own
    rows (4 % for 24); under the interpreter, whole maps (fewer programs)."""
    return h if op_registry.INTERPRETED else 24


def _launch_upsample_act(t: torch.Tensor, y: torch.Tensor, negative_slope: float) -> None:
    B, h, w, C = t.shape
    block_q, block_c, warps = _row_blocks(C)
    launcher(_upsample_act_fwd_kernel)[(B * 2 * h, cdiv(w + 1, block_q), cdiv(C, block_c))](
        t, y, C, h, w, *scales(h, w), negative_slope,
        t.stride(0), t.stride(1), t.stride(2), y.stride(0), y.stride(1), y.stride(2),
        BLOCK_Q=block_q, BLOCK_C=block_c, num_warps=warps,
    )


def _launch_upsample_act_backward(t: torch.Tensor, grad: torch.Tensor, head_weight: torch.Tensor | None,
                                  grad_t: torch.Tensor, negative_slope: float) -> torch.Tensor | None:
    """grad: (B, 2h, 2w, C) upstream gradient of leaky_relu(up(t)), or with ``head_weight`` (C,)
    the (B, 2h, 2w) gradient of the head's logits; then returns the head weight's gradient,
    fp32 (C,)."""
    B, h, w, C = t.shape
    head = head_weight is not None
    block, block_c, warps = _backward_blocks(C, t.dtype)
    if BACKWARD_ON_COLUMN_PAIRS:  # tiles of ``block`` pairs overlap by one: block - 1 input columns each
        kernel, columns, lanes = _upsample_act_bwd_pairs_kernel, block - 1, dict(BLOCK_Q=block)
    else:
        kernel, columns, lanes = _upsample_act_bwd_kernel, block, dict(BLOCK_J=block)
    rows = _strip_rows(h)
    grid = (B * cdiv(h, rows), cdiv(w, columns), cdiv(C, block_c))
    # absent inputs get read-only stand-ins (t), as torch.compile's mutation analysis wants them
    partial = t.new_empty((grid[0] * grid[1], C), dtype=torch.float32) if head else t
    launcher(kernel)[grid](
        t, grad, head_weight if head else t, grad_t, partial, C, h, w, *scales(h, w), negative_slope,
        rows, cdiv(h, rows),
        t.stride(0), t.stride(1), t.stride(2), grad.stride(0), grad.stride(1), grad.stride(2),
        grad_t.stride(0), grad_t.stride(1), grad_t.stride(2),
        HEAD=head, **lanes, BLOCK_C=block_c, NUM_STAGES=BACKWARD_STAGES, num_warps=warps,
    )
    return partial.sum(0) if head else None


def _launch_head(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
                 negative_slope: float) -> None:
    B, h, w, C = t.shape
    block_q, block_c, warps = _row_blocks(C)
    launcher(_upsample_act_head_fwd_kernel)[(B * 2 * h, cdiv(w + 1, block_q))](
        t, weight, weight if bias is None else bias, out, C, h, w, *scales(h, w), negative_slope,
        t.stride(0), t.stride(1), t.stride(2),
        HAS_BIAS=bias is not None, BLOCK_Q=block_q, BLOCK_C=block_c, num_warps=warps,
    )


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
    grad_weight = _launch_upsample_act_backward(t, grad, weight, grad_t, negative_slope)
    return grad_t, grad_weight


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
        activation in one Triton kernel; on CPU tensors without Triton's interpreter, and in
        float64, the same order in PyTorch. With inf in x, the kernels may give NaN where PyTorch
        gives +-inf (they interpolate as a + l (b - a)), and a finite value where PyTorch's NaN comes
        from an interpolation weight of 0 (a product they skip); what PyTorch gives finite, they give too.
    """
    _check_map(x, "x")
    _check_weight(weight, x, "weight", x.shape[-1], applies_to_x=True)
    if bias is not None:
        _check_vector(bias, weight.shape[0], x, "bias")
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tensor.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {tensor.dtype} but x {x.dtype}: cast them to one dtype")
    slope = _slope(negative_slope)
    t = F.linear(x, weight, bias)  # (B, h, w, C_out), low resolution
    if not _kernels_take(t):
        return F.leaky_relu(upsample2x(t), slope)
    return _call("upsample_act", t.contiguous(), slope)


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
        without Triton's interpreter, and in float64, the same low-resolution order in PyTorch.
        Non-finite inputs as in :func:`upsample_linear_act`.
    """
    _check_map(x, "x")
    if len(weights) == 0:
        raise ValueError("fused_decoder needs at least one block weight")
    channels = x.shape[-1]
    for k, weight in enumerate(weights):
        _check_weight(weight, x, f"weights[{k}]", in_channels=channels, applies_to_x=k == 0)
        channels = weight.shape[0]
    if isinstance(head_weight, torch.Tensor) and head_weight.dim() == 2 and head_weight.shape[0] == 1:
        head_weight = head_weight.reshape(-1)
    _check_vector(head_weight, channels, x, "head_weight")
    if head_bias is not None:
        _check_vector(head_bias, 1, x, "head_bias")

    slope = _slope(negative_slope)
    t = F.linear(x, weights[0].to(x.dtype))  # (B, h, w, C/2), low resolution; autocast may change its dtype
    # the rest in t's dtype, as autocast would run them
    later_weights = [weight.to(t.dtype) for weight in weights[1:]]
    head_weight = head_weight.to(t.dtype).contiguous()  # the kernels read it with unit stride
    head_bias = None if head_bias is None else head_bias.to(t.dtype)
    if not _kernels_take(t):
        for weight in later_weights:
            t = F.linear(F.leaky_relu(upsample2x(t), slope), weight)
        logits = F.linear(F.leaky_relu(upsample2x(t), slope), head_weight[None], head_bias)
        return logits.permute(0, 3, 1, 2)
    t = t.contiguous()
    for weight in later_weights:
        t = _call("upsample_act_linear", t, weight, slope)  # (B, 2h, 2w, C_k)
    return _call("upsample_act_head", t, head_weight, head_bias, slope).unsqueeze(1)


def _slope(negative_slope) -> float:
    """The LeakyReLU slope as a float; a TypeError for what is not a real number."""
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real):
        raise TypeError(f"negative_slope must be a real number, got {negative_slope!r}")
    return float(negative_slope)


def _kernels_take(t: torch.Tensor) -> bool:
    """Whether the kernels run on the low-resolution product ``t``: where Triton runs, in their dtypes
    (float64 runs in PyTorch), on a non-empty map."""
    return op_registry.kernel_can_run(t) and t.dtype in SUPPORTED_DTYPES and t.numel() > 0


def _check_map(x, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a channels-last (B, h, w, C) map, got {shape}")
    if x.dtype not in SUPPORTED_DTYPES + (torch.float64,):
        raise TypeError(f"{name} has dtype {x.dtype}; the decoder kernels support float32, float16 and bfloat16 "
                        f"(and float64, in PyTorch)")


def _check_weight(weight, x: torch.Tensor, name: str, in_channels: int, applies_to_x: bool) -> None:
    """A (C_out, in_channels) weight like x; ``applies_to_x``: it multiplies x itself (not a later
    block's map), so a weight that fits x's second dimension instead means a channels-first x."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != in_channels:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        channels_first = applies_to_x and isinstance(weight, torch.Tensor) and weight.dim() == 2 \
            and weight.shape[1] == x.shape[1]
        hint = " (x looks channels-first: the decoder takes (B, h, w, C), use x.permute(0, 2, 3, 1))" if channels_first else ""
        raise ValueError(f"{name} must be a (C_out, {in_channels}) Linear weight for an input of "
                         f"{in_channels} channels, got {shape}{hint}")
    if weight.shape[0] == 0:
        raise ValueError(f"{name} has no output channels (shape {tuple(weight.shape)}): a decoder block "
                         f"needs at least one")
    _check_like(weight, x, name)


def _check_vector(vector, size: int, x: torch.Tensor, name: str) -> None:
    if not isinstance(vector, torch.Tensor) or vector.shape != (size,):
        shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
        raise ValueError(f"{name} must have shape ({size},), got {shape}")
    _check_like(vector, x, name)


def _check_like(tensor: torch.Tensor, x: torch.Tensor, name: str) -> None:
    if tensor.device != x.device:
        raise ValueError(f"{name} is on {tensor.device} but x on {x.device}")
    if tensor.dtype not in SUPPORTED_DTYPES + (torch.float64,):
        raise TypeError(f"{name} has dtype {tensor.dtype}; the decoder kernels support float32, float16 and "
                        f"bfloat16 (and float64, in PyTorch)")
