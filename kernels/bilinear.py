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
    """The two input rows (or columns) upsampled output index ``o`` reads, and the weight of the
    second, exactly as PyTorch's bilinear upsampling with align_corners=True computes them."""
    src = tl.cast(o, tl.float32) * scale
    i0 = tl.minimum(src.to(tl.int32), size - 1)  # floor: src >= 0
    i1 = tl.minimum(i0 + 1, size - 1)
    return i0, i1, src - i0.to(tl.float32)


@triton.jit
def upsampled_row(T_IMAGE, o, p, cols, ok, h, w, scale_h, scale_w, stride_th, stride_tw):
    """fp32 (BLOCK_P, BLOCK_C) tile of up(t) at output row ``o`` (scalar), output columns ``p``."""
    y0, y1, ly = source_rows(o, scale_h, h)
    x0, x1, lx = source_rows(p, scale_w, w)
    row0 = T_IMAGE + y0.to(tl.int64) * stride_th
    row1 = T_IMAGE + y1.to(tl.int64) * stride_th
    c0 = (x0 * stride_tw)[:, None] + cols[None, :]
    c1 = (x1 * stride_tw)[:, None] + cols[None, :]
    t00 = tl.load(row0 + c0, mask=ok, other=0.0).to(tl.float32)
    t01 = tl.load(row0 + c1, mask=ok, other=0.0).to(tl.float32)
    t10 = tl.load(row1 + c0, mask=ok, other=0.0).to(tl.float32)
    t11 = tl.load(row1 + c1, mask=ok, other=0.0).to(tl.float32)
    lx = lx[:, None]
    return (1.0 - ly) * ((1.0 - lx) * t00 + lx * t01) + ly * ((1.0 - lx) * t10 + lx * t11)


@triton.jit
def leaky_relu(u, negative_slope):
    return tl.where(u > 0, u, u * negative_slope)


@triton.jit
def tent(x):
    """Bilinear weight of an input column at distance ``x`` from the source coordinate."""
    return tl.maximum(1.0 - tl.abs(x), 0.0)
