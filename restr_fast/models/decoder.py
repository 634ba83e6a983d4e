"""Coarse-to-fine decoder: log2(P) blocks of (bilinear x2 upsample, Linear C -> C/2, LeakyReLU), then
Linear(C -> 1) to pixel logits."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ReSTRConfig
from .blocks import run_block


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 upsampling (align_corners=True) of a channels-last map: (B, h, w, C) -> (B, 2h, 2w, C)."""
    x = F.interpolate(x.permute(0, 3, 1, 2), scale_factor=2, mode="bilinear", align_corners=True)
    return x.permute(0, 2, 3, 1)


class DecoderBlock(nn.Module):
    """upsample x2 -> Linear(C -> C/2, no bias) -> LeakyReLU."""

    def __init__(self, in_channels: int, negative_slope: float) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, in_channels // 2, bias=False)
        self.negative_slope = negative_slope
        nn.init.kaiming_normal_(self.linear.weight, a=negative_slope, nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, h, w, C) -> (B, 2h, 2w, C/2)."""
        return F.leaky_relu(self.linear(upsample2x(x)), self.negative_slope)


class Decoder(nn.Module):
    """Decoder input [z_v, z_masked] on the patch grid (B, h, w, 2D) -> pixel logits (B, 1, hP, wP).

    With ``config.fast`` the blocks and the head run as :func:`restr_fast.kernels.fused_decoder`
    (same weights): products at the low resolution, fused upsampling, activation and head. It
    stores only the low-resolution products, so gradient checkpointing does not apply to it.
    """

    def __init__(self, config: ReSTRConfig) -> None:
        super().__init__()
        self.fast = config.fast
        self.negative_slope = config.negative_slope
        self.grad_checkpointing = False
        channels = config.decoder_channels  # (2D, D, ..., 2D / P)
        self.blocks = nn.ModuleList([DecoderBlock(c, config.negative_slope) for c in channels[:-1]])
        self.head = nn.Linear(channels[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            from ..kernels import fused_decoder
            return fused_decoder(x, [block.linear.weight for block in self.blocks], self.head.weight,
                                 self.head.bias, self.negative_slope)
        for block in self.blocks:
            x = run_block(block, x, checkpointing=self.grad_checkpointing)  # (B, 2h, 2w, C/2)
        return self.head(x).permute(0, 3, 1, 2)  # (B, 1, H, W)
