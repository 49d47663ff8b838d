"""Transforms, collate and build_dataset: the glue between readers and the training loop."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from prm.data import (
    DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    InferenceTransform,
    ShapeScenes,
    TrainTransform,
    build_dataset,
    collate,
    denormalize,
)


def left_white_image(h=30, w=40) -> Image.Image:
    array = np.zeros((h, w, 3), dtype=np.uint8)
    array[:, : w // 2] = 255
    return Image.fromarray(array)


def test_train_transform_resizes_square_normalises_and_flips():
    transform = TrainTransform(size=16)
    flipped = 0
    for _ in range(40):
        out = transform(left_white_image())
        assert type(out) is torch.Tensor and out.dtype == torch.float32
        assert out.shape == (3, 16, 16)  # aspect not kept
        flipped += bool(out[0, :, 0].mean() < out[0, :, -1].mean())
    assert 5 < flipped < 35  # a random flip, about half the time
    white = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    still = TrainTransform(size=16, flip=False)(left_white_image())
    assert torch.allclose(still[0, :, 0], torch.full((16,), white), atol=1e-5)


def test_train_transform_jitter_keeps_labels_true_and_is_seeded():
    image = left_white_image(64, 64)
    plain = TrainTransform(size=32, flip=False)(image)
    jitter = TrainTransform(size=32, flip=False, scale_jitter=0.2, colour_jitter=0.3)
    torch.manual_seed(3)
    first = jitter(image)
    torch.manual_seed(3)
    assert torch.equal(first, jitter(image))  # randomness from torch's seed: exact resume
    outputs = [jitter(image) for _ in range(8)]
    assert all(o.shape == (3, 32, 32) for o in outputs)
    assert any(not torch.allclose(o, plain, atol=1e-3) for o in outputs)
    for o in outputs:  # a zoom of at most 20 % and a shift of at most 10 %: both halves stay
        assert o[0, :, :8].mean() > o[0, :, -8:].mean()
    with pytest.raises(ValueError, match="scale_jitter and colour_jitter must be in"):
        TrainTransform(scale_jitter=1.5)


def test_inference_transform_keeps_or_sets_the_network_size():
    image = left_white_image()
    assert InferenceTransform()(image).shape == (3, 448, 448)
    assert InferenceTransform((32, 64))(image).shape == (3, 32, 64)
    kept = InferenceTransform(size=None)(image)
    assert kept.shape == (3, 30, 40)
    assert torch.allclose(denormalize(kept)[:, :, :20], torch.ones(3, 30, 20), atol=1e-5)
    with pytest.raises(ValueError, match="size must be"):
        InferenceTransform(size=(0, 4))


def test_inference_items_keep_the_original_size_for_mapping_masks_back():
    dataset = ShapeScenes("val", num_images=3, size=64, transform=InferenceTransform(96))
    image, target = dataset[0]
    assert image.shape == (3, 96, 96)
    assert target["size"] == (64, 64) and target["masks"].shape[1:] == (64, 64)


def test_collate_stacks_equal_sizes_lists_others_and_counts_skips():
    a = (torch.zeros(3, 4, 4), {"image_id": "a"})
    b = (torch.ones(3, 4, 4), {"image_id": "b"})
    c = (torch.ones(3, 5, 4), {"image_id": "c"})
    images, targets, skipped = collate([a, None, b, None])
    assert images.shape == (2, 3, 4, 4) and skipped == 2
    assert [t["image_id"] for t in targets] == ["a", "b"]
    mixed = collate([a, c])
    assert isinstance(mixed.images, list) and mixed.skipped == 0
    empty = collate([None, None])
    assert empty.images.shape[0] == 0 and empty.targets == [] and empty.skipped == 2


def test_collate_counts_skips_from_dataloader_workers():
    class HalfBroken(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return None if i % 2 else (torch.zeros(3, 2, 2), {"image_id": str(i)})

    loader = DataLoader(HalfBroken(), batch_size=4, num_workers=1, collate_fn=collate)
    assert sum(batch.skipped for batch in loader) == 4


def test_build_dataset_names_and_errors(tmp_path):
    assert DATASETS == ("voc", "coco", "folder", "shapes", "glyphs")
    shapes = build_dataset("shapes", split="test", num_images=5, size=32)
    assert isinstance(shapes, ShapeScenes) and len(shapes) == 5 and shapes.split == "test"
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        build_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="needs a root folder"):
        build_dataset("voc")
    with pytest.raises(FileNotFoundError, match="VOC root folder not found"):
        build_dataset("voc", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="COCO image folder not found"):
        build_dataset("coco", tmp_path, split="val2017")


def test_build_dataset_on_real_fixtures(shared_data):
    voc = build_dataset("VOC", shared_data / "voc-sample" / "VOC2012", split="val")
    coco = build_dataset("coco", shared_data / "coco-sample", split="val2017", on_error="skip")
    assert (len(voc), len(coco)) == (1, 10)
    assert voc[0][1]["image_id"] == "2011_000025" and coco[0][1]["image_id"] == "74646"
