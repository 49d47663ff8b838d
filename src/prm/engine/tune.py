"""Tuning what decides the predictions on validation data (docs/method.md §5).

The paper tunes ``(alpha, beta, tau)`` per class on validation images. Retrieval is cheap
next to peak back-propagation, so :func:`tune_retrieval` computes each image's peak
response maps and proposals once and scores every candidate setting on them, each with
its own streaming evaluator: memory stays flat whatever the number of images. The sums
behind the retrieval scores (:class:`~prm.retrieval.RetrievalTerms`) are taken once per
image and set of kept peaks, not once per setting: ``alpha`` and ``beta`` only weigh
them, and the taus of a grid share one pass over the proposals. Settings that differ only
in thresholds that keep the same peaks of an image predict the same instances there,
which are retrieved and scored once; so are settings that choose the same proposal for
every peak with the same order of retrieval scores (all that NMS reads).

Besides the :class:`~prm.retrieval.RetrievalConfig` fields (``alpha``, ``beta``,
``tau``, ``proposal_count``, ``nms_threshold``, ...), the grid may hold the
:class:`~prm.backprop.PeakSelection` fields ``class_threshold`` and ``peak_threshold`` (in
the predictor's ``peak_threshold_mode``):
the maps are then computed once with the loosest values, and each setting keeps the
peaks its thresholds pass (a peak's map does not depend on the other peaks, so this is
what predicting with those thresholds gives; a test checks it). It may also hold
``smooth_strided`` (``[False, True]``): the back-propagation rule of the predictor's
peaks (the paper's, or smoothed through strided convolutions); the maps are then made
once per rule.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from prm.backprop import PeakSelection, select_peaks
from prm.engine.inference import dataset_images
from prm.evaluation import InstanceSegmentationEvaluator
from prm.predictor import Predictor, scale_back
from prm.proposals.compact import CompactProposals
from prm.retrieval import (
    RetrievalConfig,
    RetrievalTerms,
    _best_proposals,
    choose_instances,
    retrieval_terms_by_tau,
)

__all__ = [
    "PREDICTOR_SETTINGS",
    "RULE",
    "TuningResult",
    "filter_response",
    "retrieve_filtered",
    "tune_retrieval",
]

_PER_CLASS = ("alpha", "beta", "tau")
#: PeakSelection fields a grid may tune next to the RetrievalConfig fields.
PREDICTOR_SETTINGS = ("class_threshold", "peak_threshold")
#: The predictor's back-propagation rule, which a grid may also tune (bools).
RULE = "smooth_strided"


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
        peak_selection: the peak selection of the best setting (the predictor's own
            when the grid holds no threshold).
        warnings: what :func:`tune_retrieval` warned about.
        smooth_strided: the back-propagation rule of the best setting (the predictor's
            own when the grid does not hold ``smooth_strided``).
    """

    best: RetrievalConfig
    metric: str
    value: float | None
    trials: list[dict[str, Any]] = field(default_factory=list)
    peak_selection: PeakSelection = field(default_factory=PeakSelection)
    warnings: list[str] = field(default_factory=list)
    smooth_strided: bool = False

    def apply(self, predictor: Predictor) -> Predictor:
        """Give ``predictor`` what was chosen: its ``retrieval``, ``peak_selection`` and
        back-propagation rule (``smooth_strided``). Returns the predictor."""
        predictor.retrieval, predictor.peak_selection = self.best, self.peak_selection
        predictor.smooth_strided = self.smooth_strided
        return predictor


def filter_response(
    response: dict[str, torch.Tensor], selection: PeakSelection
) -> dict[str, torch.Tensor]:
    """The part of a :meth:`~prm.predictor.Predictor.respond` result that a stricter
    peak selection keeps (the same rule as :func:`prm.backprop.select_peaks`).

    Args:
        response: ``peak_cells`` (K, 3) ``(c, y, x)``, ``labels`` (K,), ``peak_values``
            (K,), ``prms`` (K, H, W), ``class_scores`` (C,), ``crm`` (C, h, w).
        selection: the thresholds, no looser than those ``response`` was made with.

    Returns:
        the same dict with only the kept peaks (class scores and CRMs unchanged).
    """
    return _with_peaks(response, _kept_peaks(response, selection))


def _kept_peaks(response: dict[str, torch.Tensor], selection: PeakSelection) -> torch.Tensor:
    """``(K,)`` bool: the peaks of ``response`` that ``selection`` keeps."""
    cells = response["peak_cells"]
    with_batch = torch.cat([cells.new_zeros((len(cells), 1)), cells], 1)
    return select_peaks(
        response["crm"][None], with_batch, response["class_scores"][None], selection
    )


