"""The loss curve's drawing, at the edges a short run gives it."""
import numpy as np
import pytest
from PIL import Image

from restr_fast.training.plots import loss_curve

CURVE = (30, 90, 200)


def curve_pixels(path):
    return int((np.asarray(Image.open(path).convert("RGB")) == CURVE).all(axis=-1).sum())


def test_a_curve_of_one_logged_step_shows_its_point(tmp_path):
    loss_curve([3], [0.507], tmp_path / "one.png")  # a demo shorter than its log_every logs its last step only
    loss_curve([1, 2, 3], [0.9, 0.7, 0.6], tmp_path / "three.png")
    assert curve_pixels(tmp_path / "one.png") > 0 and curve_pixels(tmp_path / "three.png") > 0


def test_losses_that_cannot_be_drawn_are_named(tmp_path):
    with pytest.raises(ValueError, match="no logged steps"):
        loss_curve([], [], tmp_path / "none.png")
    with pytest.raises(ValueError, match="losses must be finite"):
        loss_curve([1, 2], [float("nan"), 0.5], tmp_path / "nan.png")
