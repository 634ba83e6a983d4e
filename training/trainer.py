"""The training loop: the paper's recipe by default, resumable, DDP under torchrun.

A run folder holds ``config.yaml`` (model and training settings), ``vocab.txt``, ``log.jsonl``
(each invocation's start with the number of training and validation samples, every logged step
and evaluation, and each save of ``latest.pt``), ``checkpoints/latest.pt`` and ``best.pt`` (by
overall IoU), and ``model/``, the best model as a deployable folder for :class:`restr_fast.Predictor`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import numbers
import os
import shutil
import time
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from ..config import ReSTRConfig
from ..data import ReferDataset, collate, sentences_of
from ..deployable import is_model_folder, save_model_folder
from ..devices import parse_device
from ..losses import loss_terms
from ..models import build_model
from ..text import SPECIAL_TOKENS, Vocabulary, load_glove
from . import distributed
from .checkpoint import (load_checkpoint, load_weights, model_from_checkpoint, rng_state, save_checkpoint,
                         set_rng_state, write_text_atomically)
from .evaluate import autocast, evaluate
from .init_from import check_architecture, init_from_trained
from .optim import build_optimizer, warmup_poly_schedule

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


class TrainingDiverged(RuntimeError):
    """The loss, or the weights, became NaN or infinite."""


def _finite(model: torch.nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite (one synchronisation)."""
    return bool(torch.stack([torch.isfinite(p.detach()).all() for p in model.parameters()]).all())


PATH_FIELDS = ("data_root", "image_root", "vocabulary", "glove", "vit_weights", "init_from")  # TrainConfig's files


