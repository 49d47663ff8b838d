"""FolderDataset and load_image: users' own photos in every odd format."""

import numpy as np
import pytest
import torch
from data_writers import image_with_exif, truncate, write_index_png, write_jpeg
from PIL import Image

from prm.data import BadDataWarning, DataError, FolderDataset, build_dataset, load_image

# --- load_image: colour modes, broken files, EXIF --------------------------------------


def test_grey_cmyk_rgba_and_16_bit_images_come_back_as_rgb(tmp_path):
    Image.new("L", (8, 6), 77).save(tmp_path / "grey.png")
    Image.new("CMYK", (8, 6), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    rgba = Image.new("RGBA", (8, 6), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent
    rgba.save(tmp_path / "rgba.png")
    Image.fromarray(np.full((6, 8), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    grey = np.asarray(load_image(tmp_path / "grey.png"))
    assert grey.shape == (6, 8, 3) and (grey == 77).all()
    cyan = np.asarray(load_image(tmp_path / "cmyk.jpg"), dtype=int)
    assert abs(cyan[3, 3] - [0, 255, 255]).max() <= 8  # full cyan ink = no red light
    with_alpha = load_image(tmp_path / "rgba.png")
    assert with_alpha.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert with_alpha.getpixel((1, 1)) == (10, 20, 30)
    assert np.asarray(load_image(tmp_path / "deep.png")).min() == 255  # not clipped to noise


def test_truncated_and_non_image_files_name_the_file(tmp_path):
    truncate(write_jpeg(tmp_path / "cut.jpg", size=(64, 64)), keep=0.4)
    with pytest.raises(DataError, match=r"cut\.jpg: cannot read image .*(?i:truncated)"):
        load_image(tmp_path / "cut.jpg")
    (tmp_path / "notes.jpg").write_text("not a picture")
    with pytest.raises(DataError, match=r"notes\.jpg: cannot read image"):
        load_image(tmp_path / "notes.jpg")
    with pytest.raises(FileNotFoundError, match=r"gone\.jpg: image file not found"):
        load_image(tmp_path / "gone.jpg")


def test_exif_rotated_photo_is_turned_upright_on_request(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :10] = 255  # white band on the stored left edge
    path = image_with_exif(tmp_path / "phone.jpg", stored, orientation=6)  # 90 deg clockwise
    assert load_image(path).size == (40, 20)  # stored pixels
    upright = np.asarray(load_image(path, exif_transpose=True))
    assert upright.shape == (40, 20, 3)
    assert upright[:8].mean() > 200 and upright[12:].mean() < 50  # left edge is now the top


# --- FolderDataset ----------------------------------------------------------------------


def write_csv(path, rows, header="file,labels,masks,instance_labels"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    write_jpeg(root / "a.jpg", size=(12, 16))
    Image.new("L", (16, 12), 90).save(root / "grey.png")
    Image.new("CMYK", (16, 12), (0, 255, 0, 0)).save(root / "print.jpg")
    (root / "sub").mkdir()
    Image.new("RGBA", (16, 12), (0, 0, 255, 128)).save(root / "sub" / "logo.png")
    mask = np.zeros((12, 16), dtype=np.uint8)
    mask[1:5, 1:5], mask[6:10, 6:10], mask[0, :] = 1, 2, 255
    write_index_png(root / "masks" / "a.png", mask)
    return root


def test_csv_labels_masks_and_odd_modes(photos):
    csv = write_csv(
        photos / "labels.csv",
        ["a.jpg,,masks/a.png,dog;cat", "grey.png,cat,,", "print.jpg,dog;cat,,", "sub/logo.png,,,"],
    )
    dataset = FolderDataset(photos, csv)
    assert dataset.classes == ["cat", "dog"] and dataset.category_ids == [1, 2]
    image, target = dataset[0]
    assert image.mode == "RGB" and target["size"] == (12, 16) and target["image_id"] == "a"
    assert target["labels"].tolist() == [1, 0]
    assert target["image_labels"].tolist() == [1.0, 1.0]  # from the instances
    assert target["masks"].shape == (2, 12, 16) and target["masks"][0, 1:5, 1:5].all()
    assert target["masks"].sum() == 32 and target["ignore_mask"].sum() == 16
    assert [dataset[i][0].mode for i in range(4)] == ["RGB"] * 4
    _, logo = dataset[3]
    assert logo["image_id"] == "sub/logo" and logo["image_labels"].sum() == 0
    assert "masks" not in logo
    assert torch.equal(build_dataset("folder", photos)[2][1]["image_labels"], torch.ones(2))


def test_without_csv_every_image_is_listed_unlabelled(photos):
    dataset = FolderDataset(photos, classes=["cat", "dog"])
    assert [dataset.image_id(i) for i in range(len(dataset))] == [
        "a",
        "grey",
        "masks/a",
        "print",
        "sub/logo",
    ]
    assert dataset[0][1]["image_labels"].tolist() == [0.0, 0.0]


def test_unknown_class_and_missing_file_rows(photos):
    csv = write_csv(photos / "rows.csv", ["a.jpg,cat,,", "grey.png,zebra,,", "gone.jpg,dog,,"])
    with pytest.raises(DataError, match=r"rows\.csv, line 3: unknown class name\(s\) \['zebra'\]"):
        FolderDataset(photos, csv, classes=["cat", "dog"])
    with pytest.warns(BadDataWarning) as caught:
        dataset = FolderDataset(photos, csv, classes=["cat", "dog"], on_error="skip")
    assert len(dataset) == 1 and len(caught) == 2
    assert "gone.jpg: image file not found" in dataset.skipped[1][1]


def test_mask_of_the_wrong_size_or_wrong_instances(photos):
    write_index_png(photos / "masks" / "small.png", np.ones((5, 5)))
    (photos / "b.jpg").write_bytes((photos / "a.jpg").read_bytes())  # one row per image
    csv = write_csv(photos / "m.csv", ["a.jpg,,masks/small.png,dog", "b.jpg,,masks/a.png,dog"])
    dataset = FolderDataset(photos, csv)
    with pytest.raises(DataError, match=r"small\.png: instance mask is 5x5 .* 16x12 .*upright"):
        dataset[0]
    with pytest.raises(DataError, match=r"a\.png: has instance values \[1, 2\] but .* 1 instance"):
        dataset[1]


def test_mask_follows_the_upright_photo(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    image_with_exif(tmp_path / "phone.jpg", stored, orientation=6)
    upright_mask = np.zeros((40, 20), dtype=np.uint8)
    upright_mask[:10] = 1
    write_index_png(tmp_path / "phone_mask.png", upright_mask)
    csv = write_csv(tmp_path / "l.csv", ["phone.jpg,,phone_mask.png,cat"])
    image, target = FolderDataset(tmp_path, csv)[0]
    assert image.size == (20, 40) and target["masks"].shape == (1, 40, 20)
    with pytest.raises(DataError, match="instance mask is 20x40"):
        FolderDataset(tmp_path, csv, exif_transpose=False)[0]


def test_bad_csv_files(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    (tmp_path / "noheader.csv").write_text("a.jpg,cat\n")
    with pytest.raises(DataError, match=r"noheader\.csv: the header must have a 'file' column"):
        FolderDataset(tmp_path, "noheader.csv")
    write_csv(tmp_path / "empty.csv", [], header="file,labels")
    with pytest.raises(DataError, match=r"empty\.csv: no image rows"):
        FolderDataset(tmp_path, tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError, match="label CSV not found"):
        FolderDataset(tmp_path, "missing.csv")


def test_duplicate_rows_are_warned_once_and_counted_once(photos, tmp_path):
    """Issue 10, item 10: a repeated row counted twice in training, and `prm evaluate`
    blamed the results file."""
    csv = write_csv(
        photos / "labels.csv",
        ["a.jpg,cat,,", "grey.png,dog,,", "./a.jpg,cat,,", "grey.png,dog,,", "print.jpg,cat,,"],
    )
    with pytest.warns(BadDataWarning, match=r"2 duplicate row\(s\).*line 4 repeats line 2"):
        dataset = FolderDataset(photos, csv)
    assert [dataset.image_id(i) for i in range(len(dataset))] == ["a", "grey", "print"]
    write_jpeg(photos / "grey.jpg", size=(12, 16))  # another file with the id "grey"
    csv = write_csv(photos / "labels.csv", ["grey.png,dog,,", "grey.jpg,cat,,"])
    with pytest.raises(DataError, match="grey.jpg has the image id 'grey' of line 2"):
        FolderDataset(photos, csv)


def test_results_of_a_dataset_with_repeated_ids_blame_the_dataset(tmp_path):
    from prm.evaluation import load_results

    (tmp_path / "r.json").write_text("[]")
    with pytest.raises(ValueError, match=r"dataset lists image id\(s\) \['a'\] more than once"):
        load_results(tmp_path / "r.json", ["a", "b", "a"], category_ids=[1])
