"""ReSTR: image + sentence -> mask of the referred region (Kim et al., CVPR 2022).

Read top to bottom: vision encoder, language encoder, L2-normalised projections to D, fusion
encoder, patch prediction with the adaptive classifier (eq. 9), masking (eq. 10), decoder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import resolve_backend
from ..config import ReSTRConfig, get_config
from .decoder import Decoder
from .fusion import FusionEncoder
from .head import SeedClassifier
from .language import LanguageEncoder
from .vision import VisionEncoder


class ReSTROutput(NamedTuple):
    pixel_logits: torch.Tensor  # (B, 1, H, W)
    patch_logits: torch.Tensor  # (B, 1, H/P, W/P)


class ReSTR(nn.Module):
    """The ReSTR model of ``config``; see :func:`build_model`."""

    def __init__(self, config: ReSTRConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionEncoder(config)
        self.language = LanguageEncoder(config)
        self.visual_proj = nn.Linear(config.vision_dim, config.dim)
        self.text_proj = nn.Linear(config.dim, config.dim)
        self.fusion = FusionEncoder(config)
        self.seed_classifier = SeedClassifier(config)
        self.decoder = Decoder(config) if config.decoder else None
        for projection in (self.visual_proj, self.text_proj):
            # Their inputs are unit-norm vectors (entries ~ 1/sqrt(D)): unit-variance weights give
            # outputs of unit scale, as after a LayerNorm, which the blocks after them expect.
            nn.init.normal_(projection.weight, std=1.0)
            nn.init.zeros_(projection.bias)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> ReSTROutput:
        """images (B, C, H, W) float, H and W multiples of the patch size; tokens (B, max_words)
        integer word ids, 0 = padding, at least one word per row."""
        check_inputs(images, tokens, self.config, weight_dtype=self.vision.vit.patch_embed.proj.weight.dtype)
        return self.segment(self.encode_images(images), tokens, images.shape[-2:])

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) -> the projected visual tokens z_v (B, N, D), N = (H/P)*(W/P).

        They depend on the image only: to segment one image with several sentences, encode it
        once and pass its row repeated to :meth:`segment` (same result as separate forwards)."""
        visual = self.vision(images)  # (B, N, Dv)
        return self.visual_proj(F.normalize(visual, dim=-1))  # (B, N, D)

    def segment(self, z_v: torch.Tensor, tokens: torch.Tensor, size: tuple[int, int]) -> ReSTROutput:
        """Everything after the vision encoder: z_v (B, N, D) from :meth:`encode_images` of images of
        ``size`` (H, W), tokens (B, max_words) -> pixel and patch logits."""
        H, W = size
        P = self.config.patch_size
        if H <= 0 or W <= 0 or H % P or W % P:
            raise ValueError(f"size {H}x{W} is not a multiple of the patch size {P}: pass the (H, W) of the "
                             f"images given to encode_images")
        h, w = H // P, W // P
        B = tokens.shape[0]
        if z_v.shape != (B, h * w, self.config.dim):
            raise ValueError(f"z_v must have shape (B, N, D) = ({B}, {h * w}, {self.config.dim}) for {B} "
                             f"sentences and {H}x{W} images, got {tuple(z_v.shape)}")
        word_mask = tokens != 0  # (B, L)
        words = self.language(tokens, word_mask)  # (B, L, D)
        z_l = self.text_proj(F.normalize(words, dim=-1)) * word_mask.unsqueeze(-1)  # (B, L, D), padding zeroed

        fused, classifier = self.fusion(z_v, z_l, word_mask)  # (B, N, D), (B, D)
        if self.decoder is None:
            patch_logits, _ = self.seed_classifier(fused, classifier)  # (B, N)
            patch_logits = patch_logits.reshape(B, 1, h, w)
            pixel_logits = F.interpolate(patch_logits, size=(H, W), mode="bilinear", align_corners=False)
            return ReSTROutput(pixel_logits, patch_logits)

        # decoder input [z_v, z'_v * y_p]: (B, N, 2D)
        patch_logits, decoder_input = self.seed_classifier(fused, classifier, prefix=z_v)
        pixel_logits = self.decoder(decoder_input.reshape(B, h, w, decoder_input.shape[-1]))  # (B, 1, H, W)
        return ReSTROutput(pixel_logits, patch_logits.reshape(B, 1, h, w))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the activations of every transformer and decoder block in the backward pass
        instead of storing them: less memory for bigger images, about a third more compute."""
        for module in self.modules():
            if hasattr(module, "grad_checkpointing"):
                module.grad_checkpointing = enable


def check_inputs(images: torch.Tensor, tokens: torch.Tensor, config: ReSTRConfig,
                 weight_dtype: torch.dtype | None = None) -> None:
    """Raise a ValueError/TypeError naming what is wrong with a forward pass's inputs.

    Shapes, dtypes and devices are always checked; with ``weight_dtype``, the model's, images must
    have that dtype unless autocast is on. Token values (ids in range, at least one word per row) are
    checked for CPU tensors only: on a GPU it would cost a synchronisation per step, and the
    tokenizer already guarantees them.
    """
    if not isinstance(images, torch.Tensor) or not isinstance(tokens, torch.Tensor):
        raise TypeError(f"images and tokens must be tensors, got {type(images).__name__} and "
                        f"{type(tokens).__name__}")
    if images.dim() != 4 or images.shape[1] != config.in_chans:
        raise ValueError(f"images must have shape (B, {config.in_chans}, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor (normalised pixels), got {images.dtype}")
    if (weight_dtype is not None and images.dtype != weight_dtype
            and not torch.is_autocast_enabled(images.device.type)):
        raise TypeError(f"images are {images.dtype} but the model's weights {weight_dtype}: cast the images with "
                        f".to({weight_dtype}), or run under torch.autocast")
    B, _, H, W = images.shape
    P = config.patch_size
    if H == 0 or W == 0 or H % P or W % P:
        raise ValueError(f"image size {H}x{W} is not a positive multiple of the patch size {P}: "
                         f"resize or letterbox the images to e.g. {config.image_size}x{config.image_size}")
    if tokens.dim() != 2 or tokens.shape != (B, config.max_words):
        raise ValueError(f"tokens must have shape (B, max_words) = ({B}, {config.max_words}), got "
                         f"{tuple(tokens.shape)}: encode sentences with restr_fast.text.Vocabulary.encode")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"tokens must be int64 (or int32) word ids, got {tokens.dtype}")
    if tokens.device != images.device:
        raise ValueError(f"images are on {images.device} but tokens on {tokens.device}")
    if not torch.compiler.is_compiling():
        resolve_backend(config.attention, images.device)  # a backend that cannot run here fails now, by name
    if tokens.device.type == "cpu" and tokens.numel() and not torch.compiler.is_compiling():
        if int(tokens.min()) < 0 or int(tokens.max()) >= config.vocab_size:
            raise ValueError(f"token ids must lie in [0, vocab_size={config.vocab_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        empty = (tokens == 0).all(dim=1).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"token rows {empty} hold only padding: every sentence needs at least one word")


def build_model(preset_or_config: str | ReSTRConfig = "restr-b16", *,
                vision_weights: str | Path | None = None, word_vectors: torch.Tensor | None = None,
                **overrides: Any) -> ReSTR:
    """Build a ReSTR model.

    Args:
        preset_or_config: a preset name (``restr-b16``, ``restr-b16-p8``, ``restr-tiny``) or a
            :class:`ReSTRConfig`.
        vision_weights: optional local timm ViT checkpoint for the vision encoder
            (``.npz``, ``.pth``, ``.safetensors``); never downloaded.
        word_vectors: optional (vocab_size, word_dim) embedding matrix, e.g. from
            :func:`restr_fast.text.load_glove`.
        **overrides: config fields to change, e.g. ``fusion="vme"``, ``image_size=320``.
    """
    config = get_config(preset_or_config, **overrides)
    model = ReSTR(config)
    if vision_weights is not None:
        model.vision.load_pretrained(vision_weights)
    if word_vectors is not None:
        model.language.load_word_vectors(word_vectors)
    return model


def build_float32_model(config: ReSTRConfig) -> ReSTR:
    """``build_model(config)`` with float32 parameters whatever torch's default dtype
    (torch.set_default_dtype): the model saved weights are loaded into. (It registers no buffers: all
    it computes when built are initial parameters, which the saved weights replace.)"""
    return build_model(config).float()
