"""The synthetic referring-segmentation set: its images against its annotations."""
import numpy as np
from PIL import Image

from restr_fast.data import ReferAnnotations
from restr_fast.data.synthetic import COLOURS, generate


def test_each_shape_is_painted_exactly_where_its_mask_is(tmp_path):
    """The ground truth is what the image shows: a shape's mask is its painted pixels, edges included,
    and no shape covers part of another (200 images: with overlaps found by circles, 6 of their 551
    masks held another shape's pixels)."""
    generate(tmp_path, images=200, seed=0)
    annotations = ReferAnnotations(tmp_path, "synthetic", "unc")
    shape_colours = np.array(list(COLOURS.values()))
    for image_id, image in annotations.images.items():
        pixels = np.asarray(Image.open(tmp_path / "images" / "synthetic" / image["file_name"]).convert("RGB"))
        painted = (pixels[:, :, None, :] == shape_colours).all(-1).any(-1)  # (H, W): any shape's colour
        ann_ids = [ann_id for ann_id, ann in annotations.annotations.items() if ann["image_id"] == image_id]
        masks = [annotations.mask(ann_id) for ann_id in ann_ids]
        assert len(masks) >= 2
        assert np.sum(masks, axis=0).max() == 1, image["file_name"]  # disjoint
        assert np.array_equal(painted, np.logical_or.reduce(masks)), image["file_name"]
        for ann_id, mask in zip(ann_ids, masks):  # one colour a shape; its area is its mask's
            assert len(np.unique(pixels[mask], axis=0)) == 1
            assert annotations.annotations[ann_id]["area"] == mask.sum()
