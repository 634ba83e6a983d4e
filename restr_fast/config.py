"""ReSTR configuration: one dataclass holding every architectural, loss and implementation setting."""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal, Mapping

FUSION_VARIANTS = ("cme", "vme", "ime")
MASK_FORMS = ("sigmoid", "logit")
PATCH_LABEL_RULES = ("mean", "any")
ATTENTION_BACKENDS = ("auto", "xformers", "sdpa", "math")


@dataclass(frozen=True)
class ReSTRConfig:
    """Everything that defines a ReSTR model and its loss.

    The defaults are the paper's model (``restr-b16``): ViT-B/16 at 480x480, a 6-layer GloVe
    language encoder, the cascaded multimodal fusion encoder (CME, 2 + 2 layers) and the
    coarse-to-fine decoder.

    Args:
        image_size: side of the square input image the model is built for (pixels).
        patch_size: ViT patch size; a power of two (the decoder doubles the resolution log2(P) times).
        in_chans: image channels.
        vision_dim: width of the vision encoder (ViT-B: 768).
        vision_depth: number of ViT blocks.
        vision_heads: attention heads of the vision encoder.
        vision_mlp_ratio: MLP hidden width of the ViT blocks, relative to ``vision_dim``.
        vocab_size: rows of the word-embedding table (row 0 is padding).
        max_words: number of word tokens per sentence (shorter ones are left-padded).
        word_dim: word-embedding width (GloVe: 300).
        text_depth: post-LN transformer layers of the language encoder.
        text_heads: attention heads of the language encoder.
        text_mlp_dim: MLP hidden width of the language encoder (released code: 1200; the paper's text says 3072).
        dim: width D of the fusion encoder, the seed classifier and the decoder input (D per stream).
        fusion: fusion encoder variant: ``cme`` (cascaded, default), ``vme`` (one encoder over vision,
            language and seed), ``ime`` (the seed sees language only, never vision).
        fusion_depth: transformer blocks in the fusion encoder in total (CME/IME: half per sub-encoder).
        fusion_heads: attention heads of the fusion encoder.
        fusion_mlp_ratio: MLP hidden width of the fusion blocks, relative to ``dim``.
        weight_sharing: share one block's weights across the layers of each sub-encoder (CME-dagger).
        patch_projection: apply a Linear to the patch tokens and to the seed before scoring them
            (``proj_patch``/``proj_cls`` of the released code).
        mask_form: ``sigmoid`` masks the patch tokens with the patch probabilities (paper, eq. 10);
            ``logit`` with the raw scores (released code).
        mask_projected: mask the projected patch tokens ``proj_patch(z'_v)`` (released code) instead of
            z'_v itself (paper, eq. 10); needs ``patch_projection``.
        decoder: use the coarse-to-fine decoder; without it the patch logits are upsampled bilinearly.
        negative_slope: LeakyReLU slope of the decoder blocks.
        patch_label: ``mean``: a patch is positive when the mean of its mask exceeds
            ``patch_label_threshold`` (eq. 11); ``any``: when any of its pixels is foreground.
        patch_label_threshold: tau of eq. 11.
        patch_loss_weight: lambda of eq. 12, the weight of the patch-level loss.
        attention: attention backend of every transformer: ``auto`` (the fastest measured on the
            device: SDPA on CUDA and CPU today), ``xformers`` (memory-efficient attention, CUDA only),
            ``sdpa`` (PyTorch's fused kernels) or ``math`` (explicit softmax, the readable reference);
            see :mod:`restr_fast.attention`.
        fast: use the fused Triton kernels where they exist (same weights, same results).
    """

    # vision encoder
    image_size: int = 480
    patch_size: int = 16
    in_chans: int = 3
    vision_dim: int = 768
    vision_depth: int = 12
    vision_heads: int = 12
    vision_mlp_ratio: float = 4.0
    # language encoder
    vocab_size: int = 10_000
    max_words: int = 20
    word_dim: int = 300
    text_depth: int = 6
    text_heads: int = 12
    text_mlp_dim: int = 1200
    # fusion encoder
    dim: int = 768
    fusion: Literal["cme", "vme", "ime"] = "cme"
    fusion_depth: int = 4
    fusion_heads: int = 12
    fusion_mlp_ratio: float = 4.0
    weight_sharing: bool = False
    # patch prediction, masking and decoder
    patch_projection: bool = True
    mask_form: Literal["sigmoid", "logit"] = "sigmoid"
    mask_projected: bool = False
    decoder: bool = True
    negative_slope: float = 0.01
    # loss
    patch_label: Literal["mean", "any"] = "mean"
    patch_label_threshold: float = 0.8
    patch_loss_weight: float = 0.1
    # implementation
    attention: Literal["auto", "xformers", "sdpa", "math"] = "auto"
    fast: bool = False

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # annotations are text here (from __future__ import annotations)
            if field.type in ("int", "float"):
                object.__setattr__(self, field.name, _as_number(getattr(self, field.name), field.type))
        _check_positive(self, "image_size", "patch_size", "in_chans", "vision_dim", "vision_depth",
                        "vision_heads", "vocab_size", "max_words", "word_dim", "text_depth", "text_heads",
                        "text_mlp_dim", "dim", "fusion_depth", "fusion_heads")
        for name in ("weight_sharing", "patch_projection", "mask_projected", "decoder", "fast"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("vision_mlp_ratio", "fusion_mlp_ratio", "negative_slope", "patch_label_threshold",
                     "patch_loss_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name, width in (("vision_mlp_ratio", "vision_dim"), ("fusion_mlp_ratio", "dim")):
            if int(getattr(self, width) * getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)} leaves the MLPs of {width}={getattr(self, width)} "
                                 f"without a hidden unit: it must be positive")
        p = self.patch_size
        if p < 2 or p & (p - 1):
            raise ValueError(f"patch_size must be a power of two >= 2 (the decoder doubles the "
                             f"resolution log2(patch_size) times), got {p}")
        if self.decoder and (2 * self.dim) >> self.decoder_blocks < 1:
            raise ValueError(f"the decoder halves its 2 * dim = {2 * self.dim} channels {self.decoder_blocks} "
                             f"times (log2(patch_size)), leaving none for its head: dim must be at least "
                             f"{2 ** (self.decoder_blocks - 1)} at patch_size {p}")
        if self.image_size % p:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {p}: "
                             f"use e.g. {round(self.image_size / p) * p or p}")
        for width, heads in (("vision_dim", "vision_heads"), ("word_dim", "text_heads"),
                             ("dim", "fusion_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(f"{width}={getattr(self, width)} is not divisible by "
                                 f"{heads}={getattr(self, heads)}")
        _check_choice(self, "fusion", FUSION_VARIANTS)
        _check_choice(self, "mask_form", MASK_FORMS)
        _check_choice(self, "patch_label", PATCH_LABEL_RULES)
        _check_choice(self, "attention", ATTENTION_BACKENDS)
        if self.fusion in ("cme", "ime") and self.fusion_depth % 2:
            raise ValueError(f"fusion={self.fusion!r} splits its layers evenly between two "
                             f"sub-encoders: fusion_depth must be even, got {self.fusion_depth}")
        if self.mask_projected and not self.patch_projection:
            raise ValueError("mask_projected masks the patch tokens as proj_patch projects them: it needs "
                             "patch_projection=True")
        if self.vocab_size < 5:
            raise ValueError(f"vocab_size must hold the 4 special tokens and at least one word, "
                             f"got {self.vocab_size}")
        if not 0.0 <= self.patch_label_threshold < 1.0:
            raise ValueError(f"patch_label_threshold must be in [0, 1), got {self.patch_label_threshold}")
        if self.patch_loss_weight < 0:
            raise ValueError(f"patch_loss_weight must be >= 0, got {self.patch_loss_weight}")

    @property
    def grid_size(self) -> int:
        """Patches per side of the configured image."""
        return self.image_size // self.patch_size

    @property
    def decoder_blocks(self) -> int:
        """Number of x2 upsampling blocks of the decoder: log2(patch_size)."""
        return int(math.log2(self.patch_size))

    @property
    def decoder_channels(self) -> tuple[int, ...]:
        """Channels entering each decoder block, then the head: (2D, D, D/2, ...)."""
        return tuple((2 * self.dim) >> i for i in range(self.decoder_blocks + 1))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ReSTRConfig":
        """Build a config from a mapping, refusing keys that are not config fields."""
        unknown = sorted(set(values) - set(config_fields()))
        if unknown:
            raise ValueError(f"unknown ReSTRConfig field(s) {unknown}; valid fields: {config_fields()}")
        return cls(**values)

    def replace(self, **overrides: Any) -> "ReSTRConfig":
        """A copy with some fields changed (validated like a new config)."""
        unknown = sorted(set(overrides) - set(config_fields()))
        if unknown:
            raise ValueError(f"unknown ReSTRConfig field(s) {unknown}; valid fields: {config_fields()}")
        return dataclasses.replace(self, **overrides)


def config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(ReSTRConfig)]


