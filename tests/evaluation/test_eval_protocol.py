"""The shared protocol: one pass for all metrics, JSON-ready output, reports, the CLI."""

import json
import re

import pytest
import torch

from prm.cli import main
from prm.evaluation import (
    METRICS,
    Evaluator,
    EvaluatorList,
    InstanceSegmentationEvaluator,
    build_evaluators,
    evaluate,
    format_table,
    run_evaluation,
    save_results,
)
from prm.masks import encode_rle

CLASSES = ["a", "b"]
SIZE = (12, 12)


@pytest.fixture
def full_pairs(rects):
    """Two images with every key a predictor produces."""

    def pair(image_id, gt_boxes, gt_labels, boxes, labels, scores):
        masks = rects(SIZE, *boxes)
        target = {
            "image_id": image_id,
            "size": SIZE,
            "masks": rects(SIZE, *gt_boxes),
            "labels": torch.tensor(gt_labels, dtype=torch.int64),
            "iscrowd": torch.zeros(len(gt_labels), dtype=torch.bool),
            "ignore_mask": torch.zeros(SIZE, dtype=torch.bool),
            "image_labels": torch.zeros(2).index_fill_(
                0, torch.tensor(gt_labels, dtype=torch.int64), 1
            ),
        }
        prms = masks.float() / masks.flatten(1).sum(1).clamp(min=1)[:, None, None]
        prediction = {
            "masks": masks,
            "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.tensor(scores),
            "prms": prms,
            "class_scores": torch.tensor([1.0, -1.0]),
            "class_peaks": torch.tensor([[2.0, 2.0], [9.0, 9.0]]),
        }
        return target, prediction

    return [
        pair(
            "x",
            [(0, 6, 0, 6), (6, 12, 6, 12)],
            [0, 1],
            [(0, 6, 0, 5), (6, 12, 6, 12)],
            [0, 1],
            [0.9, 0.4],
        ),
        pair("y", [(2, 8, 2, 8)], [0], [(0, 3, 0, 3)], [1], [0.7]),
    ]


def test_all_metrics_in_one_pass_are_json_ready(full_pairs):
    evaluators = build_evaluators(list(METRICS), CLASSES)
    one_pass = evaluate(evaluators, iter(full_pairs))  # a generator is enough
    json.dumps(one_pass, allow_nan=False)  # no NaN, no numpy types
    assert {k.split("/")[0] for k in one_pass} == set(METRICS)
    separately = {}
    for cls in METRICS.values():
        separately.update(evaluate(cls(CLASSES), full_pairs))
    assert one_pass == separately


def test_rle_predictions_are_decoded_once_for_all(full_pairs, monkeypatch):
    import prm.evaluation.base as base

    calls = []
    decode = base.decode_rle
    monkeypatch.setattr(base, "decode_rle", lambda *a, **k: calls.append(1) or decode(*a, **k))
    as_rle = [
        (t, {**{k: v for k, v in p.items() if k != "masks"}, "rles": encode_rle(p["masks"])})
        for t, p in full_pairs
    ]
    names = ["instance", "coco", "semantic"]
    from_rle = evaluate(build_evaluators(names, CLASSES), as_rle)
    assert len(calls) == len(full_pairs)  # once per image, shared by three evaluators
    assert from_rle == evaluate(build_evaluators(names, CLASSES), full_pairs)


def test_missing_keys_are_named(full_pairs):
    target, prediction = full_pairs[0]
    for cls in METRICS.values():
        evaluator = cls(CLASSES)
        for key in evaluator.prediction_keys:
            partial = {k: v for k, v in prediction.items() if k != key}
            with pytest.raises(ValueError, match=f"needs '{key}' in each prediction dict.*image x"):
                evaluator.process([target], [partial])
        for key in evaluator.target_keys:
            partial = {k: v for k, v in target.items() if k != key}
            with pytest.raises(ValueError, match=f"needs '{key}' in each target dict"):
                evaluator.process([partial], [prediction])


