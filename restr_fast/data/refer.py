"""Referring-segmentation datasets in the layout of the REFER toolkit (RefCOCO, RefCOCO+, RefCOCOg,
ReferIt), read as they are.

    DATA_ROOT/<dataset>/refs(<split_by>).p    pickled list of refs
    DATA_ROOT/<dataset>/instances.json        COCO-style images, annotations, categories
    DATA_ROOT/images/mscoco/images/train2014/ images of refcoco, refcoco+, refcocog
    DATA_ROOT/images/saiapr_tc-12/            images of refclef (ReferIt)
    DATA_ROOT/images/<dataset>/               images of any other dataset in this layout

Each (ref, sentence) pair is one sample.
"""
from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as coco_mask
from torch.utils.data import Dataset

from ..text import MAX_WORDS, Vocabulary, tokenize
from .transforms import Letterbox, image_header_size, letterbox_image, letterbox_mask, load_image

IMAGE_DIRS = {
    "refcoco": "images/mscoco/images/train2014",
    "refcoco+": "images/mscoco/images/train2014",
    "refcocog": "images/mscoco/images/train2014",
    "refclef": "images/saiapr_tc-12",
}
SPLIT_BYS = ("unc", "google", "umd", "berkeley")


@dataclass(frozen=True)
class Sample:
    """One (ref, sentence) pair."""

    ref_id: int
    ann_id: int
    image_id: int
    sent_id: int
    sentence: str


def default_image_root(data_root: Path, dataset: str) -> Path:
    return data_root / IMAGE_DIRS.get(dataset, f"images/{dataset}")


def polygon_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """The (height, width) bool union of COCO polygons [[x0, y0, x1, y1, ...], ...], rasterised as
    the COCO tools rasterise them."""
    return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))).astype(bool)


