"""mAP^r and ABO on examples worked out by hand (cross-checks: test_eval_exactness.py).

The main example: classes cat, dog, bird, fish; 10 x 10 images, four of them.

Image A  ground truth: cat1 = rows 0-4 x cols 0-4 (25 px), cat2 = rows 5-9 x cols 5-9,
         dog1 = rows 0-4 x cols 5-9.
         predictions: p1 cat 0.90 = cat1 exactly                  IoU(cat1) = 1
                      p2 cat 0.80 = cat1 again (a duplicate)      IoU(cat1) = 1
                      p3 cat 0.70 = rows 5-9 x cols 5-7 (15 px)   IoU(cat2) = 15/25 = 0.6
                      p4 bird 0.95 = dog1's pixels (bird has no ground truth anywhere)
Image B  ground truth: cat3 = rows 0-9 x cols 0-4 (50 px).
         predictions: p5 cat 0.80 (ties with p2) = rows 0-9 x cols 0-3, IoU(cat3) = 40/50 = 0.8
                      p6 cat 0.60 = rows 0-9 x cols 5-9           IoU(cat3) = 0
Image C  empty: no ground truth, no prediction.
Image D  no ground truth; pD cat 0.85 = rows 0-4 x cols 0-4 -> a false positive.

cat has 3 ground-truth instances. Its ranked predictions (ties keep image order: p2 of A
before p5 of B) and outcome at IoU 0.5:
    0.90 p1 TP | 0.85 pD FP | 0.80 p2 FP (cat1 already taken; NOT passed on to cat2)
    0.80 p5 TP | 0.70 p3 TP | 0.60 p6 FP
  tp = 1 1 1 2 3 3, fp = 0 1 2 2 2 3
  precision = 1, 1/2, 1/3, 1/2, 3/5, 1/2;  recall = 1/3, 1/3, 1/3, 2/3, 1, 1
  envelope at recall 1/3 = 1, at 2/3 = 3/5, at 1 = 3/5
  AP_0.5 = 1/3 * 1 + 1/3 * 3/5 + 1/3 * 3/5 = 11/15            (same at IoU 0.25)
At IoU 0.7 and 0.75 p3 (IoU 0.6) is a false positive:
  tp = 1 1 1 2 2 2, fp = 0 1 2 2 3 4, precision = 1, 1/2, 1/3, 1/2, 2/5, 1/3,
  recall = 1/3, 1/3, 1/3, 2/3, 2/3, 2/3  ->  AP = 1/3 * 1 + 1/3 * 1/2 = 1/2
dog: one ground truth, no prediction -> AP 0, counted.  bird: predictions, no ground
truth -> not counted (None).  fish: nothing -> None.
mAP^r_0.5 = (11/15 + 0) / 2 = 11/30;  mAP^r_0.75 = (1/2 + 0) / 2 = 1/4.

ABO: best same-class IoU per ground truth: cat1 1.0, cat2 0.6, cat3 0.8, dog1 0 ->
(1 + 0.6 + 0.8 + 0) / 4 = 0.6. Class-agnostic: dog1 is covered exactly by the bird p4 ->
(1 + 0.6 + 0.8 + 1) / 4 = 0.85.
"""

import numpy as np
import pytest
import torch

from prm.evaluation import InstanceSegmentationEvaluator, evaluate
from prm.masks import encode_rle

CLASSES = ["cat", "dog", "bird", "fish"]
CAT, DOG, BIRD = 0, 1, 2
SIZE = (10, 10)


def target(rects, image_id, boxes, labels, **extra):
    return {
        "image_id": image_id,
        "size": SIZE,
        "masks": rects(SIZE, *boxes),
        "labels": torch.tensor(labels, dtype=torch.int64),
        **extra,
    }


