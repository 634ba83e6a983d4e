"""Triton kernels of restr_fast, imported as ``restr_fast.kernels``.

One file per fused op: the Triton kernel(s), a ``torch.autograd.Function`` and a plain function
entry point that falls back to PyTorch where Triton cannot run.
"""
