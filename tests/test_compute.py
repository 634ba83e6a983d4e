"""Compute and parameter counts against the paper's Tables 3 and 5."""
import pytest
import torch

from restr_fast import build_model, count_macs, count_parameters


def meta_model(**overrides):
    with torch.device("meta"):
        return build_model("restr-b16", **overrides)


def test_whole_model_macs_match_table_5():
    macs = count_macs(meta_model(), 320)
    assert round(macs / 1e9, 1) == 52.2  # as the README gives it
    assert macs == pytest.approx(52.29e9, rel=0.002)


@pytest.mark.parametrize("fusion, gmacs, paper_gmacs", [("cme", 15.92, 15.96), ("vme", 31.29, 31.36)])
def test_fusion_encoder_macs_match_table_3(fusion, gmacs, paper_gmacs):
    parts = count_macs(meta_model(fusion=fusion), 480, by_part=True)
    assert round(parts["fusion"] / 1e9, 2) == gmacs  # as the README gives it
    assert parts["fusion"] == pytest.approx(paper_gmacs * 1e9, rel=0.003)
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")


def test_fusion_parameters_match_table_3():
    cme = count_parameters(meta_model().fusion)
    shared = count_parameters(meta_model(weight_sharing=True).fusion)
    assert round(cme / 1e6, 2) == 28.35 and round(shared / 1e6, 2) == 14.18
    assert shared == pytest.approx(cme / 2, rel=0.01)


@pytest.mark.parametrize("preset, vocab_size, millions", [("restr-b16", 10_000, 128.4), ("restr-b16-p8", 10_000, 130.0),
                                                          ("restr-tiny", 1000, 1.2)])
def test_parameters_of_the_presets_are_the_readmes(preset, vocab_size, millions):
    with torch.device("meta"):
        model = build_model(preset, vocab_size=vocab_size)
    assert round(count_parameters(model) / 1e6, 1) == millions


def test_macs_count_the_attention_matmuls_and_scale_with_batch():
    tiny = build_model("restr-tiny")
    config = tiny.config
    one = count_macs(tiny, config.image_size)
    assert count_macs(tiny, config.image_size, batch_size=3) == 3 * one
    parts = count_macs(tiny, config.image_size, by_part=True)
    n = config.grid_size ** 2 + 1  # patch tokens + class token
    linear = config.vision_depth * 12 * n * config.vision_dim ** 2
    attention = config.vision_depth * 2 * n * n * config.vision_dim
    patch_embed = (n - 1) * config.vision_dim * config.in_chans * config.patch_size ** 2
    assert parts["vision"] == linear + attention + patch_embed


def test_a_fast_model_counts_as_its_reference():
    """The fast path reorders the decoder's products and runs some in kernels the counter cannot see:
    its count is the reference computation's, as the paper's tables count it."""
    torch.manual_seed(0)
    reference = build_model("restr-tiny", image_size=32)
    fast = build_model("restr-tiny", image_size=32, fast=True)
    assert count_macs(fast, 32, by_part=True) == count_macs(reference, 32, by_part=True)
    assert count_macs(fast, 32, batch_size=2) == 2 * count_macs(reference, 32)
