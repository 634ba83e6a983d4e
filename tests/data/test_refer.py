"""REFER-layout datasets on a tiny fixture written by the test."""
import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from restr_fast.data import ReferDataset, collate, default_image_root, letterbox_box, sentences_of, unletterbox
from restr_fast.text import Vocabulary

SIZE = 32


def rle_of(mask, compressed=True):
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).flatten(order="F")  # uncompressed RLE: run lengths, column-major
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory):
    """refclef-like dataset 'tiny': four images (different sizes, one grayscale, one with an EXIF
    orientation), polygon,
    multi-polygon, compressed and uncompressed RLE masks, a list of RLEs (as ReferIt stores
    them), splits train/val/testA."""
    root = tmp_path_factory.mktemp("refer")
    image_dir = root / "images" / "tiny"
    image_dir.mkdir(parents=True)
    (root / "tiny").mkdir()
    rng = np.random.default_rng(0)
    sizes = {1: (40, 60), 2: (50, 30), 3: (24, 24), 4: (36, 48)}  # (height, width)
    images, annotations, masks = [], [], {}
    for image_id, (h, w) in sizes.items():
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert("L") if image_id == 3 else Image.fromarray(pixels)
        exif = Image.Exif()
        if image_id == 1:  # an EXIF orientation, which datasets ignore: masks are drawn on the stored pixels
            exif[0x0112] = 6
        image.save(image_dir / f"{image_id}.png", exif=exif)
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
    # 1: a polygon rectangle; 2: two rectangles (multi-polygon); 3: compressed RLE; 4: uncompressed RLE
    annotations.append({"id": 11, "image_id": 1, "category_id": 1, "segmentation": [[10, 5, 40, 5, 40, 25, 10, 25]]})
    annotations.append({"id": 21, "image_id": 2, "category_id": 1,
                        "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12], [15, 30, 25, 30, 25, 45, 15, 45]]})
    blob = np.zeros((24, 24), bool)
    blob[3:9, 4:20] = True
    masks[31] = blob
    annotations.append({"id": 31, "image_id": 3, "category_id": 1, "segmentation": rle_of(blob)})
    ring = np.zeros((36, 48), bool)
    ring[5:30, 10:40] = True
    ring[10:20, 20:30] = False
    masks[41] = ring
    annotations.append({"id": 41, "image_id": 4, "category_id": 1, "segmentation": rle_of(ring, compressed=False)})
    parts = np.zeros((2, 40, 60), bool)  # ReferIt's form: a list of RLEs, one per part
    parts[0, 2:10, 3:50] = True
    parts[1, 8:30, 40:55] = True
    masks[51] = parts.any(axis=0)
    annotations.append({"id": 51, "image_id": 1, "category_id": 1,
                        "segmentation": [rle_of(parts[0]), rle_of(parts[1], compressed=False)]})
    refs = [
        {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "train", "category_id": 1, "file_name": "1_11.png",
         "sentences": [{"raw": "Left box.", "sent": "left box", "tokens": ["left", "box"], "sent_id": 1},
                       {"raw": "the wide one", "sent": "the wide one", "tokens": ["the", "wide", "one"], "sent_id": 2}]},
        {"ref_id": 2, "ann_id": 21, "image_id": 2, "split": "train", "category_id": 1, "file_name": "2_21.png",
         "sentences": [{"raw": "two parts", "sent": "two parts", "tokens": ["two", "parts"], "sent_id": 3}]},
        {"ref_id": 3, "ann_id": 31, "image_id": 3, "split": "val", "category_id": 1, "file_name": "3_31.png",
         "sentences": [{"raw": "grey strip at the top", "sent": "grey strip at the top", "tokens": [], "sent_id": 4}]},
        {"ref_id": 4, "ann_id": 41, "image_id": 4, "split": "testA", "category_id": 1, "file_name": "4_41.png",
         "sentences": [{"raw": "the ring", "sent": "the ring", "tokens": ["the", "ring"], "sent_id": 5},
                       {"raw": "...", "sent": "...", "tokens": [], "sent_id": 6}]},
        {"ref_id": 5, "ann_id": 41, "image_id": 4, "split": "empty", "category_id": 1, "file_name": "4_41.png",
         "sentences": []},
    ]
    for ref in refs:
        ref["sent_ids"] = [s["sent_id"] for s in ref["sentences"]]
    (root / "tiny" / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}))
    with open(root / "tiny" / "refs(unc).p", "wb") as file:
        pickle.dump(refs, file)
    return root, masks


@pytest.fixture
def vocabulary():
    return Vocabulary.from_sentences(["left box", "the wide one", "two parts", "grey strip at the top", "the ring"])


def dataset(refer_root, vocabulary, split, **kwargs):
    return ReferDataset(refer_root[0], "tiny", "unc", split, vocabulary, SIZE, **kwargs)


