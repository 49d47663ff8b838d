"""Results files: round trip, COCO integer ids, and errors that name the file."""

import json

import pytest
import torch

from prm.evaluation import load_results, save_results
from prm.masks import decode_rle, encode_rle

SIZE = (6, 8)


@pytest.fixture
def two_predictions(rects):
    return [
        {
            "masks": rects(SIZE, (0, 3, 0, 3), (2, 6, 4, 8)),
            "labels": torch.tensor([0, 2]),
            "scores": torch.tensor([0.75, 0.5]),
        },
        {
            "masks": torch.zeros(0, *SIZE, dtype=torch.bool),
            "labels": torch.zeros(0, dtype=torch.int64),
            "scores": torch.zeros(0),
        },  # fmt: skip
    ]


def test_round_trip(tmp_path, two_predictions):
    path = tmp_path / "results.json"
    assert save_results(path, iter(two_predictions), ["img_a", "img_b"], [1, 2, 3]) == 2
    entries = json.loads(path.read_text())
    assert [(e["image_id"], e["category_id"], e["score"]) for e in entries] == [
        ("img_a", 1, 0.75),
        ("img_a", 3, 0.5),
    ]
    assert set(entries[0]) == {"image_id", "category_id", "segmentation", "score"}

    loaded = load_results(path, ["img_a", "img_b", "img_c"], [1, 2, 3], sizes=[SIZE] * 3)
    assert [item["image_id"] for item in loaded] == ["img_a", "img_b", "img_c"]
    assert loaded[0]["labels"].tolist() == [0, 2]
    assert loaded[0]["scores"].tolist() == [0.75, 0.5]
    assert torch.equal(decode_rle(loaded[0]["rles"], SIZE), two_predictions[0]["masks"])
    assert loaded[1]["labels"].shape == (0,) and loaded[2]["rles"] == []


def test_coco_integer_ids_and_a_dataset(tmp_path, two_predictions):
    path = tmp_path / "results.json"
    save_results(path, two_predictions[:1], [397133], [1, 2, 3])
    assert json.loads(path.read_text())[0]["image_id"] == 397133

    class Dataset:  # what prm.data readers offer: image_id(i) without reading the image
        category_ids = [1, 2, 3]

        def __len__(self):
            return 1

        def image_id(self, index):
            return "397133"

    loaded = load_results(path, Dataset())
    assert loaded[0]["image_id"] == "397133" and loaded[0]["labels"].tolist() == [0, 2]


def test_uncompressed_rle_is_accepted(tmp_path):
    # Column-major runs: 2 background, 3 foreground, 43 background in a 6 x 8 image.
    entry = {
        "image_id": "x",
        "category_id": 1,
        "score": 1.0,
        "segmentation": {"size": [6, 8], "counts": [2, 3, 43]},
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps([entry]))
    (item,) = load_results(path, ["x"], [1])
    mask = decode_rle(item["rles"], SIZE)[0]
    assert mask.sum() == 3 and mask[2:5, 0].all()


def write(tmp_path, content) -> str:
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


GOOD_RLE = encode_rle(torch.ones(1, *SIZE, dtype=torch.bool))[0]
GOOD = {"image_id": "x", "category_id": 1, "segmentation": GOOD_RLE, "score": 0.5}


@pytest.mark.parametrize(
    "content, message",
    [
        ("[{", "not valid JSON"),
        ({"annotations": []}, "must be a JSON list of detections, got a dict"),
        ([GOOD, 5], r"entry 1 is not a JSON object \(got int\)"),
        ([{k: v for k, v in GOOD.items() if k != "score"}], r"entry 0 lacks \['score'\]"),
        ([{**GOOD, "image_id": "y"}], "entry 0: unknown image_id 'y'"),
        ([{**GOOD, "category_id": 9}], r"entry 0: unknown category_id 9 \(known: \[1, 2\]\)"),
        ([{**GOOD, "score": "high"}], "score must be a finite number"),
        ([{**GOOD, "segmentation": [[0, 0, 1, 1, 2, 2]]}], "segmentation must be an RLE"),
        ([{**GOOD, "segmentation": {"size": [6], "counts": "x"}}], "RLE size must be"),
        ([{**GOOD, "segmentation": {"size": [6, 8], "counts": [1, 2]}}], "summing to H x W = 48"),
    ],
)
def test_errors_name_the_file_and_entry(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(ValueError, match=message) as info:
        load_results(path, ["x"], [1, 2])
    assert str(path) in str(info.value)


def test_sizes_are_checked_when_given(tmp_path):
    path = write(tmp_path, [GOOD])
    with pytest.raises(ValueError, match=r"RLE of size \(6, 8\) for image 'x', which is \(8, 6\)"):
        load_results(path, ["x"], [1], sizes=[(8, 6)])


def test_missing_file_and_missing_categories(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json: results file not found"):
        load_results(tmp_path / "nope.json", ["x"], [1])
    with pytest.raises(ValueError, match="category_ids are needed"):
        load_results(write(tmp_path, []), ["x"])


def test_save_errors(tmp_path, two_predictions):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_results(tmp_path / "no" / "r.json", two_predictions, ["a", "b"], [1, 2, 3])
    with pytest.raises(ValueError, match="more predictions than image ids"):
        save_results(tmp_path / "r.json", two_predictions, ["a"], [1, 2, 3])
    with pytest.raises(ValueError, match="label 2, but only 2 category ids"):
        save_results(tmp_path / "r.json", two_predictions, ["a", "b"], [1, 2])


@pytest.mark.parametrize("wrong", [0, 1])
def test_the_entry_of_the_wrong_size_is_named_with_its_size(tmp_path, wrong):
    """Issue 10, item 11: a wrong first entry made the error blame the next, right one."""
    from prm.evaluation import prediction_masks

    entries = [GOOD, GOOD, GOOD]
    entries[wrong] = {**GOOD, "segmentation": encode_rle(torch.ones(1, 3, 3))[0]}
    path = write(tmp_path, entries)
    loaded = load_results(path, ["x"], [1])  # image sizes unknown: checked when decoded
    with pytest.raises(ValueError) as info:
        prediction_masks(loaded[0], SIZE)
    assert f"entry {wrong} (image x) is a mask of size (3, 3), but the image is (6, 8)" in str(
        info.value
    )
