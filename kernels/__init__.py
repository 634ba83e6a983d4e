"""Triton kernels of restr_fast, imported as ``restr_fast.kernels``.

One file per fused op: the Triton kernel(s), the op registered with ``torch.library`` (autograd
included) and a plain function entry point that falls back to PyTorch where Triton cannot run.
"""
from .decoder import fused_decoder, upsample_linear_act
from .seed_mask import seed_mask

__all__ = ["fused_decoder", "seed_mask", "upsample_linear_act"]
