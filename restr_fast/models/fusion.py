"""Multimodal fusion encoders: CME (default), VME and IME (paper, section 4.3).

Each takes the projected visual tokens z_v (B, Nv, D), word tokens z_l (B, Nl, D) with their
mask, and returns the fused visual tokens z'_v (B, Nv, D) and the adaptive classifier e'_s (B, D).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ReSTRConfig
from .blocks import PreNormBlock, init_weights, run_block


class Encoder(nn.Module):
    """A stack of pre-LN transformer blocks; with ``shared``, one block applied ``depth`` times."""

    def __init__(self, config: ReSTRConfig, depth: int, shared: bool) -> None:
        super().__init__()
        mlp_dim = int(config.dim * config.fusion_mlp_ratio)
        self.depth = depth
        self.grad_checkpointing = False
        self.blocks = nn.ModuleList([
            PreNormBlock(config.dim, config.fusion_heads, mlp_dim, config.attention)
            for _ in range(1 if shared else depth)
        ])

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        for i in range(self.depth):
            x = run_block(self.blocks[i % len(self.blocks)], x, key_mask, checkpointing=self.grad_checkpointing)
        return x


class FusionEncoder(nn.Module):
    """The fusion encoder of ``config.fusion``.

    cme: visual-linguistic encoder over [z_v, z_l] -> z'_v, z'_l; then linguistic-seed encoder
         over [z'_l, e_s] -> e'_s. Half of ``fusion_depth`` each.
    ime: as cme, but the seed encoder reads the unfused z_l: the seed never sees vision.
    vme: one encoder of ``fusion_depth`` blocks over [z_v, z_l, e_s].
    e'_s goes through a final LayerNorm in every variant.
    """

    def __init__(self, config: ReSTRConfig) -> None:
        super().__init__()
        self.variant = config.fusion
        self.seed = nn.Parameter(torch.zeros(1, 1, config.dim))
        if self.variant == "vme":
            self.encoder = Encoder(config, config.fusion_depth, config.weight_sharing)
        else:
            self.vl_encoder = Encoder(config, config.fusion_depth // 2, config.weight_sharing)
            self.ls_encoder = Encoder(config, config.fusion_depth // 2, config.weight_sharing)
        self.seed_norm = nn.LayerNorm(config.dim, eps=1e-6)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.seed, std=0.02)

    def forward(self, z_v: torch.Tensor, z_l: torch.Tensor,
                word_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z_v (B, Nv, D), z_l (B, Nl, D), word_mask (B, Nl) bool -> z'_v (B, Nv, D), e'_s (B, D)."""
        B, Nv, _ = z_v.shape
        Nl = z_l.shape[1]
        seed = self.seed.expand(B, -1, -1)  # (B, 1, D)
        visual_mask = word_mask.new_ones(B, Nv)
        seed_mask = word_mask.new_ones(B, 1)
        if self.variant == "vme":
            x = torch.cat([z_v, z_l, seed], dim=1)  # (B, Nv + Nl + 1, D)
            x = self.encoder(x, torch.cat([visual_mask, word_mask, seed_mask], dim=1))
            fused_visual, classifier = x[:, :Nv], x[:, -1]
        else:
            x = torch.cat([z_v, z_l], dim=1)  # (B, Nv + Nl, D)
            x = self.vl_encoder(x, torch.cat([visual_mask, word_mask], dim=1))
            fused_visual = x[:, :Nv]  # (B, Nv, D)
            words = x[:, Nv:] if self.variant == "cme" else z_l  # (B, Nl, D)
            s = self.ls_encoder(torch.cat([words, seed], dim=1), torch.cat([word_mask, seed_mask], dim=1))
            classifier = s[:, Nl]  # (B, D)
        return fused_visual, self.seed_norm(classifier)
