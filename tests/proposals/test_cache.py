"""The on-disk cache: keyed by image id and settings, resumable, parallel."""

import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from prm.proposals import (
    ProposalCache,
    SelectiveSearch,
    list_images,
    load_proposals,
    precompute_proposals,
)


class CountingGenerator:
    """A stand-in generator: two fixed proposals, and a count of the calls."""

    def __init__(self, name="counting", version=1):
        self.calls = 0
        self.version = version
        self.name = name

    def settings(self):
        return {"generator": self.name, "version": self.version}

    def settings_hash(self):
        return f"v{self.version}"

    def __call__(self, image):
        self.calls += 1
        w, h = image.size
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        masks[0, : h // 2] = True
        masks[1, :, : w // 2] = True
        return masks


def write_images(folder, count=3, size=(24, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return folder


def test_get_computes_once_then_reads(tmp_path):
    generator = CountingGenerator()
    cache = ProposalCache(tmp_path, generator)
    image = Image.new("RGB", (10, 6))
    first = cache.get("a", image)
    second = cache.get("a", image)
    assert generator.calls == 1
    assert torch.equal(first, second) and second.shape == (2, 6, 10)
    assert "a" in cache and "b" not in cache
    assert cache.path("a") == tmp_path / "counting-v1" / "a.npz"
    assert (tmp_path / "counting-v1" / "settings.json").is_file()


def test_other_settings_other_folder(tmp_path):
    one = ProposalCache(tmp_path, CountingGenerator(version=1))
    two = ProposalCache(tmp_path, CountingGenerator(version=2))
    one.save("a", torch.ones(1, 2, 2, dtype=torch.bool))
    assert "a" in one and "a" not in two
    real = ProposalCache(tmp_path, SelectiveSearch())
    assert real.folder.name == f"selective_search-{SelectiveSearch().settings_hash()}"


def test_ids_become_safe_distinct_file_names(tmp_path):
    cache = ProposalCache(tmp_path, CountingGenerator())
    paths = {cache.path(i) for i in ("a/b", "a_b", "a b", "../x", "000123")}
    assert len(paths) == 5
    assert all(p.parent == cache.folder for p in paths)
    assert cache.path("000123").name == "000123.npz"


def test_precompute_a_folder_and_resume(tmp_path):
    images = write_images(tmp_path / "images", count=3)
    generator = CountingGenerator()
    cache = ProposalCache(tmp_path / "cache", generator)
    cache.save("img1", torch.ones(1, 16, 24, dtype=torch.bool))  # as if a run was cut off
    summary = precompute_proposals(images, cache, progress=False)
    assert (summary.computed, summary.cached, summary.failed) == (2, 1, [])
    assert generator.calls == 2
    assert load_proposals(cache.path("img0"), image_size=(16, 24)).shape == (2, 16, 24)
    again = precompute_proposals(images, cache, progress=False)
    assert (again.computed, again.cached) == (0, 3)


def test_unreadable_images_stop_the_run_or_are_listed(tmp_path):
    images = write_images(tmp_path / "images", count=2)
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    cache = ProposalCache(tmp_path / "cache", CountingGenerator())
    with pytest.raises(ValueError, match="broken.jpg"):
        precompute_proposals(images, cache, progress=False)
    summary = precompute_proposals(images, cache, skip_errors=True, progress=False)
    assert [name for name, _ in summary.failed] == [str(images / "broken.jpg")]
    assert summary.computed + summary.cached == 2


def test_datasets_by_index(tmp_path):
    from prm.data.shapes import ShapeScenes

    dataset = ShapeScenes("test", num_images=2, size=48)
    cache = ProposalCache(tmp_path, SelectiveSearch.single())
    summary = precompute_proposals(dataset, cache, progress=False)
    assert summary.computed == 2
    proposals = cache.load("test_00001", image_size=(48, 48))
    assert proposals.dtype == torch.bool and len(proposals) > 0


def test_parallel_workers(tmp_path):
    images = write_images(tmp_path / "images", count=3, size=(32, 24))
    generator = SelectiveSearch.single()
    cache = ProposalCache(tmp_path / "cache", generator)
    summary = precompute_proposals(images, cache, workers=2, progress=False)
    assert summary.computed == 3
    for path in list_images(images):  # the same proposals as computed here
        expected = generator(Image.open(path).convert("RGB"))
        assert torch.equal(cache.load(path.stem), expected)


def test_stale_temporary_files_are_removed(tmp_path):
    cache = ProposalCache(tmp_path, CountingGenerator())
    old = cache.folder / ".a.npz.123-abc.tmp"
    fresh = cache.folder / ".b.npz.456-def.tmp"
    old.write_bytes(b"half")
    fresh.write_bytes(b"being written")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert cache.remove_stale_temporaries() == 1
    assert not old.exists() and fresh.exists()


def test_list_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        list_images(tmp_path)
    write_images(tmp_path, count=1)
    Image.new("RGB", (4, 4)).save(tmp_path / "img0.jpg")
    with pytest.raises(ValueError, match="same id"):
        list_images(tmp_path)


def test_an_interrupted_run_leaves_complete_files_and_resumes(tmp_path):
    images = write_images(tmp_path / "images", count=3)

    class Interrupted(CountingGenerator):
        def __call__(self, image):
            if self.calls == 1:
                raise KeyboardInterrupt  # Ctrl-C while the second image is computed
            return super().__call__(image)

    cache = ProposalCache(tmp_path / "cache", Interrupted())
    with pytest.raises(KeyboardInterrupt):
        precompute_proposals(images, cache, progress=False)
    assert sorted(p.name for p in cache.folder.iterdir()) == ["img0.npz", "settings.json"]
    resumed = ProposalCache(tmp_path / "cache", CountingGenerator())  # same settings
    summary = precompute_proposals(images, resumed, progress=False)
    assert (summary.computed, summary.cached) == (2, 1)


def test_corrupt_cache_entries_are_recomputed_with_a_warning(tmp_path):
    """Issue 10, item 7: a hand-corrupted file counted as cached forever."""
    images = write_images(tmp_path / "images", count=3)
    generator = CountingGenerator()
    cache = ProposalCache(tmp_path / "cache", generator)
    assert precompute_proposals(images, cache, progress=False).computed == 3
    cache.path("img0").write_bytes(b"edited by hand")
    cache.path("img1").write_bytes(cache.path("img1").read_bytes()[:40])  # truncated
    with pytest.warns(UserWarning, match="cache entry of image img[01] is unusable") as caught:
        summary = precompute_proposals(images, cache, progress=False)
    named = " ".join(str(w.message) for w in caught)
    assert "image img0 is unusable" in named and "image img1 is unusable" in named
    assert (summary.computed, summary.cached) == (2, 1) and generator.calls == 5
    assert cache.problem("img0") is None and cache.problem("img1") is None
    # A whole file of another image size is caught where the image is known: get().
    cache.save("img2", torch.ones(1, 5, 5, dtype=torch.bool))
    with pytest.warns(UserWarning, match="img2 is unusable"):
        masks = cache.get("img2", Image.open(images / "img2.png"))
    assert masks.shape == (2, 16, 24) and generator.calls == 6
    cache.path("img2").write_bytes(b"")
    with pytest.warns(UserWarning, match="img2 is unusable"):
        assert cache.get("img2", Image.open(images / "img2.png")).shape == (2, 16, 24)
