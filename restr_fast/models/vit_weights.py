"""Loading local timm ViT checkpoints into the vision encoder (no hub access)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer, _load_weights, checkpoint_filter_fn

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SUFFIXES = (".npz", ".safetensors") + TORCH_SUFFIXES
# Classifier parts of a pretrained ViT that the encoder does not have.
HEAD_PREFIXES = ("head.", "head_dist.", "fc_norm.", "pre_logits.")
# Encoder blocks' names in a Google .npz: one by one, or stacked in one array per weight.
NPZ_BLOCK = re.compile(r"(?:^|/)Transformer/encoderblock_(\d+)/")
NPZ_STACKED_BLOCKS = "Transformer/encoderblock/LayerNorm_0/scale"


def load_vit_weights(vit: VisionTransformer, path: str | Path) -> None:
    """Load the checkpoint at ``path`` into ``vit`` in place.

    Formats: Google's ``.npz`` (big_vision / AugReg), or a timm state dict in ``.safetensors``
    or a ``torch.save`` file. Position and patch embeddings are resampled to ``vit``'s grid
    and patch size, as timm does for each format: bilinearly for an ``.npz``, bicubically with
    antialiasing for a state dict (the same weights thus start a resized encoder slightly
    differently from either format). The classifier head of the checkpoint is ignored.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read, or its weights do not fit ``vit``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ViT weights file not found: {path}; pass a local timm ViT checkpoint "
                                f"({', '.join(SUFFIXES)}) of the vision encoder's size")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"unsupported ViT weights file {path}: expected one of {', '.join(SUFFIXES)}")
    if suffix == ".npz":
        _check_npz_depth(vit, path)
        try:
            _load_weights(vit, str(path))
        except Exception as error:  # numpy, zip and key errors from a foreign or damaged file
            raise ValueError(f"could not load ViT weights from {path}: {type(error).__name__}: {error}. "
                             f"Expected a Google ViT .npz checkpoint of the vision encoder's size") from error
        return
    state_dict = _read_state_dict(path, suffix)
    try:
        state_dict = checkpoint_filter_fn(state_dict, vit)
    except Exception as error:
        raise ValueError(f"could not adapt the ViT weights in {path} to the vision encoder: "
                         f"{type(error).__name__}: {error}") from error
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(HEAD_PREFIXES)}
    _check_fits(vit, state_dict, path)
    vit.load_state_dict(state_dict, strict=False)


def _check_npz_depth(vit: VisionTransformer, path: Path) -> None:
    """A ValueError unless the .npz at ``path`` holds as many encoder blocks as ``vit`` (timm's
    loader would leave extra ones out without a word): blocks stored one by one
    (``Transformer/encoderblock_{i}/``) or stacked (big_vision's ``Transformer/encoderblock/``),
    under any of the prefixes timm reads (``opt/target/``, ``params/``, ``params/img/``)."""
    try:
        with numpy.load(path) as weights:
            blocks = {match[1] for match in map(NPZ_BLOCK.search, weights.files) if match}
            stacked = [name for name in weights.files if name.endswith(NPZ_STACKED_BLOCKS)]
            depth = len(blocks) if blocks else weights[stacked[0]].shape[0] if stacked else None
    except Exception as error:
        raise ValueError(f"could not read ViT weights from {path}: {type(error).__name__}: {error}") from error
    if depth is not None and depth != len(vit.blocks):
        raise ValueError(f"{path} holds a ViT of {depth} blocks but the vision encoder has "
                         f"{len(vit.blocks)} (vision_depth): pass the checkpoint of a ViT of that depth")


def _read_state_dict(path: Path, suffix: str) -> dict[str, torch.Tensor]:
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file
            checkpoint: Any = load_file(str(path), device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"could not read ViT weights from {path}: {type(error).__name__}: {error}") from error
    if isinstance(checkpoint, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def _check_fits(vit: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    expected = vit.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        raise ValueError(f"{path} is missing {len(missing)} weight(s) of the vision encoder, e.g. "
                         f"{missing[:3]}: is it a ViT checkpoint with the configured depth?")
    for name, tensor in state_dict.items():
        if name in expected and tensor.shape != expected[name].shape:
            raise ValueError(f"{path}: weight {name!r} has shape {tuple(tensor.shape)}, the vision encoder "
                             f"expects {tuple(expected[name].shape)}: check vision_dim / vision_depth")
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise ValueError(f"{path} has {len(unexpected)} weight(s) that the vision encoder does not have, "
                         f"e.g. {unexpected[:3]}: is it a plain ViT checkpoint with the configured depth?")
