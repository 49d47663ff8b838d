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
