"""Datasets (REFER layout, synthetic), transforms and collation."""
from .refer import ReferAnnotations, ReferDataset, Sample, collate, default_image_root, sentences_of
from .transforms import Letterbox, letterbox_box, letterbox_image, letterbox_mask, load_image, unletterbox

__all__ = ["ReferAnnotations", "ReferDataset", "Sample", "collate", "default_image_root", "sentences_of",
           "Letterbox", "letterbox_box", "letterbox_image", "letterbox_mask", "load_image", "unletterbox"]
