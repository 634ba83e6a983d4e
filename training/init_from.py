"""Starting a run from a trained ReSTR (fine-tuning): its weights, at the run's image size and vocabulary."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed

from ..config import ReSTRConfig
from ..deployable import load_model, saved_model, saved_model_config
from ..models import ReSTR
from ..text import SPECIAL_TOKENS, Vocabulary
from .checkpoint import load_weights

# Settings a run may change from the model it starts from: none of them shapes a weight or what one means but
# the image size (the position table is resampled) and the vocabulary (word rows carried over by word). Not
# max_words: sentences are left-padded to it, so it moves every word to other positions.
ADJUSTABLE = ("image_size", "vocab_size", "patch_label", "patch_label_threshold", "patch_loss_weight", "attention",
              "fast")
POSITIONS = "vision.vit.pos_embed"
WORDS = "language.embed.weight"


def init_from_trained(model: ReSTR, vocabulary: Vocabulary, path: str | Path) -> tuple[Path, int]:
    """Load into ``model`` the weights of the trained model at ``path`` (a model folder, a ``.pt`` checkpoint or
    a run folder: its best model, or before its first evaluation its latest checkpoint); returns the model
    folder or checkpoint read, and how many of ``vocabulary``'s words (special tokens included) took their
    trained embedding.

    The position table is resampled (bicubic, as the vision encoder resamples it for another input size)
    where the image sizes differ. A word of ``vocabulary`` that the trained model knows takes its trained
    embedding; the others keep ``model``'s own row (GloVe's, where the run loaded it).

    Raises FileNotFoundError/ValueError when ``path`` holds no trained model, or one whose architecture
    differs from ``model``'s in more than the settings of :data:`ADJUSTABLE`.
    """
    if len(vocabulary) != model.config.vocab_size:
        raise ValueError(f"the vocabulary has {len(vocabulary)} words but the model's embedding table "
                         f"{model.config.vocab_size} rows: build the model with vocab_size=len(vocabulary)")
    source = check_architecture(model.config, path)
    try:
        trained, trained_vocabulary = load_model(source)
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"init_from: {error}") from error
    weights = trained.state_dict()
    grid, trained_grid = model.config.grid_size, trained.config.grid_size
    if grid != trained_grid:
        weights[POSITIONS] = resample_abs_pos_embed(  # (1, 1 + grid * grid, D)
            weights[POSITIONS].float(), new_size=[grid, grid], old_size=[trained_grid, trained_grid],
            num_prefix_tokens=1)
    rows = model.state_dict()[WORDS].clone()  # (vocab_size, word_dim): the run's own initialisation
    carried = [(i, trained_vocabulary.index(word)) for i, word in enumerate(vocabulary.words)
               if word in trained_vocabulary]
    ours, theirs = (torch.tensor(indices) for indices in zip(*carried))  # <pad>, <go>, <eos>, <unk> at least
    rows[ours] = weights[WORDS][theirs].to(rows.dtype)
    weights[WORDS] = rows
    if len(carried) == len(SPECIAL_TOKENS):
        warnings.warn(f"no word of the run's vocabulary is in {path}'s: every word embedding starts afresh",
                      stacklevel=2)

    load_weights(model, weights)
    return source, len(carried)


def check_architecture(config: ReSTRConfig, path: str | Path) -> Path:
    """The model folder or checkpoint that ``path`` names, once its config (read without the weights) is found
    to be ``config``'s architecture: equal but for the settings of :data:`ADJUSTABLE`.

    Raises FileNotFoundError/ValueError when ``path`` holds no trained model, or one of another architecture.
    """
    try:
        source = saved_model(path)
        trained = saved_model_config(source)
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"init_from: {error}") from error
    differences = [f"{field.name} {getattr(trained, field.name)!r} (run: {getattr(config, field.name)!r})"
                   for field in dataclasses.fields(config) if field.name not in ADJUSTABLE
                   and getattr(trained, field.name) != getattr(config, field.name)]
    if differences:
        allowed = ", ".join(name for name in ADJUSTABLE if name != "vocab_size")
        raise ValueError(f"init_from: {path} is a model of another architecture: {', '.join(differences)}; only "
                         f"{allowed} and the vocabulary may differ (restr-fast train without --config takes the "
                         f"trained model's architecture)")
    return source
