"""Referring-segmentation metrics: overall (cumulative) IoU, mean IoU, Prec@X, and by expression length."""
from __future__ import annotations

import torch

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)

# Expression-length buckets of the paper's Table 2 (inclusive word counts), per dataset.
LENGTH_BUCKETS = {
    "refcocog": ((1, 5), (6, 7), (8, 10), (11, 20)),
    "refcoco": ((1, 2), (3, 3), (4, 5), (6, 20)),
    "refcoco+": ((1, 2), (3, 3), (4, 5), (6, 20)),
    "refclef": ((1, 1), (2, 2), (3, 4), (5, 20)),
}


def length_buckets(dataset: str, max_words: int = 20) -> tuple[tuple[int, int], ...]:
    """Table 2's buckets for ``dataset`` (the longest name it starts with, any case: ``refcocog_umd``
    takes RefCOCOg's), RefCOCO's for other datasets; the last reaches ``max_words``, the longest
    sentence a model reads, where that is over 20."""
    name = dataset.lower()
    known = max((key for key in LENGTH_BUCKETS if name.startswith(key)), key=len, default="refcoco")
    *buckets, (low, high) = LENGTH_BUCKETS[known]
    return (*buckets, (low, max(high, max_words)))


class SegmentationMetrics:
    """Accumulates predictions against ground truth, one sample at a time.

    overall IoU = sum of intersections / sum of unions over all samples; mean IoU = mean of the
    per-sample IoUs; Prec@X = share of samples with IoU >= X. As in the standard evaluation scripts
    (LAVT's, after RRN's), a sample without any union (empty prediction and empty mask) counts as IoU 0.
    Benchmark masks are never empty: ``empty_targets`` in the result counts those that were, a sign
    of broken annotations. Results are fractions in [0, 1].
    """

    def __init__(self, buckets: tuple[tuple[int, int], ...] = LENGTH_BUCKETS["refcoco"]) -> None:
        self.buckets = buckets
        # per bucket (last row: all samples): intersection, union, sum of IoUs, samples, empty targets,
        # hits per threshold
        self.totals = torch.zeros(len(buckets) + 1, 5 + len(THRESHOLDS), dtype=torch.float64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor, words: int) -> float:
        """Add one sample: bool masks of the same shape, and the sentence length in words (one longer
        than the last bucket counts in it). Returns its IoU."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        prediction, target = prediction.bool(), target.bool()
        intersection = float((prediction & target).sum())
        union = float((prediction | target).sum())
        iou = intersection / union if union > 0 else 0.0
        empty_target = float(not target.any())
        row = torch.tensor([intersection, union, iou, 1.0, empty_target] + [float(iou >= t) for t in THRESHOLDS],
                           dtype=torch.float64)
        self.totals[-1] += row
        words = min(words, self.buckets[-1][1])
        for i, (low, high) in enumerate(self.buckets):
            if low <= words <= high:
                self.totals[i] += row
        return iou

    def reduce(self) -> None:
        """Sum the totals over all processes of a torch.distributed group."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            totals = self.totals.to(_distributed_device())
            torch.distributed.all_reduce(totals)
            self.totals = totals.cpu()

    def result(self) -> dict:
        """{'overall_iou', 'mean_iou', 'precision': {'0.5': ..}, 'samples', 'empty_targets',
        'by_length': {'1-2': {...}}}."""
        by_length = {f"{low}-{high}" if low != high else f"{low}": _summary(self.totals[i])
                     for i, (low, high) in enumerate(self.buckets)}
        return {**_summary(self.totals[-1]), "by_length": by_length}


def _summary(row: torch.Tensor) -> dict:
    intersection, union, iou_sum, samples, empty_targets = row[:5].tolist()
    hits = row[5:].tolist()
    return {
        "overall_iou": intersection / union if union > 0 else 0.0,
        "mean_iou": iou_sum / samples if samples else 0.0,
        "precision": {f"{t}": h / samples if samples else 0.0 for t, h in zip(THRESHOLDS, hits)},
        "samples": int(samples),
        "empty_targets": int(empty_targets),
    }


def _distributed_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def format_table(result: dict, title: str = "") -> str:
    """A markdown table of a :meth:`SegmentationMetrics.result`, IoUs and precisions in percent."""
    header = "| | samples | overall IoU % | mean IoU % | " + " | ".join(f"Prec@{t} %" for t in THRESHOLDS) + " |"
    lines = ([f"**{title}**", ""] if title else []) + [header, "|---" * (4 + len(THRESHOLDS)) + "|"]
    rows = [("all", result)] + [(f"{k} words", v) for k, v in result.get("by_length", {}).items()]
    for name, values in rows:
        if not values["samples"]:  # nothing measured: no figures
            lines.append(f"| {name} | 0 |" + " – |" * (2 + len(THRESHOLDS)))
            continue
        precision = " | ".join(f"{100 * values['precision'][f'{t}']:.2f}" for t in THRESHOLDS)
        lines.append(f"| {name} | {values['samples']} | {100 * values['overall_iou']:.2f} | "
                     f"{100 * values['mean_iou']:.2f} | {precision} |")
    if result.get("empty_targets"):
        lines += ["", f"{result['empty_targets']} of the {result['samples']} samples have an empty ground-truth mask "
                      f"(each counted as IoU 0; a sentence is a sample, so an annotation counts once per sentence "
                      f"of its refs): check the dataset's annotations"]
    return "\n".join(lines)
