"""Zero-training settings: merging peaks of one object, and the pretrained predictor."""

import pytest
import torch

from prm.classifier import lite0_available
from prm.peaks import find_peaks
from prm.pretrained import merge_peaks


def _bumps(centres, size=15, sigma=1.5):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = torch.zeros(size, size)
    for y, x, height in centres:
        out += height * torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
    return out


def test_merge_keeps_separate_objects_and_merges_maxima_of_one():
    crm = torch.stack([
        _bumps([(3, 3, 5.0), (11, 11, 4.0)]),      # two objects, a deep valley between
        _bumps([(7, 4, 5.0), (7, 8, 4.5)]),        # one object, two maxima on a ridge
    ])[None]  # fmt: skip
    peaks = find_peaks(crm, 3, None)
    assert peaks.tolist() == [[0, 0, 3, 3], [0, 0, 11, 11], [0, 1, 7, 4], [0, 1, 7, 8]]
    # The ridge dips to 3.9 of 4.6 (85 %); the valley to ~0.
    assert merge_peaks(crm, peaks, 0.7).tolist() == [True, True, True, False]
    assert merge_peaks(crm, peaks, 0.9).tolist() == [True, True, True, True]
    assert merge_peaks(crm, peaks, 0.0).tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="merge ratio"):
        merge_peaks(crm, peaks, 1.5)


@pytest.mark.skipif(not lite0_available(), reason="the lite0 extra is not installed")
def test_pretrained_model_finds_the_cat_in_a_real_photo():
    skimage_data = pytest.importorskip("skimage.data")
    from prm.pretrained import pretrained_model, pretrained_predictor

    model = pretrained_model("voc")
    predictor = pretrained_predictor(model, proposal_fn="prm")
    photo = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1)  # 300 x 451
    out = predictor([photo])[0]
    names = [model.class_names[int(c)] for c in out["labels"]]
    assert names and set(names) == {"cat"}
    assert out["masks"].shape[1:] == (300, 451) and out["masks"].flatten(1).any(1).all()
    # Class scores are log-probabilities: at most 0, the best member's at least.
    assert (out["class_scores"] <= 0.0 + 1e-4).all() or out["class_scores"].max() < 1.0


def test_blur_maps_evens_out_a_checkerboard_and_keeps_each_maps_mass():
    from prm.pretrained import blur_maps

    yy, xx = torch.meshgrid(torch.arange(24), torch.arange(24), indexing="ij")
    board = 1.0 + ((yy + xx) % 2).float() * 3.0  # 1 and 4, alternating
    maps = torch.stack([board / board.sum(), torch.zeros(24, 24)])
    blurred = blur_maps(maps, 2.0)
    assert blurred.shape == maps.shape and (blurred >= 0).all()
    assert torch.allclose(blurred.flatten(1).sum(1), torch.tensor([1.0, 0.0]))
    inner = blurred[0, 6:18, 6:18]
    assert inner.max() / inner.min() < 1.01  # was 4
    assert torch.equal(blur_maps(maps, 0.0), maps)
    with pytest.raises(ValueError, match="sigma"):
        blur_maps(maps, -1.0)


def test_prm_overlap_duplicates_drops_the_weaker_of_two_maps_of_one_object():
    from prm.pretrained import prm_overlap_duplicates

    def spot(y0, x0):
        m = torch.zeros(10, 10)
        m[y0 : y0 + 4, x0 : x0 + 4] = 1.0
        return m / m.sum()

    prms = torch.stack([spot(0, 0), spot(1, 1), spot(6, 6), spot(1, 1)])
    labels = torch.tensor([0, 0, 0, 1])
    values = torch.tensor([3.0, 5.0, 2.0, 1.0])
    # Peak 1 (strongest of class 0) keeps; peak 0 shares 9/16 of its mass with it;
    # peak 2 shares nothing; peak 3 is another class.
    assert prm_overlap_duplicates(prms, labels, values, 0.5).tolist() == [True, False, False, False]
    assert prm_overlap_duplicates(prms, labels, values, 0.6).tolist() == [False] * 4
    with pytest.raises(ValueError, match="overlap ratio"):
        prm_overlap_duplicates(prms, labels, values, 2.0)


