"""Patch prediction with the adaptive classifier (eq. 9) and masking of the patch tokens (eq. 10)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ReSTRConfig


class SeedClassifier(nn.Module):
    """Patch logits and masked patch tokens from the fused patches z'_v and the classifier e'_s.

    With ``patch_projection`` the patches and the classifier each pass a Linear before scoring
    (``proj_patch``/``proj_cls`` of the released code); the masking applies to z'_v itself (eq. 10),
    or with ``mask_projected`` to the projected patches, as in the released code.
    With ``config.fast`` the scoring, sigmoid, masking and concatenation run as one Triton kernel
    (:func:`restr_fast.kernels.seed_mask`).
    """

    def __init__(self, config: ReSTRConfig) -> None:
        super().__init__()
        self.mask_form = config.mask_form
        self.mask_projected = config.mask_projected
        self.fast = config.fast
        self.proj_patch = nn.Linear(config.dim, config.dim) if config.patch_projection else nn.Identity()
        self.proj_cls = nn.Linear(config.dim, config.dim) if config.patch_projection else nn.Identity()
        for projection in (self.proj_patch, self.proj_cls):
            if isinstance(projection, nn.Linear):  # variance-preserving, so that the scores start at O(1)
                nn.init.normal_(projection.weight, std=config.dim ** -0.5)
                nn.init.zeros_(projection.bias)

    def forward(self, patches: torch.Tensor, classifier: torch.Tensor,
                prefix: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """patches (B, N, D), classifier (B, D) -> patch_logits (B, N) and the masked patches (B, N, D),
        or, with ``prefix`` (B, N, Dp), the decoder's input [prefix, masked] (B, N, Dp + D)."""
        classifier = self.proj_cls(classifier)  # (B, D)
        if self.fast:
            return self._fused(patches, classifier, prefix)
        scale = patches.shape[-1] ** -0.5
        projected = self.proj_patch(patches)  # (B, N, D)
        logits = torch.einsum("bnd,bd->bn", projected, classifier) * scale  # (B, N)
        weight = logits.sigmoid() if self.mask_form == "sigmoid" else logits
        masked = (projected if self.mask_projected else patches) * weight.unsqueeze(-1)  # (B, N, D)
        return logits, masked if prefix is None else torch.cat([prefix, masked], dim=-1)

    def _fused(self, patches: torch.Tensor, classifier: torch.Tensor,
               prefix: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The same in one Triton kernel. proj_patch is folded into the classifier,
        (z W^T + b) . c = z . (c W) + b . c, so it never runs over the N patches, unless the
        projected patches are the ones masked."""
        from ..kernels import seed_mask

        bias = None
        if self.mask_projected:
            patches = self.proj_patch(patches)  # (B, N, D)
        elif isinstance(self.proj_patch, nn.Linear):
            bias = classifier @ self.proj_patch.bias  # (B,)
            classifier = classifier @ self.proj_patch.weight  # (B, D)
        # The op is not autocast: like the reference (patches * weight, then the concatenation), it
        # computes in fp32 and returns the dtype of the patches; the prefix is converted as it is copied.
        classifier = classifier.to(patches.dtype)
        return seed_mask(patches, classifier, bias=bias, prefix=prefix, mask_form=self.mask_form)
