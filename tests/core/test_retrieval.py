"""Proposal retrieval (docs/method.md §5): a hand-worked example and the authors' loop."""

import pytest
import torch

from prm.proposals import CompactProposals
from prm.retrieval import (
    RetrievalConfig,
    class_background,
    mask_nms,
    proposal_contours,
    resize_masks,
    retrieval_terms,
    retrieval_terms_by_tau,
    retrieve_instances,
    score_proposals,
)


def block(rows, cols, size=(8, 8)):
    m = torch.zeros(size, dtype=torch.bool)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return m


# An 8 x 8 image. Proposals: A = rows 3-4 x cols 3-4, B = rows 2-5 x cols 2-5,
# C = rows 0-1 (a band), D = the whole image (too large: area >= 0.85 of the image).
A, B, C, D = (
    block((3, 4), (3, 4)),
    block((2, 5), (2, 5)),
    block((0, 1), (0, 7)),
    block((0, 7), (0, 7)),
)
PROPOSALS = torch.stack([A, B, C, D])
# Class 0's CRM is 10 on the left half, 0 on the right: scaled to 255 / 0, mean 127.5, so
# its background Q (< 0.95 * mean) is the right half (cols 4-7). Class 1's CRM is flat,
# which scales to all zeros and has no background.
CRM = torch.zeros(2, 8, 8)
CRM[0, :, :4] = 10.0
PRM_ON_A = A.float() / 4  # mass 1/4 on each pixel of A
PRM_ON_ROW0 = torch.zeros(8, 8)
PRM_ON_ROW0[0] = 1 / 8
CONFIG = RetrievalConfig(alpha=0.8, beta=0.1, tau=0.95, contour_width=3, nms_threshold=0.3)


def test_background_contours_and_scores_worked_by_hand():
    q = class_background(CRM, (8, 8), torch.tensor([0.95, 0.95]))
    assert torch.equal(q[0], block((0, 7), (4, 7))) and not q[1].any()
    contours = proposal_contours(PROPOSALS, 3)
    # A is too thin to survive erosion: its contour is the dilation, rows/cols 2-5.
    assert torch.equal(contours[0], block((2, 5), (2, 5)))
    # B erodes to A, dilates to rows/cols 1-6: the contour is the ring between them.
    assert torch.equal(contours[1], block((1, 6), (1, 6)) & ~A)
    # C: the image border does not erode (OpenCV's default), so row 0 stays inside and
    # the contour is rows 1-2.
    assert torch.equal(contours[2], block((1, 2), (0, 7)))

    prms = torch.stack([PRM_ON_A, PRM_ON_ROW0])
    out = retrieve_instances(prms, torch.tensor([0, 0]), CRM, PROPOSALS, CONFIG)
    # Peak 0 (PRM on A), class 0, score = 0.8 * inside + contour - 0.1 * background pixels:
    #   A: 0.8 * 1 + 1 (contour holds all of A) - 0.1 * 2 (cols 4 of rows 3-4) = 1.6
    #   B: 0.8 * 1 + 0 (its ring misses A)       - 0.1 * 8                     = 0.0
    #   C: 0 + 0 - 0.1 * 8 = -0.8;  D: skipped (too large)          -> A with 1.6
    # Peak 1 (PRM on row 0): A: 0 + 0 - 0.2 = -0.2; B: -0.8; C: 0.8 + 0 - 0.8 = 0.0 -> C
    assert [m.tolist() for m in out["masks"]] == [A.tolist(), C.tolist()]
    assert out["retrieval_scores"].tolist() == pytest.approx([1.6, 0.0], abs=1e-6)
    assert out["proposal_index"].tolist() == [0, 2] and out["peak_index"].tolist() == [0, 1]
    assert out["boxes"].tolist() == [[3, 3, 5, 5], [0, 0, 8, 2]]