def test_build_evaluators_checks_names():
    with pytest.raises(ValueError, match="unknown metric"):
        build_evaluators(["instance", "nope"], CLASSES)
    with pytest.raises(ValueError, match="not selected"):
        build_evaluators(["coco"], CLASSES, instance={"use_07_metric": True})
    with pytest.raises(ValueError, match="share a name"):
        EvaluatorList(
            [InstanceSegmentationEvaluator(CLASSES), InstanceSegmentationEvaluator(CLASSES)]
        )
    with pytest.raises(ValueError, match="unique"):
        InstanceSegmentationEvaluator(["a", "a"])
    assert isinstance(build_evaluators(["coco"], CLASSES).evaluators[0], Evaluator)


def test_table_and_report_files(full_pairs, tmp_path, capsys):
    metrics = run_evaluation(
        full_pairs, CLASSES, metrics=["instance", "semantic"], out_dir=tmp_path
    )
    printed = capsys.readouterr().out
    assert "instance/mAP_r@0.5" in printed and "per class (%)" in printed
    assert printed.strip() == format_table(metrics, CLASSES).strip()
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == [
        "pr_curve_iou0.25.png",
        "pr_curve_iou0.5.png",
        "pr_curve_iou0.7.png",
        "pr_curve_iou0.75.png",
    ]
    assert (tmp_path / "pr_curve_iou0.5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_format_table_cells():
    table = format_table({"x/mAP": 0.5, "x/AP/a": None, "x/AP/b": 0.25, "x/num_images": 3}, CLASSES)
    assert re.search(r"^x/mAP +50.0$", table, re.M)
    assert re.search(r"^x/num_images +3$", table, re.M)
    lines = table.splitlines()
    assert lines[-1].split() == ["b", "25.0"] and "a" not in [
        line.split()[0] for line in lines[-2:]
    ]


# --- prm evaluate ----------------------------------------------------------------------


@pytest.fixture
def voc_results(shared_data, tmp_path):
    """A results file of the VOC sample's own masks (perfect, shuffled scores)."""
    from prm.data import build_dataset

    dataset = build_dataset("voc", shared_data / "voc-sample" / "VOC2012", "trainval")
    predictions, ids = [], []
    for i in range(len(dataset)):
        _, target = dataset[i]
        n = len(target["labels"])
        predictions.append(
            {"masks": target["masks"], "labels": target["labels"], "scores": torch.rand(n)}
        )
        ids.append(target["image_id"])
    path = tmp_path / "results.json"
    save_results(path, predictions, ids, dataset.category_ids)
    return shared_data / "voc-sample" / "VOC2012", path


def test_cli_evaluate(voc_results, tmp_path, capsys):
    root, results = voc_results
    out = tmp_path / "eval"
    argv = ["evaluate", "--dataset", "voc", "--root", str(root), "--split", "trainval"]
    assert main([*argv, "--predictions", str(results), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^instance/mAP_r@0.5 +100.0$", printed, re.M)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["instance/num_instances"] == 12 and metrics["coco/AP"] == pytest.approx(1.0)
    assert metrics["semantic/mIoU"] == pytest.approx(1.0)
    assert len(list(out.glob("pr_curve_*.png"))) == 4


def test_cli_evaluate_errors_are_one_line(voc_results, tmp_path, capsys):
    root, results = voc_results
    entries = json.loads(results.read_text())
    entries[0]["image_id"] = "2099_000001"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(entries))
    argv = ["evaluate", "--dataset", "voc", "--root", str(root), "--split", "trainval", "--quiet"]
    assert main([*argv, "--predictions", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "unknown image_id '2099_000001'" in err

    # A mask of the wrong size is caught when decoded, and still names the file.
    entries = json.loads(results.read_text())
    entries[0]["segmentation"] = encode_rle(torch.ones(1, 4, 4))[0]
    bad.write_text(json.dumps(entries))
    assert main([*argv, "--predictions", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "(4, 4)" in err

    assert main([*argv, "--predictions", str(results), "--metrics", "pointwise"]) == 2
    assert "prm predict --evaluate" in capsys.readouterr().err
