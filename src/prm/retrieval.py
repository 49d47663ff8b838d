"""Instance mask extraction by proposal retrieval (method.md §5).

For each peak of class ``c`` with peak response map ``R``, every class-agnostic segment
proposal ``S`` (with contour ``S^``, the morphological gradient of ``S``) is scored::

    score(S) = alpha * sum(R * S)  +  sum(R * S^)  -  beta * sum(Q_c * S)
                 instance-aware       boundary-aware    class-aware background penalty

where ``Q_c`` is the background of class ``c``: its class response map min-max scaled to
0..255, resized bicubically to the image and set to 1 where it is ``< tau * its mean``.
The best proposal becomes the peak's mask; instances are then sorted by that score and
de-duplicated by greedy NMS on mask IoU, merging the suppressed instances' PRMs into the
survivor's.

Everything is vectorised: proposals are resized and their contours computed once, and the
scores of all peaks x proposals come from three matrix products.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prm.masks import mask_iou, masks_to_boxes
from prm.validation import check_number

__all__ = [
    "RetrievalConfig",
    "class_background",
    "proposal_contours",
    "resize_masks",
    "score_proposals",
    "mask_nms",
    "retrieve_instances",
]

FloatOrPerClass = float | Sequence[float]

# Proposals per step of retrieval (measured in benchmarks/retrieval.py: 8 to 32 is best).
_CHUNK = 16


@dataclass
class RetrievalConfig:
    """Hyper-parameters of proposal retrieval; defaults are the authors' demo values.

    ``alpha``, ``beta`` and ``tau`` are either one number for all classes or a sequence
    with one value per class (the paper tunes them per class on validation data).

    Attributes:
        alpha: weight of the instance-aware term ``sum(R * S)`` (0.8).
        beta: weight of the class-aware background penalty ``sum(Q * S)`` (1e-5).
        tau: background threshold factor: ``Q = 1`` where the scaled CRM is ``< tau``
            times its mean (0.95).
        contour_width: side of the square structuring element of the contour (5, odd).
        proposal_size_limit: proposals whose area is ``< lo`` or ``>= hi`` times the image
            area are skipped ((2e-5, 0.85)).
        proposal_count: only the first ``proposal_count`` proposals are considered (100).
        nms_threshold: mask IoU at or above which a lower-scored instance is suppressed
            (0.3); ``None`` disables NMS.
        nms_class_agnostic: suppress across classes, as the authors (True), or only
            within a class (False).
        merge_peak_response: add suppressed instances' PRMs to the survivor's (True).
    """

    alpha: FloatOrPerClass = 0.8
    beta: FloatOrPerClass = 1e-5
    tau: FloatOrPerClass = 0.95
    contour_width: int = 5
    proposal_size_limit: tuple[float, float] = (2e-5, 0.85)
    proposal_count: int = 100
    nms_threshold: float | None = 0.3
    nms_class_agnostic: bool = True
    merge_peak_response: bool = True

    @classmethod
    def from_authors(cls, param: tuple | list, **kwargs) -> RetrievalConfig:
        """From the authors' ``param``: a tuple ``(tau, beta, alpha)`` shared by all
        classes, or a list of such tuples, one per class."""
        if isinstance(param, tuple) and len(param) == 3:
            tau, beta, alpha = param
            return cls(alpha=alpha, beta=beta, tau=tau, **kwargs)
        if isinstance(param, list) and all(len(p) == 3 for p in param):
            tau, beta, alpha = (list(v) for v in zip(*param))
            return cls(alpha=alpha, beta=beta, tau=tau, **kwargs)
        raise ValueError(f"param must be (tau, beta, alpha) or a list of them, got {param!r}")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, num_classes: int | None = None) -> None:
        """Raise ``ValueError`` (one line, naming the setting) on nonsense settings.

        ``alpha``, ``beta``, ``tau`` (each value) must be finite and >= 0;
        ``nms_threshold`` ``None`` or in [0, 1]; with ``num_classes``, per-class lists
        must have one value per class.
        """
        for name in ("alpha", "beta", "tau"):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                check_number(name, value, minimum=0)
                continue
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                raise ValueError(f"{name} must be a number or one number per class, got {value!r}")
            for v in value:
                check_number(f"{name} (per class)", v, minimum=0)
            if num_classes is not None and len(value) != num_classes:
                raise ValueError(
                    f"{name} has {len(value)} per-class values for {num_classes} classes"
                )
        if (
            not isinstance(self.contour_width, int)
            or self.contour_width < 1
            or self.contour_width % 2 == 0
        ):
            raise ValueError(
                f"contour_width must be a positive odd integer, got {self.contour_width!r}"
            )
        lo, hi = self.proposal_size_limit
        check_number("proposal_size_limit[0]", lo, minimum=0)
        check_number("proposal_size_limit[1]", hi, minimum=0)
        if not 0 <= lo < hi:
            raise ValueError(
                f"proposal_size_limit must be (lo, hi) with 0 <= lo < hi, got {(lo, hi)}"
            )
        if not isinstance(self.proposal_count, int) or self.proposal_count < 1:
            raise ValueError(
                f"proposal_count must be a positive integer, got {self.proposal_count!r}"
            )
        if self.nms_threshold is not None:
            check_number("nms_threshold", self.nms_threshold, minimum=0, maximum=1)

    def per_peak(self, name: str, labels: torch.Tensor) -> torch.Tensor:
        """The value of ``alpha``/``beta``/``tau`` for each peak's class, ``(K,)``."""
        value = getattr(self, name)
        if isinstance(value, (int, float)):
            return torch.full(labels.shape, float(value), device=labels.device)
        return torch.as_tensor(value, dtype=torch.float32, device=labels.device)[labels]