@pytest.mark.parametrize("width", [1, 3, 5, 9])
def test_contours_equal_max_pooling(width):
    # The straightforward morphological gradient: dilation and erosion by max-pooling
    # (padding ignores the border, as OpenCV).
    g = torch.Generator().manual_seed(width)
    masks = torch.rand(12, 37, 45, generator=g) > 0.6
    m = masks[:, None].float()
    dilated = torch.nn.functional.max_pool2d(m, width, stride=1, padding=width // 2)
    eroded = -torch.nn.functional.max_pool2d(-m, width, stride=1, padding=width // 2)
    assert torch.equal(proposal_contours(masks, width), (dilated > eroded)[:, 0])


def test_nms_is_class_agnostic_and_merges_prms():
    # A third peak, class 1 (no background), PRM on A: A scores 0.8 + 1 = 1.8 > 1.6, so it
    # suppresses peak 0's instance (IoU 1 >= 0.3) and takes over its PRM.
    prms = torch.stack([PRM_ON_A, PRM_ON_ROW0, PRM_ON_A * 0 + block((3, 3), (3, 3)).float()])
    labels = torch.tensor([0, 0, 1])
    out = retrieve_instances(prms, labels, CRM, PROPOSALS, CONFIG)
    assert out["labels"].tolist() == [1, 0] and out["peak_index"].tolist() == [2, 1]
    assert out["retrieval_scores"].tolist() == pytest.approx([1.8, 0.0], abs=1e-6)
    merged = block((3, 3), (3, 3)).float() + PRM_ON_A  # 1.25 at (3,3), .25 elsewhere on A
    assert torch.allclose(out["prms"][0], merged / merged.sum())
    no_merge = RetrievalConfig(**{**CONFIG.__dict__, "merge_peak_response": False})
    out = retrieve_instances(prms, labels, CRM, PROPOSALS, no_merge)
    assert torch.equal(out["prms"][0], block((3, 3), (3, 3)).float())
    per_class = RetrievalConfig(**{**CONFIG.__dict__, "nms_class_agnostic": False})
    out = retrieve_instances(prms, labels, CRM, PROPOSALS, per_class)
    assert out["labels"].tolist() == [1, 0, 0] and out["peak_index"].tolist() == [2, 0, 1]


def test_per_class_parameters():
    # With alpha = 0 for class 0, peak 0's scores are A: 1 - 0.2 = 0.8, B: -0.8.
    config = RetrievalConfig.from_authors([(0.95, 0.1, 0.0), (0.95, 0.1, 0.8)], contour_width=3)
    assert config.alpha == [0.0, 0.8] and config.tau == [0.95, 0.95]
    out = retrieve_instances(PRM_ON_A[None], torch.tensor([0]), CRM, PROPOSALS, config)
    assert out["retrieval_scores"].tolist() == pytest.approx([0.8])
    with pytest.raises(ValueError, match="alpha has 2 per-class values for 3 classes"):
        retrieve_instances(
            PRM_ON_A[None], torch.tensor([0]), torch.zeros(3, 8, 8), PROPOSALS, config
        )


def test_mask_nms_greedy_order():
    m = torch.zeros(3, 1, 10, dtype=torch.bool)
    m[0, 0, 0:4] = True  # IoU(0, 1) = 2 / 6
    m[1, 0, 2:6] = True  # IoU(1, 2) = 2 / 6, IoU(0, 2) = 0
    m[2, 0, 4:8] = True
    keep, owner = mask_nms(m, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 0]), 0.3)
    # 0 suppresses 1; 2 survives because 1, which overlaps it, was already suppressed.
    assert keep.tolist() == [0, 2] and owner.tolist() == [0, 0, 2]
    keep, _ = mask_nms(m, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]), 0.3, False)
    assert keep.tolist() == [0, 1, 2]


def test_masks_come_back_at_image_resolution():
    # PRMs at the network size 8 x 8, proposals at the image size 16 x 24 (nearest).
    big = torch.stack([resize_masks(p[None], (16, 24))[0] for p in PROPOSALS])
    out = retrieve_instances(
        torch.stack([PRM_ON_A, PRM_ON_ROW0]), torch.tensor([0, 0]), CRM, big, CONFIG
    )
    assert out["masks"].shape == (2, 16, 24) and torch.equal(out["masks"][0], big[0])
    assert out["prms"].shape == (2, 16, 24)
    assert torch.allclose(out["prms"].sum((1, 2)), torch.ones(2))


