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
