"""Best overlap, ABO and recall of ranked proposals against ground-truth instances."""

import pytest
import torch

from prm.proposals import ProposalEvaluator, best_overlaps


def _box(h, w, y0, y1, x0, x1):
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_best_overlap_of_the_first_k():
    gt = _box(10, 10, 0, 4, 0, 4)[None]  # 16 pixels
    proposals = torch.stack(
        [
            _box(10, 10, 6, 10, 6, 10),  # disjoint: IoU 0
            _box(10, 10, 0, 4, 0, 2),  # half of it: 8 / 16
            _box(10, 10, 0, 4, 0, 4),  # exact: 1
        ]
    )
    best = best_overlaps(proposals, gt, top_k=(1, 2, 3, 50))
    assert best[1].tolist() == [0.0]
    assert best[2].tolist() == [0.5]
    assert best[3].tolist() == [1.0]
    assert best[50].tolist() == [1.0]  # k beyond P uses them all


def test_ignored_pixels_count_for_neither_mask():
    gt = _box(4, 4, 0, 2, 0, 2)[None]  # 4 pixels
    proposal = _box(4, 4, 0, 2, 0, 3)[None]  # 6 pixels: IoU 4 / 6
    ignore = _box(4, 4, 0, 4, 2, 4)  # the 2 extra pixels are ignored: IoU 1
    assert best_overlaps(proposal, gt, (1,))[1].item() == pytest.approx(4 / 6)
    assert best_overlaps(proposal, gt, (1,), ignore_mask=ignore)[1].item() == pytest.approx(1.0)


def test_no_proposals_means_zero_overlap():
    gt = _box(5, 5, 1, 3, 1, 3)[None]
    best = best_overlaps(torch.zeros(0, 5, 5, dtype=torch.bool), gt, (10,))
    assert best[10].tolist() == [0.0]


def test_evaluator_abo_and_recall_over_images():
    # Image 1: two instances, best IoUs 1.0 and 0.25. Image 2: one instance, best 0.5
    # (a crowd region there is left out). ABO = (1 + 0.25 + 0.5) / 3; recall@0.5 = 2 / 3.
    a, b = _box(8, 8, 0, 4, 0, 4), _box(8, 8, 4, 8, 4, 8)
    target1 = {"image_id": "1", "masks": torch.stack([a, b]), "iscrowd": torch.tensor([0, 0])}
    proposals1 = torch.stack([a, _box(8, 8, 4, 8, 4, 5)])  # 4 of b's 16 pixels
    c = _box(8, 8, 0, 2, 0, 8)
    target2 = {"image_id": "2", "masks": torch.stack([c, a]), "iscrowd": torch.tensor([0, 1])}
    proposals2 = _box(8, 8, 0, 1, 0, 8)[None]
    evaluator = ProposalEvaluator(top_k=(10,))
    evaluator.process([target1], [{"proposals": proposals1}])
    evaluator.process([target2], [{"proposals": proposals2}])
    result = evaluator.summarize()
    assert result["instances"] == 3
    assert result["abo@10"] == pytest.approx((1 + 0.25 + 0.5) / 3)
    assert result["recall@10"] == pytest.approx(2 / 3)
    assert result["mean_proposals"] == pytest.approx(1.5)


def test_evaluator_needs_instance_masks():
    with pytest.raises(ValueError, match="no instance masks"):
        ProposalEvaluator().process(
            [{"image_id": "x"}], [{"proposals": torch.zeros(1, 2, 2, dtype=torch.bool)}]
        )


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="gt_masks"):
        best_overlaps(torch.zeros(1, 4, 4, dtype=torch.bool), torch.zeros(1, 5, 4, dtype=bool))
