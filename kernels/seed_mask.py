"""Fused seed-classifier scoring, sigmoid and masking (eqs. 9 and 10 of the paper).

    logits = (patches . classifier + bias) / sqrt(D)           (B, N)
    masked = patches * sigmoid(logits)    (or * logits)        (B, N, D)

PyTorch needs three passes over the (B, N, D) patches for this, plus a fourth to concatenate
``[prefix, masked]`` as the decoder's input. The forward kernel reads each row of patches once
and writes ``masked`` (and the copied prefix) straight into the decoder's input buffer. The
backward kernel recomputes the scores from the patches instead of storing them, in fp16 and bf16
prefetches the next rows while it works on the current ones, and reduces the classifier's gradient
per program in fp32; a second, small kernel sums those partial sums and casts them (no atomics:
deterministic).

Entry point: :func:`seed_mask`. The op is registered with ``torch.library.triton_op`` so that
``torch.compile`` traces through it without a graph break.
"""
from __future__ import annotations

import contextlib
import functools
import math

import torch
import triton
import triton.language as tl

from . import op_registry
from .jit_helpers import fp32
from .op_registry import eager_autograd, eager_launches, launcher, register_triton_op, unit_stride
from .sizes import cdiv, next_power_of_2

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # the kernels'; float64 runs in PyTorch
MAX_D = 8192  # one row of patches must fit a block
# In fp16 and bf16 the backward's loop loads each block of rows one iteration ahead (cp.async into
# 16 KB of shared memory a program), so that its loads overlap the work on the rows before: without
# it, a program's loads wait for its own previous block's sums and stores. Not in fp32, where the
# prefetching took 143 registers a thread with Triton 3.6: 3 programs per SM instead of 4.
BACKWARD_STAGES = 2
# The forward's programs each write one block of rows (``_forward_rows_per_program``); where they
# walk strips of several blocks (``python -m benchmarks.tune_seed_mask``'s variants), the loop's
# pipeline stages: 2 or more prefetch the next block.
FORWARD_STAGES = 1
MAX_GRID_Y = 65535  # CUDA's bound on a grid's second dimension: the forward's programs per batch row
# the backward's partial sums are summed by 4-warp programs, in tiles of up to 4K elements that
# hold up to 128 programs' partials each
SUM_ELEMENTS, SUM_MAX_SPLITS, SUM_WARPS = 4096, 128, 4


@triton.jit
def _chunk_tile(PTR, b, stride_b, rows, stride_n, row_ok, k: tl.constexpr, CHUNK: tl.constexpr, width):
    """Columns [k * CHUNK, (k + 1) * CHUNK) of ``rows`` of batch row ``b`` (stride_n = 0: one row,
    repeated) in fp32, zero outside ``width`` columns and the valid rows. (BLOCK_N, CHUNK)"""
    cols = k * CHUNK + tl.arange(0, CHUNK)
    tile_ok = row_ok[:, None] & (cols < width)[None, :]
    return tl.load(PTR + b * stride_b + rows[:, None] * stride_n + cols[None, :], mask=tile_ok,
                   other=0.0).to(tl.float32)


@triton.jit
def _logits_and_weight(dot, BIAS, LOGITS, b, rows, row_ok, scale, stride_lb,
                       HAS_BIAS: tl.constexpr, SIGMOID: tl.constexpr):
    """Stores the logits (dot + bias) * scale of ``rows`` and returns each row's weight on the
    patches: the sigmoid of its logit, or the logit itself. (BLOCK_N,)"""
    if HAS_BIAS:
        dot += tl.load(BIAS + b).to(tl.float32)
    s = dot * scale
    tl.store(LOGITS + b * stride_lb + rows, s.to(LOGITS.dtype.element_ty), mask=row_ok)
    if SIGMOID:
        return tl.sigmoid(s)
    else:
        return s


@triton.jit
def _seed_mask_fwd_block(Z, C, BIAS, PREFIX, LOGITS, OUT, b, start, N, D, DP, scale,
                         stride_zb, stride_zn, stride_cb, stride_pb, stride_pn, stride_lb, stride_ob, stride_on,
                         HAS_BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr, SIGMOID: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DP: tl.constexpr,
                         CHUNK: tl.constexpr, CHUNKS: tl.constexpr, PREFIX_CHUNKS: tl.constexpr):
    """Logits and [prefix, masked] of rows [start, start + BLOCK_N) of batch row ``b``: in tiles of
    whole rows (BLOCK_D, BLOCK_DP), or with CHUNK > 0 of CHUNK columns."""
    if CHUNK > 0:
        _seed_mask_fwd_block_in_chunks(
            Z, C, BIAS, PREFIX, LOGITS, OUT, b, start, N, D, DP, scale,
            stride_zb, stride_zn, stride_cb, stride_pb, stride_pn, stride_lb, stride_ob, stride_on,
            HAS_BIAS, HAS_PREFIX, SIGMOID, BLOCK_N, CHUNK, CHUNKS, PREFIX_CHUNKS)
    else:
        _seed_mask_fwd_block_whole_rows(
            Z, C, BIAS, PREFIX, LOGITS, OUT, b, start, N, D, DP, scale,
            stride_zb, stride_zn, stride_cb, stride_pb, stride_pn, stride_lb, stride_ob, stride_on,
            HAS_BIAS, HAS_PREFIX, SIGMOID, BLOCK_N, BLOCK_D, BLOCK_DP)


