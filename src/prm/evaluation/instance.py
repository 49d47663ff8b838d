"""Instance segmentation: mAP^r at several mask IoU thresholds, and ABO (docs/method.md §6).

mAP^r follows chainercv's ``eval_instance_segmentation_voc``, the evaluator later papers
on this benchmark use:

1. Per image and class, predictions in score order each go to the ground-truth mask of
   that class they overlap most (highest IoU). The prediction is a true positive when
   that IoU >= the threshold and no higher-scored prediction took that ground truth;
   otherwise it is a false positive and is **not** passed on to the next-best ground
   truth (unlike COCO).
2. Per class, over all images, sort by score and accumulate precision/recall; AP is the
   area under the monotone precision envelope (11-point VOC07 AP as an option).
3. mAP^r is the mean over classes with at least one ground-truth instance. A class with
   ground truth and no prediction scores 0; a class with predictions and no ground truth
   is not counted.

Additions that chainercv lacks, both no-ops on VOC: crowd ground truth (COCO ``iscrowd``)
is neither counted nor matched, and a prediction that is not a true positive but covers a
crowd region of its class (intersection / prediction area >= threshold, COCO's rule) is
ignored instead of counted as a false positive. VOC's 255 boundary band
(``ignore_mask``) is ignored only with ``use_ignore_mask=True``: chainercv ignores nothing,
and the published numbers were measured that way.

ABO (average best overlap): mean over ground-truth (non-crowd) instances of the best IoU
with a predicted mask of the same class, 0 when there is none; ``class_agnostic_abo``
adds the variant where any predicted mask counts.

Only compact records are kept per prediction (label, score, one match flag per
threshold) and per ground truth (best IoU), so memory does not grow with image size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from prm.masks import mask_iou

from .ap import precision_recall, voc_ap
from .base import (
    Evaluator,
    Records,
    ground_truth,
    ignore_mask,
    prediction_masks,
    target_size,
)

__all__ = [
    "CandidateRecords",
    "InstanceSegmentationEvaluator",
    "match_instances",
    "score_order",
]

IOU_THRESHOLDS = (0.25, 0.5, 0.7, 0.75)
TIE_ORDERS = ("chainercv", "stable")


def match_instances(
    iou: torch.Tensor, crowd_overlap: torch.Tensor, thresholds: Sequence[float]
) -> np.ndarray:
    """Greedy VOC matching of score-sorted predictions to ground truth, per threshold.

    Args:
        iou (Tensor or ndarray [P, G]): IoU of each prediction (rows sorted by
            decreasing score) with each ground truth; pairs of different classes must be
            set to -1. Give float64 IoUs from exact counts (``mask_iou(..., exact=True)``)
            for ``IoU >= t`` to be exact at the threshold.
        crowd_overlap (Tensor or ndarray [P]): largest ``|pred & crowd| / |pred|`` over
            the crowd regions of the prediction's class (0 where none).
        thresholds: T IoU thresholds in (0, 1].

    Returns:
        ndarray[T, P] (int8): 1 true positive, 0 false positive, -1 ignored (on a crowd).
    """
    thr = np.asarray(thresholds, dtype=np.float64)[:, None]  # (T, 1)
    iou = np.asarray(iou)
    num_pred, num_gt = iou.shape
    matches = np.zeros((len(thresholds), num_pred), dtype=np.int8)
    if num_pred == 0:
        return matches
    if num_gt:
        best_gt = iou.argmax(axis=1)  # the GT each prediction overlaps most; first on ties
        best_iou = iou[np.arange(num_pred), best_gt].astype(np.float64)
        taken = np.zeros((len(thresholds), num_gt), dtype=bool)
        for i in range(num_pred):
            hit = best_iou[i] >= thr[:, 0]  # (T,)
            free = ~taken[:, best_gt[i]]
            matches[:, i] = hit & free
            taken[:, best_gt[i]] |= hit  # a duplicate does not move on to another GT
    on_crowd = np.asarray(crowd_overlap, dtype=np.float64)[None, :] >= thr  # (T, P)
    matches[(matches == 0) & on_crowd] = -1
    return matches


class InstanceSegmentationEvaluator(Evaluator):
    """mAP^r at mask IoU thresholds (default 0.25, 0.5, 0.7, 0.75), per-class AP, and ABO.

    Reads target ``masks``, ``labels`` (and ``iscrowd``, ``ignore_mask`` when present) and
    prediction ``masks`` (or ``rles``), ``labels``, ``scores``.

    Args:
        classes: class names, index = label.
        iou_thresholds: mask IoU thresholds, each in (0, 1].
        use_07_metric: 11-point VOC07 AP instead of the area under the envelope.
        use_ignore_mask: remove the target's ``ignore_mask`` pixels from every predicted
            and ground-truth mask before computing IoU (off: chainercv's protocol).
        class_agnostic_abo: also report ABO where a ground truth's best overlap may come
            from a prediction of any class.
        ties: order of predictions with equal scores. ``"chainercv"`` (default): as
            chainercv's ``eval_instance_segmentation_voc`` orders them, with numpy's
            default ``np.argsort(scores)[::-1]`` per class, per image and then over all
            images (scores sorted in the precision they were given, float32 or float64),
            so that results equal chainercv's. ``"stable"``: ties keep the order
            processed (images in order, predictions in their given order), which does not
            depend on numpy's sort algorithm.

    Summary keys (``T`` formatted like ``0.5``): ``instance/mAP_r@T``,
    ``instance/AP_r@T/<class>``, ``instance/ABO``, ``instance/ABO/<class>``,
    ``instance/ABO_class_agnostic`` (option), ``instance/num_images``,
    ``instance/num_instances``, ``instance/num_predictions``. Values are fractions in
    [0, 1]; ``None`` where undefined (a class without ground truth).
    """

    name = "instance"
    target_keys = ("masks", "labels")
    prediction_keys = ("masks", "labels", "scores")

    def __init__(
        self,
        classes: Sequence[str],
        iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
        use_07_metric: bool = False,
        use_ignore_mask: bool = False,
        class_agnostic_abo: bool = False,
        ties: str = "chainercv",
    ):
        if ties not in TIE_ORDERS:
            raise ValueError(f"ties must be one of {TIE_ORDERS}, got {ties!r}")
        self.ties = ties
        thresholds = tuple(float(t) for t in iou_thresholds)
        if not thresholds or any(not 0.0 < t <= 1.0 for t in thresholds):
            raise ValueError(f"iou_thresholds must be non-empty and in (0, 1], got {thresholds}")
        self.iou_thresholds = thresholds
        self.use_07_metric = use_07_metric
        self.use_ignore_mask = use_ignore_mask
        self.class_agnostic_abo = class_agnostic_abo
        super().__init__(classes)

    def reset(self) -> None:
        # One row per prediction: label, score, and a match flag per IoU threshold.
        self._labels = Records(1, np.int64)
        self._scores = Records(1, np.float64)
        self._matches = Records(len(self.iou_thresholds), np.int8)
        # Classes that got float64 scores: sorted in float64, the others in float32 (as
        # numpy would sort the caller's arrays; the order of ties depends on the dtype).
        self._wide_scores = np.zeros(self.num_classes, dtype=bool)
        self._n_pos = np.zeros(self.num_classes, dtype=np.int64)
        self._best_iou_sum = np.zeros(self.num_classes, dtype=np.float64)
        self._best_iou_any_sum = np.zeros(self.num_classes, dtype=np.float64)
        self._num_images = 0

    def process_image(self, target: Mapping, prediction: Mapping) -> None:
        self.add_record(self.image_record(target, prediction))

    def image_record(self, target: Mapping, prediction: Mapping) -> tuple:
        """What one image adds to the metrics, without adding it (:meth:`add_record`
        does): a tuner that predicts the same instances for several settings scores them
        once. ``process_image(t, p)`` is ``add_record(image_record(t, p))``."""
        size, truth, (masks, labels, scores) = self.instances(target, prediction)
        table = CandidateRecords(self, target, size, truth, masks)
        return table.record(torch.arange(len(masks)), labels, scores)

    def candidate_records(self, target: Mapping, candidates: torch.Tensor) -> CandidateRecords:
        """The records of predictions whose masks are drawn from ``candidates``
        (Tensor[N, H, W], bool, at the target's size), with their IoUs against the
        ground truth computed once: see :class:`CandidateRecords`."""
        size = target_size(target)
        truth = ground_truth(target, size, self.num_classes)
        image = {"masks": candidates, "image_id": target.get("image_id", "?")}
        return CandidateRecords(self, target, size, truth, prediction_masks(image, size))

    def add_record(self, record: tuple) -> None:
        """Add an :meth:`image_record` to the metrics."""
        (labels, scores, matches), wide, positives, best_sum, best_any_sum = record
        if wide is not None:
            self._wide_scores[wide] = True
        self._labels.append(labels)
        self._scores.append(scores)
        self._matches.append(matches)
        self._n_pos += positives
        if best_sum is not None:
            self._best_iou_sum += best_sum
            self._best_iou_any_sum += best_any_sum
        self._num_images += 1

    def curves(self) -> dict[float, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Precision/recall curves: ``{threshold: {class name: (precision, recall)}}``.

        Classes without ground truth are left out (recall is undefined for them).
        """
        labels, scores = self._labels.array[:, 0], self._scores.array[:, 0]  # (K,) each
        matches = self._matches.array.T  # (T, K)
        out: dict[float, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for t, threshold in enumerate(self.iou_thresholds):
            out[threshold] = {}
            for c, name in enumerate(self.classes):
                if self._n_pos[c] == 0:
                    continue
                sel = labels == c
                class_scores = (
                    scores[sel] if self._wide_scores[c] else scores[sel].astype(np.float32)
                )
                precision, recall = precision_recall(
                    class_scores, matches[t, sel], self._n_pos[c], ties=self.ties
                )
                out[threshold][name] = (precision, recall)
        return out

    def summarize(self) -> dict:
        results: dict = {}
        for threshold, per_class in self.curves().items():
            aps = {
                name: voc_ap(precision, recall, self.use_07_metric)
                for name, (precision, recall) in per_class.items()
            }
            key = f"{threshold:g}"
            results[f"instance/mAP_r@{key}"] = float(np.mean(list(aps.values()))) if aps else None
            for name in self.classes:
                results[f"instance/AP_r@{key}/{name}"] = aps.get(name)
        total = int(self._n_pos.sum())
        results["instance/ABO"] = float(self._best_iou_sum.sum() / total) if total else None
        if self.class_agnostic_abo:
            results["instance/ABO_class_agnostic"] = (
                float(self._best_iou_any_sum.sum() / total) if total else None
            )
        for c, name in enumerate(self.classes):
            n = self._n_pos[c]
            results[f"instance/ABO/{name}"] = float(self._best_iou_sum[c] / n) if n else None
        results["instance/num_images"] = self._num_images
        results["instance/num_instances"] = total
        results["instance/num_predictions"] = len(self._scores)
        return results


def score_order(labels: np.ndarray, scores: np.ndarray, ties: str = "chainercv") -> np.ndarray:
    """The order in which one image's predictions are matched, best score first.

    Args:
        labels (ndarray[N], int): class of each prediction.
        scores (ndarray[N], float32 or float64): score of each prediction.
        ties: ``"chainercv"``: class by class in increasing label order, each class's
            predictions by ``np.argsort(scores)[::-1]`` (chainercv's order, ties
            included); ``"stable"``: decreasing score, ties in the given order.

    Returns:
        ndarray[N] (int64): indices into the predictions.
    """
    if ties == "stable":
        return np.argsort(-scores, kind="stable")
    parts = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        parts.append(idx[np.argsort(scores[idx])[::-1]])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class CandidateRecords:
    """The :meth:`InstanceSegmentationEvaluator.image_record` of predictions whose masks
    are drawn from one image's fixed candidates (a tuner's proposals).

    The candidates' IoUs with the ground truth (and their overlaps with crowd regions)
    are computed once; ``record(index, labels, scores)`` then equals
    ``image_record(target, {"masks": candidates[index], "labels": labels, "scores":
    scores})`` to the bit: every IoU is a division of exact pixel counts, whichever
    masks it was computed with. ``image_record`` itself goes through this class.

    Args:
        evaluator: supplies the classes, thresholds and the ignore-mask / tie settings.
        target: the image's target dict.
        size: its ``(H, W)``.
        truth: ``(masks bool (G, H, W), labels (G,), iscrowd (G,))`` of the target.
        candidates (Tensor[N, H, W], bool): the masks predictions may take.
    """

    def __init__(self, evaluator, target: Mapping, size, truth: tuple, candidates):
        self.evaluator = evaluator
        gt_masks, gt_labels, crowd = truth
        if evaluator.use_ignore_mask and "ignore_mask" in target:
            keep = ~ignore_mask(target, size)
            candidates = candidates & keep
            gt_masks = gt_masks & keep
        # NumPy from here on: a tuner asks for thousands of records per image, each of a
        # handful of instances, where every torch call costs more than its work.
        self.gt_labels = gt_labels[~crowd].numpy()
        self.crowd_labels = gt_labels[crowd].numpy()
        # (N, G) float64, one matrix product per image
        self.iou = mask_iou(candidates, gt_masks[~crowd], exact=True).numpy()
        self.crowd_share = _crowd_share(candidates, gt_masks[crowd]).numpy()  # (N, K)
        self.positives = np.bincount(self.gt_labels, minlength=evaluator.num_classes)

    def record(self, index: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor) -> tuple:
        """The image record of the predictions ``candidates[index]`` (Tensor[M], int64)
        with ``labels`` (Tensor[M], int64) and ``scores`` (Tensor[M], float32 or
        float64, as the prediction dict holds them)."""
        evaluator, gt_l = self.evaluator, self.gt_labels
        index, labels, scores = index.numpy(), labels.numpy(), scores.numpy()
        order = score_order(labels, scores, evaluator.ties)
        index, labels, scores = index[order], labels[order], scores[order]
        wide = np.unique(labels) if scores.dtype == np.float64 else None
        iou = self.iou[index]
        iou_same = np.where(labels[:, None] == gt_l[None, :], iou, -1.0)
        crowd_overlap = np.zeros(len(index), np.float32)
        if self.crowd_share.shape[1] and len(index):
            same_class = labels[:, None] == self.crowd_labels[None, :]
            crowd_overlap = np.where(same_class, self.crowd_share[index], 0.0).max(1)
        matches = match_instances(iou_same, crowd_overlap, evaluator.iou_thresholds).T
        best_sum = best_any_sum = None
        if len(gt_l):
            none = np.zeros(len(gt_l))
            best = np.maximum(iou_same, 0).max(0) if len(index) else none
            best_any = iou.max(0) if len(index) else none
            classes = evaluator.num_classes
            best_sum = np.bincount(gt_l, weights=best.astype(np.float64), minlength=classes)
            best_any_sum = np.bincount(gt_l, weights=best_any.astype(np.float64), minlength=classes)
        rows = (labels[:, None], scores.astype(np.float64)[:, None], matches)
        return rows, wide, self.positives, best_sum, best_any_sum


def _crowd_share(masks: torch.Tensor, crowds: torch.Tensor) -> torch.Tensor:
    """``|pred & crowd| / |pred|`` of every mask and crowd region, (P, K) float32."""
    if len(crowds) == 0 or len(masks) == 0:
        return torch.zeros((len(masks), len(crowds)))
    pred = masks.flatten(1).float()
    inter = pred @ crowds.flatten(1).float().T  # (P, K)
    area = pred.sum(1, keepdim=True).clamp(min=1)
    return inter / area


def _crowd_overlap(
    masks: torch.Tensor, labels: torch.Tensor, crowds: torch.Tensor, crowd_labels: torch.Tensor
) -> torch.Tensor:
    """Largest ``|pred & crowd| / |pred|`` over same-class crowd regions, (P,) float."""
    if len(crowds) == 0 or len(masks) == 0:
        return torch.zeros(len(masks))
    share = _crowd_share(masks, crowds)
    return torch.where(labels[:, None] == crowd_labels[None, :], share, 0.0).max(1).values
