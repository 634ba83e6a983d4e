"""Deployable checkpoints: what inference needs and nothing else, in one folder.

A model folder holds ``model.safetensors`` (the state dict), ``config.json`` (the model's
:class:`ReSTRConfig` with a format tag) and ``vocab.txt`` (one word per line). It is written
atomically (to a temporary folder, then renamed) by :meth:`restr_fast.Predictor.save` and by
training (``RUN/model`` on each new best evaluation), and read with validation: missing files, a
config or weights of another model, or a vocabulary that does not fit are one-line errors naming
the path. :func:`load_model` reads any saved model: a model folder, a training checkpoint (``.pt``) or
a run folder.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ReSTRConfig
from .models import ReSTR, build_float32_model
from .text import Vocabulary

FORMAT = "restr_fast-model"
VERSION = 1
WEIGHTS, CONFIG, VOCABULARY = "model.safetensors", "config.json", "vocab.txt"
FILES = (WEIGHTS, CONFIG, VOCABULARY)
# What file browsers write into a folder they show (macOS, Windows): replaced with the folder.
FOLDER_VIEW_CACHES = (".DS_Store", "Thumbs.db", "desktop.ini")


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a deployable checkpoint's config file."""
    return (Path(path) / CONFIG).is_file()


def save_model_folder(directory: str | Path, model: ReSTR, vocabulary: Vocabulary) -> Path:
    """Write ``model``'s weights (copied to the CPU, dtypes kept), its config and ``vocabulary`` to ``directory``.

    An existing model folder at ``directory`` (its config tagged as this format, nothing in it but a
    model folder's files and a file browser's view cache) is replaced; any other non-empty folder
    there is an error (never deleted). A symbolic link is followed: the folder it points to is
    replaced. Returns ``directory``.
    """
    given = directory
    directory = Path(directory).expanduser().resolve()  # a link's target; "." and ".." by their names
    if len(vocabulary) != model.config.vocab_size:
        raise ValueError(f"the vocabulary has {len(vocabulary)} words but the model {model.config.vocab_size} "
                         f"embedding rows: build the model with vocab_size=len(vocabulary)")
    if directory.exists():
        _check_replaceable(directory, given)
    directory.parent.mkdir(parents=True, exist_ok=True)
    suffix = f"{uuid.uuid4().hex}.tmp"
    tmp, old = directory.with_name(f".{directory.name}.{suffix}"), directory.with_name(f".{directory.name}.old.{suffix}")
    try:
        tmp.mkdir()
        weights = {name: tensor.detach().to("cpu", copy=True).contiguous()
                   for name, tensor in model.state_dict().items()}
        header = {"format": FORMAT, "version": VERSION, "model": model.config.to_dict()}
        (tmp / CONFIG).write_text(json.dumps(header, indent=2) + "\n")
        save_file(weights, tmp / WEIGHTS, metadata={"format": FORMAT})
        os.chmod(tmp / WEIGHTS, (tmp / CONFIG).stat().st_mode & 0o777)  # safetensors writes 0600, not the umask's mode
        vocabulary.save(tmp / VOCABULARY)
        if directory.exists():
            directory.rename(old)
        try:
            tmp.rename(directory)
        except BaseException:
            if old.exists() and not directory.exists():  # the previous model goes back where it was
                old.rename(directory)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return Path(given).expanduser()


