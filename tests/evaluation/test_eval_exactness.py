"""mAP^r equals chainercv's exactly: ties, IoU at the threshold, score precision, numpy input.

The reference is chainercv's evaluator reimplemented line for line in
``tests/evaluation/reference_chainercv.py`` (chainercv itself does not install on numpy 2).
Differences must be 0, not "close": every AP is compared with ``==``.
"""

import json

import numpy as np
import pytest
import torch

from prm.evaluation import InstanceSegmentationEvaluator, evaluate
from tests.evaluation.reference_chainercv import eval_instance_segmentation_voc

THRESHOLDS = (0.25, 0.5, 0.7, 0.75)
CLASSES = ["a", "b", "c"]


def reference_aps(scenes, threshold):
    """{label: AP or None} from the chainercv reference."""
    pm, pl, ps, gm, gl = zip(*scenes, strict=True)
    ap = eval_instance_segmentation_voc(pm, pl, ps, gm, gl, iou_thresh=threshold)["ap"]
    return {c: (None if c >= len(ap) or np.isnan(ap[c]) else float(ap[c])) for c in range(3)}


def ours(scenes, to=torch.from_numpy, **options):
    pairs = [
        (
            {"image_id": str(i), "size": gm.shape[1:], "masks": to(gm), "labels": to(gl)},
            {"masks": to(pm), "labels": to(pl), "scores": to(ps)},
        )
        for i, (pm, pl, ps, gm, gl) in enumerate(scenes)
    ]
    evaluator = InstanceSegmentationEvaluator(CLASSES, iou_thresholds=THRESHOLDS, **options)
    return evaluate(evaluator, pairs)


def assert_equal_to_reference(scenes, result):
    compared = 0
    for threshold in THRESHOLDS:
        expected = reference_aps(scenes, threshold)
        for label, name in enumerate(CLASSES):
            got = result[f"instance/AP_r@{threshold:g}/{name}"]
            assert got == expected[label], (threshold, name, got, expected[label])
            compared += expected[label] is not None
        defined = [ap for ap in expected.values() if ap is not None]
        if defined:
            assert result[f"instance/mAP_r@{threshold:g}"] == np.mean(defined)
    return compared


