"""Transformer building blocks shared by the vision, language and fusion encoders."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..attention import attention, attention_backend, backend_override


def run_block(block: nn.Module, x: torch.Tensor, *args, checkpointing: bool = False) -> torch.Tensor:
    """``block(x, *args)``; with ``checkpointing`` (and gradients on) its activations are recomputed
    in the backward pass instead of being stored, under the attention backend of the forward (an
    :func:`attention_backend` override is per thread, and the backward may run elsewhere)."""
    if checkpointing and torch.is_grad_enabled():
        override = backend_override()

        def recomputed(*inputs: torch.Tensor) -> torch.Tensor:
            with attention_backend(override):  # the forward's, none included
                return block(*inputs)
        return checkpoint(recomputed, x, *args, use_reentrant=False)
    return block(x, *args)


class Attention(nn.Module):
    """Multi-head self-attention with timm's parameter names (``qkv``, ``proj``).

    Args:
        dim: token width.
        num_heads: attention heads; ``dim`` must be divisible by it.
        backend: attention backend (see :mod:`restr_fast.attention`).
    """

    def __init__(self, dim: int, num_heads: int, backend: str = "auto") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, C); key_mask: optional (B, N) bool, True for real tokens. Returns (B, N, C)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, d) each
        x = attention(q, k, v, key_mask, self.backend)  # (B, H, N, d)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    """Linear -> activation -> Linear, with timm's parameter names (``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PreNormBlock(nn.Module):
    """ViT block: x + Attn(LN(x)), then x + MLP(LN(x)); GELU MLP, LayerNorm eps 1e-6 as in timm."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, backend: str = "auto") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, backend)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class PostNormBlock(nn.Module):
    """Original-Transformer block: LN(x + Attn(x)), then LN(x + MLP(x)); ReLU MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, backend: str = "auto") -> None:
        super().__init__()
        self.attn = Attention(dim, num_heads, backend)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim, act_layer=nn.ReLU)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, key_mask))
        return self.norm2(x + self.mlp(x))


def init_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) Linear weights with zero bias, unit LayerNorm: timm's ViT init."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