def prediction(rects, boxes, labels, scores):
    return {
        "masks": rects(SIZE, *boxes),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


@pytest.fixture
def four_images(rects):
    a = (
        target(rects, "A", [(0, 5, 0, 5), (5, 10, 5, 10), (0, 5, 5, 10)], [CAT, CAT, DOG]),
        prediction(
            rects,
            [(0, 5, 0, 5), (0, 5, 0, 5), (5, 10, 5, 8), (0, 5, 5, 10)],
            [CAT, CAT, CAT, BIRD],
            [0.9, 0.8, 0.7, 0.95],
        ),
    )
    b = (
        target(rects, "B", [(0, 10, 0, 5)], [CAT]),
        prediction(rects, [(0, 10, 0, 4), (0, 10, 5, 10)], [CAT, CAT], [0.8, 0.6]),
    )
    c = (target(rects, "C", [], []), prediction(rects, [], [], []))
    d = (target(rects, "D", [], []), prediction(rects, [(0, 5, 0, 5)], [CAT], [0.85]))
    return [a, b, c, d]


def test_hand_worked_map_r(four_images):
    evaluator = InstanceSegmentationEvaluator(CLASSES, class_agnostic_abo=True, ties="stable")
    r = evaluate(evaluator, four_images)
    assert r["instance/AP_r@0.25/cat"] == pytest.approx(11 / 15)
    assert r["instance/AP_r@0.5/cat"] == pytest.approx(11 / 15)
    assert r["instance/AP_r@0.7/cat"] == pytest.approx(1 / 2)
    assert r["instance/AP_r@0.75/cat"] == pytest.approx(1 / 2)
    assert r["instance/AP_r@0.5/dog"] == 0.0  # ground truth, no prediction: counted as 0
    assert r["instance/AP_r@0.5/bird"] is None  # predictions, no ground truth: not counted
    assert r["instance/AP_r@0.5/fish"] is None
    assert r["instance/mAP_r@0.25"] == pytest.approx(11 / 30)
    assert r["instance/mAP_r@0.5"] == pytest.approx(11 / 30)
    assert r["instance/mAP_r@0.75"] == pytest.approx(1 / 4)
    assert r["instance/ABO"] == pytest.approx(0.6)
    assert r["instance/ABO/cat"] == pytest.approx(2.4 / 3)
    assert r["instance/ABO/dog"] == 0.0
    assert r["instance/ABO/bird"] is None
    assert r["instance/ABO_class_agnostic"] == pytest.approx(0.85)
    assert r["instance/num_images"] == 4
    assert r["instance/num_instances"] == 4
    assert r["instance/num_predictions"] == 7


def test_ties_keep_processing_order(four_images):
    # Processing B before A puts p5 (TP) before p2 (FP) among the 0.8 ties:
    # TP FP TP FP TP FP, precision 1, 1/2, 2/3, 1/2, 3/5, 1/2, recall 1/3 .. 1
    # envelope 1, 2/3, 3/5 -> AP = (1 + 2/3 + 3/5) / 3 = 34/45.
    a, b, c, d = four_images
    r = evaluate(InstanceSegmentationEvaluator(CLASSES, ties="stable"), [b, a, c, d])
    assert r["instance/AP_r@0.5/cat"] == pytest.approx(34 / 45)


def test_default_ties_follow_numpy_argsort_as_chainercv(four_images):
    # chainercv ranks cat's records [A: .9 .8 .7 | B: .8 .6 | D: .85] (float32) by
    # np.argsort(scores)[::-1]; which 0.8 comes first is up to numpy's sort on this
    # machine: p2 of A (index 1) first gives 11/15, p5 of B (index 3) first 34/45.
    order = np.argsort(np.array([0.9, 0.8, 0.7, 0.8, 0.6, 0.85], dtype=np.float32))[::-1]
    expected = 11 / 15 if list(order).index(1) < list(order).index(3) else 34 / 45
    r = evaluate(InstanceSegmentationEvaluator(CLASSES), four_images)
    assert r["instance/AP_r@0.5/cat"] == pytest.approx(expected)


def test_voc07_eleven_point(four_images):
    # Recall levels 0, .1, .2, .3 see precision 1; .4 .. 1.0 see 3/5: (4 + 7 * 3/5) / 11.
    evaluator = InstanceSegmentationEvaluator(CLASSES, use_07_metric=True, ties="stable")
    r = evaluate(evaluator, four_images)
    assert r["instance/AP_r@0.5/cat"] == pytest.approx((4 + 7 * 0.6) / 11)


def test_results_do_not_depend_on_batching(four_images):
    one_pass = evaluate(InstanceSegmentationEvaluator(CLASSES), four_images)
    evaluator = InstanceSegmentationEvaluator(CLASSES)
    targets, predictions = zip(*four_images, strict=True)
    evaluator.process(list(targets[:3]), list(predictions[:3]))
    evaluator.process(list(targets[3:]), list(predictions[3:]))
    assert evaluator.summarize() == one_pass
    evaluator.reset()
    assert evaluator.summarize()["instance/num_images"] == 0


def test_rle_predictions_give_the_same_numbers(four_images):
    as_rle = [
        (t, {"rles": encode_rle(p["masks"]), "labels": p["labels"], "scores": p["scores"]})
        for t, p in four_images
    ]
    assert evaluate([InstanceSegmentationEvaluator(CLASSES)], as_rle) == evaluate(
        [InstanceSegmentationEvaluator(CLASSES)], four_images
    )


def test_crowd_is_neither_counted_nor_a_false_positive(rects):
    # cat ground truth: a (rows 0-4 x cols 0-4) and a crowd region (rows 5-9, all cols).
    # q1 0.95 lies inside the crowd -> ignored; q2 0.9 = a -> TP. AP = 1 with recall 1/1.
    # Counting the crowd as an object would give recall 1/2; counting q1 as FP, AP 1/2.
    t = target(rects, "X", [(0, 5, 0, 5), (5, 10, 0, 10)], [CAT, CAT])
    t["iscrowd"] = torch.tensor([False, True])
    p = prediction(rects, [(6, 9, 2, 8), (0, 5, 0, 5)], [CAT, CAT], [0.95, 0.9])
    r = evaluate(InstanceSegmentationEvaluator(CLASSES), [(t, p)])
    assert r["instance/AP_r@0.5/cat"] == 1.0
    assert r["instance/num_instances"] == 1
    # Without the crowd flag the region is an ordinary object that q1 misses (IoU 18/50).
    t["iscrowd"] = torch.tensor([False, False])
    r = evaluate(InstanceSegmentationEvaluator(CLASSES), [(t, p)])
    # FP then TP: precision 0, 1/2 at recall 0, 1/2 -> AP = 1/2 * 1/2
    assert r["instance/AP_r@0.5/cat"] == pytest.approx(0.25)


def test_ignore_mask_is_optional(rects):
    # ground truth rows 0-4 x cols 0-4 (25 px), ignore band rows 5-6 x cols 0-4 (10 px);
    # prediction rows 0-6 x cols 0-4 (35 px): IoU 25/35 = 0.71 as chainercv counts it,
    # 25/25 = 1 without the ignored pixels.
    t = target(rects, "X", [(0, 5, 0, 5)], [CAT])
    t["ignore_mask"] = rects(SIZE, (5, 7, 0, 5))[0]
    p = prediction(rects, [(0, 7, 0, 5)], [CAT], [0.5])
    plain = evaluate(InstanceSegmentationEvaluator(CLASSES), [(t, p)])
    ignoring = evaluate(InstanceSegmentationEvaluator(CLASSES, use_ignore_mask=True), [(t, p)])
    assert plain["instance/AP_r@0.7/cat"] == 1.0 and plain["instance/AP_r@0.75/cat"] == 0.0
    assert ignoring["instance/AP_r@0.75/cat"] == 1.0
    assert plain["instance/ABO"] == pytest.approx(25 / 35)
    assert ignoring["instance/ABO"] == pytest.approx(1.0)


def test_no_ground_truth_at_all_gives_none(rects):
    t = target(rects, "X", [], [])
    r = evaluate(
        InstanceSegmentationEvaluator(CLASSES), [(t, prediction(rects, [(0, 2, 0, 2)], [0], [1.0]))]
    )
    assert r["instance/mAP_r@0.5"] is None and r["instance/ABO"] is None


def test_bad_input_is_named(rects):
    evaluator = InstanceSegmentationEvaluator(CLASSES)
    t = target(rects, "img7", [(0, 5, 0, 5)], [CAT])
    with pytest.raises(ValueError, match="'scores'.*img7"):
        evaluator.process([t], [{"masks": rects(SIZE, (0, 1, 0, 1)), "labels": torch.tensor([0])}])
    with pytest.raises(ValueError, match="labels.*outside 0..3"):
        evaluator.process([t], [prediction(rects, [(0, 1, 0, 1)], [7], [1.0])])
    wrong_size = {"masks": torch.zeros(1, 4, 4, dtype=torch.bool), "labels": torch.tensor([0]),
                  "scores": torch.tensor([1.0])}  # fmt: skip
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\), expected \(N, 10, 10\)"):
        evaluator.process([t], [wrong_size])
    with pytest.raises(ValueError, match="2 targets and 1 predictions"):
        evaluator.process([t, t], [prediction(rects, [], [], [])])
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        InstanceSegmentationEvaluator(CLASSES, iou_thresholds=(0.0, 0.5))


