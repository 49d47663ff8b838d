"""COCODataset on the real COCO sample and on broken json written by the tests."""

import json

import numpy as np
import pytest
import torch
from data_writers import coco_json, image_with_exif, write_jpeg, write_json
from pycocotools import mask as mask_utils

from prm.data import BadDataWarning, COCODataset, DataError, build_dataset

# --- the real sample (10 val2017 images, official annotations) -------------------------


@pytest.fixture
def coco_root(shared_data):
    return shared_data / "coco-sample"


def test_real_sample_classes_and_instances(coco_root):
    dataset = build_dataset("coco", coco_root, split="val2017")
    assert len(dataset) == 10 and len(dataset.classes) == 80
    assert dataset.classes[0] == "person" and dataset.category_ids[0] == 1
    assert dataset.category_ids == sorted(dataset.category_ids) and dataset.category_ids[-1] == 90
    raw = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())
    area = {a["id"]: a["area"] for a in raw["annotations"]}
    per_image = {}
    for a in raw["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    total = crowd = 0
    for i in range(len(dataset)):
        image, target = dataset[i]
        anns = per_image[int(target["image_id"])]
        h, w = target["size"]
        assert image.size == (w, h)
        assert target["masks"].shape == (len(anns), h, w)
        # contiguous labels map back to the json's category ids
        ids = [dataset.category_ids[c] for c in target["labels"].tolist()]
        assert ids == [a["category_id"] for a in anns]
        # decoded polygon masks have the annotated area (rasterisation differs by a little)
        for mask, ann in zip(target["masks"], anns, strict=True):
            if not ann["iscrowd"] and area[ann["id"]] > 200:
                assert abs(mask.sum().item() - ann["area"]) / ann["area"] < 0.1
        # image-level labels: the classes of the non-crowd instances only
        non_crowd = target["labels"][~target["iscrowd"]]
        expected = torch.zeros(80)
        expected[non_crowd] = 1
        assert torch.equal(target["image_labels"], expected)
        total += len(anns)
        crowd += int(target["iscrowd"].sum())
    assert (total, crowd) == (77, 1)


def test_real_crowd_region_is_an_rle_instance(coco_root):
    dataset = COCODataset(coco_root / "annotations/instances_val2017.json", coco_root / "val2017")
    index = [dataset.image_id(i) for i in range(len(dataset))].index("193245")
    _, target = dataset[index]
    crowd = target["masks"][target["iscrowd"]]
    assert crowd.shape[0] == 1 and crowd.sum() > 0
    assert dataset.classes[target["labels"][target["iscrowd"]].item()] == "person"


# --- synthetic json: formats and broken cases -----------------------------------------


def square_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def coco_files(tmp_path):
    """Three 20x30 images: polygon + crowd RLE, compressed RLE, and an empty image."""
    images_dir = tmp_path / "images"
    images = []
    for i in (1, 2, 3):
        write_jpeg(images_dir / f"{i}.jpg", size=(20, 30))
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 20, "width": 30})
    crowd = np.zeros((20, 30), dtype=np.uint8)
    crowd[15:20, 0:10] = 1
    uncompressed = {"size": [20, 30], "counts": []}
    flat = crowd.flatten(order="F")  # COCO RLE runs go down the columns
    value, run = 0, 0
    for pixel in flat:
        if pixel != value:
            uncompressed["counts"].append(run)
            value, run = pixel, 0
        run += 1
    uncompressed["counts"].append(run)
    compressed = mask_utils.encode(np.asfortranarray(crowd))
    compressed["counts"] = compressed["counts"].decode("ascii")
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 3, "iscrowd": 0,
         "segmentation": square_polygon(2, 2, 12, 8)},
        {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": uncompressed},
        {"id": 12, "image_id": 2, "category_id": 1, "iscrowd": 0, "segmentation": compressed},
    ]  # fmt: skip
    return tmp_path, images_dir, coco_json(images, annotations), crowd


def load(tmp_path, images_dir, data, **kwargs):
    return COCODataset(write_json(tmp_path / "ann.json", data), images_dir, **kwargs)


