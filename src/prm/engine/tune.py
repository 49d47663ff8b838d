"""Tuning the retrieval hyper-parameters on validation data (docs/method.md §5).

The paper tunes ``(alpha, beta, tau)`` per class on validation images. Retrieval is cheap
next to peak back-propagation, so :func:`tune_retrieval` computes each image's peak
response maps and proposals once and scores every candidate setting on them, each with
its own streaming evaluator: memory stays flat whatever the number of images.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from prm.engine.inference import dataset_images
from prm.evaluation import InstanceSegmentationEvaluator
from prm.predictor import Predictor
from prm.retrieval import RetrievalConfig

__all__ = ["TuningResult", "tune_retrieval"]

_PER_CLASS = ("alpha", "beta", "tau")


@dataclass
class TuningResult:
    """What :func:`tune_retrieval` found.

    Attributes:
        best: the retrieval settings to use.
        metric: the metric maximised, e.g. ``instance/mAP_r@0.5``.
        value: the metric of the best shared setting on the tuning images (optimistic:
            chosen on them; with ``per_class`` the per-class choice is not re-scored).
        trials: one ``{"params": {...}, "value": float, "per_class": {name: AP}}`` per
            setting of the grid, in grid order.
    """

    best: RetrievalConfig
    metric: str
    value: float | None
    trials: list[dict[str, Any]] = field(default_factory=list)


def _threshold(metric: str) -> float:
    prefix = "instance/mAP_r@"
    if not metric.startswith(prefix):
        raise ValueError(f"metric must be instance/mAP_r@<IoU>, got {metric!r}")
    return float(metric[len(prefix) :])


def tune_retrieval(
    predictor: Predictor,
    dataset,
    grid: Mapping[str, Sequence[Any]],
    *,
    proposals: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
    metric: str = "instance/mAP_r@0.5",
    per_class: bool = False,
    limit: int | None = None,
    progress: bool = True,
) -> TuningResult:
    """Grid search of retrieval settings on a (validation) dataset.

    Args:
        predictor: the predictor to tune; its ``retrieval`` is the base that the grid
            changes (the predictor is not modified).
        dataset: a ``prm.data`` dataset with instance masks, without a transform.
        grid: ``RetrievalConfig`` field -> values to try, e.g.
            ``{"beta": [1e-5, 1e-4], "alpha": [0.5, 0.8]}`` (the Cartesian product).
        proposals: per-image proposal source (see
            :func:`prm.engine.inference.proposal_source`); ``None`` uses the predictor's
            ``proposal_fn``.
        metric: ``instance/mAP_r@<IoU>`` to maximise.
        per_class: then choose ``alpha``, ``beta`` and ``tau`` for each class separately,
            as the paper does: each class takes the setting of the grid with its best AP
            (the other fields stay those of the best shared setting). Classes interact
            only through class-agnostic NMS, so this is a close approximation.
        limit: use only the first ``limit`` images.
        progress: show a progress bar.

    Returns:
        A :class:`TuningResult`.
    """
    unknown = sorted(set(grid) - {f for f in RetrievalConfig.__dataclass_fields__})
    if unknown:
        raise ValueError(f"unknown retrieval settings in the grid: {unknown}")
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise ValueError("the grid needs at least one value for each setting")
    threshold = _threshold(metric)
    names = list(grid)
    settings = [dict(zip(names, values)) for values in itertools.product(*grid.values())]
    configs = [replace(predictor.retrieval, **s) for s in settings]
    classes = list(dataset.classes)
    for config in configs:
        config.validate(len(classes))
    evaluators = [
        InstanceSegmentationEvaluator(classes, iou_thresholds=[threshold]) for _ in configs
    ]

    for index, image, target, props in dataset_images(
        dataset, proposals, limit, progress=progress, desc="tune retrieval"
    ):
        response, props = predictor.respond(image, props, index)
        for config, evaluator in zip(configs, evaluators):
            evaluator.process([target], [predictor.retrieve(response, props, config)])

    key = f"instance/mAP_r@{threshold:g}"
    trials = []
    for params, evaluator in zip(settings, evaluators):
        summary = evaluator.summarize()
        per_class_ap = {c: summary.get(f"instance/AP_r@{threshold:g}/{c}") for c in classes}
        trials.append({"params": params, "value": summary[key], "per_class": per_class_ap})
    values = [t["value"] if t["value"] is not None else -1.0 for t in trials]
    best_index = max(range(len(trials)), key=values.__getitem__)  # first best wins
    best = configs[best_index]
    if per_class:
        chosen = {name: [] for name in _PER_CLASS}
        for c in classes:
            aps = [t["per_class"][c] if t["per_class"][c] is not None else -1.0 for t in trials]
            # Ties (and classes without ground truth) keep the best shared setting.
            pick = best_index if aps[best_index] >= max(aps) else aps.index(max(aps))
            for name in _PER_CLASS:
                value = getattr(configs[pick], name)
                chosen[name].append(value[classes.index(c)] if isinstance(value, list) else value)
        best = replace(best, **chosen)
    return TuningResult(best=best, metric=key, value=trials[best_index]["value"], trials=trials)
