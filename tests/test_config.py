import dataclasses

import numpy as np
import pytest

from restr_fast import PRESETS, ReSTRConfig, get_config


def test_presets_hold_the_papers_model():
    b16 = get_config("restr-b16")
    assert (b16.image_size, b16.patch_size, b16.vision_dim, b16.vision_depth, b16.vision_heads) == (480, 16, 768, 12, 12)
    assert (b16.word_dim, b16.text_depth, b16.text_heads, b16.text_mlp_dim, b16.max_words) == (300, 6, 12, 1200, 20)
    assert (b16.fusion, b16.fusion_depth, b16.dim, b16.weight_sharing) == ("cme", 4, 768, False)
    assert (b16.mask_form, b16.patch_label, b16.patch_label_threshold, b16.patch_loss_weight) == ("sigmoid", "mean", 0.8, 0.1)
    assert b16.decoder_channels == (1536, 768, 384, 192, 96)
    p8 = get_config("restr-b16-p8")
    assert p8.patch_size == 8 and p8.grid_size == 60 and p8.decoder_channels == (1536, 768, 384, 192)
    assert set(PRESETS) == {"restr-b16", "restr-b16-p8", "restr-tiny"}


def test_overrides_and_round_trip():
    config = get_config("restr-b16", fusion="vme", image_size=320)
    assert config.fusion == "vme" and config.image_size == 320 and config.grid_size == 20
    assert ReSTRConfig.from_dict(config.to_dict()) == config
    assert get_config(config) is config


@pytest.mark.parametrize("overrides, message", [
    ({"image_size": 100}, "not a multiple of patch_size"),
    ({"patch_size": 12}, "power of two"),
    ({"fusion": "xme"}, "fusion must be one of"),
    ({"fusion_depth": 3}, "must be even"),
    ({"mask_form": "tanh"}, "mask_form must be one of"),
    ({"patch_label": "median"}, "patch_label must be one of"),
    ({"attention": "flash"}, "attention must be one of"),
    ({"dim": 100}, "not divisible"),
    ({"vision_depth": 0}, "positive integer"),
    ({"patch_label_threshold": 1.5}, "patch_label_threshold"),
    ({"not_a_field": 1}, "unknown ReSTRConfig field"),
    ({"weight_sharing": "false"}, "weight_sharing must be true or false, got 'false'"),  # as quoted YAML gives it
    ({"fast": 1}, "fast must be true or false"),
    ({"negative_slope": "steep"}, "negative_slope must be a finite number, got 'steep'"),  # text that is a number is one
    ({"patch_loss_weight": float("nan")}, "patch_loss_weight must be a finite number"),
    ({"fusion_mlp_ratio": -1.0}, "fusion_mlp_ratio=-1.0 leaves the MLPs"),
    ({"dim": 4, "fusion_heads": 4}, "leaving none for its head: dim must be at least 8 at patch_size 16"),
])
def test_invalid_settings_are_refused_with_a_reason(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_config("restr-b16", **overrides)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'restr-huge'.*restr-b16"):
        get_config("restr-huge")


def test_config_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_config("restr-tiny").dim = 3


def test_the_smallest_decoder_and_integral_numbers_are_accepted():
    assert get_config("restr-b16", dim=8, fusion_heads=4).decoder_channels == (16, 8, 4, 2, 1)
    assert get_config("restr-b16", dim=4, fusion_heads=4, decoder=False).dim == 4  # no decoder: no channels to halve
    assert get_config("restr-tiny", negative_slope=0, vision_mlp_ratio=2).vision_mlp_ratio == 2


def test_numpy_numbers_and_numbers_yaml_reads_as_text_are_numbers():
    """YAML 1.1 reads 1e-1 (no dot) as text; the training settings already took it so."""
    import yaml
    overrides = yaml.safe_load("{patch_loss_weight: 1e-1, image_size: 64}")
    assert overrides["patch_loss_weight"] == "1e-1"
    config = get_config("restr-tiny", **overrides)
    assert config.patch_loss_weight == 0.1 and type(config.patch_loss_weight) is float
    config = get_config("restr-tiny", image_size=np.int64(128), vision_mlp_ratio=np.float32(2.0),
                        negative_slope=np.float64(0.2))
    assert (config.image_size, config.vision_mlp_ratio) == (128, 2.0) and type(config.image_size) is int
    assert type(config.negative_slope) is float  # a run's config.yaml holds plain numbers
    assert config == get_config("restr-tiny", image_size=128, vision_mlp_ratio=2.0, negative_slope=0.2)
    with pytest.raises(ValueError, match="patch_loss_weight must be a finite number, got 'heavy'"):
        get_config("restr-tiny", patch_loss_weight="heavy")
    with pytest.raises(ValueError, match="image_size must be a positive integer, got '128'"):
        get_config("restr-tiny", image_size="128")


def test_vme_accepts_odd_depth():
    assert get_config("restr-tiny", fusion="vme", fusion_depth=3).fusion_depth == 3
