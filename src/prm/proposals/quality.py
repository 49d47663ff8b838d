"""How good are proposals? Best overlap with the ground-truth instances.

For each ground-truth instance, its *best overlap* is the highest mask IoU any of the
first ``k`` proposals reaches with it. Over a dataset:

- ABO@k (average best overlap): the mean of the best overlaps over all instances;
- recall@k (at IoU t, default 0.5): the fraction of instances whose best overlap >= t.

These are class-agnostic (proposals have no class): an upper bound on what retrieval
can reach with the first ``k`` proposals. Crowd instances (``iscrowd``) are left out and
pixels of ``ignore_mask`` (VOC's 255 boundary band) count for neither mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .compact import CompactProposals

__all__ = ["best_overlaps", "ProposalEvaluator"]


def best_overlaps(
    proposals: torch.Tensor | CompactProposals,
    gt_masks: torch.Tensor,
    top_k: Sequence[int] = (100, 200, 1000),
    ignore_mask: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """Best IoU of each ground-truth mask with the first ``k`` proposals, for every ``k``.

    Args:
        proposals: ``Tensor[P, H, W]`` bool masks in ranked order, or the same as
            :class:`CompactProposals` (much cheaper for thousands of proposals).
        gt_masks (Tensor[N, H, W]): ground-truth instance masks (bool).
        top_k: the ``k`` values; ``k > P`` uses all proposals.
        ignore_mask (Tensor[H, W], optional): pixels that count for neither mask.

    Returns:
        ``{k: Tensor[N] float32}``, 0 where no proposal overlaps (or ``P = 0``).
    """
    if not isinstance(proposals, CompactProposals):
        if proposals.dim() != 3:
            raise ValueError(f"proposals must be (P, H, W), got {tuple(proposals.shape)}")
        proposals = CompactProposals.from_masks(proposals)
    if gt_masks.dim() != 3 or tuple(gt_masks.shape[1:]) != proposals.size:
        raise ValueError(
            f"gt_masks must be (N, H, W) with (H, W) = {proposals.size}, "
            f"got {tuple(gt_masks.shape)}"
        )
    labels = proposals.superpixels.numpy().ravel()
    n_cells = proposals.membership.shape[1]
    valid = np.ones(labels.shape, dtype=bool)
    if ignore_mask is not None:
        if tuple(ignore_mask.shape) != proposals.size:
            raise ValueError(
                f"ignore_mask must be {proposals.size}, got {tuple(ignore_mask.shape)}"
            )
        valid = ~ignore_mask.numpy().astype(bool).ravel()
    # Everything in cell space: per cell, its valid area and each GT's pixels in it.
    cell_area = np.bincount(labels[valid], minlength=n_cells).astype(np.float64)
    gt = gt_masks.numpy().astype(bool).reshape(len(gt_masks), -1) & valid
    gt_cells = (
        np.stack([np.bincount(labels[g], minlength=n_cells) for g in gt]).astype(np.float64)
        if len(gt)
        else np.zeros((0, n_cells))
    )
    members = proposals.membership.numpy().astype(np.float64)  # (P, L)
    inter = gt_cells @ members.T  # (N, P)
    union = gt.sum(1)[:, None] + (members @ cell_area)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    out = {}
    for k in top_k:
        first = iou[:, :k]
        best = first.max(1) if first.shape[1] else np.zeros(len(gt))
        out[int(k)] = torch.from_numpy(best.astype(np.float32))
    return out


class ProposalEvaluator:
    """ABO and recall of the first ``k`` proposals over a dataset.

    The protocol of every evaluator in :mod:`prm.evaluation`: ``reset()``,
    ``process(targets, predictions)`` with one dict per image, ``summarize()``::

        evaluator = ProposalEvaluator(top_k=(100, 200, 1000))
        for image, target in dataset:
            evaluator.process([target], [{"proposals": generator(image)}])
        evaluator.summarize()  # {"instances": N, "abo@100": ..., "recall@100": ...}

    Args:
        top_k: numbers of proposals to evaluate.
        iou_threshold: the IoU at which an instance counts as recalled.
    """

    def __init__(self, top_k: Sequence[int] = (100, 200, 1000), iou_threshold: float = 0.5):
        self.top_k = tuple(int(k) for k in top_k)
        self.iou_threshold = iou_threshold
        self.reset()

    def reset(self) -> None:
        self._best: dict[int, list[torch.Tensor]] = {k: [] for k in self.top_k}
        self._counts: list[int] = []

    def process(self, targets: Sequence[dict], predictions: Sequence[dict]) -> None:
        """Add images.

        Args:
            targets: dataset targets with ``"masks"`` and optionally ``"iscrowd"`` and
                ``"ignore_mask"`` (docs/conventions.md).
            predictions: one ``{"proposals": Tensor[P, H, W] | CompactProposals}`` per
                target, in the same order.
        """
        if len(targets) != len(predictions):
            raise ValueError(
                f"ProposalEvaluator.process got {len(targets)} targets and "
                f"{len(predictions)} predictions; they must pair up one per image"
            )
        for target, prediction in zip(targets, predictions):
            self._process_image(prediction["proposals"], target)

    def _process_image(self, proposals: torch.Tensor | CompactProposals, target: dict) -> None:
        if "masks" not in target:
            raise ValueError(
                f"image {target.get('image_id')!r} has no instance masks to evaluate against"
            )
        masks = target["masks"]
        if "iscrowd" in target:
            masks = masks[~target["iscrowd"].bool()]
        best = best_overlaps(proposals, masks, self.top_k, target.get("ignore_mask"))
        for k in self.top_k:
            self._best[k].append(best[k])
        self._counts.append(len(proposals))

    def summarize(self) -> dict:
        """``{"images", "instances", "mean_proposals", "abo@k", "recall@k"}`` (0..1)."""
        out = {
            "images": len(self._counts),
            "instances": int(sum(len(b) for b in self._best[self.top_k[0]])) if self.top_k else 0,
            "mean_proposals": float(np.mean(self._counts)) if self._counts else 0.0,
        }
        for k in self.top_k:
            best = torch.cat(self._best[k]) if self._best[k] else torch.zeros(0)
            out[f"abo@{k}"] = float(best.mean()) if len(best) else 0.0
            out[f"recall@{k}"] = (
                float((best >= self.iou_threshold).float().mean()) if len(best) else 0.0
            )
        return out
