"""Real COCO annotations (../shared/data/coco-sample) with predictions made from them.

For every non-crowd object there is a *good* prediction (its own mask, IoU 1) and a *bad*
one (one pixel of it: IoU <= 1/9 with any object, since the smallest has 9 px, so a
false positive at every threshold). Ranking the good above the bad gives AP 1; any other
order can only lower AP, and putting every bad one first gives the least AP. Eroding the
good masks lowers IoU, so AP at strict thresholds must fall, more for more erosion.
"""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.ndimage import binary_erosion

from prm.cli import main
from prm.evaluation import (
    COCOEvaluator,
    InstanceSegmentationEvaluator,
    evaluate,
    load_results,
    save_results,
)
from prm.evaluation.coco import COCO_STATS
from prm.masks import mask_iou

_LOADED: dict = {}  # the sample is read once per test session


@pytest.fixture
def coco_sample(shared_data):
    if "sample" not in _LOADED:
        _LOADED["sample"] = read_coco_sample(shared_data / "coco-sample")
    return _LOADED["sample"]


def read_coco_sample(root):
    """Targets straight from the official annotations with pycocotools (not prm.data)."""
    annotations = root / "annotations" / "instances_val2017.json"
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotations))
    category_ids = sorted(coco.getCatIds())
    classes = [coco.cats[c]["name"] for c in category_ids]
    targets = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        size = (info["height"], info["width"])
        masks = np.stack([coco.annToMask(a) for a in anns]).astype(bool)
        targets.append(
            {
                "image_id": str(image_id),
                "size": size,
                "masks": torch.from_numpy(masks),
                "labels": torch.tensor([category_ids.index(a["category_id"]) for a in anns]),
                "iscrowd": torch.tensor([bool(a["iscrowd"]) for a in anns]),
            }
        )
    return {
        "annotations": annotations,
        "classes": classes,
        "category_ids": category_ids,
        "targets": targets,
    }


def derived_predictions(targets, scheme: str, erode: int = 0, seed: int = 0):
    """Good (own mask, eroded ``erode`` times) and bad (one pixel) predictions per object."""
    rng = np.random.default_rng(seed)
    predictions = []
    for t in targets:
        keep = ~t["iscrowd"]
        good = t["masks"][keep].clone()
        if erode:
            good = torch.from_numpy(
                np.stack([binary_erosion(m, iterations=erode) for m in good.numpy()])
            )
        bad = torch.zeros_like(good)
        for k, m in enumerate(t["masks"][keep]):
            y, x = torch.nonzero(m)[0]
            bad[k, y, x] = True
        n = len(good)
        if scheme == "ordered":  # every good above every bad
            scores = np.concatenate([1 + rng.random(n), rng.random(n)])
        elif scheme == "reversed":  # every bad above every good
            scores = np.concatenate([rng.random(n), 1 + rng.random(n)])
        else:  # shuffled
            scores = rng.random(2 * n)
        predictions.append(
            {
                "masks": torch.cat([good, bad]),
                "labels": torch.cat([t["labels"][keep], t["labels"][keep]]),
                "scores": torch.from_numpy(scores).float(),
            }
        )
    return predictions


def run(sample, predictions):
    evaluators = [
        InstanceSegmentationEvaluator(sample["classes"]),
        COCOEvaluator(sample["classes"], sample["category_ids"]),
    ]
    return evaluate(evaluators, zip(sample["targets"], predictions, strict=True))


def test_bad_predictions_are_false_positives_everywhere(coco_sample):
    # The premise of the orderings below.
    for t, p in zip(
        coco_sample["targets"], derived_predictions(coco_sample["targets"], "ordered"), strict=True
    ):
        bad = p["masks"][len(p["masks"]) // 2 :]
        assert mask_iou(bad, t["masks"]).max() <= 1 / 8


def test_score_order_is_reflected(coco_sample):
    targets = coco_sample["targets"]
    ordered = run(coco_sample, derived_predictions(targets, "ordered"))
    shuffled = run(coco_sample, derived_predictions(targets, "shuffled"))
    reversed_ = run(coco_sample, derived_predictions(targets, "reversed"))
    for key in (
        "instance/mAP_r@0.25",
        "instance/mAP_r@0.5",
        "instance/mAP_r@0.75",
        "coco/AP",
        "coco/AP50",
    ):
        assert ordered[key] == pytest.approx(1.0), key
        assert ordered[key] > shuffled[key] > reversed_[key], key
    assert ordered["instance/ABO"] == pytest.approx(1.0)
    # 18 classes have objects; the crowd (one person crowd) is not counted.
    assert ordered["instance/num_instances"] == 76
    assert sum(ordered[f"instance/AP_r@0.5/{c}"] is not None for c in coco_sample["classes"]) == 18


def test_erosion_lowers_strict_thresholds(coco_sample):
    targets = coco_sample["targets"]
    exact = run(coco_sample, derived_predictions(targets, "ordered"))
    light = run(coco_sample, derived_predictions(targets, "ordered", erode=1))
    heavy = run(coco_sample, derived_predictions(targets, "ordered", erode=4))
    assert exact["coco/AP"] > light["coco/AP"] > heavy["coco/AP"]
    assert exact["instance/ABO"] > light["instance/ABO"] > heavy["instance/ABO"]
    for r in (light, heavy):
        assert r["instance/mAP_r@0.25"] >= r["instance/mAP_r@0.5"] >= r["instance/mAP_r@0.75"]
    assert heavy["instance/mAP_r@0.75"] < exact["instance/mAP_r@0.75"]


def test_equals_pycocotools_on_the_official_annotations(coco_sample, tmp_path):
    targets = coco_sample["targets"]
    predictions = derived_predictions(targets, "shuffled", erode=1, seed=3)
    ours = run(coco_sample, predictions)
    results = tmp_path / "results.json"
    save_results(
        results, predictions, [int(t["image_id"]) for t in targets], coco_sample["category_ids"]
    )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_sample["annotations"]))
        cocoeval = COCOeval(gt, gt.loadRes(str(results)), iouType="segm")
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    # Polygon areas (official json) and mask areas (ours) put every object of this sample in
    # the same size bucket, so all twelve numbers agree, not only AP/AP50/AP75/AR.
    ours_stats = [-1.0 if ours[f"coco/{k}"] is None else ours[f"coco/{k}"] for k in COCO_STATS]
    np.testing.assert_allclose(ours_stats, cocoeval.stats, atol=1e-12)
    assert 0.2 < ours["coco/AP"] < 0.95

    # The same file read back (RLE kept, decoded per image) gives the same numbers.
    loaded = load_results(results, [t["image_id"] for t in targets], coco_sample["category_ids"])
    assert run(coco_sample, loaded) == ours

    # And so does `prm evaluate` with prm.data's COCO reader.
    root = coco_sample["annotations"].parents[1]
    argv = ["evaluate", "--dataset", "coco", "--root", str(root), "--split", "val2017"]
    out = tmp_path / "eval"
    assert main([*argv, "--predictions", str(results), "--out", str(out), "--quiet"]) == 0
    from_cli = json.loads((out / "metrics.json").read_text())
    assert {k: v for k, v in from_cli.items() if k.startswith(("coco/", "instance/"))} == {
        k: pytest.approx(v) if isinstance(v, float) else v
        for k, v in ours.items()
        if k.startswith(("coco/", "instance/"))
    }
