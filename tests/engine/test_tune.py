"""Retrieval tuning: cached responses give the same numbers as predicting afresh."""

import copy
from dataclasses import replace

import pytest
import torch
from PIL import Image

from prm.backprop import PeakSelection
from prm.data import ShapeScenes
from prm.engine.inference import predict_dataset
from prm.engine.tune import tune_retrieval
from prm.model import build_model
from prm.predictor import Predictor, to_image_tensor


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


def test_thresholds_filtered_from_a_loose_response_match_a_fresh_prediction(setup):
    """Peaks filtered from one loose back-propagation = predicting with the thresholds."""
    from prm.engine.tune import retrieve_filtered

    predictor, dataset, options = setup
    base = options["peak_selection"]
    loose = Predictor(
        predictor.model, **{**options, "peak_selection": replace(base, peak_threshold=0.3)}
    )
    compared = 0
    for index in range(2):
        image = to_image_tensor(dataset[index][0])
        boxes = torch.zeros((6, *image.shape[1:]), dtype=torch.bool)
        for k in range(6):  # given proposals: blocks of the image
            boxes[k, 8 * k : 8 * k + 24, 4 * k : 4 * k + 40] = True
        for given in (None, boxes):  # the fallback's proposals depend on the peaks kept
            response, proposals = loose.respond(image, given)
            for class_threshold in (-1e9, float(response["class_scores"].median())):
                for peak_threshold in (0.3, 0.8):
                    chosen = replace(
                        base, class_threshold=class_threshold, peak_threshold=peak_threshold
                    )
                    got = retrieve_filtered(
                        predictor,
                        response,
                        proposals,
                        chosen,
                        image=image if given is None else None,
                    )
                    fresh = Predictor(predictor.model, **{**options, "peak_selection": chosen})
                    want = fresh(image[None], None if given is None else [given])[0]
                    assert torch.equal(got["labels"], want["labels"])
                    assert torch.equal(got["masks"], want["masks"])
                    assert torch.allclose(got["scores"], want["scores"])
                    compared += len(want["labels"])
    assert compared > 10  # the comparison saw instances, not only empty results


def _scored_afresh(predictor, dataset, grid, blocks=None) -> list[float]:
    """The straightforward way: every setting retrieved from scratch on every image
    (mAP^r@0.25 per setting, in grid order); ``blocks`` gives proposals, None the
    fallback's (made again from the peaks each setting keeps)."""
    from prm.engine.tune import _grid, _loosest, retrieve_filtered
    from prm.evaluation import InstanceSegmentationEvaluator

    settings, selections, configs = _grid(predictor, grid, len(dataset.classes))
    expected = []
    for setting, kept, config in zip(settings, selections, configs):
        loose = copy.copy(_loosest(predictor, selections))
        loose.smooth_strided = setting.get("smooth_strided", predictor.smooth_strided)
        evaluator = InstanceSegmentationEvaluator(dataset.classes, iou_thresholds=[0.25])
        for index in range(len(dataset)):
            image, target = dataset[index]
            image = to_image_tensor(image)
            given = None if blocks is None else blocks(index, image)
            response, proposals = loose.respond(image, given, index)
            fallback = image if blocks is None else None
            found = retrieve_filtered(predictor, response, proposals, kept, config, fallback)
            evaluator.process([target], [found])
        expected.append(evaluator.summarize()["instance/mAP_r@0.25"])
    return expected


def test_fallback_grid_equals_retrieving_each_setting_afresh(setup):
    """The grid shares the fallback's proposals between settings that keep the same
    peaks; the straightforward way makes them again for every setting."""
    predictor, dataset, _ = setup  # proposal_fn "prm": the proposal-free fallback
    grid = {"alpha": [0.8, 4.0], "beta": [1e-3], "peak_threshold": [0.7, 0.95]}
    result = tune_retrieval(predictor, dataset, grid, metric="instance/mAP_r@0.25", progress=False)
    expected = _scored_afresh(predictor, dataset, grid)
    assert [t["value"] for t in result.trials] == expected
    assert len(set(expected)) > 1  # the settings differ, so the comparison can tell


