"""Pointwise localisation and classification mAP, worked out by hand.

Classes a, b, c; 40 x 40 images; tolerance 5 px measured in image pixels (input_size=None).

image 1: a = rows 0-9 x cols 0-9 (box x, y in [0, 10]), b = rows 20-29 x cols 20-29.
         class scores a 3, b 1, c 2 (c absent).  peaks: a (5, 5) inside its box;
         b (34, 34): 4 px right of and below the box -> inside the box grown by 5 px, but
         sqrt(4^2 + 4^2) = 5.7 px from the nearest mask pixel.
image 2: a = rows 0-9 x cols 30-39.  scores a 2.5, b 0.5, c -1.  peak a (10, 20): 20 px
         left of the box -> wrong.
image 3: no object.  scores a 4, b -2, c 0.

Pointwise, box region. a ranks image 3 (absent: FP), 1 (TP), 2 (present, wrong place: FP);
  precision 0, 1/2, 1/3 at recall 0, 1/2, 1/2 -> AP = 1/2 * 1/2 = 1/4.
  b ranks image 1 (TP), 2 (FP), 3 (FP) with one positive -> AP = 1.  c: no positive -> None.
  mAP = (1/4 + 1) / 2 = 5/8.
Pointwise, mask region: b's peak is now wrong, b's AP = 0 -> mAP = (1/4 + 0) / 2 = 1/8.
Classification: a ranks 3 (neg), 1 (pos), 2 (pos): precision 0, 1/2, 2/3, recall 0, 1/2, 1
  -> AP = 1/2 * 2/3 + 1/2 * 2/3 = 2/3; b: AP = 1  -> mAP = 5/6.
"""

import pytest
import torch

from prm.evaluation import (
    ClassificationEvaluator,
    PointwiseLocalizationEvaluator,
    evaluate,
    point_on_object,
)

CLASSES = ["a", "b", "c"]
SIZE = (40, 40)


@pytest.fixture
def three_images(rects):
    def pair(image_id, boxes, labels, scores, peaks):
        target = {
            "image_id": image_id,
            "size": SIZE,
            "masks": rects(SIZE, *boxes),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_labels": torch.zeros(3).index_fill_(
                0, torch.tensor(labels, dtype=torch.int64), 1.0
            ),
        }
        prediction = {"class_scores": torch.tensor(scores), "class_peaks": torch.tensor(peaks)}
        return target, prediction

    return [
        pair(
            "im1",
            [(0, 10, 0, 10), (20, 30, 20, 30)],
            [0, 1],
            [3.0, 1.0, 2.0],
            [[5.0, 5.0], [34.0, 34.0], [0.0, 0.0]],
        ),
        pair(
            "im2", [(0, 10, 30, 40)], [0], [2.5, 0.5, -1.0], [[10.0, 20.0], [0.0, 0.0], [0.0, 0.0]]
        ),
        pair("im3", [], [], [4.0, -2.0, 0.0], [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]),
    ]


def test_pointwise_box_region(three_images):
    evaluator = PointwiseLocalizationEvaluator(CLASSES, tolerance=5, input_size=None)
    r = evaluate(evaluator, three_images)
    assert r["pointwise/AP/a"] == pytest.approx(1 / 4)
    assert r["pointwise/AP/b"] == pytest.approx(1.0)
    assert r["pointwise/AP/c"] is None
    assert r["pointwise/mAP"] == pytest.approx(5 / 8)
    assert r["pointwise/num_images"] == 3


def test_pointwise_mask_region(three_images):
    evaluator = PointwiseLocalizationEvaluator(CLASSES, tolerance=5, input_size=None, region="mask")
    r = evaluate(evaluator, three_images)
    assert r["pointwise/AP/b"] == 0.0
    assert r["pointwise/mAP"] == pytest.approx(1 / 8)


def test_pointwise_tolerance_is_measured_in_the_network_input(three_images):
    # Default: 18 px in a 448 x 448 input, i.e. 18 * 40 / 448 = 1.6 px of these images,
    # so b's peak (4 px off) is wrong too.
    r = evaluate(PointwiseLocalizationEvaluator(CLASSES), three_images)
    assert r["pointwise/AP/b"] == 0.0


def test_classification(three_images):
    r = evaluate(ClassificationEvaluator(CLASSES), three_images)
    assert r["classification/AP/a"] == pytest.approx(2 / 3)
    assert r["classification/AP/b"] == pytest.approx(1.0)
    assert r["classification/AP/c"] is None
    assert r["classification/mAP"] == pytest.approx(5 / 6)


def test_perfect_location_makes_pointwise_equal_classification(three_images):
    fixed = []
    for target, prediction in three_images:
        peaks = prediction["class_peaks"].clone()
        for mask, label in zip(target["masks"], target["labels"], strict=True):
            y, x = torch.nonzero(mask)[0]
            peaks[label] = torch.tensor([x + 0.5, y + 0.5])
        fixed.append((target, {**prediction, "class_peaks": peaks}))
    pointwise = evaluate(
        PointwiseLocalizationEvaluator(CLASSES, tolerance=0, input_size=None), fixed
    )
    classification = evaluate(ClassificationEvaluator(CLASSES), fixed)
    assert pointwise["pointwise/mAP"] == pytest.approx(classification["classification/mAP"])


def test_point_on_object(rects):
    box = rects((50, 100), (10, 20, 10, 20))  # x, y in [10, 20]
    assert point_on_object((15, 15), box, tolerance=0)
    assert point_on_object((22, 15), box, tolerance=2) and not point_on_object((22.5, 15), box, 2)
    # Image 100 wide x 50 high shown as 448 x 448: x scales by 4.48, y by 8.96.
    scale = (448 / 100, 448 / 50)
    assert point_on_object((23, 15), box, 18, scale)  # 3 px -> 13.4 px
    assert not point_on_object((15, 23), box, 18, scale)  # 3 px -> 26.9 px
    assert not point_on_object((float("nan"), 15), box, 18)
    assert not point_on_object((15, 15), box[:0], 18)
    with pytest.raises(ValueError, match="region"):
        point_on_object((15, 15), box, 18, region="circle")


def test_bad_input_is_named(three_images):
    target, prediction = three_images[0]
    with pytest.raises(ValueError, match=r"'class_peaks' of image im1 has shape \(3,\)"):
        evaluate(
            PointwiseLocalizationEvaluator(CLASSES),
            [(target, {**prediction, "class_peaks": torch.zeros(3)})],
        )
    with pytest.raises(ValueError, match="needs 'class_scores'"):
        evaluate(ClassificationEvaluator(CLASSES), [(target, {})])
    with pytest.raises(ValueError, match=r"'class_scores' of image im1 has shape \(2,\)"):
        evaluate(ClassificationEvaluator(CLASSES), [(target, {"class_scores": torch.zeros(2)})])
