"""`prm evaluate` finds the data a user has: COCO exports anywhere, VOC's val by default."""

import json

import pytest
import torch
from data_writers import write_jpeg, write_json

from prm.cli import main
from prm.data import build_dataset
from prm.evaluation import save_results


def perfect_results(dataset, path):
    """A results file of the dataset's own masks."""
    predictions, ids = [], []
    for i in range(len(dataset)):
        target = dataset[i][1]
        n = len(target["labels"])
        predictions.append(
            {"masks": target["masks"], "labels": target["labels"], "scores": torch.ones(n)}
        )
        ids.append(target["image_id"])
    save_results(path, predictions, ids, dataset.category_ids)
    return path


def test_voc_without_split_evaluates_val_not_train(voc_writer, tmp_path, capsys):
    """Issue 10, item 18: without --split, `train` was evaluated silently."""
    voc_writer.add("t1", instances=[8]).add("v1", instances=[8, 12]).add("v2", instances=[8])
    voc_writer.split("train", ["t1"])
    voc_writer.split("val", ["v1", "v2"])
    results = perfect_results(build_dataset("voc", voc_writer.root, "val"), tmp_path / "r.json")
    argv = ["evaluate", "--dataset", "voc", "--root", str(voc_writer.root), "--quiet"]
    code = main([*argv, "--predictions", str(results), "--metrics", "instance"])
    out = capsys.readouterr().out
    assert code == 0, capsys.readouterr().err
    assert "(split val)" in out and "3 predictions" in out
    stable = main(
        [*argv, "--predictions", str(results), "--metrics", "instance", "--ties", "stable"]
    )
    assert stable == 0


def test_coco_export_in_its_own_layout(tmp_path, capsys):
    """Issue 10, item 18: only root/annotations/instances_<split>.json + root/<split>/."""
    pics = tmp_path / "export" / "pictures"
    write_jpeg(pics / "one.jpg", size=(20, 30))
    square = [2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]
    data = {
        "images": [{"id": 7, "file_name": "one.jpg", "height": 20, "width": 30}],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 4,
                "segmentation": [square],
                "area": 100.0,
                "bbox": [2, 2, 10, 10],
                "iscrowd": 0,
            },
        ],  # fmt: skip
        "categories": [{"id": 4, "name": "box"}],
    }
    labels = write_json(tmp_path / "export" / "labels.json", data)
    dataset = build_dataset("coco", None, None, annotation_file=labels, image_dir=pics)
    results = perfect_results(dataset, tmp_path / "r.json")
    argv = ["evaluate", "--dataset", "coco", "--annotations", str(labels)]
    argv += ["--image-dir", str(pics), "--predictions", str(results), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["coco/AP"] == pytest.approx(1.0) and metrics["instance/mAP_r@0.5"] == 1.0
    assert str(labels) in capsys.readouterr().out


def test_dataset_flags_are_checked(voc_writer, tmp_path, capsys):
    voc_writer.add("v1", instances=[8]).split("val", ["v1"])
    base = ["evaluate", "--predictions", str(tmp_path / "r.json"), "--quiet"]
    voc = ["--dataset", "voc", "--root", str(voc_writer.root)]
    assert main([*base, *voc, "--annotations", str(tmp_path / "x.json")]) == 2
    assert "--annotations and --image-dir are for --dataset coco" in capsys.readouterr().err
    assert main([*base, "--dataset", "coco", "--annotations", str(tmp_path / "x.json")]) == 2
    assert "--annotations needs --image-dir" in capsys.readouterr().err
