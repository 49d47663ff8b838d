"""The proposal-free fallback: candidate masks from thresholded peak response maps."""

import numpy as np
import pytest
import torch

from prm.proposals import best_overlaps, grabcut_proposals, prm_support_proposals

H, W = 60, 80
YY, XX = torch.meshgrid(
    torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij"
)


def blob(x, y, sigma):
    return torch.exp(-((XX - x) ** 2 + (YY - y) ** 2) / (2 * sigma**2))


def disc(x, y, r):
    return (XX - x) ** 2 + (YY - y) ** 2 <= r**2


def test_threshold_of_a_gaussian_is_a_disc():
    # exp(-d^2 / 2s^2) >= t  <=>  d <= s * sqrt(-2 ln t): thresholds 0.5 and 0.1 of a
    # sigma-6 blob give discs of radius 7.06 and 12.88.
    prms = blob(30, 25, 6)[None]
    proposals = prm_support_proposals(prms, thresholds=(0.5, 0.1), smooth=0)
    assert proposals.shape == (2, H, W)
    expected = torch.stack([disc(30, 25, 7.06), disc(30, 25, 12.88)])
    assert (best_overlaps(proposals, expected, (2,))[2] > 0.97).all()
    assert proposals[0].sum() < proposals[1].sum()  # the order of the thresholds


def test_ranked_threshold_major_so_every_peak_comes_early():
    prms = torch.stack([blob(20, 20, 5), blob(60, 40, 7)])
    proposals = prm_support_proposals(prms, thresholds=(0.5, 0.2, 0.1), smooth=0)
    assert len(proposals) == 6
    first_two = proposals[:2]  # both peaks at the first threshold
    assert first_two[0][20, 20] and not first_two[0][40, 60]
    assert first_two[1][40, 60] and not first_two[1][20, 20]


def test_the_component_at_the_peak_and_the_whole_support():
    # One map with two separate bumps; its peak is on the smaller one.
    prm = blob(15, 30, 4) * 0.8 + blob(60, 30, 6)
    proposals = prm_support_proposals(
        prm[None], peaks=torch.tensor([[15.0, 30.0]]), thresholds=(0.3,), smooth=0
    )
    assert len(proposals) == 2
    at_peak, whole = proposals
    assert at_peak[30, 15] and not at_peak[30, 60]
    assert whole[30, 15] and whole[30, 60]
    only_component = prm_support_proposals(
        prm[None],
        peaks=torch.tensor([[15.0, 30.0]]),
        thresholds=(0.3,),
        smooth=0,
        whole_support=False,
    )
    assert torch.equal(only_component, at_peak[None])


def test_without_a_peak_the_component_with_most_response():
    prm = blob(15, 30, 4) * 0.8 + blob(60, 30, 6)
    (mask,) = prm_support_proposals(prm[None], thresholds=(0.3,), smooth=0, whole_support=False)
    assert mask[30, 60] and not mask[30, 15]


def test_holes_are_filled():
    ring = blob(40, 30, 10) - blob(40, 30, 4)  # zero response at the centre
    filled = prm_support_proposals(ring[None], thresholds=(0.2,), smooth=0)
    hollow = prm_support_proposals(ring[None], thresholds=(0.2,), smooth=0, fill_holes=False)
    assert filled[0, 30, 40] and not hollow[0, 30, 40]


def test_holes_are_filled_as_scipy_fills_them():
    """``fill_mask_holes`` (one labelling pass) against ``binary_fill_holes`` (SciPy's
    iterated dilation), on random masks of every density, rings and lines on borders."""
    from scipy import ndimage

    from prm.proposals.fallback import fill_mask_holes

    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), bool), np.ones((4, 4), bool), np.zeros((0, 3), bool)]
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False  # a hole
    ring[0, :] = True  # a band on the border: the pixels below it are no hole
    masks.append(ring)
    for _ in range(300):
        h, w = rng.integers(1, 30, 2)
        mask = rng.random((h, w)) < rng.random()
        masks.append(ndimage.binary_dilation(mask) if rng.random() < 0.5 else mask)
    for mask in masks:
        assert np.array_equal(fill_mask_holes(mask), ndimage.binary_fill_holes(mask))
    assert fill_mask_holes(ring)[4, 4] and not fill_mask_holes(ring)[1, 4]


def test_smoothing_joins_speckle():
    # A speckled map (every third pixel of a blob, in both directions): without smoothing
    # each pixel is its own component; smoothing recovers the blob's disc.
    speckle = blob(40, 30, 8) * ((XX % 3 == 1) & (YY % 3 == 0))
    (raw,) = prm_support_proposals(speckle[None], thresholds=(0.3,), smooth=0, whole_support=False)
    assert raw.sum() == 1
    smoothed = prm_support_proposals(speckle[None], thresholds=(0.3,), smooth=0.02)
    assert best_overlaps(smoothed, disc(40, 30, 12)[None], (1,))[1].item() > 0.8


def test_duplicates_are_dropped_and_zero_maps_give_nothing():
    prms = torch.stack([blob(30, 30, 5), blob(30, 30, 5), torch.zeros(H, W)])
    proposals = prm_support_proposals(prms, thresholds=(0.5,), smooth=0)
    assert len(proposals) == 1
    assert prm_support_proposals(torch.zeros(2, H, W)).shape == (0, H, W)
    assert prm_support_proposals(torch.zeros(0, H, W)).shape == (0, H, W)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prms": torch.zeros(H, W)}, r"\(K, H, W\)"),
        ({"prms": torch.zeros(2, H, W), "peaks": torch.zeros(3, 2)}, r"peaks must be"),
        ({"prms": torch.zeros(1, H, W), "thresholds": (0.0,)}, "thresholds"),
        ({"prms": torch.zeros(1, H, W), "smooth": -1}, "smooth"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prm_support_proposals(**kwargs)


def test_grabcut_follows_the_image_edge_where_the_prm_is_off():
    # A red disc on a grey background; the PRM is a blob centred off the disc's centre
    # and narrower than it, so its thresholds give discs that miss much of the object.
    # GrabCut, seeded by the blob, should find the disc's outline.
    image = torch.full((3, H, W), 128, dtype=torch.uint8)
    red = disc(38, 30, 14)
    image[:, red] = torch.tensor([200, 30, 30], dtype=torch.uint8)[:, None]
    g = torch.Generator().manual_seed(0)
    image = (image.float() + torch.randn(3, H, W, generator=g) * 6).clamp(0, 255).byte()
    prm = blob(33, 28, 5)[None]
    peaks = torch.tensor([[33.0, 28.0]])
    support = prm_support_proposals(prm, peaks)
    cut = grabcut_proposals(image, prm, peaks, with_support=False)
    assert len(cut) == 2
    best_support = best_overlaps(support, red[None], (len(support),))[len(support)].item()
    best_cut = best_overlaps(cut, red[None], (2,))[2].item()
    assert best_support < 0.75 and best_cut > 0.9
    both = grabcut_proposals(image, prm, peaks)
    assert torch.equal(both[:2], cut) and torch.equal(both[2:], support)
    with pytest.raises(ValueError, match="image is"):
        grabcut_proposals(image[:, :10], prm, peaks)
    with pytest.raises(ValueError, match="seeds"):
        grabcut_proposals(image, prm, peaks, seeds=((0.1, 0.5),))