def test_empty_inputs_give_empty_results():
    none = retrieve_instances(
        torch.zeros(0, 8, 8), torch.zeros(0, dtype=torch.long), CRM, PROPOSALS
    )
    assert none["masks"].shape == (0, 8, 8) and none["labels"].shape == (0,)
    no_props = retrieve_instances(
        PRM_ON_A[None], torch.tensor([0]), CRM, torch.zeros(0, 8, 8, dtype=torch.bool)
    )
    assert len(no_props["masks"]) == 0
    only_huge = retrieve_instances(PRM_ON_A[None], torch.tensor([0]), CRM, D[None])
    assert len(only_huge["masks"]) == 0


def test_bad_inputs():
    prms, labels = PRM_ON_A[None], torch.tensor([0])
    with pytest.raises(ValueError, match="binary"):
        retrieve_instances(prms, labels, CRM, PROPOSALS.float() * 0.5)
    with pytest.raises(ValueError, match=r"proposals must be \(P, H, W\)"):
        retrieve_instances(prms, labels, CRM, A)
    with pytest.raises(ValueError, match="labels must lie in"):
        retrieve_instances(prms, torch.tensor([5]), CRM, PROPOSALS)
    with pytest.raises(ValueError, match="integer"):
        retrieve_instances(prms, torch.tensor([0.0]), CRM, PROPOSALS)
    nan = prms.clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        retrieve_instances(nan, labels, CRM, PROPOSALS)
    with pytest.raises(ValueError, match="contour_width"):
        retrieve_instances(prms, labels, CRM, PROPOSALS, RetrievalConfig(contour_width=4))
    with pytest.raises(ValueError, match="proposal_size_limit"):
        retrieve_instances(
            prms, labels, CRM, PROPOSALS, RetrievalConfig(proposal_size_limit=(0.5, 0.1))
        )


from benchmarks.common import authors_retrieval, random_blobs, random_regions  # noqa: E402


def _peaks_and_settings(g, net_size, num_classes, k=7):
    """7 normalised blob PRMs, their classes, class response maps and a retrieval config."""
    prms = torch.rand(k, *net_size, generator=g) ** 4 * random_blobs(g, k, net_size)
    prms = prms / prms.flatten(1).sum(1)[:, None, None]
    labels = torch.randint(0, num_classes, (k,), generator=g)
    crm = torch.randn(num_classes, 5, 6, generator=g) * 4
    return prms, labels, crm, RetrievalConfig(beta=2e-4, proposal_count=50, nms_threshold=0.3)


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_retrieval_equals_the_authors_loop(seed):
    g = torch.Generator().manual_seed(seed)
    net_size, image_size, num_classes = (40, 48), (75, 61), 3
    proposals = random_blobs(g, 60, image_size)
    prms, labels, crm, cfg = _peaks_and_settings(g, net_size, num_classes)

    ours = retrieve_instances(prms, labels, crm, proposals, cfg)
    reference = authors_retrieval(prms, labels, crm, proposals, cfg)
    assert len(reference) >= 2
    assert ours["peak_index"].tolist() == [r[5] for r in reference]
    assert ours["proposal_index"].tolist() == [r[4] for r in reference]
    assert ours["labels"].tolist() == [r[1] for r in reference]
    assert ours["retrieval_scores"].tolist() == pytest.approx(
        [r[0] for r in reference], rel=1e-5, abs=1e-6
    )
    for mask, r in zip(ours["masks"], reference):
        assert torch.equal(mask, proposals[r[4]])
    for prm, r in zip(ours["prms"], reference):  # merged PRMs, compared at the network size
        small = torch.nn.functional.interpolate(
            torch.from_numpy(r[3])[None, None], size=image_size, mode="bilinear"
        )[0, 0]
        assert torch.allclose(prm, small / small.sum(), atol=1e-6)