def test_samples_are_ref_sentence_pairs(refer_root, vocabulary):
    train = dataset(refer_root, vocabulary, "train")
    assert [s.sentence for s in train.samples] == ["left box", "the wide one", "two parts"]
    item = train[1]  # image 1, stored 40 x 60 with an EXIF orientation that would show it 60 x 40
    assert item["image"].shape == (3, SIZE, SIZE) and item["mask"].shape == (1, SIZE, SIZE)
    assert dataset(refer_root, vocabulary, "train", originals=True)[1]["original_mask"].shape == (40, 60)
    assert item["tokens"].tolist()[-3:] == [vocabulary.index(w) for w in ("the", "wide", "one")]
    assert item["tokens"].tolist()[:17] == [0] * 17 and item["words"] == 3
    short = dataset(refer_root, vocabulary, "train", max_words=2)[1]  # a model reading two words
    assert short["tokens"].tolist() == [vocabulary.index(w) for w in ("the", "wide")]
    assert short["words"] == 3  # the expression's length, for the by-length table
    test = dataset(refer_root, vocabulary, "testA")
    assert len(test) == 1 and test.wordless == 1  # the sentence "..." has no words and is left out
    with pytest.raises(ValueError, match="replacement sentence '!' has no words"):
        dataset(refer_root, vocabulary, "testA", sentences="!")
    with pytest.warns(UserWarning, match="no word of the replacement sentence 'zebra' is in the vocabulary"):
        dataset(refer_root, vocabulary, "testA", sentences="zebra")


def test_masks_polygon_multipolygon_rle_and_rle_list(refer_root, vocabulary):
    root, masks = refer_root
    annotations = dataset(refer_root, vocabulary, "train").annotations
    rectangle = annotations.mask(11)
    assert rectangle.shape == (40, 60)
    rows, cols = np.nonzero(rectangle)
    assert (rows.min(), cols.min()) == (5, 10) and abs(rows.max() - 25) <= 1 and abs(cols.max() - 40) <= 1
    two = annotations.mask(21)
    assert two[5, 5] and two[35, 20] and not two[20, 20]  # both parts, nothing between them
    assert np.array_equal(annotations.mask(31), masks[31])  # compressed RLE
    assert np.array_equal(annotations.mask(41), masks[41])  # uncompressed RLE
    assert np.array_equal(annotations.mask(51), masks[51])  # a list of RLEs: their union
    image = annotations.images[annotations.annotations[11]["image_id"]]
    size = image.pop("height")
    try:
        with pytest.raises(ValueError, match="image 1 of tiny needs a positive integer height and width"):
            annotations.mask(11)
    finally:
        image["height"] = size


def test_letterboxed_mask_and_back_mapping(refer_root, vocabulary):
    root, masks = refer_root
    test = dataset(refer_root, vocabulary, "testA", originals=True)
    item = test[0]
    box = item["box"]
    assert box == letterbox_box(36, 48, SIZE)
    assert (box.resized_height, box.resized_width, box.top, box.left) == (24, 32, 4, 0)
    assert not item["mask"][0, :box.top].any() and not item["mask"][0, box.top + 24:].any()  # padding
    assert torch.equal(item["original_mask"], torch.from_numpy(masks[41]))
    restored = unletterbox(item["mask"][0] * 2 - 1, box) > 0  # the letterboxed mask, mapped back
    original = torch.from_numpy(masks[41])
    iou = (restored & original).sum() / (restored | original).sum()
    assert restored.shape == (36, 48) and iou > 0.85
    batch = collate([item, item])
    assert batch["image"].shape == (2, 3, SIZE, SIZE) and len(batch["box"]) == 2


def test_image_folders_are_the_refer_toolkits():
    root = Path("DATA_ROOT")
    for dataset in ("refcoco", "refcoco+", "refcocog"):
        assert default_image_root(root, dataset) == root / "images" / "mscoco" / "images" / "train2014"
    assert default_image_root(root, "refclef") == root / "images" / "saiapr_tc-12"
    assert default_image_root(root, "mine") == root / "images" / "mine"


def test_grayscale_image_becomes_rgb(refer_root, vocabulary):
    val = dataset(refer_root, vocabulary, "val")
    image = val[0]["image"]
    assert image.shape == (3, SIZE, SIZE)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_neutral_sentence_replaces_every_sentence(refer_root, vocabulary):
    train = dataset(refer_root, vocabulary, "train", sentences="box")
    assert all(train[i]["tokens"].tolist()[-1] == vocabulary.index("box") for i in range(len(train)))
    assert train[0]["words"] == 2  # lengths stay those of the real sentences (for the by-length table)


def test_splits_joined_by_plus_take_the_samples_of_each(refer_root, vocabulary):
    """As the released code trains on ReferIt's trainval: train+val is both splits' samples, in file order."""
    both = dataset(refer_root, vocabulary, "train+val")
    assert [s.sentence for s in both.samples] == ["left box", "the wide one", "two parts", "grey strip at the top"]
    assert [s.sentence for s in dataset(refer_root, vocabulary, "val+train").samples] == \
        [s.sentence for s in both.samples]
    assert sentences_of(refer_root[0], "tiny", "unc", "train+testA") == ["left box", "the wide one", "two parts",
                                                                       "the ring", "..."]
    with pytest.raises(ValueError, match=r"unknown split 'test' .* \(join several with '\+', e.g. 'train\+val'\)"):
        dataset(refer_root, vocabulary, "train+test")
    with pytest.raises(ValueError, match=r"split 'train\+train' names a split twice"):
        dataset(refer_root, vocabulary, "train+train")
    with pytest.raises(ValueError, match="unknown split ''"):
        dataset(refer_root, vocabulary, "train+")


