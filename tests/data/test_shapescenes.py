"""ShapeScenes: deterministic, disjoint splits, exact masks, and the statistics it promises."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from prm.data import SHAPE_CLASSES, SceneConfig, ShapeScenes, build_dataset, generate_scene
from prm.data import shapes as shapes_module
from prm.data.shapes import render_scene, sample_scene


def test_same_seed_split_index_gives_the_same_scene():
    a_image, a_map, a_labels = generate_scene(7, "val", 12)
    b_image, b_map, b_labels = generate_scene(7, "val", 12)
    assert np.array_equal(a_image, b_image) and np.array_equal(a_map, b_map)
    assert a_labels == b_labels
    other, _, _ = generate_scene(8, "val", 12)
    assert not np.array_equal(a_image, other)
    # dataset objects built independently agree too (no hidden global state)
    first, second = ShapeScenes("val", seed=7), ShapeScenes("val", seed=7)
    assert np.array_equal(np.asarray(first[12][0]), np.asarray(second[12][0]))


def test_fixed_disjoint_splits_with_default_sizes():
    assert [len(ShapeScenes(s)) for s in ("train", "val", "test")] == [2000, 300, 300]
    splits = ("train", "val", "test")
    images = [generate_scene(0, s, i)[0].tobytes() for s in splits for i in range(20)]
    assert len(set(images)) == 60
    with pytest.raises(ValueError, match="split must be one of"):
        ShapeScenes("validation")


def test_items_follow_the_conventions():
    dataset = ShapeScenes("train", num_images=10)
    assert dataset.classes == SHAPE_CLASSES and len(dataset.classes) >= 6
    assert dataset.category_ids == [1, 2, 3, 4, 5, 6]
    for i in range(len(dataset)):
        image, target = dataset[i]
        n = len(target["labels"])
        assert image.mode == "RGB" and image.size == (128, 128)
        assert target["image_id"] == f"train_{i:05d}" and target["size"] == (128, 128)
        assert 1 <= n <= 6 and target["labels"].dtype == torch.int64
        assert target["masks"].shape == (n, 128, 128) and target["masks"].dtype == torch.bool
        expected = torch.zeros(6)
        expected[target["labels"]] = 1
        assert torch.equal(target["image_labels"], expected)
        assert not target["iscrowd"].any() and not target["ignore_mask"].any()


def test_masks_are_exact_after_occlusion():
    """Each mask is exactly where its instance is the top-most paint."""
    config = SceneConfig()
    for index in range(12):
        scene = sample_scene(np.random.default_rng(index), config)
        image, instance_map = render_scene(scene)
        instances = [k for k, layer in enumerate(scene.layers) if layer.label >= 0]
        masks = np.stack([instance_map == j + 1 for j in range(len(instances))])
        assert masks.sum(0).max() <= 1  # one owner per pixel
        for j, k in enumerate(instances):
            layer = scene.layers[k]
            y0, y1, x0, x1 = layer.box
            full = np.zeros_like(masks[j])
            full[y0:y1, x0:x1] = layer.mask
            visible = masks[j]
            assert not (visible & ~full).any()  # never outside the silhouette
            assert visible.sum() >= config.min_visible * full.sum()  # occluded, not hidden
            # Painting the scene without this instance changes exactly its visible pixels
            # (the noise is seeded per scene, so nothing else moves).
            without = dataclasses.replace(scene, layers=scene.layers[:k] + scene.layers[k + 1 :])
            changed = (render_scene(without)[0] != image).any(2)
            assert not (changed & ~visible).any()
            assert changed.sum() >= 0.9 * visible.sum()


def test_scene_statistics_make_instances_harder_than_classes():
    """Repeats of one class are common and often touch: what CAM cannot split."""
    counts, repeated, classes, pairs, touching = [], 0, set(), 0, 0
    for i in range(150):
        _, instance_map, labels = generate_scene(0, "test", i)
        counts.append(len(labels))
        classes.update(labels)
        repeated += len(labels) > len(set(labels))
        for a in range(len(labels)):
            near_a = ndimage.binary_dilation(instance_map == a + 1, iterations=3)
            for b in range(a + 1, len(labels)):
                if labels[a] == labels[b]:
                    pairs += 1
                    touching += bool((near_a & (instance_map == b + 1)).any())
    assert set(counts) == {1, 2, 3, 4, 5, 6}
    assert classes == set(range(6))
    assert repeated / 150 > 0.5  # measured 0.68 at seed 0
    assert touching / pairs > 0.15  # measured 0.25: same-class pairs within 3 px


def test_other_sizes_and_bad_configs():
    image, target = ShapeScenes("val", num_images=2, size=64)[1]
    assert image.size == (64, 64) and target["masks"].shape[1:] == (64, 64)
    with pytest.raises(ValueError, match="size must be >= 32"):
        ShapeScenes(size=16)
    with pytest.raises(ValueError, match="instances must be"):
        SceneConfig(instances=(0, 3))


def test_disk_cache_round_trip(tmp_path, monkeypatch):
    fresh = ShapeScenes("val", num_images=4, size=48)
    cached = ShapeScenes("val", num_images=4, size=48, cache_dir=tmp_path)
    assert cached.cache_file.is_file() and cached.cache_file.parent == tmp_path
    for i in range(4):
        a, b = fresh[i], cached[i]
        assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
        assert torch.equal(a[1]["masks"], b[1]["masks"])
        assert torch.equal(a[1]["labels"], b[1]["labels"])

    def no_generation(*args, **kwargs):
        raise AssertionError("the cache should have been read")

    expected = fresh[3][1]["masks"]
    monkeypatch.setattr(shapes_module, "generate_scene", no_generation)
    again = build_dataset("shapes", tmp_path, split="val", num_images=4, size=48)
    assert torch.equal(again[3][1]["masks"], expected)
    # a different parameter is a different cache file, never a stale hit
    other_key = ShapeScenes("val", num_images=4, size=48, seed=1)._cache_key()
    assert other_key != cached._cache_key()
