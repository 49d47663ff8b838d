"""Evaluation: every metric of the PRM paper (method.md §6) behind one protocol.

Each evaluator has ``reset()``, ``process(targets, predictions)`` (lists of per-image
dicts, ``docs/conventions.md``) and ``summarize() -> dict`` (flat, JSON-serialisable,
fractions in [0, 1], ``None`` where undefined). :func:`evaluate` runs several in one
pass::

    from prm.evaluation import build_evaluators, evaluate
    evaluators = build_evaluators(["instance", "coco"], dataset.classes, dataset.category_ids)
    metrics = evaluate(evaluators, zip(targets, predictions))

Definitions, and what happens to ignore pixels, crowds and empty images:
``docs/evaluation.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .ap import precision_recall, ranked_ap, voc_ap
from .base import Evaluator, EvaluatorList, evaluate, prediction_masks
from .classification import ClassificationEvaluator
from .coco import COCOEvaluator
from .instance import InstanceSegmentationEvaluator, match_instances
from .pointwise import PointwiseLocalizationEvaluator, point_on_object
from .prm_quality import PRMQualityEvaluator, prm_quality
from .report import format_table, plot_pr_curves, write_report
from .results import load_results, results_entries, save_results
from .semantic import SemanticSegmentationEvaluator, instances_to_label_map

__all__ = [
    "METRICS",
    "MASK_METRICS",
    "Evaluator",
    "EvaluatorList",
    "evaluate",
    "build_evaluators",
    "InstanceSegmentationEvaluator",
    "COCOEvaluator",
    "PointwiseLocalizationEvaluator",
    "ClassificationEvaluator",
    "SemanticSegmentationEvaluator",
    "PRMQualityEvaluator",
    "load_results",
    "save_results",
    "results_entries",
    "format_table",
    "plot_pr_curves",
    "write_report",
    "voc_ap",
    "precision_recall",
    "ranked_ap",
    "match_instances",
    "point_on_object",
    "prm_quality",
    "instances_to_label_map",
    "prediction_masks",
]

# Metric name (as `prm evaluate --metrics` takes it) -> evaluator class.
METRICS = {
    "instance": InstanceSegmentationEvaluator,
    "coco": COCOEvaluator,
    "semantic": SemanticSegmentationEvaluator,
    "pointwise": PointwiseLocalizationEvaluator,
    "classification": ClassificationEvaluator,
    "prm_quality": PRMQualityEvaluator,
}

# The metrics that need only instance masks, labels and scores: what a results file holds.
MASK_METRICS = ("instance", "coco", "semantic")


def build_evaluators(
    names: Sequence[str],
    classes: Sequence[str],
    category_ids: Sequence[int] | None = None,
    **options: dict,
) -> EvaluatorList:
    """Evaluators by name, ready for :func:`evaluate`.

    Args:
        names: metric names, keys of :data:`METRICS`.
        classes: class names (``dataset.classes``).
        category_ids: for ``"coco"``: COCO category id of each label
            (``dataset.category_ids``); default ``label + 1``.
        **options: per-metric keyword arguments, e.g.
            ``instance={"use_07_metric": True}``.

    Returns:
        An :class:`EvaluatorList`.
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or names}; choose from {sorted(METRICS)}")
    bad = [k for k in options if k not in names]
    if bad:
        raise ValueError(f"options given for metric(s) {bad} that are not selected ({names})")
    evaluators = []
    for name in dict.fromkeys(names):  # keep order, drop repeats
        kwargs = dict(options.get(name, {}))
        if name == "coco":
            kwargs.setdefault("category_ids", category_ids)
        evaluators.append(METRICS[name](classes, **kwargs))
    return EvaluatorList(evaluators)
