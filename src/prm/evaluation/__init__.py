"""Evaluation: every metric of the PRM paper (docs/method.md §6) behind one protocol.

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

from .ap import precision_recall, ranked_ap, voc_ap
from .base import Evaluator, EvaluatorList, evaluate, prediction_masks
from .classification import ClassificationEvaluator
from .coco import COCOEvaluator
from .instance import InstanceSegmentationEvaluator, match_instances
from .pointwise import PointwiseLocalizationEvaluator, point_on_object
from .prm_quality import PRMQualityEvaluator, prm_quality
from .report import format_table, plot_pr_curves, write_report
from .results import load_results, results_entries, save_results
from .run import MASK_METRICS, METRICS, build_evaluators, run_evaluation
from .semantic import SemanticSegmentationEvaluator, instances_to_label_map

__all__ = [
    "METRICS",
    "MASK_METRICS",
    "Evaluator",
    "EvaluatorList",
    "evaluate",
    "build_evaluators",
    "run_evaluation",
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
