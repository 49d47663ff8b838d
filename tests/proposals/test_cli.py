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


def test_the_cache_folder_written_by_prm_proposals_is_read_by_proposals_dir(tmp_path):
    """README step 4: `prm proposals --cache DIR`, then `--proposals DIR` must work."""
    import pytest
    import torch

    from prm.engine.inference import proposal_source

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(images / "img 1.png")  # an id that needs a safe file name
    argv = ["proposals", "--images", str(images), "--cache", str(tmp_path / "cache"), "--quiet"]
    assert main(argv + ["--preset", "single", "--max-proposals", "20"]) == 0
    cache = ProposalCache(tmp_path / "cache", SelectiveSearch.single(max_proposals=20))
    image = torch.from_numpy(pixels).permute(2, 0, 1)
    source = proposal_source(str(tmp_path / "cache"))
    assert torch.equal(source("img 1", image), cache.load("img 1", (20, 30)))
    with pytest.raises(FileNotFoundError, match="no proposals for image 1801 in .*looked for"):
        source("1801", image)
    # two generator settings in one cache: the user must say which
    ProposalCache(tmp_path / "cache", SelectiveSearch.single(max_proposals=30))
    with pytest.raises(ValueError, match="caches of 2 generator settings"):
        proposal_source(str(tmp_path / "cache"))
    assert torch.equal(proposal_source(str(cache.folder))("img 1", image), source("img 1", image))