@triton.jit
def _seed_mask_fwd_block_whole_rows(Z, C, BIAS, PREFIX, LOGITS, OUT, b, start, N, D, DP, scale,
                                    stride_zb, stride_zn, stride_cb, stride_pb, stride_pn, stride_lb, stride_ob,
                                    stride_on, HAS_BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr,
                                    SIGMOID: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                                    BLOCK_DP: tl.constexpr):
    """Logits and [prefix, masked] of rows [start, start + BLOCK_N) of batch row ``b``, a tile of
    whole rows: for D = 768 a 1024-column tile, whose rows 4 warps share (their sums meet in
    shared memory) and whose last 256 columns, a whole warp's at 16 bytes a thread, stay idle."""
    rows = start + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    tile_ok = row_ok[:, None] & (cols < D)[None, :]
    # in strips, loaded with each block (from cache): loaded once before the loop it took 70
    # registers a thread instead of 62 at 2 stages (sm_90, Triton 3.8, bf16)
    c = tl.load(C + b * stride_cb + cols, mask=cols < D, other=0.0).to(tl.float32)  # (BLOCK_D,)
    z = tl.load(Z + b * stride_zb + rows[:, None] * stride_zn + cols[None, :], mask=tile_ok,
                other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_D)
    weight = _logits_and_weight(tl.sum(z * c[None, :], axis=1), BIAS, LOGITS, b, rows, row_ok, scale, stride_lb,
                                HAS_BIAS, SIGMOID)  # (BLOCK_N,)
    out_rows = OUT + b * stride_ob + rows[:, None] * stride_on  # row starts of [prefix, masked]
    tl.store(out_rows + DP + cols[None, :], (z * weight[:, None]).to(OUT.dtype.element_ty), mask=tile_ok)

    if HAS_PREFIX:  # the left part of the decoder's input: a copy of the prefix rows
        pcols = tl.arange(0, BLOCK_DP)
        prefix_ok = row_ok[:, None] & (pcols < DP)[None, :]
        p = tl.load(PREFIX + b * stride_pb + rows[:, None] * stride_pn + pcols[None, :], mask=prefix_ok)
        tl.store(out_rows + pcols[None, :], p.to(OUT.dtype.element_ty), mask=prefix_ok)


@triton.jit
def _seed_mask_fwd_block_in_chunks(Z, C, BIAS, PREFIX, LOGITS, OUT, b, start, N, D, DP, scale,
                                   stride_zb, stride_zn, stride_cb, stride_pb, stride_pn, stride_lb, stride_ob,
                                   stride_on, HAS_BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr,
                                   SIGMOID: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
                                   CHUNKS: tl.constexpr, PREFIX_CHUNKS: tl.constexpr):
    """As :func:`_seed_mask_fwd_block_whole_rows`, reading each row in CHUNKS tiles of CHUNK
    columns. Where CHUNK is what one warp's 16-byte loads span (256 in bf16), a warp holds whole
    rows: the scores reduce within warps (no shared memory, no barrier), and no warp idles on a
    power-of-two tile's padding. The classifier is loaded in the patches' layout, a copy a row (from
    L1), so that it needs no layout conversion either; the rows are read again for the product (from
    L1 or L2), so that no chunk stays in registers (and so OUT may be the patches themselves, but
    must not overlap them otherwise)."""
    rows = start + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    dot = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k in tl.static_range(CHUNKS):  # unrolled: every chunk's loads in flight at once
        z = _chunk_tile(Z, b, stride_zb, rows, stride_zn, row_ok, k, CHUNK, D)  # (BLOCK_N, CHUNK)
        dot += tl.sum(z * _chunk_tile(C, b, stride_cb, rows, 0, row_ok, k, CHUNK, D), axis=1)
    weight = _logits_and_weight(dot, BIAS, LOGITS, b, rows, row_ok, scale, stride_lb, HAS_BIAS, SIGMOID)
    out_rows = OUT + b * stride_ob + rows[:, None] * stride_on
    for k in tl.static_range(CHUNKS):
        cols = k * CHUNK + tl.arange(0, CHUNK)
        tile_ok = row_ok[:, None] & (cols < D)[None, :]
        z = _chunk_tile(Z, b, stride_zb, rows, stride_zn, row_ok, k, CHUNK, D)
        tl.store(out_rows + DP + cols[None, :], (z * weight[:, None]).to(OUT.dtype.element_ty), mask=tile_ok)
    if HAS_PREFIX:
        prefix_rows = PREFIX + b * stride_pb + rows[:, None] * stride_pn
        for k in tl.static_range(PREFIX_CHUNKS):
            cols = k * CHUNK + tl.arange(0, CHUNK)
            prefix_ok = row_ok[:, None] & (cols < DP)[None, :]
            p = tl.load(prefix_rows + cols[None, :], mask=prefix_ok)
            tl.store(out_rows + cols[None, :], p.to(OUT.dtype.element_ty), mask=prefix_ok)


