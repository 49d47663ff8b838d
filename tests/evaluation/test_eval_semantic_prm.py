"""Semantic mIoU from merged instances, and PRM quality, worked out by hand (10 x 10)."""

import pytest
import torch

from prm.evaluation import (
    PRMQualityEvaluator,
    SemanticSegmentationEvaluator,
    evaluate,
    instances_to_label_map,
    prm_quality,
)

CLASSES = ["a", "b", "c"]
SIZE = (10, 10)


@pytest.fixture
def semantic_pair(rects):
    """Ground truth a = rows 0-4 x cols 0-4, b = rows 5-9 x cols 5-9, row 9 ignored.

    Predictions p1 a (0.9) = rows 0-4 x cols 0-4, p2 b (0.5) = rows 0-9 x cols 3-9; they
    overlap on rows 0-4 x cols 3-4, where the higher-scored p1 wins.
    """
    target = {
        "image_id": "s",
        "size": SIZE,
        "masks": rects(SIZE, (0, 5, 0, 5), (5, 10, 5, 10)),
        "labels": torch.tensor([0, 1]),
        "ignore_mask": rects(SIZE, (9, 10, 0, 10))[0],
    }
    prediction = {
        "masks": rects(SIZE, (0, 5, 0, 5), (0, 10, 3, 10)),
        "labels": torch.tensor([0, 1]),
        "scores": torch.tensor([0.9, 0.5]),
    }
    return target, prediction


def test_semantic_miou(semantic_pair):
    # 90 valid pixels (row 9 ignored). Truth: a 25, b rows 5-8 x cols 5-9 = 20, background 45.
    # Prediction: a 25 (exact); b = rows 0-4 x cols 5-9 (25) + rows 5-8 x cols 3-9 (28) = 53;
    # background rows 5-8 x cols 0-2 = 12.
    # Confusion: a->a 25; b->b 20; background->background 12, background->b 25 + 8 = 33.
    # IoU background = 12 / 45, a = 25 / 25, b = 20 / (20 + 53 - 20) = 20 / 53, c: None.
    r = evaluate(SemanticSegmentationEvaluator(CLASSES), [semantic_pair])
    assert r["semantic/IoU/background"] == pytest.approx(12 / 45)
    assert r["semantic/IoU/a"] == pytest.approx(1.0)
    assert r["semantic/IoU/b"] == pytest.approx(20 / 53)
    assert r["semantic/IoU/c"] is None
    assert r["semantic/mIoU"] == pytest.approx((12 / 45 + 1 + 20 / 53) / 3)
    assert r["semantic/pixel_accuracy"] == pytest.approx(57 / 90)


def test_semantic_higher_score_wins_and_threshold(semantic_pair):
    target, prediction = semantic_pair
    # With p2 above p1, b takes rows 0-4 x cols 3-4 from a: a keeps 15 of 25 px.
    swapped = {**prediction, "scores": torch.tensor([0.5, 0.9])}
    r = evaluate(SemanticSegmentationEvaluator(CLASSES), [(target, swapped)])
    assert r["semantic/IoU/a"] == pytest.approx(15 / 25)
    # A threshold of 0.6 drops p2 (0.5): b is never predicted, IoU b = 0.
    r = evaluate(SemanticSegmentationEvaluator(CLASSES, score_threshold=0.6), [semantic_pair])
    assert r["semantic/IoU/b"] == 0.0 and r["semantic/IoU/a"] == 1.0


def test_instances_to_label_map(rects):
    masks = rects((2, 3), (0, 2, 0, 2), (0, 1, 1, 3))
    labels = torch.tensor([4, 1])
    # Ties: the first instance wins; without scores the last one painted wins.
    assert instances_to_label_map(masks, labels, torch.tensor([1.0, 1.0])).tolist() == [
        [5, 5, 2],
        [5, 5, 0],
    ]
    assert instances_to_label_map(masks, labels).tolist() == [[5, 2, 2], [5, 5, 0]]
    assert instances_to_label_map(masks[:0], labels[:0]).tolist() == [[0, 0, 0], [0, 0, 0]]


@pytest.fixture
def prm_pair(rects):
    """Ground truth a1 = rows 0-4 x cols 0-4, a2 = rows 5-9 x cols 5-9, b1 = rows 0-4 x cols 5-9.

    PRMs (mass at single pixels):
      r1 a: 7 at (0, 0) in a1, 3 at (9, 9) in a2     -> best a object a1: 7/10 = 0.7
      r2 a: 0.4 in a1, 0.4 in b1, 0.2 in a2          -> 0.4 (b1 is not class a)
      r3 b: all in a1                                -> 0.0
      r4 c: no c object in the image                 -> skipped
      r5 a: no mass at all                           -> 0.0
    mean = (0.7 + 0.4 + 0 + 0) / 4 = 0.275; accuracy at 0.5 = 1/4; 4 scored, 1 skipped.
    """
    target = {
        "image_id": "q",
        "size": SIZE,
        "masks": rects(SIZE, (0, 5, 0, 5), (5, 10, 5, 10), (0, 5, 5, 10)),
        "labels": torch.tensor([0, 0, 1]),
    }
    prms = torch.zeros(5, *SIZE)
    prms[0, 0, 0], prms[0, 9, 9] = 7.0, 3.0
    prms[1, 1, 1], prms[1, 1, 7], prms[1, 8, 8] = 0.4, 0.4, 0.2
    prms[2, 2, 2] = 1.0
    prms[3, 5, 5] = 1.0
    return target, {"prms": prms, "labels": torch.tensor([0, 0, 1, 2, 0])}


def test_prm_quality(prm_pair):
    r = evaluate(PRMQualityEvaluator(CLASSES), [prm_pair])
    assert r["prm_quality/mean"] == pytest.approx(0.275)
    assert r["prm_quality/accuracy@0.5"] == pytest.approx(0.25)
    assert r["prm_quality/count"] == 4 and r["prm_quality/skipped"] == 1
    target, prediction = prm_pair
    q = prm_quality(prediction["prms"], prediction["labels"], target["masks"], target["labels"])
    assert q[:3].tolist() == pytest.approx([0.7, 0.4, 0.0]) and q[3].isnan() and q[4] == 0


def test_prm_quality_ignores_crowds_and_ignore_pixels(prm_pair, rects):
    target, prediction = prm_pair
    # a1 as a crowd: r1's best a object becomes a2 (0.3), r2's 0.2.
    crowd = {**target, "iscrowd": torch.tensor([True, False, False])}
    r = evaluate(PRMQualityEvaluator(CLASSES), [(crowd, prediction)])
    assert r["prm_quality/mean"] == pytest.approx((0.3 + 0.2 + 0 + 0) / 4)
    # Ignoring pixel (9, 9) leaves r1 all inside a1: 1.0.
    ignoring = {**target, "ignore_mask": rects(SIZE, (9, 10, 9, 10))[0]}
    r = evaluate(PRMQualityEvaluator(CLASSES, use_ignore_mask=True), [(ignoring, prediction)])
    assert r["prm_quality/mean"] == pytest.approx((1.0 + 0.4 + 0 + 0) / 4)


def test_prms_must_fit_the_image(prm_pair):
    target, prediction = prm_pair
    with pytest.raises(ValueError, match=r"prms of shape \(5, 5, 3\)"):
        evaluate(
            PRMQualityEvaluator(CLASSES), [(target, {**prediction, "prms": torch.zeros(5, 5, 3)})]
        )
    with pytest.raises(ValueError, match="needs 'prms'"):
        evaluate(PRMQualityEvaluator(CLASSES), [(target, {"labels": prediction["labels"]})])