def test_polygons_and_both_rle_forms_decode_exactly(coco_files):
    tmp_path, images_dir, data, crowd = coco_files
    dataset = load(tmp_path, images_dir, data)
    assert dataset.classes == ["person", "car"] and dataset.category_ids == [1, 3]
    assert len(dataset) == 2 and dataset.num_empty == 1  # image 3 has no annotation
    _, first = dataset[0]
    assert first["labels"].tolist() == [1, 0] and first["iscrowd"].tolist() == [False, True]
    assert first["image_labels"].tolist() == [0.0, 1.0]  # the crowd person is not a label
    assert torch.equal(first["masks"][1], torch.from_numpy(crowd.astype(bool)))
    polygon = first["masks"][0]
    assert polygon[3:8, 3:12].all() and not polygon[10:].any() and not polygon[:, 14:].any()
    _, second = dataset[1]
    assert torch.equal(second["masks"][0], torch.from_numpy(crowd.astype(bool)))
    assert second["image_id"] == "2" and not second["ignore_mask"].any()
    assert len(load(tmp_path, images_dir, data, keep_empty=True)) == 3


def test_annotation_of_a_missing_image(coco_files):
    tmp_path, images_dir, data, _ = coco_files
    data["annotations"].append(dict(data["annotations"][0], id=99, image_id=42))
    with pytest.raises(DataError, match=r"ann\.json: annotation 99 refers to image id 42"):
        load(tmp_path, images_dir, data)
    with pytest.warns(BadDataWarning, match="image id 42"):
        dataset = load(tmp_path, images_dir, data, on_error="skip")
    assert len(dataset) == 2 and dataset.skipped[0][0] == "annotation 99"


def test_unknown_category_skips_the_whole_image(coco_files):
    tmp_path, images_dir, data, _ = coco_files
    data["annotations"].append(dict(data["annotations"][0], id=98, image_id=2, category_id=7))
    with pytest.raises(DataError, match="annotation 98 has unknown category id 7"):
        load(tmp_path, images_dir, data)
    with pytest.warns(BadDataWarning, match="unknown category"):
        dataset = load(tmp_path, images_dir, data, on_error="skip")
    assert [dataset.image_id(i) for i in range(len(dataset))] == ["1"]


def test_image_file_missing_on_disk(coco_files):
    tmp_path, images_dir, data, _ = coco_files
    (images_dir / "2.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"2\.jpg: image file not found"):
        load(tmp_path, images_dir, data)
    with pytest.warns(BadDataWarning):
        assert len(load(tmp_path, images_dir, data, on_error="skip")) == 1


def test_degenerate_polygon_is_a_bad_annotation(coco_files):
    tmp_path, images_dir, data, _ = coco_files
    data["annotations"][2]["segmentation"] = [[1, 1, 5, 5]]
    with pytest.raises(DataError, match="annotation 12 has a polygon with fewer than 3 points"):
        load(tmp_path, images_dir, data)


def test_json_that_is_not_coco(tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON"):
        COCODataset(tmp_path / "bad.json", images_dir)
    write_json(tmp_path / "partial.json", {"images": []})
    with pytest.raises(DataError, match=r"missing key\(s\) \['annotations', 'categories'\]"):
        COCODataset(tmp_path / "partial.json", images_dir)
    with pytest.raises(FileNotFoundError, match="COCO annotation file not found"):
        COCODataset(tmp_path / "none.json", images_dir)


def test_image_size_must_match_the_json_with_an_exif_hint(coco_files):
    tmp_path, images_dir, data, _ = coco_files
    data["images"][1].update(height=30, width=20)  # as if the json were made upright
    dataset = load(tmp_path, images_dir, data)
    with pytest.raises(DataError, match=r"2\.jpg: image is 30x20 .* 20x30.*exif_transpose"):
        dataset[1]


def test_exif_orientation_is_ignored_for_coco_by_default(coco_files):
    tmp_path, images_dir, data, _ = coco_files
    stored = np.zeros((20, 30, 3), dtype=np.uint8)
    image_with_exif(images_dir / "1.jpg", stored, orientation=6)  # "rotate 90 to view"
    image, target = load(tmp_path, images_dir, data)[0]
    assert image.size == (30, 20) and target["size"] == (20, 30)  # stored pixels, as annotated
