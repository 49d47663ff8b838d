"""`prm predict` as a resumable pass sharded under torchrun (issue 15, item 5)."""

import json
import os
import subprocess
import sys

import pytest

from prm.data import ShapeScenes
from prm.engine.inference import predict_dataset, predict_shards


@pytest.fixture(scope="module")
def predictor(random_predictor):
    return random_predictor


class Dies:
    """A predictor that stops the run (as a kill would) before its ``n``-th image."""

    def __init__(self, predictor, n):
        self.predictor, self.n, self.calls = predictor, n, 0

    def __call__(self, images, proposals=None):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.predictor(images, proposals)


def test_shards_and_a_killed_run_give_the_single_process_file(tmp_path, predictor):
    dataset = ShapeScenes("val", 6, size=48)
    single = predict_dataset(
        predictor, dataset, results_file=tmp_path / "single.json", progress=False
    ).results_file.read_bytes()
    assert len(json.loads(single)) > 0

    # Killed before its 4th image, the last line half written: the rerun does the rest.
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        predict_shards(Dies(predictor, 4), dataset, out, progress=False)
    part = out / "parts" / "part-0.jsonl"
    assert len(part.read_text().splitlines()) == 3
    with open(part, "a") as handle:
        handle.write('{"index": 3, "results": [{"image_')
    summary = predict_shards(predictor, dataset, out, progress=False)
    assert summary.results_file.read_bytes() == single
    assert summary.images == len(dataset)
    indices = [json.loads(line)["index"] for line in part.read_text().splitlines()]
    assert sorted(indices) == list(range(len(dataset)))  # no loss, no duplicate

    # Two shards (as two torchrun ranks; rank 0 merges last): the same file.
    shards = tmp_path / "shards"
    assert predict_shards(predictor, dataset, shards, rank=1, world_size=2, progress=False) is None
    merged = predict_shards(predictor, dataset, shards, rank=0, world_size=2, progress=False)
    assert merged.results_file.read_bytes() == single
    lines = (shards / "parts" / "part-1.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [1, 3, 5]

    with pytest.raises(ValueError, match="other settings"):
        predict_shards(predictor, dataset, shards, settings={"beta": 1.0}, progress=False)


def test_torchrun_two_processes_equal_one_and_resume(tmp_path, random_checkpoint):
    checkpoint = random_checkpoint
    common = [
        "predict", "--checkpoint", str(checkpoint), "--dataset", "shapes", "--split", "val",
        "--limit", "5", "--proposals", "prm", "--class-threshold=-1e9", "--device", "cpu",
        "--overlays", "2", "--quiet",
    ]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    torchrun += ["--standalone", "-m", "prm.cli", *common]  # a free port: runs may overlap
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(command):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]

    run([sys.executable, "-m", "prm.cli", *common, "--out", str(tmp_path / "one")])
    two = tmp_path / "two"
    run([*torchrun, "--out", str(two)])
    single = (tmp_path / "one" / "results.json").read_bytes()
    assert (two / "results.json").read_bytes() == single
    assert sorted(p.name for p in (two / "overlays").iterdir()) == [
        "val_00000.png",
        "val_00001.png",
    ]

    # Rank 1 lost its last image (killed): the rerun predicts it again, once.
    part = two / "parts" / "part-1.jsonl"
    part.write_text(part.read_text().splitlines(keepends=True)[0])
    (two / "results.json").unlink()
    run([*torchrun, "--out", str(two)])
    assert (two / "results.json").read_bytes() == single
    assert [json.loads(line)["index"] for line in part.read_text().splitlines()] == [1, 3]
