"""Language encoder: word embeddings + sinusoidal positions, post-LN transformer, projection to D."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import ReSTRConfig
from .blocks import PostNormBlock, init_weights, run_block


def sinusoidal_positions(length: int, dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The fixed position encoding of "Attention Is All You Need": (length, dim) float32."""
    position = torch.arange(length, dtype=torch.float64, device=device)[:, None]  # (L, 1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table.float()


class LanguageEncoder(nn.Module):
    """Token ids (B, L) -> word features (B, L, D).

    GloVe-initialisable word embeddings (row 0 = padding, kept at zero) plus a fixed sinusoidal
    position encoding, ``text_depth`` post-LN transformer layers that ignore padded words, then
    Linear(word_dim -> D) and LayerNorm.
    """

    def __init__(self, config: ReSTRConfig) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.embed = nn.Embedding(config.vocab_size, config.word_dim, padding_idx=0)
        self.blocks = nn.ModuleList([
            PostNormBlock(config.word_dim, config.text_heads, config.text_mlp_dim, config.attention)
            for _ in range(config.text_depth)
        ])
        self.proj = nn.Linear(config.word_dim, config.dim)
        self.norm = nn.LayerNorm(config.dim)
        self.blocks.apply(init_weights)
        self.proj.apply(init_weights)

    def forward(self, tokens: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) long, word_mask (B, L) bool (True for real words) -> (B, L, D)."""
        x = self.embed(tokens)  # (B, L, word_dim)
        # computed at each call, not held in a buffer: no weight loading (meta-device models) or dtype
        # round trip (bf16 and back) can change it
        x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device).to(x.dtype)
        for block in self.blocks:
            x = run_block(block, x, word_mask, checkpointing=self.grad_checkpointing)
        return self.norm(self.proj(x))  # (B, L, D)

    @torch.no_grad()
    def load_word_vectors(self, vectors: torch.Tensor) -> None:
        """Copy a (vocab_size, word_dim) matrix (e.g. from :func:`restr_fast.text.load_glove`) into the
        embedding table; row 0 (padding) is set to zero."""
        if vectors.shape != self.embed.weight.shape:
            raise ValueError(f"word vectors have shape {tuple(vectors.shape)}, the embedding table is "
                             f"{tuple(self.embed.weight.shape)} (vocab_size, word_dim): build the model "
                             f"with vocab_size=len(vocabulary) and the vectors' dimension as word_dim")
        self.embed.weight.copy_(vectors)
        self.embed.weight[0].zero_()
