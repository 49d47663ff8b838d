"""VOCDataset on the real VOC sample and on broken files written by the tests."""

import numpy as np
import pytest
import torch
from data_writers import truncate, voc_xml, write_index_png
from PIL import Image
from torch.utils.data import DataLoader

from prm.data import (
    VOC_CLASSES,
    BadDataWarning,
    DataError,
    VOCDataset,
    build_dataset,
    collate,
)

PERSON, BOTTLE, CHAIR, SOFA, BUS, CAR = (
    VOC_CLASSES.index(n) for n in ("person", "bottle", "chair", "sofa", "bus", "car")
)


def names(labels: torch.Tensor) -> set[str]:
    return {VOC_CLASSES[i] for i in labels.nonzero().flatten().tolist()}


# --- the real sample (labelme masks of three VOC 2011 images) --------------------------


@pytest.fixture
def voc_root(shared_data):
    return shared_data / "voc-sample" / "VOC2012"


def test_real_trainval_items_follow_the_conventions(voc_root):
    dataset = VOCDataset(voc_root, "trainval")
    assert dataset.ids == ["2011_000003", "2011_000006", "2011_000025"]
    assert dataset.classes == VOC_CLASSES and dataset.category_ids == list(range(1, 21))
    expected_instances = {"2011_000003": 3, "2011_000006": 6, "2011_000025": 3}
    for image, target in (dataset[i] for i in range(len(dataset))):
        h, w = target["size"]
        assert image.mode == "RGB" and image.size == (w, h)
        n = expected_instances[target["image_id"]]
        assert target["masks"].shape == (n, h, w) and target["masks"].dtype == torch.bool
        assert target["labels"].dtype == torch.int64 and target["labels"].shape == (n,)
        assert not target["iscrowd"].any()
        assert target["image_labels"].dtype == torch.float32
        # instances never overlap, are not empty, and never cover an ignore pixel
        assert target["masks"].sum(0).max() == 1
        assert target["masks"].flatten(1).any(1).all()
        assert not (target["masks"] & target["ignore_mask"]).any()
    assert sum(expected_instances.values()) == 12


def test_real_instance_classes_and_ignore_band(voc_root):
    _, target = VOCDataset(voc_root, "trainval")[0]  # 2011_000003: two people and a bottle
    assert target["labels"].tolist() == [PERSON, PERSON, BOTTLE]
    class_png = np.array(Image.open(voc_root / "SegmentationClass" / "2011_000003.png"))
    assert target["ignore_mask"].sum() == (class_png == 255).sum() == 9460
    _, target = VOCDataset(voc_root, "trainval")[1]  # instance values 1..5 and 7 (no 6)
    assert sorted(target["labels"].tolist()) == sorted([PERSON] * 4 + [CHAIR, SOFA])


def test_real_image_labels_come_from_the_xml_by_default(voc_root):
    # The sample's XML lists only the people of 2011_000003, its masks also a bottle.
    by_id = {t["image_id"]: t for _, t in (VOCDataset(voc_root, "trainval")[i] for i in range(3))}
    assert names(by_id["2011_000003"]["image_labels"]) == {"person"}
    assert names(by_id["2011_000025"]["image_labels"]) == {"bus", "car"}
    union = VOCDataset(voc_root, "trainval", labels_from="union")[0][1]
    assert names(union["image_labels"]) == {"person", "bottle"}
    seg = VOCDataset(voc_root, "trainval", labels_from="segmentation", instance_masks=False)
    _, target = seg[1]
    assert names(target["image_labels"]) == {"person", "chair", "sofa"}
    assert "masks" not in target


def test_real_splits_by_name_folder_and_file(voc_root, tmp_path):
    assert VOCDataset(voc_root, "train").ids == ["2011_000003", "2011_000006"]
    assert VOCDataset(voc_root, "Segmentation/val").ids == ["2011_000025"]
    id_list = tmp_path / "my_list.txt"
    id_list.write_text("2011_000025  1\n\n# a comment\n2011_000003\n")
    assert VOCDataset(voc_root, str(id_list)).ids == ["2011_000025", "2011_000003"]
    # build_dataset also accepts the VOCdevkit-style parent folder
    assert len(build_dataset("voc", voc_root.parent, split="val")) == 1


def test_real_dataloader_batches_with_collate(voc_root):
    from prm.data import InferenceTransform

    dataset = VOCDataset(voc_root, "trainval", transform=InferenceTransform(64))
    images, targets, skipped = next(iter(DataLoader(dataset, batch_size=3, collate_fn=collate)))
    assert images.shape == (3, 3, 64, 64) and skipped == 0
    assert [t["size"] for t in targets] == [(338, 500), (375, 500), (375, 500)]


# --- annotation variants and broken files ----------------------------------------------


def test_difficult_objects_count_by_default_and_can_be_dropped(voc_writer):
    xml = voc_xml([("cat", 0), ("dog", 1), "bird"], float_boxes=True)
    voc_writer.add("a", xml=xml).split("train", ["a"])
    kept = VOCDataset(voc_writer.root, "train")[0][1]["image_labels"]
    assert names(kept) == {"cat", "dog", "bird"}  # empty <difficult/> means not difficult
    dropped = VOCDataset(voc_writer.root, "train", use_difficult=False)[0][1]["image_labels"]
    assert names(dropped) == {"cat", "bird"}


