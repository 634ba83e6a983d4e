"""Triton kernels of restr_fast, imported as ``restr_fast.kernels``.

One file per fused op: the Triton kernel(s), the op registered with ``torch.library`` (autograd
included) and a plain function entry point that falls back to PyTorch where Triton cannot run.
"""
from .seed_mask import seed_mask

__all__ = ["seed_mask"]
