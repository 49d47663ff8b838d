"""`prm distill`: Mask R-CNN on pseudo-labels, exact resume, Predictor-compatible output."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from prm.backprop import PeakSelection
from prm.cli import main
from prm.data import ShapeScenes
from prm.engine import load_checkpoint
from prm.engine.distill import (
    SMALL_INFERENCE,
    DistillConfig,
    distill,
    distilled_predictor,
    load_distill_config,
    load_distilled,
)
from prm.engine.pseudo_label import pseudo_label_quality
from prm.evaluation import load_results
from prm.masks import encode_rle
from prm.model import build_model
from prm.predictor import Predictor


def ground_truth_json(path, dataset, drop=0):
    """A pseudo-label file holding the ground truth (minus the first ``drop`` instances)."""
    images, annotations = [], []
    for index in range(len(dataset)):
        target = dataset[index][1]
        images.append(
            {"id": index + 1, "prm_image_id": dataset.image_id(index), "size": target["size"]}
        )
        for rle, label in zip(encode_rle(target["masks"]), target["labels"].tolist()):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": label + 1,
                    "segmentation": rle,
                    "score": 1.0,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(dataset.classes)]
    data = {"images": images, "annotations": annotations[drop:], "categories": categories}
    path.write_text(json.dumps(data))
    return path


def config(tmp_path, name, **changes):
    labels = tmp_path / "labels.json"
    if not labels.is_file():
        ground_truth_json(labels, ShapeScenes("train", 4))  # as the CLI builds it
    values = {
        "pseudo_labels": str(labels),
        "dataset": "shapes",
        "split": "train",
        "out": str(tmp_path / name),
        "min_size": 64,
        "max_size": 64,
        "epochs": 2,
        "batch_size": 2,
        "device": "cpu",
        "max_steps_per_epoch": 2,
        **changes,
    }
    return DistillConfig(**values)


def test_pseudo_label_quality_against_ground_truth(tmp_path):
    dataset = ShapeScenes("train", 3, size=64)
    exact = pseudo_label_quality(ground_truth_json(tmp_path / "a.json", dataset), dataset)
    assert exact["precision"] == exact["recall"] == 1.0
    partial = pseudo_label_quality(ground_truth_json(tmp_path / "b.json", dataset, 2), dataset)
    assert partial["precision"] == 1.0
    assert partial["recall"] == pytest.approx(1 - 2 / exact["gt_instances"])


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    straight = distill(config(tmp_path, "straight"), progress=False)

    def stop(epoch):
        if epoch == 1:
            raise KeyboardInterrupt  # the run dies after its first checkpoint

    with pytest.raises(KeyboardInterrupt):
        distill(config(tmp_path, "resumed"), progress=False, on_epoch=stop)
    resumed = distill(config(tmp_path, "resumed"), progress=False)  # continues epoch 2
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    log = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]
    with pytest.raises(ValueError, match="another configuration"):
        distill(config(tmp_path, "resumed", lr=0.5), progress=False)


def test_predictions_have_the_predictor_format_and_the_cli_uses_them(tmp_path):
    checkpoint = distill(config(tmp_path, "run", epochs=1), progress=False)
    # An undertrained model: keep whatever it finds.
    model, distilled = distilled_predictor(checkpoint, inference={"box_score_thresh": 0.0})
    image = ShapeScenes("test", 1)[0][0]
    distilled.score_threshold = 0.0
    got = distilled([image])[0]
    prm_model = build_model("small", 6, class_names=model.class_names)
    want = Predictor(
        prm_model,
        input_size=32,
        peak_selection=PeakSelection(class_threshold=-1e9, peak_threshold=0.0),
        proposal_fn="prm",
    )([image])[0]
    assert set(want) <= set(got)
    n = len(got["scores"])
    assert got["masks"].shape == (n, 128, 128) and got["masks"].dtype == torch.bool
    assert got["class_scores"].shape == (6,) and got["class_peaks"].shape == (6, 2)
    assert got["labels"].min() >= 0 if n else True
    assert torch.all(got["scores"][:-1] >= got["scores"][1:])

    out = tmp_path / "predict"
    args = ["predict", "--checkpoint", str(checkpoint), "--dataset", "shapes", "--split"]
    args += ["test", "--limit", "2", "--out", str(out), "--evaluate", "--quiet"]
    assert main([*args, "--metrics", "instance", "classification", "--device", "cpu"]) == 0
    assert "instance/mAP_r@0.5" in json.loads((out / "metrics.json").read_text())
    results = load_results(out / "results.json", ShapeScenes("test", 2))
    assert sum(len(r["scores"]) for r in results) > 0


def test_test_time_settings_are_saved_and_overridable(tmp_path):
    inference = {"box_detections_per_img": 7, "box_score_thresh": 0.3}
    checkpoint = distill(config(tmp_path, "run", epochs=1, inference=inference), progress=False)
    model = load_distilled(checkpoint)
    assert model.roi_heads.detections_per_img == 7 and model.roi_heads.score_thresh == 0.3
    assert model.rpn._post_nms_top_n["testing"] == SMALL_INFERENCE["rpn_post_nms_top_n_test"]
    model = load_distilled(checkpoint, box_detections_per_img=3)  # the caller's word wins
    assert model.roi_heads.detections_per_img == 3 and model.roi_heads.score_thresh == 0.3
    state = load_checkpoint(checkpoint)
    del state["model_config"]["inference"]  # a checkpoint from before the setting
    torch.save(state, tmp_path / "old.pt")
    model = load_distilled(tmp_path / "old.pt")
    assert model.roi_heads.detections_per_img == SMALL_INFERENCE["box_detections_per_img"]
    # Test-time settings do not change training: a run resumes with other ones.
    assert distill(config(tmp_path, "run", epochs=1), progress=False) == checkpoint
    with pytest.raises(ValueError, match="unknown inference settings"):
        load_distilled(checkpoint, detections=3)


def test_yaml_config_is_checked(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("pseudo_labels: x.json\nepochs: 3\n")
    assert load_distill_config(good, epochs=5).epochs == 5  # flags override the file
    bad = tmp_path / "bad.yaml"
    bad.write_text("pseudo_labels: x.json\nepoch: 3\n")
    with pytest.raises(ValueError, match="unknown settings"):
        load_distill_config(bad)
    with pytest.raises(ValueError, match="backbone"):
        load_distill_config(good, backbone="resnet9")


def test_flips_follow_the_readers_mirror_rule(tmp_path, monkeypatch):
    """As in `prm train`: flips by default, none where a mirror changes the classes
    (GlyphScenes' letters), and an explicit value wins."""
    import prm.engine.distill as module
    from prm.data import GlyphScenes
    from prm.engine.train import resolved_flip

    flipped = []
    real_flip = module._flip
    monkeypatch.setattr(module, "_flip", lambda *a: flipped.append(1) or real_flip(*a))
    distill(config(tmp_path, "auto"), progress=False)
    assert flipped  # ShapeScenes: mirror-invariant, so flipped at random
    flipped.clear()
    distill(config(tmp_path, "off", flip=False), progress=False)
    assert not flipped
    monkeypatch.setattr(ShapeScenes, "MIRROR_INVARIANT", False)
    distill(config(tmp_path, "chiral"), progress=False)
    assert not flipped
    distill(config(tmp_path, "forced", flip=True), progress=False)
    assert flipped
    assert not resolved_flip(DistillConfig(pseudo_labels="x", dataset="glyphs"))
    assert not GlyphScenes.MIRROR_INVARIANT
    with pytest.raises(ValueError, match="flip must be"):
        config(tmp_path, "bad", flip="sometimes").validate()


def test_ddp_with_two_cpu_processes(tmp_path):
    labels = ground_truth_json(tmp_path / "labels.json", ShapeScenes("train", 8))
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", "-m", "prm.cli", "distill", "--pseudo-labels", str(labels),
        "--dataset", "shapes", "--split", "train", "--out", str(out), "--epochs", "2",
        "--batch-size", "2", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # one log, written by rank 0 only
    for record in records:
        assert record["world_size"] == 2
        assert record["ranks_in_sync"] is True  # DDP kept both replicas identical
        assert math.isfinite(record["loss"]) and record["loss"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "last.pt", "metrics.jsonl"]
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and state["metrics"]["world_size"] == 2
    assert not any(key.startswith("module.") for key in state["model"])  # loads without DDP
    distilled_predictor(out / "last.pt")