@dataclass
class TrainConfig:
    """Data and recipe of a training run; the defaults are the paper's recipe (DESIGN.md section 1)."""

    data_root: str = ""
    dataset: str = "refcoco"
    split_by: str = "unc"
    train_split: str = "train"
    val_split: str = "val"
    image_root: str | None = None
    steps: int = 400_000
    stop_after: int | None = None  # end this invocation after so many steps (resume later), e.g. for time limits
    batch_size: int = 8  # per process
    accumulate: int = 1
    lr: float = 1e-5
    vision_lr_scale: float = 0.1
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.1
    power: float = 0.9
    amp: str = "auto"  # bf16 on GPUs, off on the CPU
    grad_checkpointing: bool = False
    workers: int = 4
    device: str = "auto"
    seed: int = 0
    log_every: int = 50
    eval_every: int = 5000
    eval_samples: int | None = None  # cap per periodic evaluation (None: the whole split)
    eval_batch_size: int = 16
    checkpoint_every: int = 1000
    vocabulary: str | None = None  # a vocabulary file; default: built from the training sentences
    min_word_count: int = 1
    glove: str | None = None
    vit_weights: str | None = None
    init_from: str | None = None  # a trained model (model folder, run folder or .pt) whose weights start the run
    progress: bool = True

    def __post_init__(self) -> None:
        self._check_types()
        for name in PATH_FIELDS[1:]:
            if getattr(self, name) == "":  # (a flag given as "" unsets what a config file set)
                setattr(self, name, None)
        for name in ("lr", "weight_decay", "vision_lr_scale", "warmup_fraction", "power"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.lr <= 0 or self.power < 0:
            raise ValueError(f"lr must be > 0 and power >= 0, got lr {self.lr} and power {self.power}")
        if self.weight_decay < 0 or self.vision_lr_scale < 0:
            raise ValueError(f"weight_decay and vision_lr_scale must be >= 0, got {self.weight_decay} and "
                             f"{self.vision_lr_scale}")
        if not 0 <= self.warmup_fraction <= 1:
            raise ValueError(f"warmup_fraction must be in [0, 1], got {self.warmup_fraction}")
        if self.eval_samples is not None and self.eval_samples < 1:
            raise ValueError(f"eval_samples must be >= 1 (or unset for the whole split), got {self.eval_samples}")
        for name in ("steps", "batch_size", "accumulate", "log_every", "eval_every", "checkpoint_every",
                     "eval_batch_size") + (("stop_after",) if self.stop_after is not None else ()):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of {list(AMP_CHOICES)}, got {self.amp!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        parse_device(self.device)
        if self.init_from and self.vit_weights:
            raise ValueError(f"init_from ({self.init_from}) and vit_weights ({self.vit_weights}) both give the vision "
                             f"encoder's weights: give one (a run that starts from a trained model takes its encoder)")

    def run_settings(self) -> dict:
        """The settings a run folder records: all but ``stop_after``, which ends one invocation,
        not the run (a resumed run goes to the end unless given its own); paths made absolute (symbolic
        links kept), so that a ``--resume`` from another working folder reads the same files."""
        paths = {name: os.path.abspath(value) for name in PATH_FIELDS if (value := getattr(self, name))}
        return {**dataclasses.asdict(self), "stop_after": None, **paths}

    def _check_types(self) -> None:
        """Every setting of its annotated type, in that type: numbers YAML reads as text (``1e-3``)
        and numpy numbers are numbers, paths and torch devices are text."""
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            allowed = typing.get_args(hints[field.name]) or (hints[field.name],)
            if value is None and type(None) in allowed:
                continue
            setattr(self, field.name, _as_setting(field.name, value, [k for k in allowed if k is not type(None)]))


def _rebase_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, base_lrs: list[float],
                     weight_decays: list[float]) -> None:
    """Go on with the schedule at its current step from ``base_lrs`` and its own factors (this invocation's
    --lr and --steps) instead of the lrs it was saved with, and with ``weight_decays``, the groups' decay."""
    scheduler.base_lrs = list(base_lrs)
    groups = scheduler.optimizer.param_groups
    for group, base_lr, factor, weight_decay in zip(groups, base_lrs, scheduler.lr_lambdas, weight_decays):
        group["initial_lr"] = base_lr
        group["lr"] = base_lr * factor(scheduler.last_epoch)
        group["weight_decay"] = weight_decay


def _best_since_checkpoint(state: dict, out: Path, main: bool, vocabulary: Vocabulary) -> float:
    """The best evaluation of a resumed run: the checkpoint's, or best.pt's where a run evaluated after
    its last checkpoint and then stopped. model/ is then written again from best.pt, as a stop between
    the two files' writes could have left it one evaluation behind."""
    best_iou = state.get("best_overall_iou", -1.0)
    path = out / "checkpoints" / "best.pt"
    if path.is_file():
        best = load_checkpoint(path, mmap=True)  # every process reads the score, not the whole file
        if best.get("best_overall_iou", -1.0) > best_iou:
            best_iou = best["best_overall_iou"]
            if main:
                save_model_folder(out / "model", model_from_checkpoint(best)[0], vocabulary)
    return best_iou


def _samples_seen(state: dict, config: TrainConfig, world: int) -> int:
    """The training samples a checkpoint's run has drawn; checkpoints before 2026-11-28 did not count
    them: their steps times the batch and accumulation they saved, on this invocation's processes."""
    if "samples_seen" in state:
        return state["samples_seen"]
    saved = state.get("train", {})
    batch_size, accumulate = saved.get("batch_size", config.batch_size), saved.get("accumulate", config.accumulate)
    return state["step"] * batch_size * accumulate * world


def _log_records(path: Path) -> Iterator[tuple[str, dict]]:
    """The lines of the log ``path`` with their records, passing over a line that a crash cut short."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            yield line, record


def _keep_log_records(path: Path, up_to_step: int) -> None:
    """Keep the records of steps up to ``up_to_step`` in the log ``path``."""
    if path.is_file():
        write_text_atomically(path, "".join(line + "\n" for line, record in _log_records(path)
                                            if record.get("step", 0) <= up_to_step))


def _check_no_checkpoint_was_lost(out: Path, latest: Path, config: TrainConfig) -> None:
    """Refuse to start a run over when its log shows that it saved a checkpoint, ``latest`` having since been
    deleted or moved: starting over would drop the run's best.pt and model/. A log records each save, and each
    invocation's start ("started", "resumed": resumed from a checkpoint); in a log written before it did, a step
    that saved one (every checkpoint_every steps, and the last, by the run folder's config.yaml) counts."""
    records = [record for _, record in _log_records(out / "log.jsonl")]
    saved = [record["step"] for record in records if "checkpoint" in record or "resumed" in record]
    if saved:
        raise FileNotFoundError(f"--resume: {latest} is missing, but {out}'s log records its checkpoint of step "
                                f"{saved[-1]}: put the checkpoint back to resume, or start a new run with another "
                                f"--out (nothing was changed)")
    if any("started" in record for record in records):
        return
    every, steps = config.checkpoint_every, config.steps
    with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        settings = yaml.safe_load((out / "config.yaml").read_text())["train"]
        every, steps = int(settings["checkpoint_every"]), int(settings["steps"])
    reached = max((record["step"] for record in records if isinstance(record.get("step"), int)), default=0)
    if reached >= min(every, steps):
        raise FileNotFoundError(f"--resume: {latest} is missing, but {out} logged step {reached}, which its "
                                f"checkpoints (every {every} steps, and at its last, {steps}) reached: put the "
                                f"checkpoint back to resume, or start a new run with another --out (nothing was "
                                f"changed)")


def _as_setting(name: str, value: Any, kinds: list[type]) -> Any:
    """``value`` as the first of ``kinds`` (int, float, bool or str) it can stand for; else a ValueError."""
    for kind in kinds:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        if kind is float and not isinstance(value, bool) and isinstance(value, (numbers.Real, str)):
            try:
                return float(value)
            except (ValueError, OverflowError):
                pass
        if kind is str and isinstance(value, (str, os.PathLike, torch.device)):
            return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    hint = " (YAML reads off, on, yes and no as true or false: quote them)" if isinstance(value, bool) else ""
    raise ValueError(f"{name} must be {' or '.join(kind.__name__ for kind in kinds)}, got {value!r}{hint}")


def load_run_config(path: str | Path) -> tuple[str | ReSTRConfig, dict[str, Any], dict[str, Any]]:
    """(model preset or config, model overrides, training settings) from a YAML file with the keys
    ``model`` (a preset name, or a whole model config as a run folder's config.yaml holds it),
    ``model_overrides`` and ``train``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"cannot parse {path}: {error}") from error
    unknown = sorted(set(values) - {"model", "model_overrides", "train"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {unknown}; expected model, model_overrides, train")
    train = values.get("train") or {}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if set(train) - fields:
        raise ValueError(f"{path}: unknown train settings {sorted(set(train) - fields)}")
    model = values.get("model", "restr-b16")
    if isinstance(model, dict):
        try:
            model = ReSTRConfig.from_dict(model)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: model: {error}") from error
    return model, values.get("model_overrides") or {}, train


class StepBatchSampler(Sampler[list[int]]):
    """Index batches for steps ``start_step`` .. ``steps`` - 1 from an endless stream of epochs, each a
    permutation drawn from the seed: a resumed run sees exactly the samples an uninterrupted one would.
    Each global batch (batch_size x world) is cut into one share per process. ``start_position``: where
    in the stream the first batch starts (the samples trained on before it, whatever their batch sizes;
    default: ``start_step`` steps of this sampler's global batches)."""

    def __init__(self, num_samples: int, batch_size: int, accumulate: int, steps: int, seed: int,
                 start_step: int = 0, rank: int = 0, world: int = 1, start_position: int | None = None) -> None:
        self.num_samples, self.batch_size, self.accumulate = num_samples, batch_size, accumulate
        self.steps, self.seed, self.start_step, self.rank, self.world = steps, seed, start_step, rank, world
        self.start_position = start_step * accumulate * batch_size * world if start_position is None else start_position

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accumulate

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.world
        position = self.start_position  # in the endless stream of epochs
        for _ in range(len(self)):
            indices = [self._index(position + self.rank * self.batch_size + i) for i in range(self.batch_size)]
            position += global_batch
            yield indices

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        if not hasattr(self, "_order") or self._epoch != epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order, self._epoch = torch.randperm(self.num_samples, generator=generator).tolist(), epoch
        return self._order[offset]


RUN_FOLDER_ENTRIES = ("config.yaml", "vocab.txt", "log.jsonl", "checkpoints", "model")  # what a run writes in its folder


def train(model_config: ReSTRConfig, config: TrainConfig, out: str | Path, resume: bool = False) -> dict | None:
    """Train ``model_config`` with ``config``, writing the run folder ``out``. Returns the last
    evaluation's metrics ({} when stopped early by ``stop_after``; None when resuming a run that had
    already reached ``config.steps``: nothing is done). With ``resume``, a run that stopped before its
    first checkpoint (config.yaml written, no checkpoint saved or logged) starts over.
    Raises ValueError/FileNotFoundError for bad input before any training step, and
    :class:`TrainingDiverged` when the loss, or the weights before a save, stop being finite."""
    out = Path(out)
    latest = out / "checkpoints" / "latest.pt"
    if out.exists() and not out.is_dir():
        raise ValueError(f"the run folder {out} is a file: choose a folder for --out")
    if resume and not latest.is_file():
        if not (out / "config.yaml").is_file():
            raise FileNotFoundError(f"--resume: no checkpoint to resume at {latest}")
        _check_no_checkpoint_was_lost(out, latest, config)
        warnings.warn(f"--resume: {out} stopped before its first checkpoint ({latest} not found): it starts over "
                      f"from step 0", stacklevel=2)
        resume = False
    elif not resume and (latest.exists() or (out / "log.jsonl").exists()):
        hint = "" if latest.exists() else " (stopped before its first checkpoint: --resume starts it over)"
        raise ValueError(f"{out} already holds a run{hint}; pass --resume to continue it or choose another --out")
    elif not resume and (present := [name for name in RUN_FOLDER_ENTRIES if (out / name).exists()]):
        raise ValueError(f"{out} holds {', '.join(present)}, which a run writes: nothing is overwritten, choose "
                         f"another --out (a new or empty folder)")
    if not resume:
        for warning in _untrained_parts(model_config, config):
            warnings.warn(warning, stacklevel=2)
    processes = distributed.setup(config.device)
    try:
        return _train(model_config, config, out, resume, processes)
    finally:
        distributed.teardown()


def _untrained_parts(model_config: ReSTRConfig, config: TrainConfig) -> list[str]:
    """What of the paper's model (a ViT-B vision encoder, GloVe-300 words) a new run starts from random weights,
    where the paper starts from pretrained ones."""
    if config.init_from:
        return []
    untrained = []
    if not config.vit_weights and (model_config.vision_dim, model_config.vision_depth) == (768, 12):
        untrained.append("the ViT-B vision encoder starts from random weights (the paper starts from "
                         "ImageNet-21k weights: pass --vit-weights)")
    if not config.glove and model_config.word_dim == 300:
        untrained.append("the word embeddings start from random vectors (the paper starts from GloVe's: pass --glove)")
    return untrained


def _usable_workers(requested: int) -> int:
    """``requested`` data-loading workers, at most one per CPU this process may run on (more only slow it
    down, and torch warns at each loader made, every evaluation); the samples do not depend on it."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if requested > cpus:
        warnings.warn(f"workers={requested} is more than the {cpus} CPUs this process may use: {cpus} load the "
                      f"data", stacklevel=3)
    return min(requested, cpus)


def _train(model_config: ReSTRConfig, config: TrainConfig, out: Path, resume: bool,
           processes: distributed.Processes) -> dict | None:
    device, main = processes.device, processes.is_main
    amp = config.amp if config.amp != "auto" else ("bf16" if device.type == "cuda" else "off")
    torch.manual_seed(config.seed)
    state = load_checkpoint(out / "checkpoints" / "latest.pt") if resume else None
    if state is not None and state["step"] >= config.steps:
        done, planned = state["step"], state.get("train", {}).get("steps", config.steps)  # (the run's own steps)
        if done == config.steps == planned:
            return None  # complete: its last step's evaluation and save are behind it
        if done > config.steps:
            raise ValueError(f"the run in {out} has trained {done} steps, more than steps={config.steps}: nothing "
                             f"to resume (a run's steps can grow, not shrink)")
        raise ValueError(f"the run in {out} has trained {done} of its {planned} steps, without a last step's "
                         f"evaluation: give more than {done} steps, or none (--resume goes on to {planned})")

    # the model to start from, vocabulary, data (checked before anything is trained or written)
    if state is None and config.init_from:
        check_architecture(model_config, config.init_from)
    if state is not None:
        vocabulary = Vocabulary(state["vocabulary"][4:])
    elif config.vocabulary:
        vocabulary = Vocabulary.load(config.vocabulary)
    else:
        sentences = sentences_of(config.data_root, config.dataset, config.split_by, config.train_split)
        vocabulary = Vocabulary.from_sentences(sentences, min_count=config.min_word_count)
    model_config = model_config.replace(vocab_size=len(vocabulary))
    common = dict(vocabulary=vocabulary, image_size=model_config.image_size, image_root=config.image_root,
                  max_words=model_config.max_words)
    train_set = ReferDataset(config.data_root, config.dataset, config.split_by, config.train_split, **common)
    val_set = ReferDataset(config.data_root, config.dataset, config.split_by, config.val_split,
                           originals=True, **common)

    # model, optimiser, schedule
    word_vectors = load_glove(config.glove, vocabulary, dim=model_config.word_dim) if config.glove and not state else None
    model = build_model(model_config, vision_weights=None if state else config.vit_weights,
                        word_vectors=word_vectors)
    started = {"train_samples": len(train_set), "val_samples": len(val_set)}  # sentences with words
    if state is None and config.init_from:
        source, carried = init_from_trained(model, vocabulary, config.init_from)
        started.update(init_from=config.init_from, init_weights=str(source.resolve()),
                       words_from_init=carried - len(SPECIAL_TOKENS))
    model.to(device)
    model.set_grad_checkpointing(config.grad_checkpointing)
    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.vision_lr_scale)
    scheduler = warmup_poly_schedule(optimizer, config.steps, config.warmup_fraction, config.power)
    step, samples_seen = 0, 0
    if state is not None:
        load_weights(model, state["model"])
        configured_lrs = list(scheduler.base_lrs)  # this invocation's, from config.lr
        configured_decays = [group["weight_decay"] for group in optimizer.param_groups]  # and config.weight_decay
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # the saved lrs and decays came from the saved settings: this invocation's hold from this step on
        _rebase_schedule(scheduler, configured_lrs, configured_decays)
        step = state["step"]
        samples_seen = _samples_seen(state, config, processes.world)
        set_rng_state(state["rng"], device)
    best_iou = -1.0 if state is None else _best_since_checkpoint(state, out, main, vocabulary)
    trained = DistributedDataParallel(model) if processes.world > 1 else model
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    if state is not None and state.get("scaler"):  # fp16's loss scale goes on where it was
        scaler.load_state_dict(state["scaler"])

    if main:
        out.mkdir(parents=True, exist_ok=True)
        if state is None:
            vocabulary.save(out / "vocab.txt")
            # what a run started over before its first checkpoint left
            (out / "log.jsonl").unlink(missing_ok=True)
            (out / "checkpoints" / "best.pt").unlink(missing_ok=True)
            if is_model_folder(out / "model"):
                shutil.rmtree(out / "model")
        else:  # the steps lost since the checkpoint are trained again: their records go
            _keep_log_records(out / "log.jsonl", up_to_step=state["step"])
        # rewritten on resume too: a later --resume takes the settings from here (a new --steps or --lr)
        run_config = {"model": model_config.to_dict(), "train": config.run_settings()}
        write_text_atomically(out / "config.yaml", yaml.safe_dump(run_config, sort_keys=False))

    sampler = StepBatchSampler(len(train_set), config.batch_size, config.accumulate, config.steps, config.seed,
                               step, processes.rank, processes.world, start_position=samples_seen)
    workers = _usable_workers(config.workers)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    batches = iter(loader)

    def checkpoint(path: Path, metrics: dict | None = None) -> None:
        if main:
            save_checkpoint(path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                "samples_seen": samples_seen,
                "rng": rng_state(device),
                "config": model_config.to_dict(), "vocabulary": vocabulary.words,
                "train": config.run_settings(), "best_overall_iou": best_iou, "metrics": metrics or {},
            })

    def log(record: dict) -> None:
        if main:
            with open(out / "log.jsonl", "a") as file:
                file.write(json.dumps(record) + "\n")

    def run_evaluation(limit: int | None) -> dict:
        return evaluate(model, val_set, device, config.eval_batch_size, amp, workers=workers, limit=limit)

    images_per_step = config.batch_size * config.accumulate * processes.world
    bar = tqdm(total=config.steps, initial=step, disable=not (config.progress and main), unit="step",
               dynamic_ncols=True)
    window = {"loss": torch.zeros((), device=device), "patch": torch.zeros((), device=device),
              "pixel": torch.zeros((), device=device), "steps": 0, "start": time.perf_counter()}
    metrics: dict = {}
    # when each invocation began, at which step; "resumed" also says that step's checkpoint was saved
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    log({"step": step, "resumed" if state is not None else "started": now, **started})
    model.train()
    stop_at = config.steps if config.stop_after is None else min(config.steps, step + config.stop_after)
    while step < stop_at:
        for micro in range(config.accumulate):
            batch = next(batches)
            images, tokens = batch["image"].to(device, non_blocking=True), batch["tokens"].to(device, non_blocking=True)
            masks = batch["mask"].to(device, non_blocking=True)
            sync = micro == config.accumulate - 1 or processes.world == 1
            with (contextlib.nullcontext() if sync else trained.no_sync()), autocast(device, amp):
                terms = loss_terms(trained(images, tokens), masks, model_config)
                scaler.scale(terms.total / config.accumulate).backward()
            for key, value in (("loss", terms.total), ("patch", terms.patch), ("pixel", terms.pixel)):
                window[key] += value.detach() / config.accumulate
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # fp16: the schedule advances on the steps GradScaler skips too
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            scheduler.step()
        step += 1
        samples_seen += images_per_step
        window["steps"] += 1
        bar.update(1)

        last = step == config.steps
        evaluating = step % config.eval_every == 0 or last
        saving = step % config.checkpoint_every == 0 or step == stop_at
        if step % config.log_every == 0 or evaluating or saving:  # the loss is checked before any save
            # the window's mean losses over all processes, so that every rank stops together
            means = distributed.mean_over_processes(torch.stack([window[key] for key in ("loss", "patch", "pixel")]))
            loss, patch, pixel = (means / window["steps"]).tolist()  # waits for the window's GPU work
            seconds = time.perf_counter() - window["start"]
            # the base lr (the vision encoder's is a tenth of it) this step trained with: the schedule has moved on
            record = {"step": step, "lr": config.lr * scheduler.lr_lambdas[0](scheduler.last_epoch - 1),
                      "images_per_s": window["steps"] * images_per_step / seconds,
                      "loss": loss, "patch_loss": patch, "pixel_loss": pixel}
            diverged = None
            if not math.isfinite(record["loss"]):
                diverged = f"the loss became {record['loss']}"
            elif (evaluating or saving) and not _finite(model):  # the loss predates this step's update
                diverged = "the weights became nan or infinite"
            if diverged:
                bar.close()
                raise TrainingDiverged(f"{diverged} by step {step}; training stopped and "
                                       f"{out / 'checkpoints'} keeps the last good checkpoint")
            log(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                            img_s=f"{record['images_per_s']:.1f}")
            window.update(loss=torch.zeros((), device=device), patch=torch.zeros((), device=device),
                          pixel=torch.zeros((), device=device), steps=0)
        if evaluating:
            # the best checkpoint is chosen on the same samples every time (eval_samples of them)
            metrics = run_evaluation(config.eval_samples)
            log({"step": step, "eval": config.val_split, **metrics})
            if metrics["overall_iou"] > best_iou:
                best_iou = metrics["overall_iou"]
                checkpoint(out / "checkpoints" / "best.pt", metrics)
                if main:
                    save_model_folder(out / "model", model, vocabulary)
            if last and config.eval_samples is not None and metrics["samples"] < len(val_set):
                metrics = run_evaluation(None)  # and the final model on the whole split
                log({"step": step, "eval": config.val_split, **metrics})
            if main:
                bar.write(f"step {step}: {config.val_split} overall IoU {100 * metrics['overall_iou']:.2f} %, "
                          f"mean IoU {100 * metrics['mean_iou']:.2f} %")
        if saving:
            checkpoint(out / "checkpoints" / "latest.pt", metrics)
            log({"step": step, "checkpoint": "latest.pt"})  # saved: a later --resume never starts the run over
        if window["steps"] == 0:  # a new window: its time starts after this step's evaluation and saving
            window["start"] = time.perf_counter()
    bar.close()
    return metrics if step == config.steps else {}
