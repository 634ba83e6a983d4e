"""Patch prediction with the adaptive classifier (eq. 9) and masking of the patch tokens (eq. 10)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ReSTRConfig
from .blocks import init_weights


class SeedClassifier(nn.Module):
    """Patch logits and masked patch tokens from the fused patches z'_v and the classifier e'_s.

    With ``patch_projection`` the patches and the classifier each pass a Linear before scoring
    (``proj_patch``/``proj_cls`` of the released code); the masking always applies to z'_v itself.
    """

    def __init__(self, config: ReSTRConfig) -> None:
        super().__init__()
        self.mask_form = config.mask_form
        self.proj_patch = nn.Linear(config.dim, config.dim) if config.patch_projection else nn.Identity()
        self.proj_cls = nn.Linear(config.dim, config.dim) if config.patch_projection else nn.Identity()
        self.apply(init_weights)

    def forward(self, patches: torch.Tensor, classifier: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """patches (B, N, D), classifier (B, D) -> patch_logits (B, N), masked patches (B, N, D)."""
        scale = patches.shape[-1] ** -0.5
        logits = torch.einsum("bnd,bd->bn", self.proj_patch(patches), self.proj_cls(classifier)) * scale
        weight = logits.sigmoid() if self.mask_form == "sigmoid" else logits  # (B, N)
        return logits, patches * weight.unsqueeze(-1)
