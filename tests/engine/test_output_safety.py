"""Outputs named from image ids stay in the output folder; no result is lost (issue 10)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import prm.engine.inference as inference
from prm.backprop import PeakSelection
from prm.data import FolderDataset
from prm.engine.inference import predict_dataset, predict_files, unique_image_ids
from prm.model import build_model
from prm.paths import output_path, safe_relative_name
from prm.predictor import Predictor


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    model = build_model("small", 2, class_names=["a", "b"])
    return Predictor(model, input_size=32, peak_selection=PeakSelection(-1e9), proposal_fn="prm")


def picture(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


def files_under(folder):
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "image_id",
    ["../outside", "/abs/photo", "a\\..\\..\\b", "..", "", ".hidden", "sub dir/../../x", "x" * 400],
)
def test_every_id_maps_inside_the_folder(tmp_path, image_id):
    for keep in (True, False):
        name = safe_relative_name(image_id, ".png", keep_folders=keep)
        assert not os.path.isabs(name) and ".." not in name.split("/")
        assert all(len(part) < 200 for part in name.split("/"))
        path = output_path(tmp_path / "out", image_id, ".png", keep_folders=keep)
        assert path.resolve().is_relative_to((tmp_path / "out").resolve())


def test_safe_ids_keep_their_names_and_distinct_ids_stay_distinct():
    assert safe_relative_name("2007_000032", ".png") == "2007_000032.png"
    assert safe_relative_name("sub dir/pic one", ".png") == "sub dir/pic one.png"
    # the proposal cache's flat names are unchanged from before the helper existed
    assert safe_relative_name("beach/0001", keep_folders=False) == "beach_0001-7b9d9097"
    ids = ["a/b", "a\\b", "a_b", "a//b", "/a/b", "../a/b"]
    assert len({safe_relative_name(i) for i in ids}) == len(ids)
    assert len({safe_relative_name(i, keep_folders=False) for i in ids}) == len(ids)


def test_output_path_refuses_an_input_file(tmp_path):
    source = picture(tmp_path / "out" / "p.png")
    with pytest.raises(ValueError, match="overwrite the input"):
        output_path(tmp_path / "out", "p", ".png", inputs={source.resolve()})


def test_csv_paths_cannot_make_predict_write_outside_or_over_inputs(predictor, tmp_path):
    """Item 1: an absolute `file` wrote the overlay over the source image; `../` escaped."""
    root = tmp_path / "data"
    source = picture(tmp_path / "elsewhere" / "photo.png", seed=1)
    picture(tmp_path / "outside.png", seed=2)
    picture(root / "in.png", seed=3)
    (root / "labels.csv").write_text(f"file,labels\n{source},a\n../outside.png,b\nin.png,a\n")
    before = {p: p.read_bytes() for p in files_under(tmp_path)}
    dataset = FolderDataset(root, "labels.csv")
    out = tmp_path / "out"
    summary = predict_dataset(
        predictor, dataset, results_file=out / "results.json", overlay_dir=out / "overlays",
        progress=False,
    )  # fmt: skip
    assert summary.images == 3 and len(summary.overlays) == 3
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path} was overwritten"
    new = files_under(tmp_path) - set(before)
    assert new and all(p.resolve().is_relative_to(out.resolve()) for p in new)


def test_subfolder_ids_get_subfolders_and_an_overlay_failure_loses_nothing(
    predictor, tmp_path, monkeypatch
):
    """Item 2: `sub dir/pic one.jpg` crashed predict and lost every result."""
    root = tmp_path / "data"
    picture(root / "sub dir" / "pic one.png")
    picture(root / "b.png", seed=1)
    (root / "labels.csv").write_text("file,labels\nsub dir/pic one.png,a\nb.png,b\n")
    dataset = FolderDataset(root, "labels.csv")
    out = tmp_path / "out"
    summary = predict_dataset(
        predictor, dataset, results_file=out / "results.json", overlay_dir=out / "overlays",
        progress=False,
    )  # fmt: skip
    assert (out / "overlays" / "sub dir" / "pic one.png").is_file()
    assert summary.overlays[0] == out / "overlays" / "sub dir" / "pic one.png"

    def broken_panel(*args):
        raise OSError("disk full")

    monkeypatch.setattr(inference, "prediction_panel", broken_panel)
    with pytest.warns(UserWarning, match="could not write the overlay of image") as caught:
        summary = predict_dataset(
            predictor, dataset, results_file=out / "again.json", overlay_dir=out / "o2",
            progress=False,
        )  # fmt: skip
    assert "image sub dir/pic one: disk full" in str(caught[0].message)
    ids = {r["image_id"] for r in json.loads((out / "again.json").read_text())}
    assert summary.images == 2 and ids == {"sub dir/pic one", "b"}


def test_a_crash_mid_run_keeps_the_results_so_far(predictor, tmp_path):
    root = tmp_path / "data"
    for k in range(3):
        picture(root / f"{k}.png", seed=k)
    (root / "labels.csv").write_text("file,labels\n0.png,a\n1.png,b\n2.png,a\n")
    dataset = FolderDataset(root, "labels.csv")
    calls = []

    def failing(images, proposals):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return predictor(images, proposals)

    out = tmp_path / "out"
    with pytest.raises(RuntimeError), pytest.warns(UserWarning, match="stopped after 2 images"):
        predict_dataset(failing, dataset, results_file=out / "results.json", progress=False)
    assert not (out / "results.json").exists()  # never a partial file under the full name
    partial = json.loads((out / "results.partial.json").read_text())
    assert {r["image_id"] for r in partial} == {"0", "1"}


def test_images_with_the_same_stem_get_distinct_ids(predictor, tmp_path):
    """Item 3: a/good.jpg and b/good.jpg were both `good`; one overlay overwrote the other."""
    paths = [picture(tmp_path / "a" / "good.png"), picture(tmp_path / "b" / "good.png", seed=1)]
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="ids are made unique"):
        summary = predict_files(
            predictor, paths, ["a", "b"], results_file=out / "results.json",
            overlay_dir=out / "overlays", progress=False,
        )  # fmt: skip
    ids = {r["image_id"] for r in json.loads((out / "results.json").read_text())}
    assert ids <= {"a/good", "b/good"} and len(summary.overlays) == 2
    assert {p.relative_to(out / "overlays").as_posix() for p in summary.overlays} == {
        "a/good.png",
        "b/good.png",
    }


def test_unique_ids_for_every_kind_of_clash(tmp_path):
    same = tmp_path / "x" / "p.png"
    paths = [same, tmp_path / "x" / "p.jpg", same, tmp_path / "y" / "q.png"]
    with pytest.warns(UserWarning):
        ids = unique_image_ids(paths)
    assert len(set(ids)) == 4 and ids[3] == "q"


def test_proposal_folders_are_read_by_safe_names_only(tmp_path):
    from prm.engine.inference import proposal_source
    from prm.proposals import save_proposals

    folder = tmp_path / "proposals"
    folder.mkdir()
    masks = torch.ones(1, 4, 4, dtype=torch.bool)
    save_proposals(tmp_path / "secret.npz", masks)  # outside the folder
    save_proposals(folder / "2007_000032.npz", masks)  # a plain id: its own name
    save_proposals(folder / safe_relative_name("a b/c", ".npz", keep_folders=False), masks)
    source = proposal_source(str(folder))
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    assert source("2007_000032", image).shape == (1, 4, 4)
    assert source("a b/c", image).shape == (1, 4, 4)  # as a `prm proposals` cache names it
    with pytest.raises(FileNotFoundError, match="no proposals for image ../secret"):
        source("../secret", image)


def test_an_overlay_never_replaces_a_dataset_image(predictor, tmp_path):
    out = tmp_path / "out"
    root = out / "overlays"  # the user's images where overlays go
    source = picture(root / "x.png", seed=4)
    (root / "labels.csv").write_text("file,labels\nx.png,a\n")
    before = source.read_bytes()
    with pytest.warns(UserWarning, match="would overwrite the input"):
        summary = predict_dataset(
            predictor, FolderDataset(root, "labels.csv"), overlay_dir=root, progress=False
        )
    assert summary.images == 1 and summary.overlays == [] and source.read_bytes() == before