def straightforward_scores(prms, proposals, background, alpha, beta, width, size_limit):
    """Every pair, with dense masks: resize, contour, masked sums (float64)."""
    small = resize_masks(proposals, tuple(prms.shape[1:])).double()
    contours = proposal_contours(small.bool(), width).double()
    r, q = prms.double().flatten(1), background.double().flatten(1)
    inside, edge = r @ small.flatten(1).T, r @ contours.flatten(1).T
    scores = alpha[:, None] * inside + edge - beta[:, None] * (q @ small.flatten(1).T)
    area, total = small.flatten(1).sum(1), prms.shape[1] * prms.shape[2]
    valid = (area >= size_limit[0] * total) & (area < size_limit[1] * total)
    return scores.masked_fill(~valid[None], float("-inf"))


@pytest.mark.parametrize("width", [1, 3, 5, 9])
def test_score_proposals_equal_dense_sums(width):
    # Crops and run ends against whole masks: proposals at the border, one that vanishes
    # at the network size (a single pixel between the sampled ones), empty, too large.
    g = torch.Generator().manual_seed(width)
    net_size, image_size = (30, 34), (61, 47)
    empty = torch.zeros(3, *image_size, dtype=torch.bool)
    proposals = torch.cat([random_blobs(g, 20, image_size), empty])
    proposals[20, 1, 0] = True  # sampled: row 1 and column 0 are
    proposals[21, 0, 1] = True  # row 0 is not sampled: vanishes at 30 x 34
    proposals[22, :, :] = True  # the whole image: too large
    proposals[19] = False
    proposals[19, :, -3:] = True  # a band along the right border
    prms = torch.rand(4, *net_size, generator=g)
    prms[:, :, :10] = 0  # no response on the left: compact contours skip those pixels
    background = torch.rand(2, *net_size, generator=g) > 0.5
    alpha, beta = torch.tensor([0.8, 1.0, 0.5, 2.0]), torch.tensor([0.1, 0.0, 0.2, 0.05])
    limit = (5e-4, 0.85)
    expected = straightforward_scores(
        prms, proposals, background[[0, 1, 1, 0]], alpha, beta, width, limit
    )
    for form in (proposals, CompactProposals.from_masks(proposals)):
        got = score_proposals(
            prms, form, background, torch.tensor([0, 1, 1, 0]), alpha, beta, width, limit
        )
        finite = torch.isfinite(expected)
        assert torch.equal(torch.isfinite(got), finite)
        assert not finite[:, 21].any() and not finite[:, 22].any() and finite[:, 20].all()
        assert torch.allclose(got[finite], expected[finite], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_compact_proposals_retrieve_as_dense_ones_and_the_authors_loop(seed):
    g = torch.Generator().manual_seed(seed)
    net_size, image_size, num_classes = (40, 48), (75, 61), 3
    compact = random_regions(g, 60, image_size, cells=50)
    dense = compact.masks()
    prms, labels, crm, cfg = _peaks_and_settings(g, net_size, num_classes)

    ours = retrieve_instances(prms, labels, crm, compact, cfg)
    from_dense = retrieve_instances(prms, labels, crm, dense, cfg)
    reference = authors_retrieval(prms, labels, crm, dense, cfg)
    assert len(reference) >= 2
    assert ours["proposal_index"].tolist() == [r[4] for r in reference]
    assert ours["peak_index"].tolist() == [r[5] for r in reference]
    for key in ("masks", "labels", "peak_index", "proposal_index", "boxes"):
        assert torch.equal(ours[key], from_dense[key])
    assert torch.allclose(ours["retrieval_scores"], from_dense["retrieval_scores"])
    assert torch.allclose(ours["prms"], from_dense["prms"])


@pytest.mark.parametrize("seed", range(3))
def test_shared_terms_retrieve_exactly_what_fresh_sums_retrieve(seed):
    """Tuning makes the sums once and weighs them per setting: the same instances and
    scores, to the bit, as retrieving each setting afresh (dense and compact)."""
    from dataclasses import replace

    g = torch.Generator().manual_seed(seed)
    net_size, image_size, num_classes = (40, 48), (75, 61), 3
    compact = random_regions(g, 60, image_size, cells=50)
    prms, labels, crm, cfg = _peaks_and_settings(g, net_size, num_classes)
    settings = [
        {"alpha": a, "beta": b, "nms_threshold": n, "proposal_size_limit": limit}
        for a in (0.3, 0.8, 4.0)
        for b in (0.0, 2e-4, 1e-2)
        for n in (0.3, None)
        for limit in ((2e-5, 0.85), (0.05, 0.3))
    ]
    for form in (compact, compact.masks()):
        terms = retrieval_terms(prms, labels, crm, form, cfg)
        chosen = set()
        for setting in settings:
            config = replace(cfg, **setting)
            fresh = retrieve_instances(prms, labels, crm, form, config)
            shared = retrieve_instances(prms, labels, crm, form, config, terms=terms)
            assert fresh.keys() == shared.keys()
            for key in fresh:
                assert torch.equal(fresh[key], shared[key]), (setting, key)
            chosen.add(tuple(fresh["proposal_index"].tolist()))
        assert len(chosen) > 3  # the settings choose differently: the test can tell


@pytest.mark.parametrize("seed", range(2))
def test_terms_of_many_taus_in_one_pass_equal_each_taus_own(seed):
    """Tuning takes the background sums of every tau in the same pass: each tau's terms
    equal its own :func:`retrieval_terms` to the bit (dense and compact proposals)."""
    from dataclasses import replace

    g = torch.Generator().manual_seed(seed)
    compact = random_regions(g, 60, (75, 61), cells=50)
    prms, labels, crm, cfg = _peaks_and_settings(g, (40, 48), 3)
    configs = [replace(cfg, tau=t) for t in (0.5, 0.95, 1.3, [0.9, 1.2, 0.7])]
    for form in (compact, compact.masks()):
        shared = retrieval_terms_by_tau(prms, labels, crm, form, configs)
        penalties = set()
        for config, terms in zip(configs, shared, strict=True):
            own = retrieval_terms(prms, labels, crm, form, config)
            assert terms.key == own.key
            for name in ("inside", "edge", "penalty", "area", "peak_background"):
                assert torch.equal(getattr(terms, name), getattr(own, name)), name
            penalties.add(tuple(terms.penalty.flatten().tolist()))
        assert len(penalties) == len(configs)  # tau changes the sums: the test can tell
    with pytest.raises(ValueError, match="contour_width"):
        retrieval_terms_by_tau(prms, labels, crm, compact, [cfg, replace(cfg, contour_width=3)])


def test_terms_of_other_peaks_or_settings_are_refused():
    from dataclasses import replace

    g = torch.Generator().manual_seed(0)
    proposals = random_blobs(g, 30, (75, 61))
    prms, labels, crm, cfg = _peaks_and_settings(g, (40, 48), 3)
    terms = retrieval_terms(prms, labels, crm, proposals, cfg)
    for config, named in (
        (replace(cfg, tau=0.5), "tau"),
        (replace(cfg, contour_width=3), "contour_width"),
        (replace(cfg, proposal_count=10), "proposals"),
    ):
        with pytest.raises(ValueError, match=named):
            retrieve_instances(prms, labels, crm, proposals, config, terms=terms)
    with pytest.raises(ValueError, match="peaks"):
        retrieve_instances(prms[:3], labels[:3], crm, proposals, cfg, terms=terms)
    other = (labels + 1) % 3
    with pytest.raises(ValueError, match="peak classes"):
        retrieve_instances(prms, other, crm, proposals, cfg, terms=terms)


@pytest.mark.parametrize("cells", [3, 40, 3000])
def test_compact_contour_sums_equal_dense_ones_for_any_cells(cells):
    # Cells of every size: 3 large ones, 40 Voronoi-like ones, and pixel noise (3000
    # labels: windows of up to 25 cells, whose sets need the key to be renumbered).
    g = torch.Generator().manual_seed(cells)
    size = (33, 29)
    if cells == 3000:
        labels = torch.randint(0, cells, size, generator=g)
    else:
        labels = random_regions(g, 1, size, cells=cells).superpixels
    num_cells = int(labels.max()) + 1
    members = torch.rand(25, num_cells, generator=g) < 0.4
    members[0] = True  # the whole image: no contour at all
    compact = CompactProposals(labels, members)
    prms = torch.rand(3, *size, generator=g) ** 3
    background = torch.rand(1, *size, generator=g) > 0.3
    alpha, beta = torch.tensor([0.8, 0.5, 1.0]), torch.tensor([0.1, 0.3, 0.0])
    peak_background = torch.zeros(3, dtype=torch.long)
    for width in (3, 5):
        expected = straightforward_scores(
            prms, compact.masks(), background[[0, 0, 0]], alpha, beta, width, (0.0, 2.0)
        )
        got = score_proposals(prms, compact, background, peak_background, alpha, beta, width)
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_background_equals_the_authors_imresize(seed):
    # The authors threshold scipy's imresize (bytescale, then PIL bicubic) of each CRM.
    import numpy as np
    from PIL import Image

    from benchmarks.common import imresize

    g = torch.Generator().manual_seed(seed)
    crm = torch.randn(3, 7 + seed, 9, generator=g) * 4
    crm[2] = 1.5  # a flat map: all zeros after scaling, no background
    size, tau = (40 + 7 * seed, 33), torch.tensor([0.95, 1.2, 0.95])
    q = class_background(crm, size, tau)
    for c in range(3):
        resized = imresize(crm[c].numpy(), size, Image.BICUBIC)
        expected = resized < float(tau[c]) * resized.mean()
        assert np.array_equal(q[c].numpy(), expected)
    assert 0 < q[0].sum() < q[0].numel() and not q[2].any()


def test_boxes_equal_masks_to_boxes():
    from prm.masks import masks_to_boxes
    from prm.retrieval import _boxes

    g = torch.Generator().manual_seed(0)
    masks = random_blobs(g, 6, (31, 45))
    masks[1] = False  # empty: (0, 0, 0, 0)
    masks[2, :, -1] = True  # touches the right and bottom borders
    masks[3] = False
    masks[3, 0, 0] = True  # one pixel
    assert torch.equal(_boxes(masks), masks_to_boxes(masks))
    assert _boxes(masks[:0]).shape == (0, 4)


def test_nms_overlaps_from_crops_and_cells_equal_mask_iou():
    from prm.masks import mask_iou
    from prm.retrieval import _candidates

    g = torch.Generator().manual_seed(3)
    compact = random_regions(g, 12, (50, 41), cells=30)
    dense = compact.masks()
    dense[3] = False  # an empty one
    dense[4, :, :2] = True  # one on the border
    compact = CompactProposals.from_masks(dense)
    index = [0, 3, 4, 5, 7, 11, 4]
    small = resize_masks(dense[index], (37, 44))
    expected = mask_iou(small, small).double()
    for form in (dense, compact):
        got = _candidates(form, (37, 44), 5).iou(index)
        assert torch.allclose(got, expected, atol=1e-6)
        assert got[1].tolist() == [0.0] * len(index)  # the empty mask overlaps nothing
        # The tuner's all-pairs matrix: equal to the bit to the pairs computed one by one.
        every = _candidates(form, (37, 44), 5)
        whole = every.all_iou()
        assert whole.dtype == torch.float64 and whole.shape == (12, 12)
        assert torch.equal(whole[index][:, index], every.iou(index))


def test_class_wise_nms_suppresses_only_its_own_class():
    """As documented: with ``class_agnostic=False`` an instance suppresses only later
    ones of its class, whatever the threshold (at 0, disjoint masks of another class
    were suppressed before the NMS loop moved to numpy)."""
    m = torch.zeros(3, 1, 10, dtype=torch.bool)
    m[0, 0, 0:4] = True
    m[1, 0, 6:8] = True  # disjoint from 0, other class
    m[2, 0, 8:10] = True  # disjoint from 0, same class
    scores, labels = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0])
    keep, owner = mask_nms(m, scores, labels, 0.0, class_agnostic=False)
    assert keep.tolist() == [0, 1] and owner.tolist() == [0, 1, 0]
    keep, owner = mask_nms(m, scores, labels, 0.0, class_agnostic=True)
    assert keep.tolist() == [0] and owner.tolist() == [0, 0, 0]