def test_bad_data_is_named(refer_root, vocabulary, tmp_path):
    root, _ = refer_root
    with pytest.raises(FileNotFoundError, match=r"refs file not found: .*refs\(google\).p.*found \['refs\(unc\).p'\]"):
        ReferDataset(root, "tiny", "google", "train", vocabulary, SIZE)
    with pytest.raises(FileNotFoundError, match="refs file not found"):
        ReferDataset(root, "nothing", "unc", "train", vocabulary, SIZE)
    with pytest.raises(ValueError, match=r"unknown split 'test' .* its splits are \['empty', 'testA', 'train', 'val'\]"):
        dataset(refer_root, vocabulary, "test")
    with pytest.raises(ValueError, match="split 'empty' of tiny .* has no sentences"):
        dataset(refer_root, vocabulary, "empty")
    with pytest.raises(FileNotFoundError, match=r"images of split 'train' of tiny \(unc\) are missing, e.g. "
                                                r".*nowhere.*1.png; is .*nowhere their folder\?"):
        dataset(refer_root, vocabulary, "train", image_root=tmp_path / "nowhere")

    broken = tmp_path / "broken"
    (broken / "tiny").mkdir(parents=True)
    (broken / "tiny" / "refs(unc).p").write_bytes(b"not a pickle")
    with pytest.raises(FileNotFoundError, match="instances file not found"):
        ReferDataset(broken, "tiny", "unc", "train", vocabulary, SIZE)
    (broken / "tiny" / "instances.json").write_text("{}")
    with pytest.raises(ValueError, match=r"cannot read the refs file .*refs\(unc\).p"):
        ReferDataset(broken, "tiny", "unc", "train", vocabulary, SIZE)
    with open(broken / "tiny" / "refs(unc).p", "wb") as file:
        pickle.dump([], file)
    with pytest.raises(ValueError, match="COCO-style 'images' and 'annotations'"):
        ReferDataset(broken, "tiny", "unc", "train", vocabulary, SIZE)


def test_an_image_unlike_its_record_is_named_when_the_dataset_opens(refer_root, vocabulary, tmp_path):
    """Not at the training step that first draws it (and again at the same step after each resume)."""
    images = tmp_path / "images"
    shutil.copytree(refer_root[0] / "images" / "tiny", images)
    stored = Image.open(images / "2.png")  # recorded 30 wide, 50 high
    stored.resize((31, 50)).save(images / "2.png")  # a resized copy
    with pytest.raises(ValueError, match=r"1 of the 2 images of split 'train' of tiny \(unc\) differ in size from "
                                         r"their record in instances.json, .* image 2 \(.*2.png\): 31x50 pixels, recorded 30x50$"):
        dataset(refer_root, vocabulary, "train", image_root=images)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned by a quarter: as recorded
    stored.transpose(Image.Transpose.ROTATE_90).save(images / "2.png", exif=exif)
    with pytest.raises(ValueError, match=r"50x30 pixels, recorded 30x50: turned by its EXIF orientation it has the "
                                         r"recorded size, .* store such images upright"):
        dataset(refer_root, vocabulary, "train", image_root=images)
    (images / "2.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot read image .*2.png"):
        dataset(refer_root, vocabulary, "train", image_root=images)


@pytest.mark.parametrize("break_it, message", [
    (lambda refs, instances: instances["images"][0].pop("file_name"), "image 1 of tiny/instances.json has no 'file_name'"),
    (lambda refs, instances: instances["annotations"][0].update(image_id=2),
     "ref 1 is of image 1, but its annotation 11 is of image 2 in tiny/instances.json"),
    (lambda refs, instances: instances["annotations"][0].pop("image_id"),
     "ref 1 is of image 1, but its annotation 11 is of image None"),
    (lambda refs, instances: refs[0].update(sentences=["left box"]), "ref 1 of tiny: 'sentences' must be a list of dicts"),
])
def test_inconsistent_refs_and_instances_are_named(refer_root, vocabulary, tmp_path, break_it, message):
    """Found when the dataset is opened, not as a KeyError when a worker reads the sample."""
    root, _ = refer_root
    with open(root / "tiny" / "refs(unc).p", "rb") as file:
        refs = pickle.load(file)
    instances = json.loads((root / "tiny" / "instances.json").read_text())
    break_it(refs, instances)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "instances.json").write_text(json.dumps(instances))
    with open(tmp_path / "tiny" / "refs(unc).p", "wb") as file:
        pickle.dump(refs, file)
    with pytest.raises(ValueError, match=re.escape(message)):
        ReferDataset(tmp_path, "tiny", "unc", "train", vocabulary, SIZE, image_root=root / "images" / "tiny")
