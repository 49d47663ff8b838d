"""Per-image AP, the best / worst / random sample, and what the gallery saves."""

import json

import numpy as np
import pytest
import torch

from prm.evaluation import InstanceSegmentationEvaluator
from prm.report import GROUPS, GallerySampler, load_gallery, match_image

from .conftest import CLASSES, box, scene


def test_matches_mark_false_positives_and_misses():
    target = {"masks": torch.stack([box(0, 0, 10, 10), box(20, 20, 10, 10)]),
              "labels": torch.tensor([0, 0])}  # fmt: skip
    prediction = {
        "masks": torch.stack([box(30, 0, 5, 5), box(0, 0, 10, 10)]),
        "labels": torch.tensor([0, 0]),
        "scores": torch.tensor([0.2, 0.9]),
    }
    result = match_image(target, prediction, num_classes=2)
    assert result["matches"].tolist() == [0, 1]  # in the prediction's order, not by score
    assert result["missed"].tolist() == [False, True]
    # One of two objects found, at the top of the ranking, then a false positive: AP 0.5.
    assert result["score"] == pytest.approx(0.5)


def test_a_predicted_absent_class_scores_zero_and_an_empty_image_has_no_score():
    target = {"masks": box(0, 0, 10, 10)[None], "labels": torch.tensor([0])}
    prediction = {
        "masks": torch.stack([box(0, 0, 10, 10), box(20, 20, 5, 5)]),
        "labels": torch.tensor([0, 1]),
        "scores": torch.tensor([0.9, 0.8]),
    }
    result = match_image(target, prediction, num_classes=2)
    assert result["class_ap"] == {0: 1.0, 1: 0.0}
    assert result["score"] == pytest.approx(0.5)
    empty = {"masks": torch.zeros(0, 48, 48, dtype=torch.bool), "labels": torch.zeros(0)}
    nothing = {**empty, "scores": torch.zeros(0)}
    assert match_image(empty, nothing, num_classes=2)["score"] is None


@pytest.mark.parametrize("k", range(6))
def test_image_ap_equals_the_evaluators_map_on_that_image_alone(k):
    # Where every predicted class is in the ground truth, per-image AP is mAP^r@0.5 of a
    # one-image evaluation: the same matching, the same AP.
    _, target, prediction = scene(k, shift=0)
    keep = torch.isin(prediction["labels"], target["labels"])
    prediction = {key: prediction[key][keep] for key in ("masks", "labels", "scores")}
    evaluator = InstanceSegmentationEvaluator(CLASSES, iou_thresholds=[0.5])
    evaluator.process_image(target, prediction)
    expected = evaluator.summarize()["instance/mAP_r@0.5"]
    assert match_image(target, prediction, len(CLASSES))["score"] == pytest.approx(expected)


def synthetic(score_of):
    """(image, target, prediction) whose per-image AP is ``score_of`` (0, 0.5 or 1)."""
    target = {"masks": torch.stack([box(0, 0, 10, 10), box(20, 20, 10, 10)]),
              "labels": torch.tensor([0, 0])}  # fmt: skip
    n = {0.0: 0, 0.5: 1, 1.0: 2}[score_of]
    prediction = {
        "masks": target["masks"][:n],
        "labels": target["labels"][:n],
        "scores": torch.tensor([0.9, 0.8])[:n],
    }
    return torch.zeros(3, 48, 48), target, prediction


def test_sampler_keeps_the_best_the_worst_and_a_seeded_random_sample(tmp_path):
    scores = [0.5, 1.0, 0.0, 0.5, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5]
    chosen = []
    for seed in (0, 0, 1):
        sampler = GallerySampler(tmp_path / f"g{len(chosen)}", ["a"], count=2, seed=seed)
        for k, s in enumerate(scores):
            image, target, prediction = synthetic(s)
            target["image_id"] = f"im{k}"
            assert sampler.add(image, target, prediction) == pytest.approx(s)
        index, items = load_gallery(sampler.finish())
        groups = {g: [i["image_id"] for i in items if i["group"] == g] for g in GROUPS}
        chosen.append(groups)
        assert groups["best"] == ["im1", "im4"]  # ties: the earlier image first
        assert groups["worst"] == ["im2", "im5"]
        assert len(groups["random"]) <= 2
        assert not set(groups["random"]) & set(groups["best"] + groups["worst"])
        assert index["images"] == 10 and index["mean_image_ap"] == pytest.approx(0.5)
    assert chosen[0] == chosen[1]  # same seed, same sample


def test_gallery_files_are_named_by_number_never_by_image_id(tmp_path):
    sampler = GallerySampler(tmp_path / "run" / "gallery", CLASSES, count=3)
    for k in range(4):
        sampler.add(*scene(k, shift=0))
    folder = sampler.finish()
    names = sorted(p.name for p in (tmp_path / "run").rglob("*") if p.is_file())
    assert names == ["000.npz", "001.npz", "002.npz", "003.npz", "index.json"]
    assert all(p.parent == folder for p in (tmp_path / "run").rglob("*.npz"))
    _, items = load_gallery(folder)
    assert sorted(i["image_id"] for i in items) == [f"../img {k}<b>" for k in range(4)]
    item = items[0]
    assert item["image"].dtype == np.uint8 and item["image"].shape == (48, 48, 3)
    assert item["prms"].dtype == np.float16 and len(item["prms"]) == len(item["labels"])
    assert item["crm_classes"].tolist() == sorted(set(item["labels"]) | set(item["gt_labels"]))


def test_a_gallery_index_cannot_point_outside_its_folder(tmp_path):
    sampler = GallerySampler(tmp_path, CLASSES, count=1)
    sampler.add(*scene(0, shift=0))
    sampler.finish()
    index = json.loads((tmp_path / "index.json").read_text())
    index["items"][0]["file"] = "../secret.npz"
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="bad gallery file name"):
        load_gallery(tmp_path)
