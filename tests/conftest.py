"""Shared test setup. Triton's interpreter must be chosen before triton is first imported."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from restr_fast import get_config  # noqa: E402


@pytest.fixture
def tiny_config():
    """A small, fast config: 32x32 images, patch 8, width 32; the auto attention (SDPA on the CPU)."""
    return get_config("restr-tiny", image_size=32, vision_dim=32, vision_depth=2, vision_heads=2,
                      vocab_size=50, word_dim=24, text_depth=2, text_heads=2, text_mlp_dim=48,
                      dim=32, fusion_heads=2, fusion_depth=2)


@pytest.fixture
def make_inputs():
    """make_inputs(config, batch_size=2, height=None, width=None, seed=0) -> (images, tokens)."""
    return random_inputs


def random_inputs(config, batch_size=2, height=None, width=None, seed=0):
    """Random images in [-1, 1] and token rows with 1..max_words words, left-padded."""
    generator = torch.Generator().manual_seed(seed)
    height = height or config.image_size
    width = width or config.image_size
    images = torch.rand(batch_size, config.in_chans, height, width, generator=generator) * 2 - 1
    tokens = torch.randint(1, config.vocab_size, (batch_size, config.max_words), generator=generator)
    for row in range(batch_size):
        n_words = int(torch.randint(1, config.max_words + 1, (1,), generator=generator))
        tokens[row, : config.max_words - n_words] = 0
    return images, tokens
