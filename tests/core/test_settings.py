"""Settings objects: RetrievalConfig's YAML round trip, and a checkpoint that carries
what inference needs (input size, normalisation, kind, peak and retrieval settings)."""

import pytest
import torch

from prm.backprop import PeakSelection
from prm.engine.checkpoint import load_model, save_checkpoint, with_inference_settings
from prm.model import build_model
from prm.predictor import Predictor
from prm.retrieval import RetrievalConfig


def test_retrieval_config_yaml_round_trip(tmp_path):
    config = RetrievalConfig(
        alpha=[0.5, 2.0], beta=[1e-3, 1e-4], tau=0.9, proposal_size_limit=(1e-4, 0.5)
    )
    path = config.to_yaml(tmp_path / "r.yaml")
    assert RetrievalConfig.from_yaml(path) == config
    assert "alpha:\n  - 0.5\n  - 2.0" in path.read_text()  # lists, readable and editable
    # Fields at the top level work too; absent ones keep the base's values.
    (tmp_path / "top.yaml").write_text("beta: [0.1, 0.2]\nnms_threshold: null\n")
    read = RetrievalConfig.from_yaml(tmp_path / "top.yaml", base=RetrievalConfig(alpha=3.0))
    assert read == RetrievalConfig(alpha=3.0, beta=[0.1, 0.2], nms_threshold=None)


def test_to_yaml_sections_are_what_predict_reads(tmp_path):
    # `prm tune` writes the peak selection as a section after the retrieval settings.
    from prm.cli.predict import read_tuned_settings

    config = RetrievalConfig(beta=0.01)
    path = config.to_yaml(tmp_path / "t.yaml", predictor={"peak_threshold": 0.5})
    text = path.read_text()
    assert text.index("retrieval:") < text.index("predictor:")
    retrieval, selection, _ = read_tuned_settings(path, RetrievalConfig(), PeakSelection())
    assert retrieval == config and selection == PeakSelection(peak_threshold=0.5)


@pytest.mark.parametrize(
    "text, message",
    [
        ("- 0.8\n- 1e-5\n", r"bad.yaml: expected a mapping of retrieval settings, got list"),
        ("gamma: 1\n", r"bad.yaml: unknown retrieval settings \['gamma'\]"),
        ("contour_width: 4\n", r"bad.yaml: contour_width must be a positive odd integer"),
        ("alpha: [1, 2\n", r"bad.yaml is not valid YAML"),
    ],
)
def test_bad_retrieval_yaml_names_the_file(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        RetrievalConfig.from_yaml(tmp_path / "bad.yaml")


def test_peak_selection_checks_its_fields():
    with pytest.raises(ValueError, match="peak_threshold_mode"):
        PeakSelection(0.0, 0.5, "percent")
    with pytest.raises(ValueError, match=r"relative peak_threshold must lie in \[0, 1\]"):
        PeakSelection(0.0, 2.0, "relative")


def _checkpoint(path, **model_kwargs):
    torch.manual_seed(0)
    model = build_model("small", 3, class_names=["a", "b", "c"], **model_kwargs)
    save_checkpoint(path, {"model": model.state_dict(), "model_config": model.config()})
    return model


def test_a_checkpoint_knows_how_to_be_used(tmp_path):
    model = _checkpoint(
        tmp_path / "cam.pt",
        input_size=(40, 56),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        peak_stimulation=False,
    )
    predictor = Predictor.from_checkpoint(tmp_path / "cam.pt")
    assert predictor.input_size == (40, 56)
    assert predictor.response == "crm"  # a network trained without peak stimulation
    assert predictor.model.class_names == ["a", "b", "c"]
    assert predictor.retrieval == RetrievalConfig()
    assert predictor.peak_selection == PeakSelection(peak_threshold=0.0)
    image = torch.rand(3, 30, 70)
    expected = (torch.nn.functional.interpolate(
        image[None], size=(40, 56), mode="bilinear", antialias=True
    )[0] - 0.5) / 0.25  # fmt: skip
    assert torch.allclose(predictor.preprocess(image), expected)
    # Tuned settings stored in a copy are the loaded model's, and the predictor's defaults.
    tuned = RetrievalConfig(beta=[1e-3, 1e-2, 1e-1], nms_threshold=0.5)
    selection = PeakSelection(class_threshold=-1.0, peak_threshold=0.5)
    with_inference_settings(
        tmp_path / "cam.pt",
        tmp_path / "tuned.pt",
        retrieval=tuned.to_dict(),
        peak_selection={"class_threshold": -1.0, "peak_threshold": 0.5},
    )
    predictor = Predictor.from_checkpoint(tmp_path / "tuned.pt")
    assert predictor.retrieval == tuned and predictor.peak_selection == selection
    assert torch.equal(predictor.model.classifier.weight, model.classifier.weight)
    # Arguments still win over the stored settings.
    assert Predictor(load_model(tmp_path / "tuned.pt"), retrieval=RetrievalConfig()).retrieval == (
        RetrievalConfig()
    )
    with pytest.raises(ValueError, match="not over its input"):
        with_inference_settings(tmp_path / "tuned.pt", tmp_path / "tuned.pt", retrieval={})


def test_an_old_checkpoint_takes_its_training_size(tmp_path):
    model = build_model("small", 3)
    config = model.config()
    for key in ("input_size", "mean", "std", "inference"):
        del config[key]  # as written before the model kept them
    state = {"model": model.state_dict(), "model_config": config, "config": {"image_size": 96}}
    save_checkpoint(tmp_path / "old.pt", state)
    assert Predictor.from_checkpoint(tmp_path / "old.pt").input_size == (96, 96)