def _with_peaks(response: dict[str, torch.Tensor], keep: torch.Tensor) -> dict:
    out = dict(response)
    out.pop("image_prms", None)  # the fallback's: made again from the kept peaks' maps
    for key in ("peak_cells", "labels", "peak_values", "prms"):
        out[key] = response[key][keep]
    return out


def retrieve_filtered(
    predictor: Predictor,
    response: dict[str, torch.Tensor],
    proposals: torch.Tensor,
    selection: PeakSelection,
    retrieval: RetrievalConfig | None = None,
    image: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Predict from a loose response as ``predictor`` would with a stricter ``selection``.

    Args:
        predictor: supplies the retrieval.
        response, proposals: from ``respond`` with a selection no stricter than this one.
        selection: the peak selection to predict with.
        retrieval: settings to use instead of the predictor's own.
        image: the ``(3, H, W)`` image when the proposals came from a proposal-free
            fallback (``proposal_fn`` ``"prm"`` or ``"grabcut"``), which builds them from
            the kept peaks' maps: they are rebuilt from the peaks kept here.

    Returns:
        the prediction dict of :meth:`~prm.predictor.Predictor.retrieve`.
    """
    part = filter_response(response, selection)
    if image is not None:
        proposals = predictor._fallback_proposals(part, image)
    return predictor.retrieve(part, proposals, retrieval)


def _loosest(predictor: Predictor, selections: list[PeakSelection]) -> Predictor:
    """A copy of ``predictor`` with the grid's loosest thresholds: one back-propagation
    per image then serves every setting."""
    loose = copy.copy(predictor)
    values = {n: [getattr(s, n) for s in selections] for n in PREDICTOR_SETTINGS}
    loosest = {n: None if None in v else min(v) for n, v in values.items()}
    loose.peak_selection = replace(predictor.peak_selection, **loosest)
    return loose


def _grid_warnings(grid: Mapping[str, Sequence[Any]], best: dict[str, Any], values) -> list[str]:
    """Warnings a user should see: nothing scored, or a best value on the grid's edge."""
    found = []
    if all(v is None or v == 0 for v in values):
        found.append(
            "every setting scored 0: no prediction matched the ground truth (has the "
            "network learned? do the thresholds drop every peak?); the choice is arbitrary"
        )
        return found
    for name, options in grid.items():
        numbers = [v for v in options if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) < 2 or best.get(name) not in numbers:
            continue
        if best[name] == min(numbers) or best[name] == max(numbers):
            side = "smallest" if best[name] == min(numbers) else "largest"
            found.append(
                f"the best {name} = {best[name]:g} is the {side} value tried: the optimum "
                "may lie beyond the grid; extend it on that side"
            )
    return found


def _terms_settings(config: RetrievalConfig) -> tuple:
    """The settings that :class:`~prm.retrieval.RetrievalTerms` depend on, hashable."""
    tau = tuple(config.tau) if isinstance(config.tau, (list, tuple)) else config.tau
    return tau, config.contour_width, config.proposal_count


def _taus_alike(configs, peak_keys, peaks: tuple, config: RetrievalConfig) -> dict:
    """``{terms key: config}``, one config per tau among the settings that keep the
    peaks ``peaks`` and share ``config``'s contour width and proposal count."""
    alike = {}
    for other, other_peaks in zip(configs, peak_keys):
        key = (other_peaks, *_terms_settings(other))
        if other_peaks == peaks and key[2:] == _terms_settings(config)[1:]:
            alike.setdefault(key, other)
    return alike


def _choice(terms: RetrievalTerms, labels: torch.Tensor, config: RetrievalConfig, score: str):
    """What a retrieval with ``config`` decides, hashable: the proposal each peak chooses
    and the order of the peaks' retrieval scores, which is all that non-maximum
    suppression reads besides the proposals, labels and NMS settings. The scores
    themselves only when they are the instances' reported scores (``score="retrieval"``).
    """
    best_score, best = _best_proposals(terms, labels, config)
    found = torch.isfinite(best_score)
    order = torch.sort(best_score[found], descending=True, stable=True).indices
    decided = (
        tuple(found.tolist()),
        tuple(best[found].tolist()),
        tuple(order.tolist()),
        config.nms_threshold,
        config.nms_class_agnostic,
    )
    if score == "retrieval":
        decided = (*decided, tuple(best_score[found].tolist()))
    return decided, (best_score, best)


class _PairIoUs:
    """The IoUs among one image's proposals at the network size (NMS reads them), made
    once for every setting: all pairs in one product (``all_iou``), equal to the bit to
    what ``candidates.iou(index)`` computes for a few (both divide exact pixel counts)."""

    def __init__(self):
        self.iou = None

    def __call__(self, candidates, index: list[int]) -> torch.Tensor:
        if self.iou is None or len(self.iou) < len(candidates):
            self.iou = candidates.all_iou()  # a grid's largest proposal_count first read
        rows = torch.tensor(index, dtype=torch.long)
        return self.iou[rows[:, None], rows[None, :]]


def _record_of_choice(scorer: Predictor, part: dict, terms, config, best, table, pair_iou):
    """The image record of ``scorer.retrieve(part, proposals, config, terms)``, made from
    the proposals' indices (``table``: a :class:`~prm.evaluation.instance.CandidateRecords`
    of the proposals) instead of the instances' masks; equal to the bit (a test checks)."""
    kept = choose_instances(terms, part["labels"], config, best, pair_iou)
    if kept is None:
        none = torch.zeros(0, dtype=torch.long)
        return table.record(none, none, torch.zeros(0))
    found, best_score, order, _, chosen = kept
    labels = part["labels"][found].cpu()[order].long()
    peak_index = found.nonzero()[:, 0][order]
    scores, rank = scorer.instance_scores(part, peak_index, labels, best_score[order].float())
    return table.record(chosen[rank], labels[rank], scores[rank].float())


def _first_masks(proposals, count: int) -> torch.Tensor:
    """The first ``count`` proposals as dense masks ``(count, H, W)`` bool."""
    if isinstance(proposals, CompactProposals):
        return proposals.select(slice(0, min(count, len(proposals)))).masks()
    return proposals[:count].bool()


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
        grid: ``RetrievalConfig`` field, ``class_threshold``, ``peak_threshold`` or
            ``smooth_strided`` -> values to try, e.g. ``{"beta": [1e-5, 1e-4],
            "peak_threshold": [0, 0.5], "smooth_strided": [False, True]}`` (the
            Cartesian product).
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
        A :class:`TuningResult`; its ``peak_selection`` holds the chosen thresholds and
        ``smooth_strided`` the rule, and ``result.apply(predictor)`` sets all three. It
        warns (and lists in ``warnings``) when every setting scores 0, and when a numeric
        setting's best value is the smallest or largest of its grid.
    """
    threshold = _threshold(metric)
    classes = list(dataset.classes)
    settings, selections, configs = _grid(predictor, grid, len(classes))
    rules = [setting.get(RULE, predictor.smooth_strided) for setting in settings]
    evaluators = [
        InstanceSegmentationEvaluator(classes, iou_thresholds=[threshold]) for _ in configs
    ]
    loose = _loosest(predictor, selections)
    # One back-propagation per image and rule serves every setting with that rule.
    by_rule = {rule: copy.copy(loose) for rule in dict.fromkeys(rules)}
    for rule, responder in by_rule.items():
        responder.smooth_strided = rule
    # The metric reads masks, labels and scores: the instances' PRMs are not made.
    scorer = copy.copy(predictor)
    scorer.keep_prms = False
    same_settings = [repr(config) for config in configs]  # hashable, made once
    most = max(config.proposal_count for config in configs)

    for index, image, target, props in dataset_images(
        dataset, proposals, limit, progress=progress, desc="tune retrieval"
    ):
        fallback = props is None and isinstance(predictor.proposal_fn, str)
        # Oversized images are tuned at the predictor's working size, as they are predicted.
        image, props, size, work = loose.working_inputs(image, props, index)
        responses = {}
        for rule, responder in by_rule.items():
            responses[rule], made = responder.respond(image, props, index)
            if not fallback:
                props = made  # a proposal generator runs once, not once per rule
        # Settings whose thresholds keep the same peaks of this image (with the same
        # rule) share their filtered response and the fallback's proposals (made from
        # those peaks' maps; alpha, beta and the rest do not change them): the grid of a
        # proposal-free predictor then costs one set of proposals per set of peaks.
        peaks_of = {}
        for kept, rule in zip(selections, rules):
            if (rule, kept) not in peaks_of:
                keep = _kept_peaks(responses[rule], kept)
                peaks_of[rule, kept] = (rule, *keep.nonzero().flatten().tolist()), keep
        peak_keys = [peaks_of[rule, kept][0] for kept, rule in zip(selections, rules)]
        parts: dict[tuple, tuple] = {}
        # The sums behind the scores depend on the peaks, the proposals and tau /
        # contour_width / proposal_count only: made once per image for each of those,
        # each alpha / beta / NMS setting is then a weighted sum and an arg-max.
        made_terms: dict[tuple, RetrievalTerms] = {}
        # Settings that differ only in thresholds that keep the same peaks predict the
        # same instances: scored once.
        records: dict[tuple, tuple] = {}
        tables: dict[int, tuple] = {}  # per set of proposals (one, or one per set of peaks)
        rows = zip(configs, peak_keys, evaluators, selections, same_settings, rules)
        for config, peaks, evaluator, kept, setting, rule in rows:
            same = (peaks, setting)
            if same in records:
                evaluator.add_record(records[same])
                continue
            if peaks not in parts:
                part = _with_peaks(responses[rule], peaks_of[rule, kept][1])
                made = scorer._fallback_proposals(part, image) if fallback else props
                parts[peaks] = part, made
            part, made = parts[peaks]
            key = (peaks, *_terms_settings(config))
            if key not in made_terms:
                # Every tau of the grid with these peaks, contour width and proposal
                # count in one pass over the proposals.
                taus = _taus_alike(configs, peak_keys, peaks, config)
                shared = retrieval_terms_by_tau(
                    part["prms"], part["labels"], part["crm"], made, list(taus.values())
                )
                made_terms.update(zip(taus, shared))
            # Settings that choose the same proposals in the same order predict the same
            # instances: most of a grid's alpha / beta / tau settings do.
            decided, best = _choice(made_terms[key], part["labels"], config, scorer.score)
            outcome = (peaks, decided)
            if outcome in records:
                records[same] = records[outcome]
                evaluator.add_record(records[same])
                continue
            if work == size:
                # The instances' masks are proposals: their IoUs with the ground truth
                # and with each other are computed once per image, not per setting.
                if id(made) not in tables:
                    tables[id(made)] = (
                        evaluator.candidate_records(target, _first_masks(made, most)),
                        _PairIoUs(),
                    )
                table, pair_iou = tables[id(made)]
                record = _record_of_choice(
                    scorer, part, made_terms[key], config, best, table, pair_iou
                )
            else:
                found = scorer.retrieve(dict(part), made, config, terms=made_terms[key])
                found = scale_back(found, size, work)
                evaluator._check_keys(target, found)
                record = evaluator.image_record(target, found)
            records[same] = records[outcome] = record
            evaluator.add_record(records[same])

    key, trials = _trials(settings, evaluators, classes, threshold)
    values = [t["value"] if t["value"] is not None else -1.0 for t in trials]
    best_index = max(range(len(trials)), key=values.__getitem__)  # first best wins
    best = configs[best_index]
    if per_class:
        best = replace(best, **_per_class_choice(trials, configs, classes, best_index))
    found = _grid_warnings(grid, settings[best_index], [t["value"] for t in trials])
    for message in found:
        warnings.warn(message, stacklevel=2)
    return TuningResult(
        best=best,
        metric=key,
        value=trials[best_index]["value"],
        trials=trials,
        peak_selection=selections[best_index],
        warnings=found,
        smooth_strided=rules[best_index],
    )


def _grid(predictor: Predictor, grid: Mapping[str, Sequence[Any]], num_classes: int):
    """The grid's settings (dicts), with the peak selection and the validated retrieval
    settings of each, in grid order."""
    known = {f for f in RetrievalConfig.__dataclass_fields__} | {*PREDICTOR_SETTINGS, RULE}
    unknown = sorted(set(grid) - known)
    if unknown:
        raise ValueError(f"unknown retrieval settings in the grid: {unknown}")
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise ValueError("the grid needs at least one value for each setting")
    if any(not isinstance(v, bool) for v in grid.get(RULE, [])):
        raise ValueError(f"{RULE} takes True or False, got {list(grid[RULE])}")
    if RULE in grid and predictor.response != "prm":
        raise ValueError(f"{RULE} is a rule of back-propagation: a CAM predictor has none")
    settings = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    peaks = [{k: v for k, v in s.items() if k in PREDICTOR_SETTINGS} for s in settings]
    selections = [replace(predictor.peak_selection, **p) for p in peaks]
    configs = [
        replace(predictor.retrieval, **{k: v for k, v in s.items() if k not in (*peaks[i], RULE)})
        for i, s in enumerate(settings)
    ]
    for config in configs:
        config.validate(num_classes)
    return settings, selections, configs


def _trials(settings, evaluators, classes, threshold: float) -> tuple[str, list[dict]]:
    """The metric's key and one trial (params, value, AP per class) per setting."""
    key = f"instance/mAP_r@{threshold:g}"
    trials = []
    for params, evaluator in zip(settings, evaluators):
        summary = evaluator.summarize()
        per_class_ap = {c: summary.get(f"instance/AP_r@{threshold:g}/{c}") for c in classes}
        trials.append({"params": params, "value": summary[key], "per_class": per_class_ap})
    return key, trials


def _per_class_choice(trials, configs, classes, best_index: int) -> dict[str, list]:
    """``alpha``, ``beta`` and ``tau`` per class: each class's best setting of the grid."""
    chosen = {name: [] for name in _PER_CLASS}
    for c in classes:
        aps = [t["per_class"][c] if t["per_class"][c] is not None else -1.0 for t in trials]
        # Ties (and classes without ground truth) keep the best shared setting.
        pick = best_index if aps[best_index] >= max(aps) else aps.index(max(aps))
        for name in _PER_CLASS:
            value = getattr(configs[pick], name)
            chosen[name].append(value[classes.index(c)] if isinstance(value, list) else value)
    return chosen