def test_names_are_normalised_and_float_boxes_accepted(voc_writer):
    voc_writer.add("a", xml=voc_xml([" Person ", "TVMonitor"], float_boxes=True))
    voc_writer.split("train", ["a"])
    assert names(VOCDataset(voc_writer.root, "train")[0][1]["image_labels"]) == {
        "person",
        "tvmonitor",
    }


def test_unknown_class_raises_or_skips(voc_writer):
    voc_writer.add("good", objects=["cat"]).add("bad", objects=["cat", "dinosaur"])
    voc_writer.split("train", ["good", "bad"])
    with pytest.raises(DataError, match=r"bad\.xml: unknown class name\(s\) \['dinosaur'\]"):
        VOCDataset(voc_writer.root, "train")
    with pytest.warns(BadDataWarning, match="dinosaur"):
        dataset = VOCDataset(voc_writer.root, "train", on_error="skip")
    assert dataset.ids == ["good"]
    assert dataset.skipped[0][0] == "bad" and "bad.xml" in dataset.skipped[0][1]


def test_xml_without_objects_or_malformed(voc_writer):
    voc_writer.add("empty", xml=voc_xml([])).add("broken", xml="<annotation><object>")
    voc_writer.split("empty", ["empty"])
    voc_writer.split("broken", ["broken"])
    with pytest.raises(DataError, match=r"empty\.xml: no <object>"):
        VOCDataset(voc_writer.root, "empty")
    with pytest.raises(DataError, match=r"broken\.xml: not well-formed XML"):
        VOCDataset(voc_writer.root, "broken")
    with pytest.warns(BadDataWarning):
        assert len(VOCDataset(voc_writer.root, "empty", on_error="skip")) == 0


def test_empty_or_missing_split_file_is_an_error_even_when_skipping(voc_writer):
    voc_writer.add("a")
    voc_writer.split("train", [])
    with pytest.raises(DataError, match=r"train\.txt: split file is empty"):
        VOCDataset(voc_writer.root, "train", on_error="skip")
    with pytest.raises(FileNotFoundError, match="no split 'val'"):
        VOCDataset(voc_writer.root, "val")
    with pytest.raises(FileNotFoundError, match="not a VOC2012 folder"):
        VOCDataset(voc_writer.root / "Annotations", "train")


def test_missing_image_is_found_while_indexing(voc_writer):
    voc_writer.add("a").add("b").split("train", ["a", "b"])
    (voc_writer.root / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.jpg: image file not found"):
        VOCDataset(voc_writer.root, "train")
    with pytest.warns(BadDataWarning):
        assert VOCDataset(voc_writer.root, "train", on_error="skip").ids == ["a"]


def test_images_without_segmentation_are_training_items(voc_writer):
    voc_writer.add("seg", objects=["cat", "dog"], instances=[8, 12, 12]).add("plain")
    voc_writer.split("train", ["seg", "plain"])
    dataset = VOCDataset(voc_writer.root, "train")
    _, with_seg = dataset[0]
    _, plain = dataset[1]
    assert with_seg["labels"].tolist() == [7, 11, 11]  # VOC values 8, 12 -> cat, dog
    assert with_seg["ignore_mask"][:, 22].all() and with_seg["ignore_mask"].sum() == 24
    assert "masks" not in plain and names(plain["image_labels"]) == {"cat"}


def test_mask_of_the_wrong_size_raises_or_is_skipped_and_counted(voc_writer):
    voc_writer.add("a", instances=[8]).add("b", instances=[8]).split("train", ["a", "b"])
    write_index_png(voc_writer.root / "SegmentationObject" / "b.png", np.zeros((10, 10)))
    dataset = VOCDataset(voc_writer.root, "train")
    with pytest.raises(DataError, match=r"b\.png: SegmentationObject mask is 10x10 .* 32x24"):
        dataset[1]
    skipping = VOCDataset(voc_writer.root, "train", on_error="skip")
    with pytest.warns(BadDataWarning, match=r"b\.png"):
        batch = collate([skipping[0], skipping[1]])
    assert batch.skipped == 1 and [t["image_id"] for t in batch.targets] == ["a"]


def test_truncated_jpeg_is_skipped_through_a_dataloader(voc_writer):
    from prm.data import TrainTransform

    for image_id in "abcd":
        voc_writer.add(image_id, size=(64, 64))
    voc_writer.split("train", list("abcd"))
    truncate(voc_writer.root / "JPEGImages" / "c.jpg", keep=0.3)
    with pytest.raises(DataError, match=r"c\.jpg: cannot read image"):
        VOCDataset(voc_writer.root, "train")[2]
    dataset = VOCDataset(voc_writer.root, "train", transform=TrainTransform(32), on_error="skip")
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate)
    with pytest.warns(BadDataWarning, match=r"c\.jpg"):
        batches = list(loader)
    assert [b.skipped for b in batches] == [0, 1]
    assert [b.images.shape[0] for b in batches] == [2, 1]
    assert dataset.skipped == [("c", dataset.skipped[0][1])]
