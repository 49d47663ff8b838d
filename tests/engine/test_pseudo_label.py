"""`prm pseudo-label`: filters, COCO instances output, resume after a kill, shards (issue 15)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from pycocotools.coco import COCO

from prm.data import ShapeScenes
from prm.engine.pseudo_label import PseudoLabelFilter, filter_instances, pseudo_label


def square(y, x, side, size=16):
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y : y + side, x : x + side] = True
    return mask


def test_filter_applies_each_documented_rule():
    prediction = {
        "masks": torch.stack(
            [square(0, 0, 4), square(5, 5, 4), square(8, 8, 2), square(0, 8, 5), square(9, 0, 4)]
        ),
        "labels": torch.tensor([0, 2, 0, 0, 0]),
        "scores": torch.tensor([5.0, 4.0, 3.0, 0.5, 2.0]),
        "peaks": torch.tensor([[1.2, 1.0], [6.0, 6.0], [8.5, 8.5], [10.0, 2.0], [1.9, 1.7]]),
    }
    labels = torch.tensor([1.0, 0.0, 0.0])  # the image is labelled with class 0 only
    filt = PseudoLabelFilter(score_threshold=1.0, min_area=9, one_per_peak=True)
    kept, dropped = filter_instances(prediction, labels, filt)
    # 1: class 2 not in the labels; 3: score 0.5; 2: area 4; 4: same peak pixel as 0
    assert kept == [0]
    assert dropped == {"label": 1, "score": 1, "area": 1, "peak": 1}
    kept, dropped = filter_instances(prediction, labels, PseudoLabelFilter(-1e9, 0, False))
    assert kept == [0, 2, 4, 3]  # decreasing score; only the label rule applies
    assert dropped["label"] == 1


@pytest.fixture(scope="module")
def predictor(random_predictor):
    return random_predictor


def data(n=6):
    return ShapeScenes("train", n, size=48)


def test_output_is_coco_instances_with_image_label_classes_only(tmp_path, predictor):
    dataset = data()
    path = pseudo_label(predictor, dataset, tmp_path, filt=PseudoLabelFilter(-1e9, 0))
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == len(dataset)
    info = json.loads(path.read_text())["info"]
    assert info["kept_instances"] == len(coco.getAnnIds()) > 0
    assert info["dropped"]["label"] > 0  # the random network predicts unlabelled classes
    for image in coco.loadImgs(coco.getImgIds()):
        index = image["id"] - 1
        assert image["prm_image_id"] == dataset.image_id(index)
        present = set((dataset[index][1]["image_labels"] > 0).nonzero().flatten().tolist())
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
            assert ann["category_id"] - 1 in present
            mask = coco.annToMask(ann)
            assert mask.shape == (48, 48) and mask.sum() == ann["area"]


def test_resume_after_a_kill_and_shards_merge_to_the_single_process_file(tmp_path, predictor):
    dataset = data()
    filt = PseudoLabelFilter(-1e9, 0)
    single = pseudo_label(predictor, dataset, tmp_path / "single", filt=filt).read_bytes()

    # A run killed after 3 images, the last line cut mid-write: the rerun redoes that one.
    out = tmp_path / "killed"
    pseudo_label(predictor, dataset, out, filt=filt, limit=None, progress=False)
    part = out / "parts" / "part-0.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:3]) + lines[3][:20])
    (out / "instances.json").unlink()
    resumed = pseudo_label(predictor, dataset, out, filt=filt, progress=False)
    assert resumed.read_bytes() == single
    assert len(part.read_text().splitlines()) == len(dataset)  # no duplicate, no loss

    # Two shards (as two torchrun ranks), merged by rank 0: the same file.
    shards = tmp_path / "shards"
    pseudo_label(predictor, dataset, shards, filt=filt, rank=1, world_size=2, progress=False)
    merged = pseudo_label(predictor, dataset, shards, filt=filt, rank=0, world_size=2)
    assert merged.read_bytes() == single
    assert sorted(p.name for p in (shards / "parts").glob("*.jsonl")) == [
        "part-0.jsonl",
        "part-1.jsonl",
    ]


def test_a_rerun_with_other_filters_is_refused(tmp_path, predictor):
    pseudo_label(predictor, data(2), tmp_path, filt=PseudoLabelFilter(0.0), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        pseudo_label(predictor, data(2), tmp_path, filt=PseudoLabelFilter(1.0), progress=False)


def test_torchrun_two_processes_equal_one(tmp_path, random_checkpoint):
    checkpoint = random_checkpoint
    common = [
        "pseudo-label", "--checkpoint", str(checkpoint), "--dataset", "shapes",
        "--split", "val", "--limit", "5", "--proposals", "prm", "--class-threshold=-1e9",
        "--min-area", "0", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "prm.cli", *common, "--out", str(tmp_path / "one")],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--standalone", "-m", "prm.cli", *common, "--out", str(tmp_path / "two"),
        ],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "two" / "parts" / "part-1.jsonl").is_file()  # rank 1 did its share
    first = json.loads((tmp_path / "one" / "instances.json").read_text())
    second = json.loads((tmp_path / "two" / "instances.json").read_text())
    first["info"]["settings"].pop("checkpoint"), second["info"]["settings"].pop("checkpoint")
    assert first == second