def _as_number(value: Any, kind: str) -> Any:
    """``value`` as an ``int`` or ``float`` (``kind``) where it is a number in another form: numpy's,
    or, for a float, text (YAML reads ``1e-3`` as text); anything else as it is, for the checks to name."""
    if isinstance(value, bool) or type(value) in (int, float):
        return value
    if kind == "int" and isinstance(value, numbers.Integral):
        return int(value)
    if kind == "float" and isinstance(value, (numbers.Real, str)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_positive(config: ReSTRConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_choice(config: ReSTRConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


PRESETS: dict[str, ReSTRConfig] = {
    # The paper's model: ViT-B/16 at 480x480, CME fusion 2 + 2.
    "restr-b16": ReSTRConfig(),
    # The same model at patch 8: 3,600 patch tokens at 480x480, three decoder blocks.
    "restr-b16-p8": ReSTRConfig(patch_size=8),
    # A 1.2M-parameter model that trains on two CPU cores in minutes (restr-fast demo).
    "restr-tiny": ReSTRConfig(
        image_size=64, patch_size=8,
        vision_dim=96, vision_depth=4, vision_heads=4,
        vocab_size=1000, word_dim=64, text_depth=2, text_heads=4, text_mlp_dim=256,
        dim=96, fusion_depth=4, fusion_heads=4,
    ),
}


def get_config(preset_or_config: str | ReSTRConfig = "restr-b16", **overrides: Any) -> ReSTRConfig:
    """The config of a named preset (or a given config), with ``overrides`` applied."""
    if isinstance(preset_or_config, ReSTRConfig):
        config = preset_or_config
    elif isinstance(preset_or_config, str):
        if preset_or_config not in PRESETS:
            raise ValueError(f"unknown preset {preset_or_config!r}; choose one of {sorted(PRESETS)}")
        config = PRESETS[preset_or_config]
    else:
        raise TypeError(f"expected a preset name or a ReSTRConfig, got {type(preset_or_config).__name__}")
    return config.replace(**overrides) if overrides else config