@pytest.mark.parametrize("ignore", [False, True])
def test_records_from_candidates_equal_records_from_masks(ignore):
    """``CandidateRecords.record`` (a tuner's: IoUs of every candidate computed once)
    against ``image_record`` of the same masks, labels and scores: subsets in any order,
    repeated candidates, none, crowd regions, an ignore mask, float32 and float64
    scores with ties."""
    from prm.evaluation.instance import CandidateRecords  # noqa: F401 (public name)

    g = torch.Generator().manual_seed(0)
    size = (24, 20)
    candidates = torch.zeros(9, *size, dtype=torch.bool)
    for k in range(9):
        top, left = torch.randint(0, 14, (2,), generator=g).tolist()
        candidates[k, top : top + 4 + k, left : left + 6] = True
    gt = candidates[[0, 3, 5, 6]].clone()
    gt[1, :2] = True  # not quite candidate 3
    target = {
        "image_id": "x",
        "size": size,
        "masks": gt,
        "labels": torch.tensor([0, 1, 1, 0]),
        "iscrowd": torch.tensor([False, False, True, False]),
        "ignore_mask": torch.zeros(size, dtype=torch.bool).index_fill_(0, torch.tensor([3]), 1),
    }
    evaluator = InstanceSegmentationEvaluator(CLASSES, use_ignore_mask=ignore)
    table = evaluator.candidate_records(target, candidates)
    for trial in range(40):
        n = int(torch.randint(0, 7, (1,), generator=g))
        index = torch.randint(0, 9, (n,), generator=g)
        labels = torch.randint(0, 2, (n,), generator=g)
        scores = torch.randint(0, 4, (n,), generator=g).float() / 4  # ties
        if trial % 2:
            scores = scores.double() + 1e-12 * torch.arange(n)
        prediction = {"masks": candidates[index], "labels": labels, "scores": scores}
        expected = evaluator.image_record(target, prediction)
        got = table.record(index, labels, scores)
        (e_rows, e_wide, *e_rest), (g_rows, g_wide, *g_rest) = expected, got
        for a, b in zip(e_rows, g_rows):
            np.testing.assert_array_equal(a, b)
        assert (e_wide is None) == (g_wide is None)
        if e_wide is not None:
            np.testing.assert_array_equal(e_wide, g_wide)
        for a, b in zip(e_rest, g_rest):
            np.testing.assert_array_equal(a, b)
