import math

import pytest
import torch

from restr_fast import ReSTROutput, get_config, loss, loss_terms, patch_labels


def bce(logit, label):
    p = 1 / (1 + math.exp(-logit))
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def test_patch_labels_mean_and_any_rules():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, :2, :2] = 1          # patch (0, 0): full
    mask[0, 0, 0, 2:] = 1           # patch (0, 1): half
    mask[0, 0, 2:, 2:] = 1
    mask[0, 0, 3, 3] = 0            # patch (1, 1): 3/4
    assert patch_labels(mask, 2, "mean", 0.8).flatten().tolist() == [1, 0, 0, 0]
    assert patch_labels(mask, 2, "mean", 0.7).flatten().tolist() == [1, 0, 0, 1]
    assert patch_labels(mask, 2, "mean", 0.5).flatten().tolist() == [1, 0, 0, 1]  # strictly greater
    assert patch_labels(mask, 2, "any").flatten().tolist() == [1, 1, 0, 1]


def test_loss_equals_a_hand_computation():
    config = get_config("restr-tiny", image_size=8, patch_size=4)
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, :4, :4] = 1           # patch (0, 0) positive
    mask[0, 0, 4:, 4:6] = 1          # patch (1, 1) half: negative under tau = 0.8
    pixel_logits = torch.linspace(-3, 3, 64).reshape(1, 1, 8, 8)
    patch_logits = torch.tensor([[[[2.0, -1.0], [0.5, -0.25]]]])
    terms = loss_terms(ReSTROutput(pixel_logits, patch_logits), mask, config)

    patch_expected = (bce(2.0, 1) + bce(-1.0, 0) + bce(0.5, 0) + bce(-0.25, 0)) / 4
    pixel_expected = sum(bce(l, m) for l, m in zip(pixel_logits.flatten().tolist(), mask.flatten().tolist())) / 64
    assert terms.patch.item() == pytest.approx(patch_expected, rel=1e-6)
    assert terms.pixel.item() == pytest.approx(pixel_expected, rel=1e-6)
    assert terms.total.item() == pytest.approx(0.1 * patch_expected + pixel_expected, rel=1e-6)
    assert loss(ReSTROutput(pixel_logits, patch_logits), mask.bool(), config).item() == pytest.approx(terms.total.item())

    weighted = loss(ReSTROutput(pixel_logits, patch_logits), mask, config.replace(patch_loss_weight=2.0))
    assert weighted.item() == pytest.approx(2 * patch_expected + pixel_expected, rel=1e-6)


def test_loss_is_fp32_under_low_precision_logits():
    config = get_config("restr-tiny", image_size=8, patch_size=4)
    out = ReSTROutput(torch.randn(2, 1, 8, 8).bfloat16(), torch.randn(2, 1, 2, 2).bfloat16())
    assert loss(out, torch.ones(2, 1, 8, 8), config).dtype == torch.float32


def test_bad_masks_are_named():
    config = get_config("restr-tiny", image_size=8, patch_size=4)
    out = ReSTROutput(torch.randn(2, 1, 8, 8), torch.randn(2, 1, 2, 2))
    with pytest.raises(ValueError, match=r"masks must have the shape of the pixel logits \(2, 1, 8, 8\)"):
        loss(out, torch.ones(2, 8, 8), config)
    with pytest.raises(TypeError, match="masks must be bool, uint8 or floating point"):
        loss(out, torch.ones(2, 1, 8, 8, dtype=torch.int64), config)
    png = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    png[:, :, :4] = 255  # a mask read from a PNG as 0/255: BCE against 255 is a negative loss
    with pytest.raises(ValueError, match=r"values in \[0, 1\], got values in \[0.0, 255.0\]: divide a 0/255"):
        loss(out, png, config)
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="masks must hold values in"):
            loss(out, torch.full((2, 1, 8, 8), bad), config)
    assert loss(out, torch.full((2, 1, 8, 8), 0.5), config) > 0  # soft masks are fine
