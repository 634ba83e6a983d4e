"""Vision encoder: a ViT on timm's patch and position embeddings, returning patch tokens only."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from ..config import ReSTRConfig
from .blocks import PreNormBlock, init_weights, run_block
from .vit_weights import load_vit_weights


class VisionEncoder(nn.Module):
    """ViT over the image patches; the class token is used inside the encoder and dropped at the end.

    The parameters live in ``self.vit``, a timm ``VisionTransformer`` whose blocks are ours (same
    parameter names as timm's), so timm checkpoints load as they are. The learnable position
    embedding is resampled (bicubic) when the input grid differs from the configured one.
    """

    def __init__(self, config: ReSTRConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.grad_checkpointing = False
        self.vit = VisionTransformer(
            img_size=config.image_size, patch_size=config.patch_size, in_chans=config.in_chans,
            embed_dim=config.vision_dim, depth=0, num_heads=config.vision_heads,
            num_classes=0, global_pool="", class_token=True, dynamic_img_size=True,
        )
        mlp_dim = int(config.vision_dim * config.vision_mlp_ratio)
        self.vit.blocks = nn.Sequential(*[
            PreNormBlock(config.vision_dim, config.vision_heads, mlp_dim, config.attention)
            for _ in range(config.vision_depth)
        ])
        self.vit.blocks.apply(init_weights)
        # The learnable position embedding starts as a 2-D sine-cosine pattern rather than timm's
        # std-0.02 noise, so that a model trained from scratch sees where each patch lies from the
        # first step; pretrained weights replace it.
        with torch.no_grad():
            grid = list(self.vit.patch_embed.grid_size)
            self.vit.pos_embed[0, 1:] = sincos_2d(*grid, config.vision_dim)  # (h*w, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> patch tokens (B, H/P * W/P, vision_dim), row-major over the grid."""
        x = self.vit.patch_embed(images)  # (B, h, w, D)
        B, h, w, D = x.shape
        pos_embed = resample_abs_pos_embed(  # (1, 1 + h*w, D); unchanged at the configured size
            self.vit.pos_embed, new_size=[h, w], old_size=self.vit.patch_embed.grid_size,
            num_prefix_tokens=1)
        x = torch.cat([self.vit.cls_token.expand(B, -1, -1), x.reshape(B, h * w, D)], dim=1) + pos_embed
        for block in self.vit.blocks:
            x = run_block(block, x, checkpointing=self.grad_checkpointing)  # (B, 1 + h*w, D)
        return self.vit.norm(x)[:, 1:]  # (B, h*w, D)

    def load_pretrained(self, path: str | Path) -> None:
        """Load a local timm ViT checkpoint (.npz, .pth/.pt/.bin or .safetensors), resampling the
        position embedding to this grid and the patch embedding to this patch size."""
        load_vit_weights(self.vit, path)


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10_000.0) -> torch.Tensor:
    """(h*w, dim) position pattern of a row-major h x w grid: [sin(row f), sin(col f), cos(row f),
    cos(col f)] over dim // 4 frequencies f = 1 / temperature^(k / (dim // 4)) (timm's and MAE's
    layout); any remaining columns are 0."""
    quarter = dim // 4
    frequencies = 1.0 / temperature ** (torch.arange(quarter).float() / max(quarter, 1))  # (dim/4,)
    rows = torch.arange(h).float().repeat_interleave(w)[:, None] * frequencies  # (h*w, dim/4)
    columns = torch.arange(w).float().repeat(h)[:, None] * frequencies
    pattern = torch.zeros(h * w, dim)
    pattern[:, : 4 * quarter] = torch.cat([rows.sin(), columns.sin(), rows.cos(), columns.cos()], dim=1)
    return pattern
