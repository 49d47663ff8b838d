"""Retrieval tuning: cached responses give the same numbers as predicting afresh."""

from dataclasses import replace

import pytest
import torch

from prm.data import ShapeScenes
from prm.engine.inference import predict_dataset
from prm.engine.tune import tune_retrieval
from prm.model import build_model
from prm.predictor import Predictor


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("small", 6)
    options = {"input_size": 64, "class_threshold": -1e9, "proposal_fn": "prm"}
    options.update(peak_threshold=0.7, peak_threshold_mode="relative")  # a few peaks a class
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
