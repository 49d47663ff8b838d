"""Selective search: hierarchical grouping of superpixels into ranked segment proposals."""

import numpy as np
import pytest
import torch
from PIL import Image

from prm.proposals import CompactProposals, ProposalEvaluator, SelectiveSearch, best_overlaps
from prm.proposals.selective_search import (
    _colour_bins,
    _hierarchical_grouping,
    _region_stats,
    _texture_bins,
)


def scene(scale=1, seed=0):
    """A noisy 64 x 96 background (times ``scale``) with a red disc, a blue rectangle and a
    yellow triangle; returns the image and the three object masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: 64 * scale, : 96 * scale] / scale
    image = np.zeros((*yy.shape, 3)) + [90, 110, 80]
    disc = (yy - 20) ** 2 + (xx - 22) ** 2 < 12**2
    rect = (yy >= 30) & (yy < 56) & (xx >= 50) & (xx < 86)
    triangle = (yy > 8) & (yy < 26) & (xx > 60) & (xx - 60 < yy - 8)
    image[disc], image[rect], image[triangle] = [220, 40, 40], [40, 60, 210], [240, 230, 60]
    image += rng.normal(0, 6, image.shape)
    masks = torch.from_numpy(np.stack([disc, rect, triangle]))
    return np.clip(image, 0, 255).astype(np.uint8), masks


def test_finds_every_object_of_a_simple_scene():
    image, objects = scene()
    proposals = SelectiveSearch()(image)
    assert proposals.dtype == torch.bool and proposals.shape[1:] == (64, 96)
    best = best_overlaps(proposals, objects, top_k=(100,))[100]
    assert (best > 0.95).all(), best


def test_every_region_of_the_hierarchy_is_a_proposal():
    # One hierarchy on a flat-coloured image keeps all 2n - 1 regions: the superpixels,
    # each merge, and finally the whole image.
    image, _ = scene()
    generator = SelectiveSearch.single(duplicate_iou=1.0, max_proposals=None)
    proposals = generator.propose(image)
    n = int(proposals.superpixels.max()) + 1
    assert len(proposals) == 2 * n - 1
    assert any(bool(m.all()) for m in proposals.masks())  # the whole image is one of them


def test_grouping_merges_the_most_similar_neighbours_first():
    # Four superpixels in a row coloured A A B B (A, B far apart in colour): the two A's
    # merge, then the two B's, then everything.
    superpixels = np.repeat(np.arange(4), 8)[None].repeat(8, 0)  # (8, 32)
    rgb = np.where(superpixels[..., None] < 2, 0.1, 0.9).astype(np.float32).repeat(3, -1)
    stats = _region_stats(superpixels, _colour_bins(rgb), _texture_bins(rgb))
    members = _hierarchical_grouping(stats, "c", superpixels.size)
    assert members.tolist() == [
        [True, False, False, False],
        [False, True, False, False],
        [False, False, True, False],
        [False, False, False, True],
        [True, True, False, False],
        [False, False, True, True],
        [True, True, True, True],
    ]


def test_edge_measure_merges_across_the_weakest_boundary_first():
    # Four stripes 0 1 2 3 with grey levels 0.1 0.2 0.8 0.95: boundary 0|1 is the
    # weakest (0.1 apart), then 2|3 (0.15), 1|2 strong (0.6).
    superpixels = np.repeat(np.arange(4), 8)[None].repeat(8, 0)
    grey = np.array([0.1, 0.2, 0.8, 0.95], np.float32)[superpixels]
    rgb = grey[..., None].repeat(3, -1)
    stats = _region_stats(superpixels, _colour_bins(rgb), _texture_bins(rgb), rgb)
    step = np.sqrt(3) * 0.1
    assert stats.border[0, 1] == stats.border[1, 0] == 8 and stats.border[0, 2] == 0
    assert stats.edge[0, 1] == pytest.approx(8 * step, rel=1e-5)
    members = _hierarchical_grouping(stats, "e", superpixels.size)
    assert [m.nonzero()[0].tolist() for m in members[4:]] == [[0, 1], [2, 3], [0, 1, 2, 3]]


def test_merged_boundaries_add_up():
    # After merging two regions, the new region's boundary strength and length with each
    # neighbour equal those computed from the merged map directly.
    from prm.proposals.selective_search import _Grouping

    rng = np.random.default_rng(0)
    superpixels = np.repeat(np.repeat(np.arange(9).reshape(3, 3), 6, 0), 6, 1)
    rgb = rng.random((18, 18, 3)).astype(np.float32)
    stats = _region_stats(superpixels, _colour_bins(rgb), _texture_bins(rgb), rgb)
    grouping = _Grouping(stats, "e", superpixels.size)
    grouping.merge(4, 5)
    keep = [0, 1, 2, 3, 4, 6, 7, 8]  # slot 5 is empty now; the merged map numbers 0..7
    merged = np.unique(np.where(superpixels == 5, 4, superpixels), return_inverse=True)[1]
    direct = _region_stats(merged.reshape(18, 18), _colour_bins(rgb), _texture_bins(rgb), rgb)
    assert np.allclose(grouping.edge[np.ix_(keep, keep)], direct.edge)
    assert np.array_equal(grouping.border[np.ix_(keep, keep)], direct.border)
    assert not grouping.edge[5].any() and not grouping.border[:, 5].any()


def test_grouping_only_merges_adjacent_regions():
    # Superpixels 0 and 2 have the same colour but are separated by 1: they can only
    # meet once 1 has joined one of them.
    superpixels = np.repeat(np.arange(3), 8)[None].repeat(8, 0)
    rgb = np.where(superpixels[..., None] == 1, 0.9, 0.1).astype(np.float32).repeat(3, -1)
    stats = _region_stats(superpixels, _colour_bins(rgb), _texture_bins(rgb))
    members = _hierarchical_grouping(stats, "c", superpixels.size)
    assert not any(m[0] and m[2] and not m[1] for m in members)
    assert len(members) == 5


def test_no_near_duplicates_and_at_most_max_proposals():
    image, _ = scene()
    proposals = SelectiveSearch(max_proposals=20, duplicate_iou=0.7).propose(image)
    assert len(proposals) <= 20
    iou = proposals.iou()
    off_diagonal = iou[~torch.eye(len(iou), dtype=torch.bool)]
    assert off_diagonal.max() < 0.7


def test_same_seed_same_proposals_other_seed_other_order():
    image, _ = scene()
    a = SelectiveSearch(seed=1)(image)
    assert torch.equal(a, SelectiveSearch(seed=1)(image))
    assert not torch.equal(a, SelectiveSearch(seed=2)(image))


def test_round_robin_ranking_lets_the_hierarchies_take_turns():
    # Positions (the last region formed is 1): hierarchy 0 has regions at 3, 2, 1,
    # hierarchy 1 at 2, 1; by position alone, ties in hierarchy order.
    order = SelectiveSearch(ranking="round-robin")._rank([3, 2])
    assert order.tolist() == [[0, 2], [1, 1], [0, 1], [1, 0], [0, 0]]
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    a = SelectiveSearch(ranking="round-robin", seed=0).propose(image)
    b = SelectiveSearch(ranking="round-robin", seed=1).propose(image)
    assert torch.equal(a.masks(), b.masks())  # no random factor: the seed plays no part


def test_image_types_agree():
    image, _ = scene()
    expected = SelectiveSearch.single()(image)
    as_tensor = torch.from_numpy(image).permute(2, 0, 1)
    for variant in (Image.fromarray(image), as_tensor, as_tensor.float() / 255):
        assert torch.equal(SelectiveSearch.single()(variant), expected)


def test_normalised_or_misshapen_images_are_rejected():
    with pytest.raises(ValueError, match="before mean/std normalisation"):
        SelectiveSearch()(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        SelectiveSearch()(torch.zeros(8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        SelectiveSearch()(np.zeros((8, 8, 3), dtype=np.float32))


def test_max_side_segments_small_but_returns_full_size_masks():
    image, objects = scene(scale=3)
    compact = SelectiveSearch(max_side=96).propose(image)
    assert compact.size == (192, 288)
    best = best_overlaps(compact, objects, top_k=(100,))[100]
    assert (best > 0.8).all(), best


def test_tiny_and_flat_images():
    flat = np.full((5, 7, 3), 128, dtype=np.uint8)
    proposals = SelectiveSearch()(flat)
    assert proposals.shape == (1, 5, 7) and proposals.all()


def test_settings_and_hash():
    assert SelectiveSearch().settings_hash() == SelectiveSearch.fast().settings_hash()
    assert SelectiveSearch(scales=[50, 100]) == SelectiveSearch()  # lists become tuples
    assert SelectiveSearch(seed=1).settings_hash() != SelectiveSearch().settings_hash()
    # Later fields at their original values leave the key (and so old caches) unchanged.
    assert SelectiveSearch().settings_hash() == "896644d31a4e"
    robin = SelectiveSearch(ranking="round-robin")
    assert robin.settings_hash() != SelectiveSearch().settings_hash()
    assert SelectiveSearch.quality().settings()["color_spaces"] == (
        "hsv",
        "lab",
        "rgi",
        "h",
        "i",
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"color_spaces": ("hsv", "xyz")}, "unknown colour space"),
        ({"similarities": ("ctx",)}, "letters from 'ctsfe'"),
        ({"similarities": ("cc",)}, "at most once"),
        ({"scales": ()}, "non-empty"),
        ({"scales": (0,)}, "positive"),
        ({"duplicate_iou": 0.0}, "duplicate_iou"),
        ({"max_proposals": 0}, "max_proposals"),
        ({"ranking": "best"}, "ranking"),
    ],
)
def test_bad_settings(bad, match):
    with pytest.raises(ValueError, match=match):
        SelectiveSearch(**bad)


def test_compact_and_dense_outputs_agree():
    image, _ = scene()
    generator = SelectiveSearch.single()
    compact = generator.propose(image)
    assert isinstance(compact, CompactProposals)
    assert torch.equal(compact.masks(), generator(image))


def test_real_photos(shared_data):
    # Three real VOC photos (12 hand-drawn instances), downscaled for speed: every large
    # object is roughly found among 1000 proposals.
    from prm.data import build_dataset

    dataset = build_dataset("voc", shared_data / "voc-sample" / "VOC2012", "trainval")
    generator = SelectiveSearch(max_side=200)
    evaluator = ProposalEvaluator(top_k=(1000,))
    for index in range(len(dataset)):
        image, target = dataset[index]
        proposals = generator.propose(image)
        assert proposals.size == target["size"]
        evaluator.process([target], [{"proposals": proposals}])
    result = evaluator.summarize()
    assert result["instances"] == 12
    assert result["abo@1000"] > 0.5, result


def test_common_refinement_of_many_maps():
    # 30 maps of 3000 labels each would overflow one int64 key; cells must still be the
    # pixels on which every map agrees.
    from prm.proposals.selective_search import _common_refinement

    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 3000, (20, 20)) for _ in range(30)]
    maps[0][0, 0] = 2999
    cells, cell_to_superpixel = _common_refinement(maps)
    stacked = np.stack([m.ravel() for m in maps], 1)
    assert len(np.unique(stacked, axis=0)) == cells.max() + 1
    for g, m in enumerate(maps):
        assert (cell_to_superpixel[g][cells] == m).all()
