"""Every command that reads COCO takes --annotations FILE --image-dir DIR (issue 13).

The real COCO fixture (10 photos, 80 categories) is copied into a layout no reader guesses:
``export/labels.json`` + ``export/pictures/``.
"""

import json
import shutil

import pytest

from prm.cli import main

pytestmark = pytest.mark.slow  # real photos through five commands


@pytest.fixture
def export(shared_data, tmp_path_factory):
    """(labels.json, pictures/) of the COCO fixture in a user's own layout."""
    root = tmp_path_factory.mktemp("export")
    labels = root / "labels.json"
    shutil.copy(shared_data / "coco-sample" / "annotations" / "instances_val2017.json", labels)
    shutil.copytree(shared_data / "coco-sample" / "val2017", root / "pictures")
    return labels, root / "pictures"


@pytest.fixture
def checkpoint(export, tmp_path_factory):
    """`prm train` on the export, 3 of the 10 images held out to validate (one step)."""
    labels, pictures = export
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--dataset", "coco", "--annotations", str(labels)]
    argv += ["--image-dir", str(pictures), "--val-fraction", "0.3", "--backbone", "small"]
    argv += ["--weights", "none", "--image-size", "64", "--epochs", "1", "--batch-size", "4"]
    argv += ["--workers", "0", "--out", str(out), "--quiet", "--set", "max_steps_per_epoch=1"]
    assert main(argv) == 0
    return out / "last.pt"


def test_every_command_reads_the_export(export, checkpoint, tmp_path):
    metrics = [json.loads(line) for line in (checkpoint.parent / "metrics.jsonl").open()]
    assert len(metrics) == 1 and "val_classification_map" in metrics[0]
    config = (checkpoint.parent / "config.yaml").read_text()
    assert "labels.json" in config and "pictures" in config
    _predict_tune_pseudo_label_and_proposals(export, checkpoint, tmp_path)


def test_train_rejects_coco_flags_for_other_datasets(export, tmp_path, capsys):
    labels, _ = export
    argv = ["train", "--preset", "shapes", "--annotations", str(labels), "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    assert "annotation_file is for the coco dataset" in capsys.readouterr().err


def _predict_tune_pseudo_label_and_proposals(export, checkpoint, tmp_path):
    labels, pictures = export
    data = ["--dataset", "coco", "--annotations", str(labels), "--image-dir", str(pictures)]
    # Photos worked on at 96 px: the 80-class network is barely trained, and the
    # proposal-free fallback of every class it keeps at full size costs gigabytes.
    model = ["--checkpoint", str(checkpoint), "--proposals", "prm", "--quiet", "--max-size", "96"]
    out = tmp_path / "pred"
    evaluate = ["--evaluate", "--metrics", "instance"]
    assert main(["predict", *model, *data, "--out", str(out), "--limit", "2", *evaluate]) == 0
    results = json.loads((out / "results.json").read_text())
    known = {image["id"] for image in json.loads(labels.read_text())["images"]}
    assert {r["image_id"] for r in results} <= known
    # `prm report` samples a new gallery from the export named by the same flags.
    gallery = out / "gallery" / "index.json"
    gallery.unlink()
    assert main(["report", str(out), *data, "--resample", "--quiet"]) == 0
    assert json.loads(gallery.read_text())["images"] == len(known)
    assert main(["tune", *model, *data, "--limit", "2", "--beta", "0", "0.001"]) == 0
    assert main(["pseudo-label", *model, *data, "--limit", "2", "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "instances.json").is_file()
    cache = tmp_path / "cache"
    assert main(["proposals", *data, "--cache", str(cache), "--quiet", "--max-side", "160"]) == 0
    assert any(cache.rglob("*")), "no proposals were written"
