"""The synthetic referring-segmentation set: its images against its annotations."""
import numpy as np
from PIL import Image

from restr_fast.data import ReferAnnotations
from restr_fast.data.synthetic import COLOURS, generate


def test_each_shape_is_painted_exactly_where_its_mask_is(tmp_path):
    """The ground truth is what the image shows: a shape's mask is its painted pixels, edges included."""
    generate(tmp_path, images=12, seed=3)
    annotations = ReferAnnotations(tmp_path, "synthetic", "unc")
    shape_colours = np.array(list(COLOURS.values()))
    for image_id, image in annotations.images.items():
        pixels = np.asarray(Image.open(tmp_path / "images" / "synthetic" / image["file_name"]).convert("RGB"))
        painted = (pixels[:, :, None, :] == shape_colours).all(-1).any(-1)  # (H, W): any shape's colour
        masks = [annotations.mask(ann_id) for ann_id, ann in annotations.annotations.items()
                 if ann["image_id"] == image_id]
        assert len(masks) >= 2
        assert np.array_equal(painted, np.logical_or.reduce(masks)), image["file_name"]
        for mask in masks:  # one colour a shape
            assert len(np.unique(pixels[mask], axis=0)) == 1