class ReferAnnotations:
    """The refs, images and annotations of one dataset and split scheme, with lookup by id.

    Raises FileNotFoundError naming the missing file, ValueError for files that cannot be read.
    """

    def __init__(self, data_root: str | Path, dataset: str, split_by: str) -> None:
        self.data_root = Path(data_root)
        self.dataset, self.split_by = dataset, split_by
        folder = self.data_root / dataset
        refs_path = folder / f"refs({split_by}).p"
        instances_path = folder / "instances.json"
        if not refs_path.is_file():
            found = sorted(p.name for p in folder.glob("refs(*).p")) if folder.is_dir() else []
            raise FileNotFoundError(f"refs file not found: {refs_path} (dataset {dataset!r}, split_by "
                                    f"{split_by!r}; found {found or 'no refs files'} in {folder}; split_by is "
                                    f"one of {list(SPLIT_BYS)} for the REFER datasets)")
        if not instances_path.is_file():
            raise FileNotFoundError(f"instances file not found: {instances_path}")
        try:
            with open(refs_path, "rb") as file:
                self.refs: list[dict] = pickle.load(file)
        except Exception as error:
            raise ValueError(f"cannot read the refs file {refs_path}: {type(error).__name__}: {error}") from error
        try:
            instances = json.loads(instances_path.read_text())
        except Exception as error:
            raise ValueError(f"cannot read the instances file {instances_path}: {error}") from error
        if not isinstance(self.refs, list) or not all(isinstance(r, dict) for r in self.refs):
            raise ValueError(f"{refs_path} must hold a list of ref dicts")
        try:
            self.images = {image["id"]: image for image in instances["images"]}
            self.annotations = {ann["id"]: ann for ann in instances["annotations"]}
        except (KeyError, TypeError) as error:
            raise ValueError(f"{instances_path} must hold COCO-style 'images' and 'annotations' lists "
                             f"with 'id' fields: {error!r}") from error

    @property
    def splits(self) -> list[str]:
        return sorted({ref.get("split", "") for ref in self.refs})

    def samples(self, split: str) -> list[Sample]:
        """Every (ref, sentence) pair of ``split``, in file order. Splits joined by ``+`` (``train+val``)
        take the refs of each."""
        parts = split.split("+")
        unknown = [part for part in parts if part not in self.splits]
        if unknown or len(set(parts)) < len(parts):
            what = f"unknown split {unknown[0]!r}" if unknown else f"split {split!r} names a split twice"
            raise ValueError(f"{what} for {self.dataset} ({self.split_by}); its splits are {self.splits} "
                             f"(join several with '+', e.g. 'train+val')")
        samples = []
        for ref in self.refs:
            if ref.get("split") not in parts:
                continue
            for field in ("ref_id", "ann_id", "image_id", "sentences"):
                if field not in ref:
                    raise ValueError(f"ref {ref.get('ref_id', '?')} of {self.dataset} has no {field!r} field")
            if ref["ann_id"] not in self.annotations:
                raise ValueError(f"ref {ref['ref_id']} points to annotation {ref['ann_id']}, which "
                                 f"{self.dataset}/instances.json does not have")
            if ref["image_id"] not in self.images:
                raise ValueError(f"ref {ref['ref_id']} points to image {ref['image_id']}, which "
                                 f"{self.dataset}/instances.json does not have")
            annotation_image = self.annotations[ref["ann_id"]].get("image_id")
            if annotation_image != ref["image_id"]:  # the mask would be drawn for another image's size
                raise ValueError(f"ref {ref['ref_id']} is of image {ref['image_id']}, but its annotation "
                                 f"{ref['ann_id']} is of image {annotation_image!r} in {self.dataset}/instances.json")
            if not isinstance(self.images[ref["image_id"]].get("file_name"), str):
                raise ValueError(f"image {ref['image_id']} of {self.dataset}/instances.json has no 'file_name'")
            if not isinstance(ref["sentences"], list) or not all(isinstance(s, dict) for s in ref["sentences"]):
                raise ValueError(f"ref {ref['ref_id']} of {self.dataset}: 'sentences' must be a list of dicts "
                                 f"with 'sent' or 'raw' text")
            for sentence in ref["sentences"]:
                text = sentence.get("sent") or sentence.get("raw") or ""
                samples.append(Sample(ref["ref_id"], ref["ann_id"], ref["image_id"],
                                      sentence.get("sent_id", -1), text))
        if not samples:
            raise ValueError(f"split {split!r} of {self.dataset} ({self.split_by}) has no sentences")
        return samples

    def mask(self, ann_id: int) -> np.ndarray:
        """The (height, width) bool mask of an annotation: the union of its polygons, of its RLEs
        (ReferIt stores a list of them), or its one RLE."""
        ann = self.annotations[ann_id]
        width, height = self.image_size(ann["image_id"])
        segmentation = ann.get("segmentation")
        try:
            if isinstance(segmentation, list) and any(isinstance(s, dict) for s in segmentation):
                if not all(isinstance(s, dict) for s in segmentation):
                    raise TypeError("a list that mixes RLEs and polygons")
                rle = coco_mask.merge([_rle(s, height, width) for s in segmentation])  # [RLE, ...]
            elif isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, ...], ...]
                polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
                if not polygons:
                    return np.zeros((height, width), dtype=bool)
                return polygon_mask(polygons, height, width)
            elif isinstance(segmentation, dict):
                rle = _rle(segmentation, height, width)
            else:
                raise TypeError(f"segmentation of type {type(segmentation).__name__}")
            return coco_mask.decode(rle).astype(bool)
        except Exception as error:
            raise ValueError(f"annotation {ann_id} of {self.dataset}: cannot decode its segmentation: "
                             f"{error}") from error

    def image_size(self, image_id: int) -> tuple[int, int]:
        """(width, height) of an image as instances.json records it: the size of its masks."""
        image = self.images[image_id]
        if not all(isinstance(image.get(key), int) and image[key] > 0 for key in ("height", "width")):
            raise ValueError(f"image {image_id} of {self.dataset} needs a positive integer height and width "
                             f"in instances.json, got {image.get('height')!r} and {image.get('width')!r}")
        return image["width"], image["height"]

    def image_path(self, image_root: Path, image_id: int) -> Path:
        return image_root / self.images[image_id]["file_name"]


def _rle(segmentation: dict, height: int, width: int) -> dict:
    """A compressed RLE (what pycocotools decodes) from a compressed or an uncompressed one."""
    if isinstance(segmentation.get("counts"), list):  # uncompressed
        return coco_mask.frPyObjects(segmentation, height, width)
    rle = dict(segmentation)
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode("ascii")
    return rle


