import pytest
import torch

from restr_fast.metrics import LENGTH_BUCKETS, SegmentationMetrics, format_table, length_buckets


def masks(shape, *cells):
    mask = torch.zeros(shape, dtype=torch.bool)
    for row, col in cells:
        mask[row, col] = True
    return mask


def test_metrics_equal_a_hand_computation():
    metrics = SegmentationMetrics(length_buckets("refcoco"))
    # sample 1: prediction 4 pixels, target 4, overlap 2 -> I 2, U 6, IoU 1/3 (2 words)
    pred = masks((3, 4), (0, 0), (0, 1), (0, 2), (0, 3))
    target = masks((3, 4), (0, 2), (0, 3), (1, 2), (1, 3))
    assert metrics.update(pred, target, words=2) == pytest.approx(1 / 3)
    # sample 2: exact, I 3, U 3, IoU 1 (3 words)
    exact = masks((2, 2), (0, 0), (1, 0), (1, 1))
    assert metrics.update(exact, exact, words=3) == 1.0
    # sample 3: I 6, U 8, IoU 0.75 (7 words)
    target3 = torch.ones(2, 4, dtype=torch.bool)
    pred3 = target3.clone()
    pred3[0, :2] = False
    assert metrics.update(pred3, target3, words=7) == pytest.approx(0.75)

    result = metrics.result()
    assert result["samples"] == 3
    assert result["overall_iou"] == pytest.approx((2 + 3 + 6) / (6 + 3 + 8))
    assert result["mean_iou"] == pytest.approx((1 / 3 + 1 + 0.75) / 3)
    assert result["precision"] == pytest.approx({"0.5": 2 / 3, "0.6": 2 / 3, "0.7": 2 / 3, "0.8": 1 / 3, "0.9": 1 / 3})
    assert result["by_length"]["1-2"]["samples"] == 1 and result["by_length"]["1-2"]["overall_iou"] == pytest.approx(1 / 3)
    assert result["by_length"]["3"]["overall_iou"] == 1.0
    assert result["by_length"]["4-5"]["samples"] == 0
    assert result["by_length"]["6-20"]["mean_iou"] == pytest.approx(0.75)
    assert all(0.0 <= v <= 1.0 for v in (result["overall_iou"], result["mean_iou"], *result["precision"].values()))
    table = format_table(result, "val")
    assert "| all | 3 | 64.71 | 69.44 |" in table
    assert "| 4-5 words | 0 | – | – | – | – | – | – | – |" in table  # an empty bucket shows no figures


def test_precision_counts_an_iou_equal_to_the_threshold():
    metrics = SegmentationMetrics()
    prediction = masks((2, 2), (0, 0), (0, 1))
    assert metrics.update(prediction, masks((2, 2), (0, 0)), words=1) == 0.5
    assert metrics.result()["precision"] == {"0.5": 1.0, "0.6": 0.0, "0.7": 0.0, "0.8": 0.0, "0.9": 0.0}


def test_an_empty_union_counts_as_iou_zero_and_empty_targets_are_reported():
    metrics = SegmentationMetrics()
    empty = torch.zeros(2, 2, dtype=torch.bool)
    assert metrics.update(empty, empty, 1) == 0.0  # as the standard evaluation scripts count it
    assert metrics.update(masks((2, 2), (0, 0)), empty, 1) == 0.0
    metrics.update(masks((2, 2), (1, 1)), masks((2, 2), (1, 1)), 1)
    result = metrics.result()
    assert result["overall_iou"] == 0.5 and result["mean_iou"] == pytest.approx(1 / 3)
    assert result["empty_targets"] == 2 and result["by_length"]["1-2"]["empty_targets"] == 2
    assert "2 of the 3 samples have an empty ground-truth mask" in format_table(result)
    assert "empty" not in format_table(SegmentationMetrics().result())


def test_buckets_per_dataset_and_shape_mismatch():
    assert length_buckets("refcocog") == ((1, 5), (6, 7), (8, 10), (11, 20))
    assert length_buckets("my-own-data") == length_buckets("refcoco")
    assert length_buckets("RefCOCOg_umd") == length_buckets("refcocog")  # the longest known prefix, any case
    assert length_buckets("refcoco+") == ((1, 2), (3, 3), (4, 5), (6, 20))
    assert length_buckets("refclef", max_words=32) == ((1, 1), (2, 2), (3, 4), (5, 32))  # every sentence counts
    assert length_buckets("refclef", max_words=8) == LENGTH_BUCKETS["refclef"]
    metrics = SegmentationMetrics(length_buckets("refcoco"))
    for words in (5, 6, 20, 25):  # 25: longer than the last bucket, counted in it
        metrics.update(torch.ones(2, 2, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool), words)
    assert {k: v["samples"] for k, v in metrics.result()["by_length"].items()} == {"1-2": 0, "3": 0, "4-5": 1, "6-20": 3}
    with pytest.raises(ValueError, match="differ in shape"):
        SegmentationMetrics().update(torch.zeros(2, 2), torch.zeros(3, 3), 1)