def _grouped_net(**options):
    from prm.class_groups import ClassGroups
    from prm.model import PeakResponseNet, SmallBackbone
    from prm.pretrained import _MergingGroupedNet

    base = PeakResponseNet(SmallBackbone(), num_classes=3, peak_stimulation=False).eval()
    groups = ClassGroups(("a", "b", "c"), ((0,), (1,), (2,)), 3)
    return _MergingGroupedNet(base, groups, win_size=3, peak_filter=None, **options).eval()


def test_class_relative_keeps_only_classes_near_the_photos_best():
    crm = torch.zeros(1, 3, 9, 9)
    for c, (level, y, x) in enumerate([(0.0, 2, 2), (-0.5, 4, 4), (-3.0, 6, 6)]):
        crm[0, c] += level
        crm[0, c, y, x] += 1.0  # one peak per class

    def classes(**options):
        return sorted(set(_grouped_net(**options).find_peaks(crm)[:, 1].tolist()))

    assert classes() == [0, 1, 2]
    # Scores are the maps' means: about 0, -0.5 and -3; log(0.5) = -0.69 below the best.
    assert classes(class_relative=0.5) == [0, 1]
    assert classes(class_relative=0.9) == [0]
    assert classes(class_relative=0.01) == [0, 1, 2]


def test_pretrained_predictor_blurs_and_deduplicates_prms_before_retrieval():
    from prm.pretrained import PretrainedSettings, pretrained_predictor

    net = _grouped_net()
    prms = torch.zeros(3, 8, 8)
    prms[0, 2, 2] = prms[1, 2, 3] = prms[2, 6, 6] = 1.0
    prms[1] = prms[1] * 0.5 + prms[0] * 0.5  # peak 1 shares half its mass with peak 0
    response = {
        "peak_cells": torch.tensor([[0, 1, 1], [0, 1, 2], [0, 3, 3]]),
        "labels": torch.tensor([0, 0, 0]),
        "peak_values": torch.tensor([2.0, 1.0, 0.5]),
        "prms": prms,
        "class_scores": torch.zeros(3),
        "crm": torch.zeros(3, 4, 4),
    }
    plain = pretrained_predictor(net, proposal_fn="prm")
    # The converted classifier scores by average pooling, yet the predictor makes PRMs.
    assert not net.peak_stimulation and plain.response == "prm"
    assert plain.refine_response(response) is response
    settings = PretrainedSettings(prm_blur=1.0, merge_overlap=0.3)
    out = pretrained_predictor(net, settings=settings, proposal_fn="prm").refine_response(response)
    assert out["labels"].tolist() == [0, 0] and out["peak_values"].tolist() == [2.0, 0.5]
    assert (out["prms"] > 0).sum() > 9 and torch.allclose(out["prms"].sum((1, 2)), torch.ones(2))
    cam = pretrained_predictor(net, settings=settings, proposal_fn="prm", response="crm")
    assert torch.equal(cam.refine_response(response)["prms"][0], prms[0])  # CAMs unblurred
    with pytest.raises(ValueError, match="prm_blur"):
        PretrainedSettings(prm_blur=-1.0)


def test_selective_search_and_its_flags_follow_the_settings():
    import argparse

    from prm.cli.explain import _settings, add_arguments
    from prm.pretrained import DEFAULTS, PretrainedSettings, pretrained_predictor
    from prm.proposals import SelectiveSearch

    net = _grouped_net()
    default = pretrained_predictor(net).proposal_fn
    assert default == SelectiveSearch(segmenter=DEFAULTS.segmenter, max_side=DEFAULTS.max_side)
    settings = PretrainedSettings(segmenter="opencv", max_side=320)
    chosen = pretrained_predictor(net, settings=settings).proposal_fn
    assert (chosen.segmenter, chosen.max_side) == ("opencv", 320)
    with pytest.raises(ValueError, match="max_side"):
        PretrainedSettings(max_side=4)

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert _settings(parser.parse_args(["a.jpg"])) == DEFAULTS
    assert _settings(parser.parse_args(["a.jpg", "--max-side", "0"])).max_side is None
    assert _settings(parser.parse_args(["a.jpg", "--max-side", "400"])).max_side == 400