class ReferDataset(Dataset):
    """Samples of one split, letterboxed to the model's input.

    Items are dicts: ``image`` (3, S, S) normalised, ``mask`` (1, S, S) in {0, 1}, ``tokens``
    (max_words,) word ids, ``index``, ``words`` (sentence length in words); with ``originals``
    also ``original_mask`` (H, W) bool and ``box`` (the :class:`Letterbox`) for evaluation at the
    original size.

    Args:
        data_root: the REFER data folder.
        dataset: e.g. ``refcoco``, ``refcoco+``, ``refcocog``, ``refclef`` or any other name in the layout.
        split_by: ``unc``, ``google``, ``umd``, ``berkeley`` (or the one the dataset has).
        split: e.g. ``train``, ``val``, ``testA``, ``testB``, ``test``; several joined by ``+``
            (``train+val``) take the samples of each.
        vocabulary: word ids for the sentences.
        image_size: side of the square model input.
        image_root: folder of the images (default: see :data:`IMAGE_DIRS`).
        originals: also return the original mask and the letterbox (for evaluation).
        sentences: replace every sentence by this text (e.g. one neutral word, to measure how much
            the model uses the language).
    """

    def __init__(self, data_root: str | Path, dataset: str, split_by: str, split: str, vocabulary: Vocabulary,
                 image_size: int, image_root: str | Path | None = None, max_words: int = MAX_WORDS,
                 originals: bool = False, sentences: str | None = None) -> None:
        if sentences is not None and not tokenize(sentences):
            raise ValueError(f"the replacement sentence {sentences!r} has no words: give at least one word")
        if sentences is not None and all(word not in vocabulary for word in tokenize(sentences)):
            warnings.warn(f"no word of the replacement sentence {sentences!r} is in the vocabulary: every "
                          f"sample reads as <unk> only", stacklevel=2)
        self.annotations = ReferAnnotations(data_root, dataset, split_by)
        samples = self.annotations.samples(split)
        self.samples = [s for s in samples if tokenize(s.sentence)]
        self.wordless = len(samples) - len(self.samples)  # sentences without any word, left out
        if not self.samples:
            raise ValueError(f"split {split!r} of {dataset} ({split_by}) has no sentence with words")
        self.image_root = Path(image_root) if image_root else default_image_root(Path(data_root), dataset)
        self.vocabulary, self.image_size, self.max_words = vocabulary, image_size, max_words
        self.originals, self.sentences = originals, sentences
        self.split_name, self.image_root_given = f"{split!r} of {dataset} ({split_by})", image_root
        self._check_images()

    def _check_images(self) -> None:
        """Every image of the split is a readable file of the size instances.json records, by its header: a
        bad one is named here, not at the training step that first draws it (and again at each resume)."""
        paths = {i: self.annotations.image_path(self.image_root, i) for i in sorted({s.image_id for s in self.samples})}
        missing = [path for path in paths.values() if not path.is_file()]
        if missing:
            where = ("pass --image-root if they are elsewhere" if self.image_root_given is None else
                     f"is {self.image_root_given} their folder?")
            raise FileNotFoundError(f"{len(missing)} of the {len(paths)} images of split {self.split_name} are "
                                    f"missing, e.g. {missing[0]}; {where}")
        wrong = [(image_id, path, image_header_size(path), self.annotations.image_size(image_id))
                 for image_id, path in paths.items()]
        wrong = [entry for entry in wrong if entry[2] != entry[3]]
        if wrong:
            image_id, path, (width, height), recorded = wrong[0]
            turned = image_header_size(path, upright=True) == recorded
            hint = (": turned by its EXIF orientation it has the recorded size, so its masks were drawn on the "
                    "upright image; store such images upright (PIL.ImageOps.exif_transpose)" if turned else "")
            raise ValueError(f"{len(wrong)} of the {len(paths)} images of split {self.split_name} differ in size "
                             f"from their record in instances.json, whose size the masks have, e.g. image {image_id} ({path}): "
                             f"{width}x{height} pixels, recorded {recorded[0]}x{recorded[1]}{hint}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = load_image(self.annotations.image_path(self.image_root, sample.image_id))
        mask = self.annotations.mask(sample.ann_id)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"annotation {sample.ann_id}: mask of size {mask.shape} for an image of size "
                             f"{(image.height, image.width)} (image {sample.image_id})")
        text = self.sentences if self.sentences is not None else sample.sentence
        pixels, box = letterbox_image(image, self.image_size)
        item = {
            "image": pixels,
            "mask": letterbox_mask(mask, box, self.image_size),
            "tokens": self.vocabulary.encode(text, self.max_words, warn=False),
            "index": index,
            "words": len(tokenize(sample.sentence)),  # the expression's, for the by-length table
        }
        if self.originals:
            item["original_mask"] = torch.from_numpy(mask)
            item["box"] = box
        return item


def collate(items: list[dict]) -> dict:
    """Stack tensors and numbers; keep original masks and boxes (different sizes) as lists."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in ("original_mask", "box"):
            batch[key] = values
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = torch.tensor(values)
    return batch


def sentences_of(data_root: str | Path, dataset: str, split_by: str, split: str) -> list[str]:
    """All sentences of a split (e.g. to build the vocabulary from the training sentences)."""
    return [s.sentence for s in ReferAnnotations(data_root, dataset, split_by).samples(split)]


__all__ = ["ReferAnnotations", "ReferDataset", "Sample", "Letterbox", "collate", "sentences_of",
           "default_image_root", "SPLIT_BYS"]
