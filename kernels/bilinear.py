"""Bilinear x2 upsampling with align_corners=True, as the decoder kernels compute it: Triton
device functions over whole rows (scalar row, a tile of columns and channels), and the host's
scale factors."""
import triton
import triton.language as tl


def scales(h: int, w: int) -> tuple[float, float]:
    """Source coordinate per output index of x2 upsampling with align_corners=True."""
    return (h - 1) / (2 * h - 1), (w - 1) / (2 * w - 1)


@triton.jit
def source_rows(o, scale, size):
    """The two input rows upsampled output row ``o`` reads, and the weight of the second, exactly as
    PyTorch's bilinear upsampling with align_corners=True computes them."""
    src = tl.cast(o, tl.float32) * scale
    i0 = tl.minimum(src.to(tl.int32), size - 1)  # floor: src >= 0
    i1 = tl.minimum(i0 + 1, size - 1)
    return i0, i1, src - i0.to(tl.float32)


@triton.jit
def upsampled_pair(T_IMAGE, o, q, cols, ok, h, w, scale_h, scale_w, stride_th, stride_tw):
    """fp32 (BLOCK_Q, BLOCK_C) tiles of up(t) at output row ``o`` (scalar) and output columns
    2q - 1 and 2q, for pairs q in [0, w]: both read input columns q - 1 and q (clamped to the map),
    so a pair loads four input values instead of eight. Weights as PyTorch computes them, src -
    floor(src), but at column 2w - 1, whose source fp32 rounding can put an ulp below w - 1 (PyTorch
    then gives column w - 2 that ulp of weight; here it is left out); interpolated along rows first,
    then along columns (PyTorch: the reverse; the same to within rounding).
    """
    y0, y1, ly = source_rows(o, scale_h, h)
    row0 = T_IMAGE + y0.to(tl.int64) * stride_th
    row1 = T_IMAGE + y1.to(tl.int64) * stride_th
    left = (tl.maximum(q - 1, 0) * stride_tw)[:, None] + cols[None, :]
    right = (tl.minimum(q, w - 1) * stride_tw)[:, None] + cols[None, :]
    v_left = (1.0 - ly) * tl.load(row0 + left, mask=ok, other=0.0).to(tl.float32) \
        + ly * tl.load(row1 + left, mask=ok, other=0.0).to(tl.float32)
    across = (1.0 - ly) * tl.load(row0 + right, mask=ok, other=0.0).to(tl.float32) \
        + ly * tl.load(row1 + right, mask=ok, other=0.0).to(tl.float32) - v_left
    fq = (q - 1).to(tl.float32)  # the left input column; -1 for q = 0: output column 0 reads input column 0 alone
    lx_odd = ((2 * q - 1).to(tl.float32) * scale_w - fq)[:, None]
    lx_even = ((2 * q).to(tl.float32) * scale_w - fq)[:, None]
    return v_left + lx_odd * across, v_left + lx_even * across


@triton.jit
def leaky_relu(u, negative_slope):
    return tl.where(u > 0, u, u * negative_slope)


@triton.jit
def tent(x):
    """Bilinear weight of an input column at distance ``x`` from the source coordinate."""
    return tl.maximum(1.0 - tl.abs(x), 0.0)
