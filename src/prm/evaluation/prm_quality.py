"""PRM quality: how much of a peak response map falls on one object (docs/method.md §6).

For a predicted instance of class c with peak response map R, the quality is

    q(R) = max over ground-truth masks G of class c of  sum(R * G) / sum(R)

(the fraction of the PRM's mass inside the best same-class object). A PRM is counted
correct when q > ``threshold`` (0.5 in the paper: most of its mass on a single object).
Only instances whose class has a (non-crowd) ground-truth object in the image are
scored; the others measure classification errors, not PRM quality, and are counted as
``skipped``. A PRM with no mass scores 0. With ``use_ignore_mask=True`` the target's
``ignore_mask`` pixels are left out of both sums. PRMs kept at a smaller working size (a
``Predictor`` with ``max_size`` keeps them so) are scored at their own size, against the
ground truth resized to it by nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..masks import resize_nearest
from .base import Evaluator, Records, check_labels, ground_truth, ignore_mask, target_size

__all__ = ["PRMQualityEvaluator", "prm_quality"]


def prm_quality(
    prms: torch.Tensor, labels: torch.Tensor, gt_masks: torch.Tensor, gt_labels: torch.Tensor
) -> torch.Tensor:
    """Fraction of each PRM's mass inside its best same-class ground-truth mask.

    Args:
        prms (Tensor[N, H, W], float): peak response maps (non-negative).
        labels (Tensor[N], int64): class of each PRM's instance.
        gt_masks (Tensor[G, H, W], bool): ground-truth instance masks.
        gt_labels (Tensor[G], int64): their classes.

    Returns:
        Tensor[N] (float32) in [0, 1]; NaN for a PRM whose class has no ground truth.
    """
    n = len(prms)
    if n == 0:
        return torch.zeros(0)
    mass = prms.flatten(1).float().clamp(min=0)  # (N, HW)
    total = mass.sum(1, keepdim=True)
    inside = mass @ gt_masks.flatten(1).float().T  # (N, G)
    fraction = (inside / total.clamp(min=1e-30)).clamp(max=1.0)  # 0 for a PRM without mass
    same = labels[:, None] == gt_labels[None, :]
    fraction = torch.where(same, fraction, -1.0)
    best = fraction.max(1).values if len(gt_masks) else torch.full((n,), -1.0)
    return torch.where(best < 0, torch.nan, best)


class PRMQualityEvaluator(Evaluator):
    """Mean PRM quality and the fraction of PRMs above ``threshold``.

    Reads target ``masks``, ``labels`` (``iscrowd``, ``ignore_mask``) and prediction
    ``prms`` (float (N, H, W) at image size, or at a smaller working size with the same
    aspect ratio) and ``labels``.

    Args:
        classes: class names, index = label.
        threshold: a PRM is correct when its quality exceeds it (paper: 0.5).
        use_ignore_mask: leave the target's ``ignore_mask`` pixels out of both sums.

    Summary keys: ``prm_quality/mean``, ``prm_quality/accuracy@<threshold>``,
    ``prm_quality/count`` (PRMs scored), ``prm_quality/skipped`` (class not in the image).
    """

    name = "prm_quality"
    target_keys = ("masks", "labels")
    prediction_keys = ("prms", "labels")

    def __init__(
        self, classes: Sequence[str], threshold: float = 0.5, use_ignore_mask: bool = False
    ):
        self.threshold = float(threshold)
        self.use_ignore_mask = use_ignore_mask
        super().__init__(classes)

    def reset(self) -> None:
        self._quality = Records(1, np.float32)  # a row per scored PRM
        self._skipped = 0

    def process_image(self, target: Mapping, prediction: Mapping) -> None:
        image = target.get("image_id", "?")
        size = target_size(target)
        gt_masks, gt_labels, crowd = ground_truth(target, size, self.num_classes)
        prms = torch.as_tensor(prediction["prms"]).detach().cpu()
        labels = torch.as_tensor(prediction["labels"]).long().cpu()
        if prms.dim() != 3 or not _fits(prms.shape[1:], size) or labels.shape != (len(prms),):
            raise ValueError(
                f"prediction of image {image} has prms of shape {tuple(prms.shape)} and labels "
                f"of shape {tuple(labels.shape)}; expected (N, {size[0]}, {size[1]}) (or a "
                "smaller size of the same aspect ratio) and (N,)"
            )
        check_labels(labels, self.num_classes, f"prediction of image {image}")
        if self.use_ignore_mask and "ignore_mask" in target:
            prms = prms * (~_at(ignore_mask(target, size)[None], prms))[0]
        gt_masks = _at(gt_masks, prms)
        quality = prm_quality(prms, labels, gt_masks[~crowd], gt_labels[~crowd]).numpy()
        scored = ~np.isnan(quality)
        self._quality.append(quality[scored][:, None])
        self._skipped += int((~scored).sum())

    def summarize(self) -> dict:
        quality = self._quality.array[:, 0]
        scored = len(quality) > 0
        return {
            "prm_quality/mean": float(quality.mean()) if scored else None,
            f"prm_quality/accuracy@{self.threshold:g}": (
                float((quality > self.threshold).mean()) if scored else None
            ),
            "prm_quality/count": int(len(quality)),
            "prm_quality/skipped": self._skipped,
        }


def _fits(work: Sequence[int], size: Sequence[int]) -> bool:
    """``work`` is ``size`` or a scaled-down copy of it (each side rounded)."""
    h, w = int(work[0]), int(work[1])
    if (h, w) == tuple(size):
        return True
    scale = max(h, w) / max(size)
    return scale < 1 and abs(h - size[0] * scale) <= 1 and abs(w - size[1] * scale) <= 1


def _at(masks: torch.Tensor, prms: torch.Tensor) -> torch.Tensor:
    """``masks`` (G, H, W) at the PRMs' size (nearest neighbour; unchanged if equal)."""
    size = tuple(prms.shape[1:])
    return masks if tuple(masks.shape[1:]) == size else resize_nearest(masks, size)
