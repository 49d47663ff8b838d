"""COCO-style AP: our numbers equal pycocotools' run directly on files, crowds included."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from prm.evaluation import COCOEvaluator, evaluate, save_results
from prm.evaluation.coco import COCO_STATS


def pycocotools_stats(gt_json: str, results_json: str) -> np.ndarray:
    """The 12 COCOeval segm numbers, computed from files as a user of pycocotools would."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        dt = gt.loadRes(results_json)
        cocoeval = COCOeval(gt, dt, iouType="segm")
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    return cocoeval.stats


def ours_as_stats(metrics: dict) -> np.ndarray:
    return np.array(
        [-1.0 if metrics[f"coco/{k}"] is None else metrics[f"coco/{k}"] for k in COCO_STATS]
    )


def synthetic_scene(seed: int, num_images: int = 6, size=(40, 50)):
    """Random rectangles in 3 classes, a crowd region, jittered and spurious predictions."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(num_images):
        n = int(rng.integers(0, 6))
        masks = np.zeros((n, *size), dtype=bool)
        for k in range(n):
            r0, c0 = rng.integers(0, size[0] - 5), rng.integers(0, size[1] - 5)
            masks[k, r0 : r0 + rng.integers(2, 30), c0 : c0 + rng.integers(2, 30)] = True
        labels = rng.integers(0, 3, n)
        crowd = np.zeros(n, dtype=bool)
        if n >= 3:
            crowd[-1] = True
        # Predictions: shifted copies (some exact), plus random boxes of random classes.
        pred = [np.roll(m, int(rng.integers(-3, 4)), axis=1) for m in masks]
        extra = int(rng.integers(0, 4))
        for _ in range(extra):
            m = np.zeros(size, dtype=bool)
            r0, c0 = rng.integers(0, size[0] - 5), rng.integers(0, size[1] - 5)
            m[r0 : r0 + 10, c0 : c0 + 12] = True
            pred.append(m)
        pred_labels = np.concatenate([labels, rng.integers(0, 3, extra)])
        target = {
            "image_id": str(100 + i),
            "size": size,
            "masks": torch.from_numpy(masks),
            "labels": torch.from_numpy(labels),
            "iscrowd": torch.from_numpy(crowd),
        }
        prediction = {
            "masks": torch.from_numpy(np.array(pred, dtype=bool).reshape(-1, *size)),
            "labels": torch.from_numpy(pred_labels),
            "scores": torch.from_numpy(rng.random(len(pred))).float(),
        }
        pairs.append((target, prediction))
    return pairs


def write_gt_json(path, pairs, category_ids):
    """Ground truth as a COCO json written straight from pycocotools' RLE encoder."""
    images, annotations = [], []
    for target, _ in pairs:
        h, w = target["size"]
        images.append({"id": int(target["image_id"]), "height": h, "width": w})
        for mask, label, crowd in zip(
            target["masks"], target["labels"], target["iscrowd"], strict=True
        ):
            rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(target["image_id"]),
                    "category_id": category_ids[int(label)],
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                    "area": float(mask.sum()),
                    "bbox": list(mask_utils.toBbox(rle)),
                    "iscrowd": int(crowd),
                }
            )
    categories = [{"id": c, "name": f"class{c}"} for c in category_ids]
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocotools_on_synthetic_scenes(tmp_path, seed):
    pairs = synthetic_scene(seed)
    category_ids = [3, 7, 11]  # not label + 1: the mapping must be used
    assert any(t["iscrowd"].any() for t, _ in pairs)
    ours = evaluate(COCOEvaluator(["a", "b", "c"], category_ids), pairs)
    write_gt_json(tmp_path / "gt.json", pairs, category_ids)
    save_results(
        tmp_path / "results.json",
        (p for _, p in pairs),
        (int(t["image_id"]) for t, _ in pairs),
        category_ids,
    )
    expected = pycocotools_stats(str(tmp_path / "gt.json"), str(tmp_path / "results.json"))
    np.testing.assert_allclose(ours_as_stats(ours), expected, atol=1e-12)
    assert 0.0 < ours["coco/AP50"] < 1.0  # a non-trivial case


