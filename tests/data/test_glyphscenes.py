"""GlyphScenes: grey glyphs, exact masks, fixed splits, and shape as the only class cue."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from prm.data import GLYPH_CLASSES, GlyphConfig, GlyphScenes, build_dataset, generate_glyph_scene
from prm.data import glyphs as glyphs_module
from prm.data.glyphs import glyph_mask, sample_glyph_scene
from prm.data.shapes import render_scene


def test_same_seed_split_index_gives_the_same_scene_and_splits_differ():
    a = generate_glyph_scene(7, "val", 12)
    b = generate_glyph_scene(7, "val", 12)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], generate_glyph_scene(8, "val", 12)[0])
    assert [len(GlyphScenes(s)) for s in ("train", "val", "test")] == [2000, 300, 300]
    images = [generate_glyph_scene(0, s, 0)[0].tobytes() for s in ("train", "val", "test")]
    images += [generate_glyph_scene(0, "train", i)[0].tobytes() for i in range(1, 10)]
    assert len(set(images)) == len(images)
    with pytest.raises(ValueError, match="GlyphScenes split must be one of"):
        GlyphScenes("validation")


def test_items_follow_the_conventions_and_are_grey():
    dataset = build_dataset("glyphs", split="train", num_images=8)
    assert isinstance(dataset, GlyphScenes) and dataset.classes == GLYPH_CLASSES
    assert dataset.category_ids == [1, 2, 3, 4, 5, 6]
    for i in range(len(dataset)):
        image, target = dataset[i]
        n = len(target["labels"])
        pixels = np.asarray(image)
        assert image.mode == "RGB" and image.size == (128, 128)
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
        assert target["image_id"] == f"train_{i:05d}" and 1 <= n <= 5
        assert target["masks"].shape == (n, 128, 128) and target["masks"].dtype == torch.bool
        assert target["masks"].flatten(1).any(1).all()  # no instance is hidden entirely
        expected = torch.zeros(6)
        expected[target["labels"]] = 1
        assert torch.equal(target["image_labels"], expected)


def test_masks_are_exact_after_occlusion():
    """Each mask is exactly where its glyph is the top-most paint."""
    config = GlyphConfig(noise=0.0)
    for index in range(10):
        scene = sample_glyph_scene(np.random.default_rng(index), config)
        image, instance_map = render_scene(scene, 0.0)
        instances = [k for k, layer in enumerate(scene.layers) if layer.label >= 0]
        for j, k in enumerate(instances):
            layer = scene.layers[k]
            y0, y1, x0, x1 = layer.box
            full = np.zeros(instance_map.shape, dtype=bool)
            full[y0:y1, x0:x1] = layer.mask
            visible = instance_map == j + 1
            assert not (visible & ~full).any()
            assert visible.sum() >= config.min_visible * full.sum()
            without = dataclasses.replace(scene, layers=scene.layers[:k] + scene.layers[k + 1 :])
            changed = (render_scene(without, 0.0)[0] != image).any(2)
            assert not (changed & ~visible).any()  # binary silhouettes: no halo
            # Where a stripe or a speckle happens to match what lies below, a pixel may
            # not change; nearly all do.
            assert changed.sum() >= 0.8 * visible.sum()


def test_colour_is_no_cue_but_instances_touch_and_distractors_appear():
    """Per class, grey levels span dark and light alike; same-class glyphs often touch."""
    levels, darker = {c: [] for c in range(6)}, {c: [] for c in range(6)}
    pairs = touching = distractors = 0
    for i in range(120):
        rng = np.random.default_rng([0, 2, i, glyphs_module.GENERATOR_VERSION, 0x61F])
        scene = sample_glyph_scene(rng)
        distractors += sum(1 for layer in scene.layers if layer.label < 0)
        background = float(scene.background["c1"][0] + scene.background["c2"][0]) / 2
        for layer in scene.layers:
            if layer.label >= 0:
                levels[layer.label].append(float(layer.texture["c1"][0]))
                darker[layer.label].append(float(layer.texture["c1"][0]) < background)
        _, instance_map, labels = generate_glyph_scene(0, "test", i)
        for a in range(len(labels)):
            near_a = ndimage.binary_dilation(instance_map == a + 1, iterations=2)
            for b in range(a + 1, len(labels)):
                if labels[a] == labels[b]:
                    pairs += 1
                    touching += bool((near_a & (instance_map == b + 1)).any())
    for c in range(6):  # 43-61 glyphs a class: darker than the background 39-63 %
        assert 0.25 < np.mean(darker[c]) < 0.75
        assert min(levels[c]) < 30 and max(levels[c]) > 225  # black to white in every class
    assert touching / pairs > 0.35  # measured 0.50: same-class pairs within 2 px
    assert distractors / 120 >= 2  # measured 3.0: glyphs of no class and scribbles


def test_glyph_masks_follow_scale_and_rotation():
    upright = glyph_mask("E", 0, 40.0, 0.0)
    assert abs(upright.shape[0] - 40) <= 1
    turned = glyph_mask("E", 0, 40.0, 90.0)
    assert abs(turned.shape[1] - 40) <= 2  # the height became the width
    assert abs(int(turned.sum()) - int(upright.sum())) < 0.08 * upright.sum()
    fonts = {glyph_mask("G", f, 40.0, 0.0).tobytes() for f in range(len(glyphs_module.GLYPH_FONTS))}
    assert len(fonts) == len(glyphs_module.GLYPH_FONTS)  # every font draws its own G


def test_missing_font_is_named(monkeypatch):
    monkeypatch.setattr(glyphs_module, "GLYPH_FONTS", ["NoSuchFont-Bold.ttf"])
    with pytest.raises(FileNotFoundError, match="NoSuchFont-Bold.ttf.*matplotlib"):
        glyphs_module.font_paths()


def test_disk_cache_round_trip_and_config_checks(tmp_path):
    fresh = GlyphScenes("val", num_images=3, size=64)
    cached = GlyphScenes("val", num_images=3, size=64, cache_dir=tmp_path)
    assert cached.cache_file.name.startswith("glyphscenes-val-")
    for i in range(3):
        assert np.array_equal(np.asarray(fresh[i][0]), np.asarray(cached[i][0]))
        assert torch.equal(fresh[i][1]["masks"], cached[i][1]["masks"])
    with pytest.raises(ValueError, match="size must be >= 32"):
        GlyphScenes(size=16)
    with pytest.raises(ValueError, match="height must be"):
        GlyphConfig(height=(0.5, 0.9))
