"""Semantic segmentation mIoU from instance masks merged per class (docs/method.md §6).

Both sides become label maps with 0 = background and ``c + 1`` = class ``c``:

- prediction: each pixel takes the class of the highest-scored predicted instance that
  covers it (background where none does; instances under ``score_threshold`` dropped);
- ground truth: each pixel takes the class of the instance covering it (crowd regions
  too: they are that class); the target's ``ignore_mask`` (VOC's 255 band) is ignored.

A confusion matrix of ``(C + 1) x (C + 1)`` pixel counts is accumulated over the dataset;
IoU per class = TP / (TP + FP + FN), mIoU the mean over the classes (background included,
as in VOC) that occur in the ground truth or the predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .base import (
    Evaluator,
    ignore_mask,
)

__all__ = ["SemanticSegmentationEvaluator", "instances_to_label_map"]


def instances_to_label_map(
    masks: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None = None
) -> torch.Tensor:
    """Merge instance masks into one label map.

    Args:
        masks (Tensor[N, H, W]): binary instance masks.
        labels (Tensor[N], int64): class index of each instance.
        scores (Tensor[N], float, optional): where instances overlap the highest score
            wins (the first instance on equal scores); without scores the last instance
            wins (annotation order).

    Returns:
        Tensor[H, W] (int64): 0 background, ``labels + 1`` on instance pixels.
    """
    return torch.from_numpy(_label_map(masks, labels, scores).astype(np.int64))


def _label_map(
    masks: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor | None
) -> np.ndarray:
    """:func:`instances_to_label_map` as a numpy int32 map (numpy's masked writes are faster)."""
    h, w = masks.shape[1:]
    out = np.zeros((h, w), dtype=np.int32)
    if len(masks) == 0:
        return out
    masks = masks.bool().cpu().numpy()
    if scores is None:
        order = range(len(masks))
    else:
        # Paint from the lowest rank to the highest so that the best score lands last;
        # the stable ranking makes the first of equal scores the best.
        order = torch.argsort(-scores.float(), stable=True).flip(0).tolist()
    for i in order:
        out[masks[i]] = int(labels[i]) + 1
    return out


class SemanticSegmentationEvaluator(Evaluator):
    """Per-class IoU and mIoU of merged instance masks against the ground truth.

    Reads target ``masks``, ``labels`` (and ``ignore_mask``, ``size``) and prediction
    ``masks`` or ``rles``, ``labels``, ``scores``.

    Args:
        classes: class names, index = label (the background class is added here).
        score_threshold: predicted instances scoring below it are left out (None: keep all).

    Summary keys: ``semantic/mIoU``, ``semantic/IoU/background``, ``semantic/IoU/<class>``
    (``None`` for a class absent from both sides), ``semantic/pixel_accuracy``,
    ``semantic/num_images``.
    """

    name = "semantic"
    target_keys = ("masks", "labels")
    prediction_keys = ("masks", "labels", "scores")

    def __init__(self, classes: Sequence[str], score_threshold: float | None = None):
        self.score_threshold = score_threshold
        super().__init__(classes)

    def reset(self) -> None:
        n = self.num_classes + 1
        self._confusion = np.zeros((n, n), dtype=np.int64)  # rows: truth, columns: prediction
        self._num_images = 0

    def process_image(self, target: Mapping, prediction: Mapping) -> None:
        size, (gt_masks, gt_labels, _), (masks, labels, scores) = self.instances(target, prediction)
        if self.score_threshold is not None:
            keep = scores >= self.score_threshold
            masks, labels, scores = masks[keep], labels[keep], scores[keep]
        n = self.num_classes + 1
        # Each pixel's (truth, prediction) pair as one bin index; ignored pixels go to an
        # extra bin n * n that is dropped.
        pairs = _label_map(gt_masks, gt_labels, None) * n + _label_map(masks, labels, scores)
        if "ignore_mask" in target:
            ignore = ignore_mask(target, size).numpy()
            pairs[ignore] = n * n
        counts = np.bincount(pairs.ravel(), minlength=n * n + 1)[: n * n]
        self._confusion += counts.reshape(n, n)
        self._num_images += 1

    def summarize(self) -> dict:
        tp = np.diag(self._confusion).astype(np.float64)
        union = self._confusion.sum(0) + self._confusion.sum(1) - tp
        names = ["background", *self.classes]
        ious = [float(tp[i] / union[i]) if union[i] > 0 else None for i in range(len(names))]
        defined = [iou for iou in ious if iou is not None]
        total = self._confusion.sum()
        results: dict = {"semantic/mIoU": float(np.mean(defined)) if defined else None}
        results.update({f"semantic/IoU/{name}": iou for name, iou in zip(names, ious, strict=True)})
        results["semantic/pixel_accuracy"] = float(tp.sum() / total) if total else None
        results["semantic/num_images"] = self._num_images
        return results
