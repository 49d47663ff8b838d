"""Fine-tuning from pretrained weights on a folder + CSV of real photos (mechanics only)."""

import shutil
import xml.etree.ElementTree as ET

import pytest
import torch

from prm.classifier import lite0_available
from prm.cli import main
from prm.engine import load_checkpoint, load_model

pytest.importorskip("timm")


def _folder_from_fixtures(shared_data, tmp_path):
    """The 3 VOC photos and 3 COCO photos as a folder with a labels.csv."""
    root = tmp_path / "photos"
    root.mkdir()
    rows = ["file,labels"]
    voc = shared_data / "voc-sample" / "VOC2012"
    for xml in sorted((voc / "Annotations").glob("*.xml")):
        names = sorted({o.findtext("name") for o in ET.parse(xml).getroot().iter("object")})
        shutil.copy(voc / "JPEGImages" / f"{xml.stem}.jpg", root / f"{xml.stem}.jpg")
        rows.append(f"{xml.stem}.jpg,{';'.join(names)}")
    for photo in sorted((shared_data / "coco-sample" / "val2017").glob("*.jpg"))[:3]:
        shutil.copy(photo, root / photo.name)
        rows.append(f"{photo.name},")  # an image with none of these classes
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.skipif(not lite0_available(), reason="the lite0 extra is not installed")
def test_prm_train_from_lite0_weights_on_a_folder(shared_data, tmp_path, capsys):
    from prm.classifier import lite0_state_dict

    root = _folder_from_fixtures(shared_data, tmp_path)
    out = tmp_path / "run"
    code = main(
        ["train", "--dataset", "folder", "--root", str(root), "--val-split", "none",
         "--backbone", "timm:efficientnet_lite0", "--weights", "lite0", "--epochs", "1",
         "--batch-size", "3", "--image-size", "96", "--sub-pixel-factor", "1",
         "--workers", "0", "--device", "cpu", "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 0
    state = load_checkpoint(out / "last.pt")
    assert state["config"]["backbone"] == "timm:efficientnet_lite0"
    model = load_model(out / "last.pt")
    assert model.class_names == ["bus", "car", "person"]
    # The backbone started from the ImageNet weights: one step at lr 1e-4 moved it little.
    lite0 = lite0_state_dict()
    trained = model.backbone.model.state_dict()
    stem = trained["conv_stem.weight"]
    assert torch.allclose(stem, lite0["conv_stem.weight"], atol=1e-2)
    assert not torch.equal(stem, lite0["conv_stem.weight"])
    # And it predicts (peak stimulation now on) with PRMs from the fine-tuned network.
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 3)


def test_unknown_timm_weights_are_a_clear_cli_error(tmp_path, capsys, shared_data):
    root = _folder_from_fixtures(shared_data, tmp_path)
    code = main(
        ["train", "--dataset", "folder", "--root", str(root), "--val-split", "none",
         "--backbone", "timm:resnet18", "--weights", "missing.pth", "--epochs", "1",
         "--batch-size", "2",
         "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "run"), "--quiet"]
    )  # fmt: skip
    assert code == 2
    assert "missing.pth" in capsys.readouterr().err
