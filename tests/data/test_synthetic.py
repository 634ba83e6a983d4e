"""The synthetic referring-segmentation set: its images against its annotations."""
import numpy as np
from PIL import Image

from restr_fast.data import ReferAnnotations
from restr_fast.data.synthetic import COLOURS, KINDS, generate
from restr_fast.text import tokenize


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


RELATIONS = {"left": ("x", min), "right": ("x", max), "top": ("y", min), "upper": ("y", min), "bottom": ("y", max),
             "lower": ("y", max), "bigger": ("area", max), "big": ("area", max), "smaller": ("area", min),
             "small": ("area", min)}


def test_each_sentence_fits_its_shape_and_no_other(tmp_path):
    """Read as a person reads it, from the image and the masks: the colour and kind words pick the candidate
    shapes; a place or size word, the one among them at that end (by its mask's centre or area)."""
    generate(tmp_path, images=200, seed=3)
    annotations = ReferAnnotations(tmp_path, "synthetic", "unc")
    names = {tuple(rgb): colour for colour, rgb in COLOURS.items()}
    shapes = {}  # ann_id -> what a person sees
    for ann_id, ann in annotations.annotations.items():
        mask = annotations.mask(ann_id)
        image = tmp_path / "images" / "synthetic" / annotations.images[ann["image_id"]]["file_name"]
        colour = np.asarray(Image.open(image).convert("RGB"))[mask][0]
        rows, columns = np.nonzero(mask)
        shapes[ann_id] = dict(image=ann["image_id"], colour=names[tuple(colour)], kind=KINDS[ann["category_id"] - 1],
                              x=columns.mean(), y=rows.mean(), area=mask.sum())
    sentences = 0
    for split in ("train", "val", "testA", "testB"):
        for sample in annotations.samples(split):
            words = tokenize(sample.sentence)
            neighbours = [a for a, shape in shapes.items() if shape["image"] == sample.image_id]
            candidates = [a for a in neighbours
                          if all(shapes[a]["colour"] == w for w in words if w in COLOURS)
                          and all(shapes[a]["kind"] == w for w in words if w in KINDS)]
            relation = [RELATIONS[w] for w in words if w in RELATIONS]
            if relation:
                (key, end), = relation
                chosen = [end(candidates, key=lambda a: shapes[a][key])]
                assert sum(shapes[a][key] == shapes[chosen[0]][key] for a in candidates) == 1, sample.sentence
            else:
                chosen = candidates
            assert chosen == [sample.ann_id], (sample.sentence, sample.image_id)
            sentences += 1
    assert sentences > 500