def random_scene(rng, dtype, size=(12, 12), levels=3):
    """Boxes on a small grid (many equal IoUs) and scores from a few levels (many ties)."""

    def boxes(n):
        masks = np.zeros((n, *size), dtype=bool)
        for i in range(n):
            r0, c0 = rng.integers(0, size[0] - 2), rng.integers(0, size[1] - 2)
            masks[i, r0 : r0 + rng.integers(2, 6), c0 : c0 + rng.integers(2, 6)] = True
        return masks

    num_gt, num_pred = rng.integers(0, 5), rng.integers(0, 9)
    gm, gl = boxes(num_gt), rng.integers(0, 3, num_gt)
    picked = rng.integers(0, num_gt, num_pred // 2) if num_gt else np.zeros(0, dtype=int)
    copies = np.roll(gm[picked], rng.integers(-1, 2), axis=2)
    pm = np.concatenate([copies, boxes(num_pred - len(copies))])
    pl = np.concatenate([gl[picked], rng.integers(0, 3, num_pred - len(copies))])
    ps = (rng.integers(0, levels, len(pm)) / levels).astype(dtype)
    return pm, pl, ps, gm, gl


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ties_are_ordered_as_chainercv_orders_them(dtype):
    """Item 13: a stable sort ordered ties differently (up to 0.136 AP apart)."""
    rng = np.random.default_rng(13)
    scenes = [random_scene(rng, dtype) for _ in range(60)]
    assert assert_equal_to_reference(scenes, ours(scenes)) >= 10


def test_stable_tie_order_is_an_option_and_differs_here():
    rng = np.random.default_rng(13)
    scenes = [random_scene(rng, np.float32) for _ in range(60)]
    chainer, stable = ours(scenes), ours(scenes, ties="stable")
    keys = [k for k in chainer if k.startswith("instance/AP_r@")]
    # the same records, only ties ranked otherwise: this data has ties that matter
    assert any(chainer[k] != stable[k] for k in keys)
    with pytest.raises(ValueError, match="ties must be one of"):
        InstanceSegmentationEvaluator(CLASSES, ties="random")


@pytest.mark.parametrize(
    "threshold, inter, union", [(0.25, 1, 4), (0.5, 5, 10), (0.7, 7, 10), (0.75, 3, 4)]
)
def test_iou_exactly_at_the_threshold_is_a_hit(threshold, inter, union):
    """Item 14: IoU 7/10 was computed in float32 (0.69999999) and missed 0.7."""
    gm = np.zeros((1, 2, 10), dtype=bool)
    gm[0, 0, :union] = True
    exact = np.zeros((1, 2, 10), dtype=bool)
    exact[0, 0, :inter] = True
    below = np.zeros((1, 2, 10), dtype=bool)  # one pixel less: IoU just under
    below[0, 0, : inter - 1] = True
    below[0, 1, 0] = True  # keeps the prediction non-empty and widens the union
    label, score = np.array([0]), np.array([0.5], dtype=np.float32)
    scenes = [(exact, label, score, gm, label), (below, label, score, gm, label)]
    result = ours(scenes)
    assert_equal_to_reference(scenes, result)
    hit = ours(scenes[:1])
    assert hit[f"instance/AP_r@{threshold:g}/a"] == 1.0
    assert ours(scenes[1:])[f"instance/AP_r@{threshold:g}/a"] == 0.0
    # ABO keeps the exact value too
    assert hit["instance/ABO"] == inter / union


def test_distinct_float64_scores_stay_distinct():
    """Item 15: scores cast to float32 became a tie; AP 1.0 became 0.5."""
    gm = np.zeros((1, 4, 4), dtype=bool)
    gm[0, :2, :2] = True
    pm = np.zeros((2, 4, 4), dtype=bool)
    pm[0, 2:, 2:] = True  # a miss, listed first
    pm[1, :2, :2] = True  # the hit, scored higher by 1e-12
    scores = np.array([0.5, 0.5 + 1e-12])
    assert np.float32(scores[0]) == np.float32(scores[1])
    scene = (pm, np.array([0, 0]), scores, gm, np.array([0]))
    for options in ({}, {"ties": "stable"}):
        assert ours([scene], **options)["instance/AP_r@0.5/a"] == 1.0
    # Python lists of floats are float64 too
    as_lists = ours([scene], to=lambda x: x.tolist() if x.dtype != bool else x)
    assert as_lists["instance/AP_r@0.5/a"] == 1.0


def test_numpy_and_list_inputs_are_accepted_and_equal_torch():
    """Item 16: numpy masks/labels/scores raised AttributeError (.dim)."""
    rng = np.random.default_rng(16)
    scenes = [random_scene(rng, np.float32, levels=1000) for _ in range(10)]
    torch_result = ours(scenes)
    assert ours(scenes, to=lambda x: x) == torch_result
    assert ours(scenes, to=lambda x: x[::-1][::-1]) == torch_result  # views, odd strides
    evaluator = InstanceSegmentationEvaluator(CLASSES)
    target = {"image_id": "x", "size": (2, 2), "masks": np.zeros((0, 2, 2), bool), "labels": []}
    with pytest.raises(ValueError, match="prediction scores of image .* must be a torch tensor"):
        evaluator.process(
            [target], [{"masks": np.zeros((1, 2, 2), bool), "labels": [0], "scores": "high"}]
        )


def test_chainercv_reference_on_plain_random_scenes_with_many_thresholds():
    """Distinct scores on larger random scenes: equal to the reference too."""
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng, np.float64, size=(24, 24), levels=10**6) for _ in range(40)]
    assert assert_equal_to_reference(scenes, ours(scenes)) >= 9


def test_results_files_keep_float64_scores(tmp_path):
    """Item 15, for `prm evaluate`: scores read from a results json were float32."""
    from prm.evaluation import load_results
    from prm.masks import encode_rle

    rle = encode_rle(torch.ones(1, 2, 2, dtype=torch.bool))[0]
    entries = [
        {"image_id": "x", "category_id": 1, "segmentation": rle, "score": score}
        for score in (0.5, 0.5 + 1e-12)
    ]
    (tmp_path / "r.json").write_text(json.dumps(entries))
    scores = load_results(tmp_path / "r.json", ["x"], category_ids=[1])[0]["scores"]
    assert scores[0] != scores[1] and scores.dtype == torch.float64
