"""Training checkpoints: written atomically, read with validation."""
from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ReSTRConfig
from ..models import ReSTR, build_float32_model
from ..text import Vocabulary

FORMAT = "restr_fast-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a partly written file never replaces a good one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            torch.save({"format": FORMAT, "version": VERSION, **state}, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on the CPU; with ``mmap``, its tensors are
    read from the file when used).

    Raises FileNotFoundError for a missing file and ValueError for a corrupt file or one that is
    not a restr_fast checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # (torch's own error for it is about mmap, or unpickling)
        raise ValueError(f"cannot read checkpoint {path}: not a zip archive, as torch.save writes one: "
                         f"corrupt, truncated or not a torch file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:  # torch's advice to load unsafely does not apply to our files
        raise ValueError(f"cannot read checkpoint {path}: torch's safe loader refused it (it reads tensors and "
                         f"plain data only): not a checkpoint restr-fast wrote, or a corrupt one") from error
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {path} (corrupt or not a torch file): "
                         f"{type(error).__name__}: {str(error)[:200]}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        bare = " (a bare state dict: load it into build_model(...) with load_state_dict, then save a model folder " \
               "with Predictor(model, vocabulary).save(folder))" if _is_state_dict(state) else ""
        raise ValueError(f"{path} is not a restr_fast checkpoint (expected a file written by restr-fast train){bare}")
    if state.get("version") != VERSION:
        raise ValueError(f"{path} is a checkpoint of format version {state.get('version')}; this restr_fast "
                         f"reads version {VERSION}")
    missing = [key for key in ("model", "config", "vocabulary") if key not in state]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}")
    return state


def _is_state_dict(state: Any) -> bool:
    """Whether ``state`` looks like a module's state dict: a non-empty dict of names to tensors."""
    return isinstance(state, dict) and bool(state) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


def model_from_checkpoint(state: dict[str, Any], **overrides: Any) -> tuple[ReSTR, Vocabulary]:
    """The model (with its weights) and vocabulary of a loaded checkpoint; ``overrides`` change
    implementation settings such as ``fast`` or ``attention``."""
    try:
        config = ReSTRConfig.from_dict(state["config"]).replace(**overrides)
    except (TypeError, ValueError) as error:
        raise ValueError(f"the checkpoint's model config is not valid here: {error}") from error
    vocabulary = Vocabulary(state["vocabulary"][4:])
    if len(vocabulary) != config.vocab_size:
        raise ValueError(f"the checkpoint's vocabulary has {len(vocabulary)} words but its config says "
                         f"vocab_size={config.vocab_size}")
    model = build_float32_model(config)
    load_weights(model, state["model"])
    return model, vocabulary


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load a state dict, naming missing, unexpected and mis-shaped weights in one clear error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [f"{k}: {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise ValueError("the weights do not fit this model (a checkpoint of another model or config?): "
                         f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                         f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''}, shapes {shapes[:3]}")
    model.load_state_dict(weights)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Python, NumPy and torch random states (the CPU's, and the GPU's that ``device`` names), in
    types ``weights_only`` loading accepts."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": position,
                       "has_gauss": has_gauss, "cached_gaussian": cached}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore :func:`rng_state`'s states; the GPU's on ``device``, whichever GPU saved it."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and device.type == "cuda":
        gpu_state = state["cuda"]
        if isinstance(gpu_state, (list, tuple)):  # checkpoints before 2026-11-27: one state per visible GPU
            index = torch.cuda.current_device() if device.index is None else device.index
            gpu_state = gpu_state[index] if index < len(gpu_state) else None
        if gpu_state is not None:
            torch.cuda.set_rng_state(gpu_state, device)
