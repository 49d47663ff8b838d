"""chainercv's VOC instance-segmentation evaluator, reimplemented as the reference.

chainercv (v0.13) cannot be installed next to numpy 2, so the three functions our
evaluator must equal are reimplemented here, line for line and with chainercv's own
dtypes, from ``chainercv/evaluations/eval_instance_segmentation_voc.py``,
``chainercv/evaluations/eval_detection_voc.py`` (``calc_detection_voc_ap``) and
``chainercv/utils/mask/mask_iou.py``. Only the GPU (cupy) branches and ``six`` are left
out. Keep them faithful: they are the yardstick of ``tests/evaluation``, not a second
implementation to tune.

Two details decide exactness and are kept on purpose:

- ``mask_iou`` stores IoUs in float32 and compares them with the Python float threshold,
  which numpy does in float32 (NEP 50), so an IoU of exactly 0.7 is a hit;
- predictions are ordered by ``argsort()[::-1]`` (numpy's default, unstable sort) per
  class in each image and again over all images, which decides the order of ties.
"""

from collections import defaultdict

import numpy as np


def mask_iou(mask_a, mask_b):
    if mask_a.shape[1:] != mask_b.shape[1:]:
        raise IndexError
    xp = np

    n_mask_a = len(mask_a)
    n_mask_b = len(mask_b)
    iou = xp.empty((n_mask_a, n_mask_b), dtype=xp.float32)
    for n, m_a in enumerate(mask_a):
        for k, m_b in enumerate(mask_b):
            intersect = xp.bitwise_and(m_a, m_b).sum()
            union = xp.bitwise_or(m_a, m_b).sum()
            iou[n, k] = intersect / union
    return iou


def calc_detection_voc_ap(prec, rec, use_07_metric=False):
    n_fg_class = len(prec)
    ap = np.empty(n_fg_class)
    for l in range(n_fg_class):
        if prec[l] is None or rec[l] is None:
            ap[l] = np.nan
            continue

        if use_07_metric:
            # 11 point metric
            ap[l] = 0
            for t in np.arange(0.0, 1.1, 0.1):
                if np.sum(rec[l] >= t) == 0:
                    p = 0
                else:
                    p = np.max(np.nan_to_num(prec[l])[rec[l] >= t])
                ap[l] += p / 11
        else:
            # correct AP calculation
            # first append sentinel values at the end
            mpre = np.concatenate(([0], np.nan_to_num(prec[l]), [0]))
            mrec = np.concatenate(([0], rec[l], [1]))

            mpre = np.maximum.accumulate(mpre[::-1])[::-1]

            # to calculate area under PR curve, look for points
            # where X axis (recall) changes value
            i = np.where(mrec[1:] != mrec[:-1])[0]

            # and sum (delta recall) * prec
            ap[l] = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])

    return ap


def eval_instance_segmentation_voc(
    pred_masks, pred_labels, pred_scores, gt_masks, gt_labels, iou_thresh=0.5, use_07_metric=False
):
    prec, rec = calc_instance_segmentation_voc_prec_rec(
        pred_masks, pred_labels, pred_scores, gt_masks, gt_labels, iou_thresh
    )

    ap = calc_detection_voc_ap(prec, rec, use_07_metric=use_07_metric)

    return {"ap": ap, "map": np.nanmean(ap)}


def calc_instance_segmentation_voc_prec_rec(
    pred_masks, pred_labels, pred_scores, gt_masks, gt_labels, iou_thresh
):
    pred_masks = iter(pred_masks)
    pred_labels = iter(pred_labels)
    pred_scores = iter(pred_scores)
    gt_masks = iter(gt_masks)
    gt_labels = iter(gt_labels)

    n_pos = defaultdict(int)
    score = defaultdict(list)
    match = defaultdict(list)

    for pred_mask, pred_label, pred_score, gt_mask, gt_label in zip(
        pred_masks, pred_labels, pred_scores, gt_masks, gt_labels
    ):
        for l in np.unique(np.concatenate((pred_label, gt_label)).astype(int)):
            pred_keep_l = pred_label == l
            pred_mask_l = pred_mask[pred_keep_l]
            pred_score_l = pred_score[pred_keep_l]
            # sort by score
            order = pred_score_l.argsort()[::-1]
            pred_mask_l = pred_mask_l[order]
            pred_score_l = pred_score_l[order]

            gt_keep_l = gt_label == l
            gt_mask_l = gt_mask[gt_keep_l]

            n_pos[l] += gt_keep_l.sum()
            score[l].extend(pred_score_l)

            if len(pred_mask_l) == 0:
                continue
            if len(gt_mask_l) == 0:
                match[l].extend((0,) * pred_mask_l.shape[0])
                continue

            iou = mask_iou(pred_mask_l, gt_mask_l)
            gt_index = iou.argmax(axis=1)
            # set -1 if there is no matching ground truth
            gt_index[iou.max(axis=1) < iou_thresh] = -1
            del iou

            selec = np.zeros(gt_mask_l.shape[0], dtype=bool)
            for gt_idx in gt_index:
                if gt_idx >= 0:
                    if not selec[gt_idx]:
                        match[l].append(1)
                    else:
                        match[l].append(0)
                    selec[gt_idx] = True
                else:
                    match[l].append(0)

    for iter_ in (pred_masks, pred_labels, pred_scores, gt_masks, gt_labels):
        if next(iter_, None) is not None:
            raise ValueError("Length of input iterables need to be same.")

    n_fg_class = max(n_pos.keys()) + 1
    prec = [None] * n_fg_class
    rec = [None] * n_fg_class

    for l in n_pos.keys():
        score_l = np.array(score[l])
        match_l = np.array(match[l], dtype=np.int8)

        order = score_l.argsort()[::-1]
        match_l = match_l[order]

        tp = np.cumsum(match_l == 1)
        fp = np.cumsum(match_l == 0)

        # If an element of fp + tp is 0,
        # the corresponding element of prec[l] is nan.
        prec[l] = tp / (fp + tp)
        # If n_pos[l] is 0, rec[l] is None.
        if n_pos[l] > 0:
            rec[l] = tp / n_pos[l]

    return prec, rec
