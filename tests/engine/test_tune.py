"""Retrieval tuning: cached responses give the same numbers as predicting afresh."""

from dataclasses import replace

import pytest
import torch
from PIL import Image

from prm.backprop import PeakSelection
from prm.data import ShapeScenes
from prm.engine.inference import predict_dataset
from prm.engine.tune import tune_retrieval
from prm.model import build_model
from prm.predictor import Predictor


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("small", 6)
    # A few peaks a class: relative threshold 0.7.
    selection = PeakSelection(
        class_threshold=-1e9, peak_threshold=0.7, peak_threshold_mode="relative"
    )
    options = {"input_size": 64, "peak_selection": selection, "proposal_fn": "prm"}
    predictor = Predictor(model, **options)
    dataset = ShapeScenes("val", 4, size=64)
    return predictor, dataset, options
    return predictor, dataset


def test_best_setting_scores_what_a_fresh_prediction_scores(setup):
    predictor, dataset, options = setup
    grid = {"beta": [0.0, 1e-2, 1.0], "nms_threshold": [0.3, 0.9]}
    result = tune_retrieval(predictor, dataset, grid, progress=False)
    assert [t["params"] for t in result.trials][:2] == [
        {"beta": 0.0, "nms_threshold": 0.3},
        {"beta": 0.0, "nms_threshold": 0.9},
    ]
    values = [t["value"] for t in result.trials]
    assert result.value == max(values)
    assert result.best == replace(
        predictor.retrieval, **result.trials[values.index(max(values))]["params"]
    )
    # The straightforward way: predict the dataset again with the chosen settings.
    fresh = Predictor(predictor.model, retrieval=result.best, **options)
    summary = predict_dataset(fresh, dataset, metrics=["instance"], progress=False)
    assert summary.metrics["instance/mAP_r@0.5"] == pytest.approx(result.value)
    assert predictor.retrieval.beta == 1e-5  # the predictor itself is unchanged


def test_per_class_choice_takes_each_class_best_setting(setup):
    predictor, dataset, _ = setup
    result = tune_retrieval(
        predictor, dataset, {"alpha": [0.1, 0.8, 5.0]}, per_class=True, progress=False
    )
    assert isinstance(result.best.alpha, list) and len(result.best.alpha) == 6
    for c, name in enumerate(dataset.classes):
        aps = [t["per_class"][name] for t in result.trials]
        if all(ap is None for ap in aps):
            continue
        chosen = [t["params"]["alpha"] for t in result.trials if t["per_class"][name] == max(aps)]
        assert result.best.alpha[c] in chosen


def test_bad_grids(setup):
    predictor, dataset, _ = setup
    with pytest.raises(ValueError, match="unknown retrieval settings"):
        tune_retrieval(predictor, dataset, {"gamma": [1]}, progress=False)
    with pytest.raises(ValueError, match="at least one value"):
        tune_retrieval(predictor, dataset, {"beta": []}, progress=False)
    with pytest.raises(ValueError, match="metric must be"):
        tune_retrieval(predictor, dataset, {"beta": [0.1]}, metric="coco/AP", progress=False)


class _PlantedResponse(Predictor):
    """A predictor whose peak response map is given, not computed: one peak of class 0
    whose PRM spreads evenly over a 20 x 20 square B around the object, a 10 x 10 square
    A; the class response is high only on A's 6 x 6 core (so background Q is 1 outside
    the core, inside A too)."""

    def respond(self, image, proposals=None, index=0):
        prm = torch.zeros(1, 32, 32)
        prm[0, 6:26, 6:26] = 1 / 400
        crm = torch.zeros(2, 32, 32)
        crm[0, 13:19, 13:19] = 1.0
        response = {
            "peak_cells": torch.tensor([[0, 16, 16]]),
            "labels": torch.tensor([0]),
            "peak_values": torch.tensor([1.0]),
            "prms": prm,
            "class_scores": torch.tensor([1.0, -1.0]),
            "crm": crm,
        }
        return response, proposals


class _OneImage:
    classes = ["object", "other"]
    category_ids = [1, 2]
    skipped: list = []

    def __len__(self):
        return 1

    def __getitem__(self, index):
        masks = torch.zeros(1, 32, 32, dtype=torch.bool)
        masks[0, 11:21, 11:21] = True  # A
        target = {
            "image_id": "planted",
            "image_labels": torch.tensor([1.0, 0.0]),
            "size": (32, 32),
            "masks": masks,
            "labels": torch.tensor([0]),
        }
        return Image.new("RGB", (32, 32)), target


def test_beta_decides_and_the_tuner_finds_it():
    # Proposals: B (all of the PRM, 364 background pixels), A (the object: a quarter of
    # the PRM, 64 background pixels), C (A's core: 9% of the PRM, no background). With
    # alpha = 0.8 the scores are about B = 1.16 - 364 beta, A = 0.60 - 64 beta and
    # C = 0.31 (instance + boundary terms): too small a beta retrieves B (IoU with the
    # object 0.25), too large a beta retrieves C (IoU 0.36); only beta = 3e-3 retrieves A.
    squares = [(6, 26), (11, 21), (13, 19)]
    proposals = torch.zeros(3, 32, 32, dtype=torch.bool)
    for p, (lo, hi) in enumerate(squares):
        proposals[p, lo:hi, lo:hi] = True
    model = build_model("small", 2)
    predictor = _PlantedResponse(model, input_size=32, proposal_fn="prm")
    betas = [1e-4, 1e-3, 3e-3, 1e-2, 1e-1]
    result = tune_retrieval(
        predictor,
        _OneImage(),
        {"beta": betas},
        proposals=lambda image_id, image: proposals,
        progress=False,
    )
    assert [t["value"] for t in result.trials] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert result.best.beta == 3e-3 and result.value == 1.0
    chosen = predictor.retrieve(*predictor.respond(None, proposals), result.best)
    assert torch.equal(chosen["masks"][0], proposals[1])
