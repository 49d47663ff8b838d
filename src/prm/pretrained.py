"""PRM on real photos with no training: an ImageNet classifier, class groups, tamed peaks.

    from prm.pretrained import pretrained_model, pretrained_predictor
    model = pretrained_model()                    # Lite0 ImageNet weights + the VOC map
    predictor = pretrained_predictor(model)       # selective-search proposals
    instances = predictor([photo])[0]             # masks, labels, scores, peaks, PRMs

An off-the-shelf classifier was not trained with peak stimulation, so its class response
maps have many small local maxima and logits whose scale varies from photo to photo. The
zero-training defaults (:data:`DEFAULTS`) tame them, and were chosen by measurement on
real photos with instance masks (``benchmarks/real_photos.py``, README "Real photos"):

- class scores are in log-probability units (see
  :class:`~prm.class_groups.GroupedResponseNet`), and a class is kept when its score is
  at least ``log(class_probability)``;
- a peak must reach ``peak_threshold`` of its map's range (relative to the photo's own
  responses, :func:`prm.backprop.select_peaks`);
- peaks of one object are merged (:func:`merge_peaks`): a peak joined to a stronger peak
  of its class by a ridge that never drops below ``merge`` of its height is the same
  object, and is dropped before back-propagation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from prm.class_groups import ClassGroups, GroupedResponseNet, load_class_groups
from prm.peaks import find_peaks
from prm.predictor import Predictor
from prm.validation import check_number

__all__ = [
    "DEFAULTS",
    "PretrainedPredictor",
    "PretrainedSettings",
    "blur_maps",
    "merge_peaks",
    "pretrained_model",
    "pretrained_predictor",
    "prm_overlap_duplicates",
]


@dataclass(frozen=True)
class PretrainedSettings:
    """Settings of a zero-training PRM model (see the module docstring).

    Attributes:
        input_size: network input side in pixels (photos are resized to a square).
        class_probability: a class is kept when its score (a log-probability) is at least
            ``log`` of this.
        class_relative: a class is kept only when it is at least this fraction as likely
            as the photo's most likely class (of the map); ``None``: no such test.
        peak_threshold: relative peak threshold in ``[0, 1]`` of the map's range.
        win_size: odd peak window in CRM cells.
        peak_filter: the peak filter (see :func:`prm.peaks.find_peaks`).
        merge: ridge ratio of :func:`merge_peaks`; ``None`` keeps every peak.
        merge_overlap: after back-propagation, drop a peak whose PRM shares at least this
            much mass with a stronger peak's of its class (:func:`prm_overlap_duplicates`);
            ``None``: no such merging.
        smooth_strided: back-propagate with the smoothed rule for strided convolutions
            (:func:`prm.backprop.peak_backprop_rule`), against the checkerboard.
        prm_blur: Gaussian blur of each PRM, sigma in input pixels (:func:`blur_maps`).
        segmenter: the selective search's Felzenszwalb implementation (``"skimage"`` or
            ``"opencv"``, :class:`prm.proposals.SelectiveSearch`).
        max_side: selective search segments a copy of the photo resized to this longer
            side (masks still come back at the photo's size); ``None``: the photo's own
            resolution.
        alpha, beta, proposal_count: retrieval settings (:class:`prm.retrieval.RetrievalConfig`).
    """

    # Chosen on real photos with instance masks (README "Real photos",
    # benchmarks/real_photos.py): 320 px on the COCO fixture (at 448 Lite0, trained at
    # 224, found almost nothing). Of the 14 photos' two halves, class_probability 0.02,
    # smooth_strided and proposal_count 300 were better on one and no worse on the other;
    # every other lever stayed as it was.
    input_size: int = 320
    class_probability: float = 0.02
    class_relative: float | None = None
    peak_threshold: float = 0.5
    win_size: int = 3
    peak_filter: Any = "median"
    merge: float | None = 0.4
    merge_overlap: float | None = None
    smooth_strided: bool = True
    prm_blur: float = 0.0
    segmenter: str = "skimage"
    max_side: int | None = None
    alpha: float = 0.8
    beta: float = 1e-5
    proposal_count: int = 300

    def __post_init__(self) -> None:
        check_number("input_size", self.input_size, minimum=1, integer=True)
        if not 0.0 < self.class_probability <= 1.0:
            raise ValueError(f"class_probability must lie in (0, 1], got {self.class_probability}")
        if self.class_relative is not None and not 0.0 < self.class_relative <= 1.0:
            raise ValueError(f"class_relative must lie in (0, 1], got {self.class_relative}")
        if not 0.0 <= self.peak_threshold <= 1.0:
            raise ValueError(f"peak_threshold must lie in [0, 1], got {self.peak_threshold}")
        for name in ("merge", "merge_overlap"):
            value = getattr(self, name)
            if value is not None:
                check_number(name, value, minimum=0, maximum=1)
        for name in ("prm_blur", "alpha", "beta"):
            check_number(name, getattr(self, name), minimum=0)
        check_number("proposal_count", self.proposal_count, minimum=1, integer=True)
        if self.max_side is not None:
            check_number("max_side", self.max_side, minimum=8, integer=True)
        if self.segmenter not in ("skimage", "opencv"):
            raise ValueError(f"segmenter must be 'skimage' or 'opencv', got {self.segmenter!r}")


#: The defaults of :func:`pretrained_model`, :func:`pretrained_predictor` and ``prm explain``.
DEFAULTS = PretrainedSettings()


def _line(y0: int, x0: int, y1: int, x1: int) -> tuple[torch.Tensor, torch.Tensor]:
    steps = max(abs(y1 - y0), abs(x1 - x0)) + 1
    t = torch.linspace(0.0, 1.0, steps)
    return (y0 + t * (y1 - y0)).round().long(), (x0 + t * (x1 - x0)).round().long()


def merge_peaks(crm: torch.Tensor, peaks: torch.Tensor, ratio: float) -> torch.Tensor:
    """Which peaks stay when peaks of one object are merged.

    Within each (image, class) map, peaks are visited from the highest down; a peak is
    dropped when, for some stronger peak already kept, the map along the straight line
    between them never falls below ``ratio`` of the weaker peak's height (heights
    measured from the map's minimum). Two objects are separated by a valley; two local
    maxima of one object are joined by a ridge.

    Args:
        crm (Tensor[B, C, h, w]): class response maps.
        peaks (Tensor[K, 4]): ``(b, c, y, x)`` rows.
        ratio: in ``[0, 1]``; 1 merges only peaks joined by a ridge at full height.

    Returns:
        Tensor[K] (bool): the peaks to keep (the strongest of each map is always kept).
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"merge ratio must lie in [0, 1], got {ratio}")
    keep = torch.ones(len(peaks), dtype=torch.bool)
    if len(peaks) < 2:
        return keep
    values = crm[peaks[:, 0], peaks[:, 1], peaks[:, 2], peaks[:, 3]]
    lows = crm.flatten(2).amin(2)
    for key in torch.unique(peaks[:, :2], dim=0).tolist():
        b, c = key
        index = torch.nonzero((peaks[:, 0] == b) & (peaks[:, 1] == c)).flatten()
        index = index[torch.argsort(values[index], descending=True, stable=True)]
        low = lows[b, c]
        kept: list[int] = []
        for i in index.tolist():
            y, x = peaks[i, 2:].tolist()
            lines = (_line(y, x, *peaks[j, 2:].tolist()) for j in kept)
            if any(crm[b, c, ys, xs].min() - low >= ratio * (values[i] - low) for ys, xs in lines):
                keep[i] = False
            else:
                kept.append(i)
    return keep


