"""Average precision: the ranking arithmetic every AP-based metric here shares.

The definitions are PASCAL VOC's as chainercv implements them
(``chainercv.evaluations.calc_detection_voc_ap``), which the instance segmentation papers
that report mAP^r use:

- walk the ranked list, accumulating true and false positives; precision = tp / (tp + fp),
  recall = tp / n_pos;
- AP = area under the monotone precision envelope over all recall points (VOC 2010+),
  or the 11-point interpolated AP of VOC 2007 (``use_07_metric=True``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["precision_recall", "voc_ap", "ranked_ap"]


def precision_recall(
    scores: np.ndarray, matches: np.ndarray, n_pos: int, ties: str = "stable"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Precision and recall along a ranked list.

    Args:
        scores (ndarray[K], float): ranking score of each record (higher first).
        matches (ndarray[K], int): 1 true positive, 0 false positive, -1 ignored (neither;
            a match to a crowd region). Ignored records are dropped before accumulating.
        n_pos: number of positives (ground truth objects) the list is measured against.
        ties: ``"stable"``: tied scores keep the order given; ``"chainercv"``: ranked by
            ``np.argsort(scores)[::-1]`` in the scores' own dtype, as chainercv does.

    Returns:
        ``(precision, recall)``, each ndarray[K'] (float64) over the non-ignored records in
        rank order; ``recall`` is None when ``n_pos == 0`` (recall undefined). With
        ``ties="stable"`` the result does not depend on the sorting algorithm.
    """
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    matches = np.asarray(matches)
    if scores.shape != matches.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and matches {matches.shape} must be equal 1-D")
    if ties == "chainercv":
        order = np.argsort(scores)[::-1]
    elif ties == "stable":
        order = np.argsort(-scores, kind="stable")
    else:
        raise ValueError(f"ties must be 'stable' or 'chainercv', got {ties!r}")
    ranked = matches[order]
    ranked = ranked[ranked >= 0]
    tp = np.cumsum(ranked == 1)
    fp = np.cumsum(ranked == 0)
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / n_pos if n_pos > 0 else None
    return precision, recall


def voc_ap(precision: np.ndarray, recall: np.ndarray, use_07_metric: bool = False) -> float:
    """PASCAL VOC average precision of one precision/recall curve.

    Args:
        precision (ndarray[K]): precision at each rank (from :func:`precision_recall`).
        recall (ndarray[K]): recall at each rank, non-decreasing.
        use_07_metric: 11-point interpolated AP (VOC 2007) instead of the area under the
            monotone envelope (VOC 2010+, the default).

    Returns:
        AP in [0, 1]. An empty list (no predictions) gives 0.
    """
    precision = np.nan_to_num(np.asarray(precision, dtype=np.float64))
    recall = np.asarray(recall, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # recall levels 0, 0.1, ..., 1.0
            reached = recall >= t
            ap += (precision[reached].max() if reached.any() else 0.0) / 11
        return float(ap)
    # Sentinels: precision 0 before the first and after the last point, recall 0 and 1.
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mrec = np.concatenate(([0.0], recall, [1.0]))
    # The envelope: precision at recall r is the best precision at any recall >= r.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    # Sum (delta recall) x envelope over the points where recall changes.
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def ranked_ap(
    scores: np.ndarray, matches: np.ndarray, n_pos: int, use_07_metric: bool = False
) -> float | None:
    """AP of a ranked list, or None when there is nothing to find (``n_pos == 0``).

    Args:
        scores (ndarray[K]), matches (ndarray[K]), n_pos: as :func:`precision_recall`.
        use_07_metric: as :func:`voc_ap`.
    """
    precision, recall = precision_recall(scores, matches, n_pos)
    if recall is None:
        return None
    return voc_ap(precision, recall, use_07_metric)