def class_background(crm: torch.Tensor, size: tuple[int, int], tau: torch.Tensor) -> torch.Tensor:
    """Class-aware background maps ``Q`` as the authors compute them.

    Each class map is min-max scaled to 0..255 and rounded to bytes (what the authors'
    ``scipy.misc.imresize`` does implicitly), resized bicubically to ``size`` as PIL does
    (its kernel, two separable passes rounded to bytes), and ``Q = 1`` where it is
    ``< tau * mean``.

    Args:
        crm (Tensor[C, h, w]): class response maps of the classes needed.
        size: ``(H, W)`` output size.
        tau (Tensor[C]): threshold factor of each map.

    Returns:
        Tensor[C, H, W] (bool): background masks.
    """
    flat = crm.flatten(1).float()
    low, high = flat.amin(1), flat.amax(1)
    span = torch.where(high > low, high - low, torch.ones_like(high))
    scaled = ((crm.float() - low[:, None, None]) * (255.0 / span)[:, None, None]).clamp(0, 255)
    resized = torch.floor(scaled + 0.5)[None]
    # PIL resizes 8-bit images in two passes, horizontal then vertical, rounding to bytes
    # in between; doing the same reproduces its output (to 1 grey level on rare pixels).
    for pass_size in ((resized.shape[2], size[1]), size):
        resized = F.interpolate(
            resized, size=pass_size, mode="bicubic", antialias=True, align_corners=False
        )
        resized = torch.floor(resized + 0.5).clamp(0, 255)
    resized = resized[0]
    mean = resized.flatten(1).mean(1)
    return resized < (tau.to(resized) * mean)[:, None, None]


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of binary masks with pixel-centre sampling (as PIL).

    Args:
        masks (Tensor[P, H, W]): binary masks.
        size: ``(h, w)``.

    Returns:
        Tensor[P, h, w] (bool).
    """
    if tuple(masks.shape[1:]) == tuple(size):
        return masks.bool()
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.bool)
    if masks.dtype == torch.bool:  # reinterpreting the bytes saves two conversions
        resized = F.interpolate(masks.view(torch.uint8)[None], size=size, mode="nearest-exact")
        return resized[0].view(torch.bool)
    resized = F.interpolate(masks[None].to(torch.uint8), size=size, mode="nearest-exact")
    return resized[0].bool()


def proposal_contours(masks: torch.Tensor, width: int = 5) -> torch.Tensor:
    """Contours of masks: morphological gradient (dilation minus erosion) with a square.

    Pixels outside the image are ignored by both operations (OpenCV's default), so a mask
    touching the border has no contour along it.

    Args:
        masks (Tensor[P, H, W]): binary masks.
        width: odd side of the square structuring element (5: a band about two pixels
            either side of the edge).

    Returns:
        Tensor[P, H, W] (bool).
    """
    masks = masks.bool()
    if masks.shape[0] == 0:
        return masks
    # With the outside ignored, erosion(S) = not dilation(not S), so the gradient
    # dilation(S) & ~erosion(S) is dilation(S) & dilation(~S): two dilations.
    return _square_dilation(masks, width).logical_and_(_square_dilation(~masks, width))


def _square_dilation(masks: torch.Tensor, width: int) -> torch.Tensor:
    """Binary dilation with a ``width x width`` square; outside pixels count as False.

    Separable (rows, then columns), on bool tensors, by in-place ORs of shifted slices:
    ``2 (width - 1)`` logical operations per pixel and no padding copies, an order of
    magnitude faster than ``max_pool2d`` on a CPU.
    """
    radius = width // 2
    out = masks
    for dim in (2, 1):
        size = out.shape[dim]
        src, out = out, out.clone()
        for shift in range(1, min(radius, size - 1) + 1):
            out.narrow(dim, shift, size - shift).logical_or_(src.narrow(dim, 0, size - shift))
            out.narrow(dim, 0, size - shift).logical_or_(src.narrow(dim, shift, size - shift))
    return out


def _term_matrix(prms: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``(K + C' + 1, H W)``: the PRMs, the background maps and a row of ones, so that one
    matrix product with a proposal gives its instance sums, penalties and area."""
    r = prms.flatten(1).float()
    q = background.flatten(1).float()
    return torch.cat([r, q, r.new_ones((1, r.shape[1]))])


def _proposal_sums(
    terms: torch.Tensor, proposals: torch.Tensor, contours: torch.Tensor, num_peaks: int
) -> tuple[torch.Tensor, ...]:
    """Instance sums ``<R_k, S_p>`` (P, K), boundary sums ``<R_k, S^_p>`` (P, K),
    background sums ``<Q, S_p>`` (P, C') and areas (P,) of a few proposals.

    Masks and contours go through one product (exact 0/1 floats); the sums are float32.
    """
    n = proposals.shape[0]
    proposals, contours = proposals.bool(), contours.bool()
    x = terms.new_empty((2 * n, terms.shape[1]))
    # From bytes: uint8 -> float converts faster than bool -> float.
    x[:n].copy_(proposals.reshape(n, -1).view(torch.uint8))
    x[n:].copy_(contours.reshape(n, -1).view(torch.uint8))
    sums = x @ terms.T  # (2n, K + C' + 1)
    inside, edge = sums[:n], sums[n:, :num_peaks]
    return inside[:, :num_peaks], edge, inside[:, num_peaks:-1], inside[:, -1]


def score_proposals(
    prms: torch.Tensor,
    proposals: torch.Tensor,
    contours: torch.Tensor,
    background: torch.Tensor,
    peak_background: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    chunk: int = _CHUNK,
) -> torch.Tensor:
    """The retrieval score of every (peak, proposal) pair, all at one resolution.

    ``score[k, p] = alpha_k * <R_k, S_p> + <R_k, S^_p> - beta_k * <Q_{c_k}, S_p>``

    Matrix products over flattened maps; proposals are taken ``chunk`` at a time so that
    memory stays at ``chunk x H x W`` floats whatever their number.

    Args:
        prms (Tensor[K, H, W]): peak response maps ``R``.
        proposals (Tensor[P, H, W]): binary proposals ``S``.
        contours (Tensor[P, H, W]): their contours ``S^``.
        background (Tensor[C', H, W]): background maps ``Q`` of the classes present.
        peak_background (Tensor[K], int64): row of ``background`` for each peak's class.
        alpha, beta (Tensor[K]): per-peak weights.
        chunk: proposals per matrix product.

    Returns:
        Tensor[K, P] (float32).
    """
    terms = _term_matrix(prms, background)
    out = [prms.new_zeros((len(prms), 0), dtype=torch.float32)]
    for start in range(0, proposals.shape[0], chunk):
        sums = _proposal_sums(
            terms, proposals[start : start + chunk], contours[start : start + chunk], len(prms)
        )
        out.append(_combine(sums, peak_background, alpha, beta))
    return torch.cat(out, 1)


def _combine(sums, peak_background, alpha, beta) -> torch.Tensor:
    instance, boundary, penalty = sums[:3]
    return (alpha[:, None] * instance.T + boundary.T) - beta[:, None] * penalty.T[peak_background]


def mask_nms(
    masks: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    iou_threshold: float,
    class_agnostic: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy non-maximum suppression on mask IoU.

    Instances are visited by decreasing score (ties keep input order); each survivor
    suppresses every later instance whose IoU with it is ``>= iou_threshold`` (of any
    class, or of its own class when ``class_agnostic=False``).

    Args:
        masks (Tensor[N, H, W]): binary masks.
        scores (Tensor[N]): scores.
        labels (Tensor[N]): classes.
        iou_threshold: suppression threshold.
        class_agnostic: suppress across classes.

    Returns:
        ``keep`` (Tensor[M], int64): survivors, by decreasing score;
        ``owner`` (Tensor[N], int64): for each instance, the index of the survivor that
        suppressed it (itself for survivors).
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = mask_iou(masks, masks)
    if not class_agnostic:
        iou = torch.where(labels[:, None] == labels[None, :], iou, torch.zeros_like(iou))
    owner = torch.full((len(scores),), -1, dtype=torch.long)
    overlaps = (iou >= iou_threshold).cpu()
    keep = []
    for i in order.tolist():
        if owner[i] >= 0:
            continue
        keep.append(i)
        owner[i] = i
        free = (owner < 0) & overlaps[i]
        owner[free] = i
    return torch.tensor(keep, dtype=torch.long), owner


def retrieve_instances(
    prms: torch.Tensor,
    labels: torch.Tensor,
    crm: torch.Tensor,
    proposals: torch.Tensor,
    config: RetrievalConfig | None = None,
) -> dict[str, torch.Tensor]:
    """Pick one proposal per peak and de-duplicate the instances (method.md §5).

    Scoring happens at the PRMs' resolution (the network input size): the first
    ``proposal_count`` proposals are resized there (nearest), as the authors do; the
    chosen proposals are returned at their own (image) resolution, so masks are exact.

    Args:
        prms (Tensor[K, h, w]): peak response maps (non-negative, summing to 1).
        labels (Tensor[K], int64): class of each peak.
        crm (Tensor[C, hc, wc]): class response maps of the image.
        proposals (Tensor[P, H, W]): class-agnostic segment proposals at the image's
            resolution, ranked best first.
        config: :class:`RetrievalConfig` (the authors' demo values by default).

    Returns:
        A dict of instances, sorted by decreasing ``retrieval_scores``:

        - ``"masks"`` (Tensor[N, H, W], bool): chosen proposals;
        - ``"labels"`` (Tensor[N], int64);
        - ``"retrieval_scores"`` (Tensor[N]): the proposal score above (the authors'
          ranking within an image);
        - ``"prms"`` (Tensor[N, H, W]): the instance's PRM (merged with the PRMs it
          suppressed when ``merge_peak_response``), resized to ``(H, W)``, summing to 1;
        - ``"peak_index"`` (Tensor[N], int64): which input peak made the instance;
        - ``"proposal_index"`` (Tensor[N], int64): which proposal was chosen;
        - ``"boxes"`` (Tensor[N, 4]): ``(x1, y1, x2, y2)`` of the masks.

        A peak for which no proposal passes the size limits yields no instance; no peaks
        or no proposals give ``N = 0``.
    """
    config = config or RetrievalConfig()
    num_classes = crm.shape[0] if crm.dim() == 3 else None
    config.validate(num_classes)
    if prms.dim() != 3:
        raise ValueError(f"prms must be (K, h, w), got shape {tuple(prms.shape)}")
    if labels.dim() != 1 or len(labels) != len(prms):
        raise ValueError(f"labels must be ({len(prms)},), got shape {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
    if crm.dim() != 3:
        raise ValueError(f"crm must be (C, h, w), got shape {tuple(crm.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= crm.shape[0]):
        raise ValueError(f"labels must lie in [0, {crm.shape[0]}), got {labels.tolist()}")
    if proposals.dim() != 3:
        raise ValueError(f"proposals must be (P, H, W), got shape {tuple(proposals.shape)}")
    if proposals.dtype != torch.bool and proposals.numel():
        if proposals.is_floating_point() and torch.isnan(proposals).any():
            raise ValueError("proposals contain NaN")
        if ((proposals != 0) & (proposals != 1)).any():
            raise ValueError("proposals must be binary masks (bool or 0/1)")
    if prms.numel() and (torch.isnan(prms).any() or torch.isnan(crm).any()):
        raise ValueError("prms or crm contain NaN")

    device = prms.device
    height, width = proposals.shape[1:]
    net_size = tuple(prms.shape[1:])
    empty = _empty_instances(height, width, device)
    if len(prms) == 0 or len(proposals) == 0:
        return empty

    candidates = proposals[: config.proposal_count].to(device)
    classes, inverse = torch.unique(labels, return_inverse=True)
    tau = config.per_peak("tau", classes).to(device)
    background = class_background(crm[classes].to(device), net_size, tau)  # (C', h, w)
    alpha = config.per_peak("alpha", labels).to(device)
    beta = config.per_peak("beta", labels).to(device)
    terms = _term_matrix(prms, background)
    lo, hi = config.proposal_size_limit
    image_area = net_size[0] * net_size[1]
    scores = []
    # A few proposals at a time through resize, contour and products: the temporaries
    # stay small enough to be reused from the allocator's cache (fresh pages of one big
    # (P, H, W) tensor cost more than the arithmetic on them).
    for start in range(0, len(candidates), _CHUNK):
        small = resize_masks(candidates[start : start + _CHUNK], net_size)
        sums = _proposal_sums(
            terms, small, proposal_contours(small, config.contour_width), len(prms)
        )
        area = sums[3]
        valid = (area >= lo * image_area) & (area < hi * image_area)
        chunk_scores = _combine(sums, inverse, alpha, beta)
        scores.append(chunk_scores.masked_fill(~valid[None, :], float("-inf")))
    scores = torch.cat(scores, 1)

    best_score, best = scores.max(1)  # ties: the first proposal wins
    found = torch.isfinite(best_score)
    peak_index = found.nonzero()[:, 0]
    if len(peak_index) == 0:
        return empty
    best, best_score = best[found], best_score[found]
    inst_labels, inst_prms = labels[found], prms[found].float()

    order = torch.sort(best_score, descending=True, stable=True).indices
    if config.nms_threshold is not None:
        keep, owner = mask_nms(
            resize_masks(candidates[best], net_size),
            best_score,
            inst_labels,
            config.nms_threshold,
            config.nms_class_agnostic,
        )
        if config.merge_peak_response:
            merged = torch.zeros_like(inst_prms).index_add_(0, owner.to(device), inst_prms)
            inst_prms = merged
        order = keep.to(device)

    prm_full = F.interpolate(inst_prms[order][None], size=(height, width), mode="bilinear")[0]
    prm_full = prm_full.clamp(min=0)
    total = prm_full.flatten(1).sum(1)
    prm_full = prm_full / torch.where(total > 0, total, torch.ones_like(total))[:, None, None]
    masks = candidates[best[order]].bool()
    return {
        "masks": masks,
        "labels": inst_labels[order].long(),
        "retrieval_scores": best_score[order],
        "prms": prm_full,
        "peak_index": peak_index[order],
        "proposal_index": best[order],
        "boxes": masks_to_boxes(masks),
    }


def _empty_instances(height: int, width: int, device: torch.device) -> dict[str, torch.Tensor]:
    return {
        "masks": torch.zeros((0, height, width), dtype=torch.bool, device=device),
        "labels": torch.zeros((0,), dtype=torch.long, device=device),
        "retrieval_scores": torch.zeros((0,), device=device),
        "prms": torch.zeros((0, height, width), device=device),
        "peak_index": torch.zeros((0,), dtype=torch.long, device=device),
        "proposal_index": torch.zeros((0,), dtype=torch.long, device=device),
        "boxes": torch.zeros((0, 4), device=device),
    }