class _MergingGroupedNet(GroupedResponseNet):
    """:class:`GroupedResponseNet` whose peaks of one object are merged, and whose
    peaks of classes much less likely than the photo's best one are dropped."""

    def __init__(self, *args, merge=None, class_relative=None, smooth_strided=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.merge, self.class_relative, self.smooth_strided = merge, class_relative, smooth_strided

    @torch.no_grad()
    def find_peaks(self, crm: torch.Tensor) -> torch.Tensor:
        peaks = find_peaks(crm, self.win_size, self.peak_filter)
        if self.class_relative is not None and len(peaks):
            scores = self.aggregate(crm)
            best = scores.amax(1)
            b, c = peaks[:, 0], peaks[:, 1]
            peaks = peaks[scores[b, c] >= best[b] + math.log(self.class_relative)]
        if self.merge is None:
            return peaks
        return peaks[merge_peaks(crm, peaks, self.merge)]


def pretrained_model(
    classes: str | ClassGroups = "voc",
    *,
    arch: str = "efficientnet_lite0",
    weights: Any = "lite0",
    settings: PretrainedSettings = DEFAULTS,
) -> GroupedResponseNet:
    """An ImageNet classifier as a zero-training PRM model over class groups.

    Args:
        classes: a built-in map (``"voc"``, ``"coco"``), the path of a YAML map, or
            :class:`~prm.class_groups.ClassGroups` (see :mod:`prm.class_groups`).
        arch: a timm model with a pooling + linear head (``efficientnet_lite0``).
        weights: ``"lite0"`` (from the ``lite0`` extra, no download), ``"timm"`` (timm's
            hub weights: a download) or the path of a timm state dict.
        settings: peak settings (``win_size``, ``peak_filter``, ``merge``,
            ``class_relative``, ``smooth_strided``).

    Returns:
        A :class:`~prm.class_groups.GroupedResponseNet` in eval mode whose class scores
        are log-probabilities; ``class_names`` are the groups'.
    """
    from prm.classifier import _timm_classifier, from_classifier

    classifier = _timm_classifier(arch.removeprefix("timm:"), weights).eval()
    base = from_classifier(classifier)
    groups = classes if isinstance(classes, ClassGroups) else load_class_groups(classes)
    keys = ("win_size", "peak_filter", "merge", "class_relative", "smooth_strided")
    return _MergingGroupedNet(base, groups, **{k: getattr(settings, k) for k in keys}).eval()


class PretrainedPredictor(Predictor):
    """A :class:`~prm.predictor.Predictor` whose PRMs are blurred and de-duplicated.

    Between back-propagation and retrieval (and before the proposal-free fallback reads
    them) each PRM is blurred (:func:`blur_maps`) and peaks whose PRMs repeat a stronger
    peak's of their class are dropped (:func:`prm_overlap_duplicates`).

    Args:
        prm_blur: blur sigma in input pixels (0: none).
        merge_overlap: shared-mass ratio (``None``: none).
        **kwargs: :class:`~prm.predictor.Predictor`'s.
    """

    def __init__(self, model, *, prm_blur: float = 0.0, merge_overlap=None, **kwargs):
        super().__init__(model, **kwargs)
        self.prm_blur = prm_blur
        self.merge_overlap = merge_overlap

    def refine_response(self, response: dict) -> dict:
        if self.response == "prm" and self.prm_blur:
            response = dict(response, prms=blur_maps(response["prms"], self.prm_blur))
        if self.merge_overlap is not None and len(response["labels"]) > 1:
            drop = prm_overlap_duplicates(
                response["prms"], response["labels"], response["peak_values"], self.merge_overlap
            )
            keys = ("peak_cells", "labels", "peak_values", "prms")
            response = {k: v[~drop] if k in keys else v for k, v in response.items()}
        return response


def pretrained_predictor(
    model: GroupedResponseNet | None = None,
    *,
    settings: PretrainedSettings = DEFAULTS,
    proposal_fn: Any = "selective-search",
    **kwargs: Any,
) -> PretrainedPredictor:
    """A predictor with the zero-training thresholds, PRM refinements and retrieval.

    Args:
        model: from :func:`pretrained_model` (built with the defaults when omitted).
        settings: thresholds, input size, refinements, segmenter and retrieval.
        proposal_fn: ``"selective-search"`` (:class:`prm.proposals.SelectiveSearch`
            with ``settings.segmenter`` and ``settings.max_side``), ``"prm"`` (the
            proposal-free fallback), ``"grabcut"``, or a callable.
        **kwargs: other :class:`~prm.predictor.Predictor` arguments (``response="crm"``
            for the CAM baseline, ``retrieval`` to replace the settings', ``score``, ...).
    """
    from prm.backprop import PeakSelection
    from prm.retrieval import RetrievalConfig

    if model is None:
        model = pretrained_model(settings=settings)
    if proposal_fn == "selective-search":
        from prm.proposals import SelectiveSearch

        proposal_fn = SelectiveSearch(segmenter=settings.segmenter, max_side=settings.max_side)
    # The converted classifier scores by average pooling (peak_stimulation=False), which
    # would make Predictor default to the CAM baseline: PRMs are what this is for.
    kwargs.setdefault("response", "prm")
    kwargs.setdefault(
        "retrieval",
        RetrievalConfig(
            alpha=settings.alpha, beta=settings.beta, proposal_count=settings.proposal_count
        ),
    )
    return PretrainedPredictor(
        model,
        prm_blur=settings.prm_blur,
        merge_overlap=settings.merge_overlap,
        input_size=settings.input_size,
        peak_selection=PeakSelection(
            class_threshold=math.log(settings.class_probability),
            peak_threshold=settings.peak_threshold,
            peak_threshold_mode="relative",
        ),
        proposal_fn=proposal_fn,
        **kwargs,
    )


def with_settings(settings: PretrainedSettings = DEFAULTS, **changes: Any) -> PretrainedSettings:
    """A copy of ``settings`` with some fields changed."""
    return replace(settings, **changes)


def blur_maps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian-blurred maps, each renormalised to its own sum.

    Peak response maps of a classifier with strided (depthwise) convolutions carry a
    checkerboard of the stride's period; a blur of about that period removes it.

    Args:
        maps (Tensor[K, H, W]): non-negative maps.
        sigma: standard deviation in pixels (0: the maps unchanged).

    Returns:
        Tensor[K, H, W]: non-negative, each with the sum of its input.
    """
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"blur sigma must be finite and >= 0, got {sigma}")
    if sigma == 0 or len(maps) == 0:
        return maps
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = maps[:, None]
    # Reflect padding keeps mass near the border; it needs radius < side.
    mode = "reflect" if radius < min(maps.shape[1:]) else "replicate"
    x = torch.nn.functional.pad(x, (radius, radius, 0, 0), mode=mode)
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1))
    x = torch.nn.functional.pad(x, (0, 0, radius, radius), mode=mode)
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1))[:, 0].clamp(min=0)
    before, after = maps.flatten(1).sum(1), x.flatten(1).sum(1)
    scale = torch.where(after > 0, before / after.clamp(min=1e-30), torch.zeros_like(after))
    return x * scale[:, None, None]


def prm_overlap_duplicates(
    prms: torch.Tensor, labels: torch.Tensor, values: torch.Tensor, ratio: float
) -> torch.Tensor:
    """Which peaks repeat a stronger peak of their class, judged by their PRMs.

    Within each class, peaks are visited from the highest value down; a peak is a
    duplicate when its PRM and a stronger kept one's share at least ``ratio`` of their
    mass (``sum(min(P_i, P_j))``, the histogram intersection of two maps that sum to 1):
    two peaks of one object back-propagate to the same pixels.

    Args:
        prms (Tensor[K, H, W]): peak response maps, each summing to 1.
        labels (Tensor[K]): class of each peak.
        values (Tensor[K]): CRM value of each peak (the order of the visit).
        ratio: in ``[0, 1]``.

    Returns:
        Tensor[K] (bool): True for the duplicates (the strongest of a class never is).
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"overlap ratio must lie in [0, 1], got {ratio}")
    drop = torch.zeros(len(prms), dtype=torch.bool)
    flat = prms.flatten(1)
    for cls in labels.unique().tolist():
        index = torch.nonzero(labels == cls).flatten()
        index = index[torch.argsort(values[index], descending=True, stable=True)]
        kept: list[int] = []
        for i in index.tolist():
            if any(float(torch.minimum(flat[i], flat[j]).sum()) >= ratio for j in kept):
                drop[i] = True
            else:
                kept.append(i)
    return drop