def _check_replaceable(directory: Path, given: str | Path) -> None:
    """A ValueError unless ``directory`` is empty or a model folder that holds nothing else."""
    if not directory.is_dir():
        raise ValueError(f"{given} exists and is not a folder: choose another path (it is never overwritten)")
    if directory == Path.cwd().resolve():
        raise ValueError(f"{given} is the current working directory, which replacing the folder would "
                         f"remove from under this process: pass its path from another directory")
    entries = sorted(entry.name for entry in directory.iterdir())
    if not entries:
        return
    try:
        tagged = json.loads((directory / CONFIG).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        tagged = False
    if not tagged:
        raise ValueError(f"{given} exists and is not a restr_fast model folder: choose another path "
                         f"(it is never overwritten)")
    others = [name for name in entries if name not in FILES + FOLDER_VIEW_CACHES]
    if others:
        raise ValueError(f"{given} is a restr_fast model folder but also holds {others}, which replacing it "
                         f"would delete: move them, or choose another path")


def load_model_folder(directory: str | Path, **overrides: Any) -> tuple[ReSTR, Vocabulary]:
    """The model (on the CPU, with its weights, in their dtype) and vocabulary of a model folder; ``overrides``
    change implementation settings such as ``fast`` or ``attention``.

    Raises FileNotFoundError when the folder or one of its files is missing, ValueError when a
    file is unreadable or belongs to another model."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model folder not found: {directory}")
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {missing}: a restr_fast model folder holds {WEIGHTS} "
                                f"(weights), {CONFIG} (model config) and {VOCABULARY}, as written by "
                                f"Predictor.save or restr-fast train")
    config = read_model_config(directory, **overrides)
    vocabulary = Vocabulary.load(directory / VOCABULARY)
    if len(vocabulary) != config.vocab_size:
        raise ValueError(f"{directory / VOCABULARY} has {len(vocabulary)} words but {directory / CONFIG} says "
                         f"vocab_size={config.vocab_size}: the files come from different models")
    try:
        weights = load_file(directory / WEIGHTS)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"cannot read the weights {directory / WEIGHTS} (corrupt or not a safetensors "
                         f"file): {str(error)[:200]}") from error
    from .training.checkpoint import load_weights  # the training package is only needed here

    model = build_float32_model(config)
    try:
        load_weights(model, weights)
    except ValueError as error:
        raise ValueError(f"{directory / WEIGHTS} does not match {directory / CONFIG}: {error}") from error
    saved = {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()}
    if len(saved) == 1 and saved <= {torch.bfloat16, torch.float16}:
        model.to(saved.pop())  # weights saved in bf16 or fp16 stay so (Predictor's 'auto' autocasts in it)
    return model.eval(), vocabulary


def read_model_config(directory: str | Path, **overrides: Any) -> ReSTRConfig:
    """The ReSTRConfig of a model folder, from its config.json, with ``overrides`` applied.

    Raises FileNotFoundError when the file is missing, ValueError when it is not a model folder's config."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a restr_fast model folder holds {', '.join(FILES)}")
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not JSON: {error}") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT or not isinstance(header.get("model"), dict):
        raise ValueError(f"{path} is not a restr_fast model config (expected an object with "
                         f"\"format\": \"{FORMAT}\" and the model's settings under \"model\")")
    if header.get("version") != VERSION:
        raise ValueError(f"{path} has format version {header.get('version')}; this restr_fast reads version {VERSION}")
    try:
        return ReSTRConfig.from_dict(header["model"]).replace(**overrides)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: the model config is not valid here: {error}") from error


def load_model(path: str | Path, **overrides) -> tuple[ReSTR, Vocabulary]:
    """Model (on the CPU) and vocabulary of a model folder, a training checkpoint or a run folder."""
    path = saved_model(path)
    if path.is_dir():
        return load_model_folder(path, **overrides)
    from .training import load_checkpoint, model_from_checkpoint  # the training package is only needed here

    state = load_checkpoint(path, mmap=True)  # the weights are copied into the model; the optimiser's never read
    try:
        model, vocabulary = model_from_checkpoint(state, **overrides)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    return model.eval(), vocabulary


def saved_model_config(path: str | Path) -> ReSTRConfig:
    """The model config of a model folder, a training checkpoint or a run folder, read without the weights."""
    path = saved_model(path)
    if path.is_dir():
        return read_model_config(path)
    from .training import load_checkpoint

    saved = load_checkpoint(path, mmap=True)["config"]
    try:
        return ReSTRConfig.from_dict(saved)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: the checkpoint's model config is not valid here: {error}") from error


def saved_model(path: str | Path) -> Path:
    """The model folder or checkpoint file that ``path`` names: itself, given a file of a model folder its
    folder, given a run folder its model/ (else checkpoints/best.pt, then latest.pt)."""
    path = Path(path).expanduser()
    if path.is_file() and path.name in FILES:
        path = path.parent
    elif path.is_file() and path.suffix == ".safetensors":
        raise ValueError(f"{path} is a weights file alone: pass the model folder holding it with its "
                         f"{CONFIG} and {VOCABULARY} (as Predictor.save writes one)")
    if path.is_dir():
        if is_model_folder(path) or (path / WEIGHTS).is_file():  # (reading it names a missing file)
            return path
        for candidate in (path / "model", path / "checkpoints" / "best.pt", path / "checkpoints" / "latest.pt"):
            if candidate.is_file() or is_model_folder(candidate):  # (an incomplete model/ is passed over)
                return candidate
        raise FileNotFoundError(f"{path} holds no restr_fast checkpoint: expected a model folder ({WEIGHTS}, "
                                f"{CONFIG}, {VOCABULARY}) or a run folder (model/ or checkpoints/best.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}; pass a model folder, a run folder or a .pt "
                                f"checkpoint written by restr-fast train")
    return path
