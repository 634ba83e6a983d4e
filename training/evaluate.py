"""Evaluation at the original image size: overall IoU, mean IoU, Prec@X, by expression length."""
from __future__ import annotations

import contextlib
import random

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from ..data import ReferDataset, collate, unletterbox
from ..metrics import SegmentationMetrics, length_buckets


def autocast(device: torch.device, amp: str):
    """The autocast context of ``amp`` (``bf16``, ``fp16`` or ``off``) on ``device``."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: ReferDataset, device: torch.device, batch_size: int = 16,
             amp: str = "off", workers: int = 0, limit: int | None = None, progress=None) -> dict:
    """Metrics of ``model`` on ``dataset`` (built with ``originals=True``); predictions are the pixel
    logits > 0 mapped back to each image's original size. Under torch.distributed every process
    evaluates its share and the totals are summed. ``limit`` evaluates a fixed random subset of that
    many samples, the same in every call (the split's first samples would be its first images)."""
    was_training = model.training
    model.eval()
    indices = list(range(len(dataset)))
    if limit is not None and limit < len(dataset):
        indices = sorted(random.Random(0).sample(indices, limit))
    if dist.is_initialized():
        indices = indices[dist.get_rank()::dist.get_world_size()]
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=workers, collate_fn=collate)
    metrics = SegmentationMetrics(length_buckets(dataset.annotations.dataset, dataset.max_words))
    for batch in loader if progress is None else progress(loader):
        with autocast(device, amp):
            logits = model(batch["image"].to(device), batch["tokens"].to(device)).pixel_logits
        logits = logits.float().cpu()
        for i, box in enumerate(batch["box"]):
            prediction = unletterbox(logits[i, 0], box) > 0
            metrics.update(prediction, batch["original_mask"][i], int(batch["words"][i]))
    metrics.reduce()
    model.train(was_training)
    return metrics.result()