def test_perfect_predictions_score_one(rects):
    t = {"image_id": "1", "size": (10, 10), "masks": rects((10, 10), (0, 5, 0, 5), (5, 10, 5, 10)),
         "labels": torch.tensor([0, 1])}  # fmt: skip
    p = {
        "masks": t["masks"].clone(),
        "labels": t["labels"].clone(),
        "scores": torch.tensor([0.2, 0.9]),
    }
    r = evaluate(COCOEvaluator(["a", "b"]), [(t, p)])
    assert r["coco/AP"] == pytest.approx(1.0)
    assert r["coco/AP/a"] == pytest.approx(1.0) and r["coco/AP/b"] == pytest.approx(1.0)
    assert r["coco/APl"] is None  # no large object: COCOeval's -1 becomes None


def test_no_images_and_no_predictions(rects):
    assert COCOEvaluator(["a"]).summarize()["coco/AP"] is None
    t = {
        "image_id": "1",
        "size": (10, 10),
        "masks": rects((10, 10), (0, 5, 0, 5)),
        "labels": torch.tensor([0]),
    }
    p = {
        "masks": torch.zeros(0, 10, 10, dtype=torch.bool),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
    }
    assert evaluate(COCOEvaluator(["a"]), [(t, p)])["coco/AP"] == 0.0


def test_category_ids_must_fit_the_classes():
    with pytest.raises(ValueError, match="2 distinct ids"):
        COCOEvaluator(["a", "b"], category_ids=[1, 1])


def polygon_scene(tmp_path, seed=17, num_images=12, size=(90, 110)):
    """A COCO json of polygon objects whose json areas and pixel counts straddle 32^2."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images, annotations = [], []
    (tmp_path / "img").mkdir()
    for i in range(num_images):
        h, w = size
        Image.new("RGB", (w, h)).save(tmp_path / "img" / f"{i}.png")
        images.append({"id": 10 + i, "file_name": f"{i}.png", "height": h, "width": w})
        for _ in range(int(rng.integers(1, 5))):
            side, angle = rng.uniform(31.9, 32.1), rng.uniform(0, np.pi / 2)
            cy, cx = rng.uniform(25, h - 25), rng.uniform(25, w - 25)
            corners = [
                (cx + side / np.sqrt(2) * np.cos(angle + k * np.pi / 2),
                 cy + side / np.sqrt(2) * np.sin(angle + k * np.pi / 2))
                for k in range(4)
            ]  # fmt: skip
            polygon = [float(v) for xy in corners for v in xy]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 10 + i,
                    "category_id": int(rng.choice([1, 5])),
                    "segmentation": [polygon],
                    "area": side * side,  # the polygon's area, as in COCO's json
                    "bbox": [0, 0, 1, 1],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": 1, "name": "square"}, {"id": 5, "name": "diamond"}]
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


def test_size_ranges_use_the_json_area_as_pycocotools(tmp_path):
    """Issue 10, item 17: APs/m/l and ARs/m/l used the mask's pixel count, not `area`."""
    from prm.data import COCODataset

    gt_json = polygon_scene(tmp_path)
    dataset = COCODataset(gt_json, tmp_path / "img", keep_empty=True)
    rng = np.random.default_rng(0)
    pairs, straddle = [], 0
    for index in range(len(dataset)):
        target = dataset[index][1]
        pixels = target["masks"].flatten(1).sum(1).double()
        straddle += int(((pixels > 32**2) != (target["area"] > 32**2)).sum())
        masks = torch.roll(target["masks"], int(rng.integers(-4, 5)), dims=2)
        scores = torch.from_numpy(rng.random(len(masks)))
        pairs.append((target, {"masks": masks, "labels": target["labels"], "scores": scores}))
    assert straddle >= 3  # objects the two areas put in different size ranges
    ours = evaluate(COCOEvaluator(dataset.classes, dataset.category_ids), pairs)
    save_results(
        tmp_path / "results.json",
        (p for _, p in pairs),
        (int(t["image_id"]) for t, _ in pairs),
        dataset.category_ids,
    )
    expected = pycocotools_stats(str(gt_json), str(tmp_path / "results.json"))
    np.testing.assert_array_equal(ours_as_stats(ours), expected)  # difference 0
    assert 0 < ours["coco/APs"] < 1 and 0 < ours["coco/APm"] < 1
