"""Peak finding and peak stimulation, read against docs/method.md §2."""

import pytest
import torch
import torch.nn.functional as F

from prm.peaks import find_peaks, peak_mask, peak_stimulation, peak_threshold

# Five isolated maxima on a plateau of zeros. Every zero pixel has an equal neighbour
# before it in raster order or a larger neighbour, so only the five are peaks.
FIVE = torch.tensor(
    [
        [1.0, 0, 0, 0, 2],
        [0, 0, 0, 0, 0],
        [0, 0, 5, 0, 0],
        [0, 0, 0, 0, 0],
        [3, 0, 0, 0, 4],
    ]
)[None, None]


def peaks_of(crm, **kw):
    return {tuple(p) for p in find_peaks(crm, **kw)[:, 2:].tolist()}


def authors_peak_mask(crm, win_size):
    """The authors' implementation: argmax of a -inf padded max-pool is the pixel itself."""
    offset = (win_size - 1) // 2
    padded = F.pad(crm, (offset,) * 4, value=float("-inf"))
    b, c, h, w = padded.shape
    element = torch.arange(h * w).view(1, 1, h, w)[:, :, offset : h - offset, offset : w - offset]
    _, indices = F.max_pool2d(padded, win_size, stride=1, return_indices=True)
    return indices == element


def test_five_known_peaks_including_borders():
    assert peaks_of(FIVE, peak_filter=None) == {(0, 0), (0, 4), (2, 2), (4, 0), (4, 4)}


@pytest.mark.parametrize(
    "peak_filter, expected",
    [
        ("median", {(0, 0), (0, 4), (2, 2), (4, 0), (4, 4)}),  # median of 25 values = 0
        ("mean", {(0, 0), (0, 4), (2, 2), (4, 0), (4, 4)}),  # mean = 15 / 25 = 0.6
        ("max", {(2, 2)}),  # only the global maximum
        (3.5, {(2, 2), (4, 4)}),  # a constant
        (3.0, {(2, 2), (4, 4), (4, 0)}),  # >= keeps a peak equal to the threshold
    ],
)
def test_peak_filters(peak_filter, expected):
    assert peaks_of(FIVE, peak_filter=peak_filter) == expected


def test_median_is_the_lower_median():
    # Values 1, 2, 3, 4: torch.median (and the authors) take 2, not 2.5.
    crm = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]
    assert peak_threshold(crm, "median").item() == 2.0


def test_plateau_keeps_one_peak_first_in_raster_order():
    crm = torch.zeros(1, 1, 6, 6)
    crm[0, 0, 2:4, 1:3] = 7.0  # a 2x2 plateau
    assert peaks_of(crm, peak_filter="max") == {(2, 1)}
    # x == max_pool(x) would keep the whole plateau: the two must not be confused.
    naive = crm == F.max_pool2d(crm, 3, stride=1, padding=1)
    assert int(naive[0, 0, 2:4, 1:3].sum()) == 4


def test_constant_map_has_exactly_one_peak_at_the_origin():
    assert peaks_of(torch.full((1, 1, 4, 5), 3.0), peak_filter=None) == {(0, 0)}


@pytest.mark.parametrize("win_size", [1, 3, 5])
def test_same_peaks_as_the_authors_max_pool_argmax(win_size):
    g = torch.Generator().manual_seed(1)
    # Small integers make many ties and plateaus.
    crm = torch.randint(0, 4, (2, 3, 9, 11), generator=g).float()
    assert torch.equal(peak_mask(crm, win_size), authors_peak_mask(crm, win_size))


def test_class_score_is_the_mean_of_kept_peaks():
    # Median filter keeps all five peaks: (1 + 2 + 5 + 3 + 4) / 5 = 3.
    assert peak_stimulation(FIVE).item() == pytest.approx(3.0)
    assert peak_stimulation(FIVE, peak_filter="max").item() == pytest.approx(5.0)


def test_paper_gradient_is_exact_gradcheck():
    g = torch.Generator().manual_seed(0)
    crm = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(lambda m: peak_stimulation(m, gradient="paper"), (crm,))


def test_authors_gradient_omits_one_over_n():
    crm = FIVE.clone().requires_grad_()
    peak_stimulation(crm, gradient="authors").sum().backward()
    # dL/dM = 1 at each of the 5 kept peaks (the paper's would be 1/5), 0 elsewhere.
    expected = (FIVE != 0).float()
    assert torch.equal(crm.grad, expected)
    crm.grad = None
    peak_stimulation(crm, gradient="paper").sum().backward()
    assert torch.allclose(crm.grad, expected / 5)


def test_constant_filter_with_no_peak_falls_back_to_the_maximum():
    crm = FIVE.clone().requires_grad_()
    score = peak_stimulation(crm, peak_filter=100.0)
    assert score.item() == 5.0
    score.sum().backward()
    assert crm.grad[0, 0, 2, 2] == 1 and crm.grad.sum() == 1


@pytest.mark.parametrize("win_size", [0, 2, 4, -3, 3.0])
def test_window_must_be_a_positive_odd_integer(win_size):
    with pytest.raises(ValueError, match="win_size"):
        find_peaks(FIVE, win_size=win_size)


def test_bad_maps_are_rejected():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        find_peaks(torch.zeros(5, 5))
    with pytest.raises(ValueError, match="floating-point"):
        find_peaks(torch.zeros(1, 1, 5, 5, dtype=torch.int64))
    nan = FIVE.clone()
    nan[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        find_peaks(nan)
    with pytest.raises(ValueError, match="peak_filter"):
        find_peaks(FIVE, peak_filter="median-ish")