@triton.jit
def _seed_mask_fwd_kernel(
    Z, C, BIAS, PREFIX, LOGITS, OUT,
    N, D, DP, scale, rows_per_program,
    stride_zb, stride_zn, stride_cb, stride_pb, stride_pn, stride_lb, stride_ob, stride_on,
    HAS_BIAS: tl.constexpr, HAS_PREFIX: tl.constexpr, SIGMOID: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DP: tl.constexpr,
    CHUNK: tl.constexpr, CHUNKS: tl.constexpr, PREFIX_CHUNKS: tl.constexpr,
    STRIPS: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """Programs: (B, blocks of BLOCK_N rows); with STRIPS, (B, strips of ``rows_per_program``
    rows), each program walking its strip a block at a time, and with NUM_STAGES > 1 Triton
    prefetching the next block's rows (cp.async). With CHUNK > 0 the rows are read in chunks of
    CHUNK columns (CHUNKS of the patches, PREFIX_CHUNKS of the prefix)."""
    scale = fp32(scale)
    b = tl.program_id(0).to(tl.int64)
    if STRIPS:
        first_row = tl.program_id(1) * rows_per_program
        for start in tl.range(first_row, tl.minimum(first_row + rows_per_program, N), BLOCK_N, num_stages=NUM_STAGES):
            _seed_mask_fwd_block(
                Z, C, BIAS, PREFIX, LOGITS, OUT, b, start, N, D, DP, scale,
                stride_zb, stride_zn, stride_cb, stride_pb, stride_pn, stride_lb, stride_ob, stride_on,
                HAS_BIAS, HAS_PREFIX, SIGMOID, BLOCK_N, BLOCK_D, BLOCK_DP, CHUNK, CHUNKS, PREFIX_CHUNKS)
    else:  # one block, no loop: 55 registers a thread instead of 64 (sm_90, Triton 3.6, bf16)
        _seed_mask_fwd_block(
            Z, C, BIAS, PREFIX, LOGITS, OUT, b, tl.program_id(1) * BLOCK_N, N, D, DP, scale,
            stride_zb, stride_zn, stride_cb, stride_pb, stride_pn, stride_lb, stride_ob, stride_on,
            HAS_BIAS, HAS_PREFIX, SIGMOID, BLOCK_N, BLOCK_D, BLOCK_DP, CHUNK, CHUNKS, PREFIX_CHUNKS)


@triton.jit
def _seed_mask_bwd_kernel(
    Z, C, BIAS, GRAD_LOGITS, GRAD_MASKED, GRAD_Z, GRAD_C_PARTIAL, GRAD_BIAS_PARTIAL,
    N, D, scale, rows_per_program,
    stride_zb, stride_zn, stride_cb, stride_glb, stride_gln, stride_gmb, stride_gmn, stride_gzb, stride_gzn,
    stride_gcb, stride_gcs, stride_gbb,
    HAS_BIAS: tl.constexpr, HAS_GRAD_LOGITS: tl.constexpr, HAS_GRAD_MASKED: tl.constexpr,
    SIGMOID: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    scale = fp32(scale)
    b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    c = tl.load(C + b * stride_cb + cols, mask=col_ok, other=0.0).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(BIAS + b).to(tl.float32)
    grad_c = tl.zeros([BLOCK_D], dtype=tl.float32)
    grad_bias = tl.zeros([BLOCK_N], dtype=tl.float32)

    first_row = split * rows_per_program
    for start in tl.range(first_row, first_row + rows_per_program, BLOCK_N, num_stages=NUM_STAGES):
        rows = start + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        tile_ok = row_ok[:, None] & col_ok[None, :]
        z = tl.load(Z + b * stride_zb + rows[:, None] * stride_zn + cols[None, :], mask=tile_ok,
                    other=0.0).to(tl.float32)
        s = (tl.sum(z * c[None, :], axis=1) + bias) * scale  # recomputed scores (BLOCK_N,)
        grad_s = tl.zeros([BLOCK_N], dtype=tl.float32)
        if HAS_GRAD_LOGITS:
            grad_s += tl.load(GRAD_LOGITS + b * stride_glb + rows * stride_gln, mask=row_ok,
                              other=0.0).to(tl.float32)
        if HAS_GRAD_MASKED:
            if SIGMOID:
                weight = tl.sigmoid(s)
                dweight = weight * (1.0 - weight)
            else:
                weight = s
                dweight = tl.full([BLOCK_N], 1.0, dtype=tl.float32)
            gm = tl.load(GRAD_MASKED + b * stride_gmb + rows[:, None] * stride_gmn + cols[None, :],
                         mask=tile_ok, other=0.0).to(tl.float32)
            grad_s += tl.sum(gm * z, axis=1) * dweight
        grad_dot = tl.where(row_ok, grad_s * scale, 0.0)  # d loss / d (patches . classifier + bias)
        grad_z = grad_dot[:, None] * c[None, :]
        if HAS_GRAD_MASKED:
            grad_z += gm * weight[:, None]
        tl.store(GRAD_Z + b * stride_gzb + rows[:, None] * stride_gzn + cols[None, :],
                 grad_z.to(GRAD_Z.dtype.element_ty), mask=tile_ok)
        grad_c += tl.sum(grad_dot[:, None] * z, axis=0)
        grad_bias += grad_dot

    tl.store(GRAD_C_PARTIAL + b * stride_gcb + split * stride_gcs + cols, grad_c, mask=col_ok)
    tl.store(GRAD_BIAS_PARTIAL + b * stride_gbb + split, tl.sum(grad_bias, axis=0))


@triton.jit
def _seed_mask_bwd_kernel_in_chunks(
    Z, C, BIAS, GRAD_LOGITS, GRAD_MASKED, GRAD_Z, GRAD_C_PARTIAL, GRAD_BIAS_PARTIAL,
    N, D, scale, rows_per_program,
    stride_zb, stride_zn, stride_cb, stride_glb, stride_gln, stride_gmb, stride_gmn, stride_gzb, stride_gzn,
    stride_gcb, stride_gcs, stride_gbb,
    HAS_BIAS: tl.constexpr, HAS_GRAD_LOGITS: tl.constexpr, HAS_GRAD_MASKED: tl.constexpr,
    SIGMOID: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, CHUNKS: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """As :func:`_seed_mask_bwd_kernel`, reading each row in CHUNKS (at most 4) tiles of CHUNK
    columns, as the forward's chunks do: where a warp's loads span CHUNK (256 columns in fp16 and
    bf16; at D = 768, fp32's 4 chunks are two warps wide), a warp holds whole rows, so the row sums
    need no shared memory and no warp idles on padding. A first pass over the chunks sums the scores
    and grad masked . patches, a second reads them again (from L1 or L2, or the pipeline's shared
    memory) for the patches' gradient and adds each chunk's share of the classifier's gradient to
    its own accumulator, rows kept apart until the end."""
    tl.static_assert(CHUNKS <= 4, "the classifier's gradient is accumulated in at most 4 chunks")
    scale = fp32(scale)
    b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(BIAS + b).to(tl.float32)
    grad_c0 = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)  # the classifier's gradient, chunk by chunk
    if CHUNKS > 1:
        grad_c1 = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
    if CHUNKS > 2:
        grad_c2 = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
    if CHUNKS > 3:
        grad_c3 = tl.zeros([BLOCK_N, CHUNK], dtype=tl.float32)
    grad_bias = tl.zeros([BLOCK_N], dtype=tl.float32)

    first_row = split * rows_per_program
    for start in tl.range(first_row, first_row + rows_per_program, BLOCK_N, num_stages=NUM_STAGES):
        rows = start + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        dot = tl.zeros([BLOCK_N], dtype=tl.float32)
        grad_masked_dot = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k in tl.static_range(CHUNKS):  # unrolled: every chunk's loads in flight at once
            z = _chunk_tile(Z, b, stride_zb, rows, stride_zn, row_ok, k, CHUNK, D)
            dot += tl.sum(z * _chunk_tile(C, b, stride_cb, rows, 0, row_ok, k, CHUNK, D), axis=1)
            if HAS_GRAD_MASKED:
                gm = _chunk_tile(GRAD_MASKED, b, stride_gmb, rows, stride_gmn, row_ok, k, CHUNK, D)
                grad_masked_dot += tl.sum(gm * z, axis=1)
        s = (dot + bias) * scale  # recomputed scores (BLOCK_N,)
        grad_s = tl.zeros([BLOCK_N], dtype=tl.float32)
        if HAS_GRAD_LOGITS:
            grad_s += tl.load(GRAD_LOGITS + b * stride_glb + rows * stride_gln, mask=row_ok,
                              other=0.0).to(tl.float32)
        if HAS_GRAD_MASKED:
            if SIGMOID:
                weight = tl.sigmoid(s)
                grad_s += grad_masked_dot * weight * (1.0 - weight)
            else:
                weight = s
                grad_s += grad_masked_dot
        grad_dot = tl.where(row_ok, grad_s * scale, 0.0)  # d loss / d (patches . classifier + bias)
        for k in tl.static_range(CHUNKS):
            z = _chunk_tile(Z, b, stride_zb, rows, stride_zn, row_ok, k, CHUNK, D)
            grad_z = grad_dot[:, None] * _chunk_tile(C, b, stride_cb, rows, 0, row_ok, k, CHUNK, D)
            if HAS_GRAD_MASKED:
                gm = _chunk_tile(GRAD_MASKED, b, stride_gmb, rows, stride_gmn, row_ok, k, CHUNK, D)
                grad_z += gm * weight[:, None]
            cols = k * CHUNK + tl.arange(0, CHUNK)
            tl.store(GRAD_Z + b * stride_gzb + rows[:, None] * stride_gzn + cols[None, :],
                     grad_z.to(GRAD_Z.dtype.element_ty), mask=row_ok[:, None] & (cols < D)[None, :])
            if k == 0:
                grad_c0 += grad_dot[:, None] * z
            elif k == 1:
                grad_c1 += grad_dot[:, None] * z
            elif k == 2:
                grad_c2 += grad_dot[:, None] * z
            else:
                grad_c3 += grad_dot[:, None] * z
        grad_bias += grad_dot

    partial = GRAD_C_PARTIAL + b * stride_gcb + split * stride_gcs
    for k in tl.static_range(CHUNKS):
        if k == 0:
            grad_c = tl.sum(grad_c0, axis=0)
        elif k == 1:
            grad_c = tl.sum(grad_c1, axis=0)
        elif k == 2:
            grad_c = tl.sum(grad_c2, axis=0)
        else:
            grad_c = tl.sum(grad_c3, axis=0)
        cols = k * CHUNK + tl.arange(0, CHUNK)
        tl.store(partial + cols, grad_c, mask=cols < D)
    tl.store(GRAD_BIAS_PARTIAL + b * stride_gbb + split, tl.sum(grad_bias, axis=0))


@triton.jit
def _seed_mask_bwd_sum_kernel(
    GRAD_C_PARTIAL, GRAD_BIAS_PARTIAL, GRAD_C, GRAD_BIAS, splits, D,
    stride_gcb, stride_gcs, stride_gbb, stride_gb,
    HAS_BIAS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """GRAD_C[b] = the sum of the backward programs' partials GRAD_C_PARTIAL[b, :] in fp32, stored in
    GRAD_C's dtype; with HAS_BIAS, the first column tile also sums GRAD_BIAS[b] (fp32). Programs:
    (B, column tiles); each loads BLOCK_S programs' partials at a time."""
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    grad_c = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(0, splits, BLOCK_S):
        split = start + tl.arange(0, BLOCK_S)
        grad_c += tl.sum(tl.load(GRAD_C_PARTIAL + b * stride_gcb + split[:, None] * stride_gcs + cols[None, :],
                                 mask=(split < splits)[:, None] & col_ok[None, :], other=0.0), axis=0)
    tl.store(GRAD_C + b * stride_gb + cols, grad_c.to(GRAD_C.dtype.element_ty), mask=col_ok)
    if HAS_BIAS:
        if tl.program_id(1) == 0:
            grad_bias = tl.zeros([BLOCK_S], dtype=tl.float32)
            for start in range(0, splits, BLOCK_S):
                split = start + tl.arange(0, BLOCK_S)
                grad_bias += tl.load(GRAD_BIAS_PARTIAL + b * stride_gbb + split, mask=split < splits, other=0.0)
            tl.store(GRAD_BIAS + b, tl.sum(grad_bias, axis=0))


def _blocks(d: int, widest: int | None, elements: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_D, num_warps): a whole row per block, about ``elements`` in the widest tile
    (``widest``: the prefix's width when it is copied too), four warps for rows up to 1K and eight
    above: on an H200 at D = 768 (B = 8, bf16), four warps instead of eight took forward + backward
    from 48.7 to 26.5 us at N = 900 and from 149 to 79 us at N = 3600, the forward about 4 % less."""
    block_d = next_power_of_2(d)
    block_widest = max(block_d, next_power_of_2(widest or 1))
    return max(1, min(64, elements // block_widest)), block_d, 8 if block_widest > 1024 else 4


def _forward_blocks(d: int, dp: int) -> tuple[int, int, int]:
    """The forward kernel's blocks: 4K elements in the widest tile (patches or prefix); with 8K at
    four warps ptxas spilled."""
    return _blocks(d, dp, elements=4096)


def _forward_chunk(d: int, dp: int, element_size: int) -> int:
    """Columns of the forward's tiles: 0, whole rows. (:func:`_warp_wide_chunk` is
    ``tune_seed_mask``'s variant.)"""
    return 0


def _warp_wide_chunk(d: int, dp: int, element_size: int, max_chunks: int = 8) -> int:
    """Columns a warp's 16-byte loads span (256 in fp16 and bf16, 128 in fp32), so that a warp
    holds whole rows; wider where a row would take more than ``max_chunks`` chunks (each is unrolled),
    and no wider than the widest row (patches or prefix) rounded up to a power of two."""
    widest = max(d, dp)
    return min(next_power_of_2(widest), max(32 * 16 // element_size, next_power_of_2(cdiv(widest, max_chunks))))


def _backward_chunk(d: int, element_size: int) -> int:
    """Columns of the backward's tiles: 0, whole rows. (:func:`_warp_wide_backward_chunk` is
    ``tune_seed_mask``'s variant.)"""
    return 0


def _warp_wide_backward_chunk(d: int, element_size: int) -> int:
    """The forward's warp-wide chunks, in at most the 4 the chunked backward kernel accumulates."""
    return _warp_wide_chunk(d, 0, element_size, max_chunks=4)


def _backward_blocks(d: int) -> tuple[int, int, int]:
    """The backward kernel's blocks: it holds three tiles (patches, their gradient and grad masked)
    and takes 4K elements: with 8K at eight warps it needed 168 registers a thread, one program per
    SM."""
    return _blocks(d, None, elements=4096)


def _sum_blocks(splits: int, d: int) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_D) of the kernel summing the backward's ``splits`` partial sums of D
    channels: all of them in one tile where they fit (up to SUM_MAX_SPLITS), so that a program
    loads once (at B = 8 on an H200's 132 SMs, N = 900 and 3600 give 57 and 65 splits). Chosen by
    comparisons, so that under torch.compile with a dynamic N only the power of two is guarded,
    not the number of splits."""
    block_s = 16
    while block_s < min(splits, SUM_MAX_SPLITS):
        block_s *= 2
    return block_s, min(next_power_of_2(d), SUM_ELEMENTS // block_s)


def _backward_stages(dtype: torch.dtype) -> int:
    """Pipeline stages of the backward's loop: BACKWARD_STAGES in fp16 and bf16, none in fp32."""
    return 1 if dtype == torch.float32 else BACKWARD_STAGES


def _forward_rows_per_program(batch: int, n: int, block_n: int, device: torch.device) -> int:
    """Rows each forward program writes: one block. (The arguments are those of
    :func:`_rows_per_program`, which ``tune_seed_mask``'s strip variants put in its place.)"""
    return block_n


def _rows_per_program(batch: int, n: int, block_n: int, device: torch.device, programs_per_sm: int = 4) -> int:
    """Rows each backward program reduces over: enough programs to fill the GPU about
    ``programs_per_sm`` times, few enough that the (B, splits, D) partial sums stay small.
    ``tune_seed_mask``'s strip variants also give the forward's programs their rows with it."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0
    programs = max(1, programs_per_sm * sms)
    splits = max(1, min(cdiv(n, block_n), cdiv(programs, batch)))
    return cdiv(cdiv(n, splits), block_n) * block_n


def _rows_within_grid(n: int, block_n: int) -> int:
    """The fewest rows, whole blocks, a forward program may write so that the N rows take at most
    MAX_GRID_Y programs (N > 262,140 at D = 768; a program then walks a strip of blocks)."""
    return cdiv(cdiv(n, MAX_GRID_Y), block_n) * block_n


def _launch_forward(patches, classifier, bias, prefix, logits, out, sigmoid: bool) -> None:
    """Write logits (B, N) and [prefix, masked] into out (B, N, >= Dp + D): any row strides.

    Absent optional inputs get read-only stand-ins (classifier, patches): only tensors the kernel
    reads are ever passed twice, which torch.compile's mutation analysis handles."""
    B, N, D = patches.shape
    DP = 0 if prefix is None else prefix.shape[-1]
    block_n, block_d, num_warps = _forward_blocks(D, DP)
    chunk = _forward_chunk(D, DP, patches.element_size())
    rows = max(_forward_rows_per_program(B, N, block_n, patches.device), _rows_within_grid(N, block_n))
    strips = rows > block_n
    prefix_arg = patches if prefix is None else prefix
    launcher(_seed_mask_fwd_kernel)[(B, cdiv(N, rows))](
        patches, classifier, classifier if bias is None else bias, prefix_arg, logits, out,
        N, D, DP, 1.0 / math.sqrt(D), rows,
        patches.stride(0), patches.stride(1), classifier.stride(0), prefix_arg.stride(0), prefix_arg.stride(1),
        logits.stride(0), out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, HAS_PREFIX=DP > 0, SIGMOID=sigmoid,
        BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DP=next_power_of_2(max(DP, 1)),
        CHUNK=chunk, CHUNKS=cdiv(D, chunk) if chunk else 1, PREFIX_CHUNKS=cdiv(DP, chunk) if chunk else 0,
        STRIPS=strips, NUM_STAGES=FORWARD_STAGES if strips else 1, num_warps=num_warps,
    )


def _forward_outputs(patches, classifier, bias, prefix, sigmoid):
    """logits (B, N) and the output (B, N, Dp + D): [prefix, masked], the decoder's input."""
    B, N, D = patches.shape
    DP = 0 if prefix is None else prefix.shape[-1]
    return patches.new_empty((B, N)), patches.new_empty((B, N, DP + D))


def _seed_mask_forward(patches: torch.Tensor, classifier: torch.Tensor, bias: torch.Tensor | None,
                       prefix: torch.Tensor | None, sigmoid: bool) -> tuple[torch.Tensor, torch.Tensor]:
    logits, out = _forward_outputs(patches, classifier, bias, prefix, sigmoid)
    _launch_forward(patches, classifier, bias, prefix, logits, out, sigmoid)
    return logits, out


_seed_mask_op = register_triton_op("restr_fast::seed_mask", fake=_forward_outputs)(_seed_mask_forward)


def _backward_outputs(patches, classifier, bias, grad_logits, grad_masked, sigmoid):
    """Gradients of the patches (B, N, D), the classifier (B, D) and the bias (B,) (fp32; unset without a bias)."""
    B, N, D = patches.shape
    return patches.new_empty((B, N, D)), classifier.new_empty((B, D)), patches.new_empty((B,), dtype=torch.float32)


def _seed_mask_backward(patches: torch.Tensor, classifier: torch.Tensor, bias: torch.Tensor | None,
                        grad_logits: torch.Tensor | None, grad_masked: torch.Tensor | None,
                        sigmoid: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, N, D = patches.shape
    block_n, block_d, num_warps = _backward_blocks(D)
    chunk = _backward_chunk(D, patches.element_size())
    rows = _rows_per_program(B, N, block_n, patches.device)
    splits = cdiv(N, rows)
    grad_patches = patches.new_empty((B, N, D))
    grad_c_partial = patches.new_empty((B, splits, D), dtype=torch.float32)
    grad_bias_partial = patches.new_empty((B, splits), dtype=torch.float32)
    gl = grad_logits if grad_logits is not None else patches  # read-only stand-ins when absent
    gm = grad_masked if grad_masked is not None else patches
    kernel, tiles = ((_seed_mask_bwd_kernel_in_chunks, dict(CHUNK=chunk, CHUNKS=cdiv(D, chunk))) if chunk
                     else (_seed_mask_bwd_kernel, dict(BLOCK_D=block_d)))
    launcher(kernel)[(B, splits)](
        patches, classifier, classifier if bias is None else bias, gl, gm,
        grad_patches, grad_c_partial, grad_bias_partial,
        N, D, 1.0 / math.sqrt(D), rows,
        patches.stride(0), patches.stride(1), classifier.stride(0), gl.stride(0), gl.stride(1),
        gm.stride(0), gm.stride(1),
        grad_patches.stride(0), grad_patches.stride(1),
        grad_c_partial.stride(0), grad_c_partial.stride(1), grad_bias_partial.stride(0),
        HAS_BIAS=bias is not None, HAS_GRAD_LOGITS=grad_logits is not None,
        HAS_GRAD_MASKED=grad_masked is not None, SIGMOID=sigmoid, BLOCK_N=block_n, **tiles,
        NUM_STAGES=_backward_stages(patches.dtype), num_warps=num_warps,
    )
    # the partial sums reduced and cast in one launch (without a bias its gradient is never read)
    grad_classifier, grad_bias = classifier.new_empty((B, D)), grad_bias_partial.new_empty((B,))
    block_s, sum_block_d = _sum_blocks(splits, D)
    launcher(_seed_mask_bwd_sum_kernel)[(B, cdiv(D, sum_block_d))](
        grad_c_partial, grad_bias_partial, grad_classifier, grad_bias, splits, D,
        grad_c_partial.stride(0), grad_c_partial.stride(1), grad_bias_partial.stride(0), grad_classifier.stride(0),
        HAS_BIAS=bias is not None, BLOCK_S=block_s, BLOCK_D=sum_block_d, num_warps=SUM_WARPS,
    )
    return grad_patches, grad_classifier, grad_bias


register_triton_op("restr_fast::seed_mask_backward", fake=_backward_outputs)(_seed_mask_backward)


def _setup_context(ctx, inputs, output) -> None:
    patches, classifier, bias, prefix, sigmoid = inputs
    ctx.save_for_backward(patches, classifier, bias)
    ctx.sigmoid = sigmoid
    ctx.prefix_dim = None if prefix is None else prefix.shape[-1]
    ctx.prefix_dtype = None if prefix is None else prefix.dtype


def _backward(ctx, grad_logits, grad_out, backward=None):
    """The op's backward; ``backward`` computes the gradients (default: the registered op)."""
    backward = backward or torch.ops.restr_fast.seed_mask_backward
    patches, classifier, bias = ctx.saved_tensors
    grad_prefix = grad_masked = None
    if grad_out is not None:  # upstream gradients may be expanded (zero strides)
        dp = ctx.prefix_dim or 0
        grad_masked = unit_stride(grad_out[:, :, dp:])
        if grad_masked.stride(1) * (grad_masked.shape[1] - 1) + grad_masked.shape[2] >= 2 ** 31:
            grad_masked = grad_masked.contiguous()  # rows the kernel's int32 offsets reach (as the forward's)
        grad_prefix = grad_out[:, :, :dp].to(ctx.prefix_dtype) if ctx.prefix_dim is not None else None
    grad_patches, grad_classifier, grad_bias = backward(patches, classifier, bias, grad_logits, grad_masked, ctx.sigmoid)
    grad_bias = None if bias is None else grad_bias.to(bias.dtype)
    return grad_patches, grad_classifier, grad_bias, grad_prefix, None


_seed_mask_op.register_autograd(_backward, setup_context=_setup_context)
_seed_mask_eager = eager_autograd(_seed_mask_forward, _setup_context,
                                  functools.partial(_backward, backward=_seed_mask_backward))


def seed_mask_reference(patches: torch.Tensor, classifier: torch.Tensor, bias: torch.Tensor | None = None,
                        mask_form: str = "sigmoid") -> tuple[torch.Tensor, torch.Tensor]:
    """The same op in plain PyTorch: (patch_logits (B, N), masked (B, N, D))."""
    dots = torch.einsum("bnd,bd->bn", patches, classifier)
    if bias is not None:
        dots = dots + bias[:, None]
    logits = dots * patches.shape[-1] ** -0.5
    weight = logits.sigmoid() if mask_form == "sigmoid" else logits
    return logits, patches * weight.unsqueeze(-1)


def seed_mask(patches: torch.Tensor, classifier: torch.Tensor, out: torch.Tensor | None = None, *,
              bias: torch.Tensor | None = None, prefix: torch.Tensor | None = None,
              mask_form: str = "sigmoid") -> tuple[torch.Tensor, torch.Tensor]:
    """Patch logits and masked patches in one pass.

    Args:
        patches: (B, N, D) patch tokens z'_v; fp32, fp16 or bf16.
        classifier: (B, D) adaptive classifier e'_s, same dtype.
        out: optional (B, N, >=D) tensor (e.g. the right half of the decoder's input buffer); the
            masked patches are written into ``out[..., :D]``. Not differentiable: for inference. It may
            be ``patches`` itself (in place); inputs that share other memory with it are copied first.
            One made under ``torch.inference_mode()`` is written only there (a RuntimeError otherwise).
        bias: optional (B,) score offset added before the 1/sqrt(D) scaling; any supported float dtype.
        prefix: optional (B, N, Dp) tensor placed before the masked patches: the second result is
            then ``[prefix, masked]`` (B, N, Dp + D) in the dtype of ``patches``, the decoder's
            input, with no extra pass. Any supported float dtype.
        mask_form: ``sigmoid`` (paper, eq. 10) or ``logit`` (the released code: the raw score).

    Returns:
        patch_logits (B, N) = (patches . classifier + bias) / sqrt(D), and the masked patches
        (B, N, D), or ``[prefix, masked]`` with ``prefix``, or ``out`` with ``out``.

    Not autocast: it computes from the inputs' dtypes (the kernels in fp32) whatever autocast is on.
    On CPU tensors, unless Triton's interpreter is on (``TRITON_INTERPRET=1``), in float64, for
    rows wider than 8192 (patches or prefix) and for a batch row of 2^31 elements or more, this runs
    the same computation in plain PyTorch, autocast off too, with the same result dtypes.
    """
    _check_inputs(patches, classifier, out, bias, prefix, mask_form)
    # an inference tensor refuses in-place writes outside inference mode, as PyTorch's ops do (dynamo
    # cannot trace this test; under torch.compile the copy into out refuses it)
    writes_inference_tensor = out is not None and not torch.compiler.is_compiling() and out.is_inference()
    if writes_inference_tensor and not torch.is_inference_mode_enabled():
        raise RuntimeError("out was made under torch.inference_mode() and cannot be written outside it: "
                           "call seed_mask inside torch.inference_mode(), or make out outside it")
    if not op_registry.kernel_can_run(patches) or not _kernel_fits(patches, bias, prefix, out):
        autocast_off = (torch.autocast(patches.device.type, enabled=False)  # in the inputs' dtypes, as the kernels
                        if torch.amp.is_autocast_available(patches.device.type) else contextlib.nullcontext())
        with autocast_off:
            logits, masked = seed_mask_reference(patches, classifier, bias, mask_form)
        logits, masked = logits.to(patches.dtype), masked.to(patches.dtype)
        if out is not None:
            out[..., : patches.shape[-1]].copy_(masked)
            return logits, out
        return logits, masked if prefix is None else torch.cat([prefix.to(patches.dtype), masked], dim=-1)

    patches, classifier, prefix = (unit_stride(t) for t in (patches, classifier, prefix))
    bias = None if bias is None else bias.contiguous()
    sigmoid = mask_form == "sigmoid"
    if out is None:
        if torch.compiler.is_compiling():
            return torch.ops.restr_fast.seed_mask(patches, classifier, bias, prefix, sigmoid)
        return _seed_mask_eager(patches, classifier, bias, prefix, sigmoid)
    if torch.compiler.is_compiling():  # the functional op, and a copy the compiler sees (aliasing included)
        logits, masked = torch.ops.restr_fast.seed_mask(patches, classifier, bias, None, sigmoid)
        out[..., : patches.shape[-1]].copy_(masked)
        return logits, out
    in_place = out.data_ptr() == patches.data_ptr() and out.stride() == patches.stride()  # each row read first
    patches, classifier, bias = (t.clone() if t is not None and _shares_memory(t, out) and not (t is patches and in_place)
                                 else t for t in (patches, classifier, bias))
    logits = patches.new_empty(patches.shape[:2])
    with eager_launches(patches.device):
        _launch_forward(patches, classifier, bias, None, logits, out, sigmoid)
    if not out.is_inference():  # as an in-place op would: autograd then refuses what saved out's old values
        torch.autograd.graph.increment_version(out)
    return logits, out


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the memory spans of ``a`` and ``b`` intersect (for strided views of one buffer, such as
    two halves of its rows, without their elements meeting too)."""
    def span(t: torch.Tensor) -> tuple[int, int]:
        elements = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) + 1
        return t.data_ptr(), t.data_ptr() + elements * t.element_size()
    if a.numel() == 0 or b.numel() == 0:
        return False
    (a_start, a_end), (b_start, b_end) = span(a), span(b)
    return a_start < b_end and b_start < a_end


def _overlaps_itself(t: torch.Tensor) -> bool:
    """Whether two elements of ``t`` may share memory: some stride does not step past the elements the
    smaller strides reach (an expanded dimension, or rows closer than their width). Conservative: a few
    interleaved layouts whose elements never meet are counted too."""
    if t.numel() == 0:  # however expanded
        return False
    reach = 0  # elements spanned by the smaller strides, less one
    for stride, size in sorted((stride, size) for size, stride in zip(t.shape, t.stride()) if size > 1):
        if stride <= reach:
            return True
        reach += stride * (size - 1)
    return False


def _kernel_fits(patches: torch.Tensor, bias: torch.Tensor | None, prefix: torch.Tensor | None,
                 out: torch.Tensor | None) -> bool:
    """Whether the kernels take these tensors: their dtypes (not float64), rows of at most MAX_D columns
    (patches and prefix), and offsets within a batch row that fit 32 bits (the kernels' row offsets are
    int32, only the batch's int64)."""
    B, N, D = patches.shape
    if patches.numel() == 0 or D > MAX_D or (prefix is not None and prefix.shape[-1] > MAX_D):
        return False
    if any(t is not None and t.dtype not in SUPPORTED_DTYPES for t in (patches, bias, prefix)):
        return False
    width = D + (0 if prefix is None else prefix.shape[-1])  # of the output built when out is None
    row_strides = [patches.stride(1), width if out is None else out.stride(1)]
    if prefix is not None:
        row_strides.append(prefix.stride(1))
    return max(row_strides) * (N - 1) + max(width, 0 if out is None else out.shape[-1]) < 2 ** 31


def _check_inputs(patches, classifier, out, bias, prefix, mask_form) -> None:
    if mask_form not in ("sigmoid", "logit"):
        raise ValueError(f"mask_form must be 'sigmoid' or 'logit', got {mask_form!r}")
    if not isinstance(patches, torch.Tensor) or patches.dim() != 3:
        raise ValueError(f"patches must be a (B, N, D) tensor, got {_describe(patches)}")
    B, N, D = patches.shape
    if D == 0:
        raise ValueError(f"patches must have at least one channel, got shape {tuple(patches.shape)}")
    if not isinstance(classifier, torch.Tensor) or classifier.shape != (B, D):
        raise ValueError(f"classifier must have shape (B, D) = ({B}, {D}) to match patches {tuple(patches.shape)}, "
                         f"got {_describe(classifier)}")
    for name, tensor, shape in (("bias", bias, (B,)), ("prefix", prefix, None), ("out", out, None)):
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(tensor).__name__}")
        if shape is not None and tensor.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    if prefix is not None and (prefix.dim() != 3 or prefix.shape[:2] != (B, N)):
        raise ValueError(f"prefix must have shape (B, N, Dp) = ({B}, {N}, Dp), got {tuple(prefix.shape)}")
    if out is not None:
        if out.dim() != 3 or out.shape[:2] != (B, N) or out.shape[2] < D:
            raise ValueError(f"out must have shape (B, N, >=D) = ({B}, {N}, >={D}), got {tuple(out.shape)}")
        if prefix is not None:
            raise ValueError("give either out or prefix, not both")
        if out.stride(-1) != 1:
            raise ValueError("out must have unit stride along its last dimension")
        if _overlaps_itself(out):
            raise ValueError(f"out of shape {tuple(out.shape)} and strides {out.stride()} has elements that may "
                             f"share memory (an expanded or overlapping view): pass a contiguous tensor, or a view "
                             f"whose strides each step past what the smaller ones reach")
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (patches, classifier, bias, out)):
            raise ValueError("seed_mask(out=...) is for inference (no autograd through out); "
                             "pass prefix= instead to build the decoder's input differentiably")
    tensors = {"patches": patches, "classifier": classifier, "bias": bias, "prefix": prefix, "out": out}
    for name, tensor in tensors.items():
        if tensor is not None and tensor.dtype not in SUPPORTED_DTYPES + (torch.float64,):
            raise TypeError(f"{name} has dtype {tensor.dtype}; seed_mask supports float32, float16 and bfloat16 "
                            f"(and float64, in PyTorch)")
        if tensor is not None and tensor.device != patches.device:
            raise ValueError(f"{name} is on {tensor.device} but patches on {patches.device}")
    for name in ("classifier", "out"):
        if tensors[name] is not None and tensors[name].dtype != patches.dtype:
            raise TypeError(f"{name} has dtype {tensors[name].dtype} but patches {patches.dtype}: "
                            f"cast them to one dtype")


def _describe(value) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
