"""Choosing evaluators by name and running them: the code ``prm evaluate``, ``prm predict
--evaluate`` and ``prm demo`` share."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .base import EvaluatorList, evaluate
from .classification import ClassificationEvaluator
from .coco import COCOEvaluator
from .instance import InstanceSegmentationEvaluator
from .pointwise import PointwiseLocalizationEvaluator
from .prm_quality import PRMQualityEvaluator
from .report import format_table, write_report
from .semantic import SemanticSegmentationEvaluator

__all__ = ["METRICS", "MASK_METRICS", "build_evaluators", "run_evaluation"]

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
    **options: Mapping,
) -> EvaluatorList:
    """Evaluators by name, ready for :func:`prm.evaluation.evaluate`.

    Args:
        names: metric names, keys of :data:`METRICS`.
        classes: class names (``dataset.classes``).
        category_ids: for ``"coco"``: COCO category id of each label
            (``dataset.category_ids``); default ``label + 1``.
        **options: keyword arguments per metric, e.g. ``instance={"use_07_metric": True}``.

    Returns:
        An :class:`EvaluatorList`.
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or names}; choose from {sorted(METRICS)}")
    stray = [k for k in options if k not in names]
    if stray:
        raise ValueError(f"options given for metric(s) {stray} that are not selected {list(names)}")
    evaluators = []
    for name in dict.fromkeys(names):  # keep the order, drop repeats
        kwargs = dict(options.get(name, {}))
        if name == "coco":
            kwargs.setdefault("category_ids", category_ids)
        evaluators.append(METRICS[name](classes, **kwargs))
    return EvaluatorList(evaluators)


def run_evaluation(
    pairs: Iterable[tuple[Mapping, Mapping]],
    classes: Sequence[str],
    category_ids: Sequence[int] | None = None,
    metrics: Sequence[str] = MASK_METRICS,
    out_dir: str | os.PathLike | None = None,
    progress: bool = False,
    print_table: bool = True,
    **options: Mapping,
) -> dict:
    """Evaluate ``(target, prediction)`` pairs in one pass, print and optionally save.

    Args:
        pairs: one ``(target, prediction)`` per image (a generator is fine).
        classes, category_ids, metrics, **options: as :func:`build_evaluators`.
        out_dir: if given, ``metrics.json``, ``table.txt`` and (with ``"instance"``) one
            precision-recall PNG per IoU threshold are written there.
        progress: show a progress bar.
        print_table: print :func:`format_table` to stdout.

    Returns:
        The flat metrics dict.
    """
    evaluators = build_evaluators(metrics, classes, category_ids, **options)
    results = evaluate(evaluators, pairs, progress=progress)
    table = format_table(results, classes)
    if print_table:
        print(table)
    if out_dir is not None:
        curves = None
        for evaluator in evaluators.evaluators:
            if isinstance(evaluator, InstanceSegmentationEvaluator):
                curves = evaluator.curves()
        write_report(out_dir, results, curves)
        (Path(out_dir) / "table.txt").write_text(table + "\n")
    return results
