"""CompactProposals: masks as unions of cells, exact both ways."""

import pytest
import torch

from prm.masks import mask_iou
from prm.proposals import CompactProposals


def test_from_masks_is_exact_and_small():
    masks = torch.rand(40, 30, 50) > 0.5
    compact = CompactProposals.from_masks(masks)
    assert torch.equal(compact.masks(), masks)
    assert compact.size == (30, 50)
    assert len(compact) == 40


def test_masks_equal_the_straightforward_gather():
    # The dense masks are gathered pixel by pixel from the transposed membership; the
    # straightforward form indexes membership's cells with the label map.
    torch.manual_seed(0)
    for p, cells, (h, w) in [(37, 11, (9, 13)), (1, 1, (4, 4)), (0, 3, (5, 2)), (8, 200, (64, 3))]:
        superpixels = torch.randint(cells, (h, w))
        membership = torch.rand(p, cells) > 0.5
        masks = CompactProposals(superpixels, membership).masks()
        assert masks.shape == (p, h, w) and masks.dtype == torch.bool and masks.is_contiguous()
        assert torch.equal(masks, membership[:, superpixels])


def test_cells_are_pixels_sharing_the_same_masks():
    # Two overlapping squares on a 4x4 image make 4 cells: neither, only A, only B, both.
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True
    masks[1, 1:3, 1:3] = True
    compact = CompactProposals.from_masks(masks)
    assert compact.membership.shape == (2, 4)
    assert torch.equal(compact.masks(), masks)


def test_empty_set_keeps_the_image_size():
    compact = CompactProposals.from_masks(torch.zeros(0, 5, 7, dtype=torch.bool))
    assert len(compact) == 0
    assert compact.masks().shape == (0, 5, 7)


def test_iou_matches_dense_mask_iou():
    masks = torch.rand(12, 20, 20) > 0.3
    masks[3] = False  # an empty mask: IoU 0 with everything, itself included
    expected = mask_iou(masks, masks).double()
    assert torch.allclose(CompactProposals.from_masks(masks).iou(), expected, atol=1e-6)


def test_validation():
    with pytest.raises(ValueError, match="superpixels must be"):
        CompactProposals(torch.zeros(3), torch.zeros(1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="cells"):
        CompactProposals(torch.full((2, 2), 5), torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(P, H, W\)"):
        CompactProposals.from_masks(torch.zeros(4, 4, dtype=torch.bool))