def _blocks(index, image):
    boxes = torch.zeros((12, *image.shape[1:]), dtype=torch.bool)
    for k in range(12):
        top, left = 5 * (k % 6), 7 * (k // 2)
        boxes[k, top : top + 12 + 3 * k, left : left + 20] = True
    return boxes


def test_grid_with_given_proposals_equals_retrieving_each_setting_afresh(setup):
    """The grid makes each image's retrieval sums once per peak selection and weighs
    them per setting; the straightforward way retrieves every setting from scratch."""
    predictor, dataset, _ = setup
    blocks = _blocks
    grid = {
        "alpha": [0.3, 4.0],
        "beta": [0.0, 1e-2],
        "tau": [0.5, 0.95],
        "proposal_count": [6, 12],
        "peak_threshold": [0.7, 0.95],
    }
    result = tune_retrieval(
        predictor, dataset, grid, proposals=blocks, metric="instance/mAP_r@0.25", progress=False
    )
    expected = _scored_afresh(predictor, dataset, grid, blocks)
    assert [t["value"] for t in result.trials] == expected
    assert len(set(expected)) > 2  # the settings differ, so the comparison can tell


def test_thresholds_and_proposal_count_in_the_grid(setup):
    predictor, dataset, _ = setup
    grid = {"peak_threshold": [0.9, 0.5], "class_threshold": [-1e9, 0.0], "proposal_count": [3]}
    result = tune_retrieval(predictor, dataset, grid, metric="instance/mAP_r@0.1", progress=False)
    assert len(result.trials) == 4 and result.best.proposal_count == 3
    assert [t["params"]["peak_threshold"] for t in result.trials] == [0.9, 0.9, 0.5, 0.5]
    best = result.trials[[t["value"] for t in result.trials].index(result.value)]["params"]
    assert result.peak_selection == PeakSelection(
        class_threshold=best["class_threshold"],
        peak_threshold=best["peak_threshold"],
        peak_threshold_mode="relative",
    )
    assert predictor.peak_selection.peak_threshold == 0.7  # the predictor is unchanged


def test_warns_when_nothing_scores_and_on_the_grid_edge(setup):
    from prm.engine.tune import _grid_warnings

    predictor, dataset, _ = setup
    with pytest.warns(UserWarning, match="every setting scored 0"):
        result = tune_retrieval(predictor, dataset, {"class_threshold": [1e8, 1e9]}, progress=False)
    assert len(result.warnings) == 1
    grid = {"beta": [1e-4, 1e-3, 1e-2], "alpha": [0.5, 0.8, 1.0], "tau": [0.9]}
    found = _grid_warnings(grid, {"beta": 1e-2, "alpha": 0.8, "tau": 0.9}, [0.1, 0.2])
    assert len(found) == 1 and "best beta = 0.01 is the largest value tried" in found[0]
    found = _grid_warnings(grid, {"beta": 1e-4, "alpha": 0.5, "tau": 0.9}, [0.1, 0.2])
    assert len(found) == 2 and all("smallest" in f for f in found)
    assert _grid_warnings(grid, {"beta": 1e-3, "alpha": 0.8, "tau": 0.9}, [0.1]) == []


def test_oversized_images_are_tuned_at_the_working_size(setup):
    """Issue 10, item 8: prm tune is bounded by max_size like prediction, same scores."""
    predictor, _, options = setup
    dataset = ShapeScenes("val", 2, size=96)  # 96 px images, worked on at 48 px
    seen = []
    bounded = Predictor(predictor.model, max_size=48, **options)
    respond = bounded.respond

    def recording(image, *args, **kwargs):
        seen.append(tuple(image.shape[1:]))
        return respond(image, *args, **kwargs)

    bounded.respond = recording
    grid = {"beta": [0.0, 1e-2]}
    with pytest.warns(UserWarning, match="larger than max_size 48"):
        result = tune_retrieval(
            bounded, dataset, grid, metric="instance/mAP_r@0.25", progress=False
        )
    assert seen == [(48, 48), (48, 48)]
    fresh = Predictor(predictor.model, max_size=48, retrieval=result.best, **options)
    with pytest.warns(UserWarning, match="larger than max_size 48"):
        summary = predict_dataset(fresh, dataset, metrics=["instance"], progress=False)
    assert summary.metrics["instance/mAP_r@0.25"] == pytest.approx(result.value)


@pytest.mark.parametrize("score", ["peak", "retrieval"])
def test_settings_that_choose_alike_retrieve_alike(score):
    """The grid scores once the settings that pick the same proposals in the same order
    (:func:`prm.engine.tune._choice`). Whenever two settings share that key, retrieving
    each from scratch must give the same instances: the same peaks and proposals, in the
    same order, and with ``score="retrieval"`` (the reported score) the same scores."""
    from itertools import product

    from prm.engine.tune import _choice
    from prm.retrieval import RetrievalConfig, retrieval_terms, retrieve_instances

    generator = torch.Generator().manual_seed(0)
    shared = 0
    for _ in range(6):
        # Peaks of three classes whose maps overlap a few rectangles: several peaks
        # choose one proposal, and NMS keeps the best scored.
        prms = torch.rand(6, 32, 32, generator=generator) ** 8
        prms /= prms.flatten(1).sum(1)[:, None, None]
        labels = torch.randint(0, 3, (6,), generator=generator)
        crm = torch.randn(3, 8, 8, generator=generator)
        proposals = torch.zeros(8, 32, 32, dtype=torch.bool)
        for k in range(8):
            top, left = torch.randint(0, 16, (2,), generator=generator).tolist()
            proposals[k, top : top + 8 + 2 * k, left : left + 16] = True
        seen = {}
        for alpha, beta, tau, nms in product([0.1, 1.0, 8.0], [0.0, 3e-3, 0.1], [0.3, 0.95], [0.3]):
            config = RetrievalConfig(alpha=alpha, beta=beta, tau=tau, nms_threshold=nms)
            terms = retrieval_terms(prms, labels, crm, proposals, config)
            found = retrieve_instances(prms, labels, crm, proposals, config, with_prms=False)
            outcome = (found["peak_index"].tolist(), found["proposal_index"].tolist())
            if score == "retrieval":
                outcome += (found["retrieval_scores"].tolist(),)
            key, _ = _choice(terms, labels, config, score)
            if key in seen:
                shared += 1
                assert seen[key] == outcome, (alpha, beta, tau)
            seen[key] = outcome
    assert shared > 10  # settings did share keys, so the comparison saw something


@pytest.mark.parametrize("given", [True, False], ids=["proposals", "fallback"])
def test_the_backprop_rule_in_the_grid_equals_predicting_with_each_rule(setup, given):
    """``smooth_strided`` in the grid: the maps are made once per rule and image; the
    straightforward way makes them again for every setting with a predictor of that rule.
    The small network's strided convolutions make the two rules' maps differ."""
    predictor, dataset, _ = setup
    blocks = _blocks if given else None
    grid = {"alpha": [0.8, 4.0], "smooth_strided": [False, True], "peak_threshold": [0.7, 0.9]}
    result = tune_retrieval(
        predictor, dataset, grid, proposals=blocks, metric="instance/mAP_r@0.25", progress=False
    )
    expected = _scored_afresh(predictor, dataset, grid, blocks)
    assert [t["value"] for t in result.trials] == expected
    by_rule = {
        rule: [t["value"] for t in result.trials if t["params"]["smooth_strided"] == rule]
        for rule in (False, True)
    }
    assert by_rule[False] != by_rule[True]  # the rule changes the maps, so the test can tell
    best = result.trials[[t["value"] for t in result.trials].index(result.value)]["params"]
    assert result.smooth_strided == best["smooth_strided"]
    assert predictor.smooth_strided is False  # the predictor is unchanged
    tuned = result.apply(copy.copy(predictor))
    assert tuned.smooth_strided == best["smooth_strided"] and tuned.retrieval == result.best
    assert tuned.peak_selection == result.peak_selection


def test_the_backprop_rule_in_a_grid_is_checked(setup):
    predictor, dataset, options = setup
    with pytest.raises(ValueError, match="True or False"):
        tune_retrieval(predictor, dataset, {"smooth_strided": [0, 1]}, progress=False)
    cam = Predictor(predictor.model, **{**options, "response": "crm"})
    with pytest.raises(ValueError, match="CAM predictor has none"):
        tune_retrieval(cam, dataset, {"smooth_strided": [False, True]}, progress=False)
    # Without the rule in the grid the result reports the predictor's own.
    smooth = Predictor(predictor.model, **{**options, "smooth_strided": True})
    result = tune_retrieval(smooth, dataset, {"alpha": [0.8]}, limit=1, progress=False)
    assert result.smooth_strided is True
