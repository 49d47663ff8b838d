"""`prm proposals`: a thin layer over ProposalCache and precompute_proposals."""

import numpy as np
from PIL import Image

from prm.cli import main
from prm.proposals import ProposalCache, SelectiveSearch


def test_images_folder_then_resume(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
            images / f"{name}.png"
        )
    argv = ["proposals", "--images", str(images), "--cache", str(tmp_path / "cache"), "--quiet"]
    assert main(argv + ["--preset", "single", "--max-proposals", "50"]) == 0
    cache = ProposalCache(tmp_path / "cache", SelectiveSearch.single(max_proposals=50))
    assert "a" in cache and "b" in cache
    assert cache.load("a", image_size=(20, 30)).shape[0] <= 50
    assert "2 computed, 0 already cached, 0 failed" in capsys.readouterr().out
    assert main(argv + ["--preset", "single", "--max-proposals", "50"]) == 0
    assert "0 computed, 2 already cached" in capsys.readouterr().out


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["proposals", "--images", str(tmp_path / "nowhere"), "--cache", str(tmp_path)]) == 2
    assert "image folder not found" in capsys.readouterr().err
    argv = ["proposals", "--images", str(tmp_path), "--cache", str(tmp_path), "--evaluate"]
    assert main(argv) == 2
    assert "--evaluate needs --dataset" in capsys.readouterr().err


def test_dataset_with_evaluation(shared_data, tmp_path, capsys):
    argv = [
        "proposals", "--dataset", "voc", "--root", str(shared_data / "voc-sample" / "VOC2012"),
        "--split", "val", "--cache", str(tmp_path), "--max-side", "96", "--evaluate", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "instances in" in out and "top  100: ABO" in out and "recall@0.5" in out
