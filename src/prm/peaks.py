"""Peak finding and peak stimulation (docs/method.md §2).

A *peak* is a local maximum of one class's response map in an ``r x r`` window. Peak
stimulation replaces global average pooling: the class score is the mean of the peaks
that pass a per-(image, class) filter, so training gradients reach only those peaks.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "PeakFilter",
    "peak_mask",
    "peak_threshold",
    "find_peaks",
    "peak_stimulation",
]

#: A peak filter: ``"median"`` (default), ``"mean"``, ``"max"`` (global maximum only), a
#: constant threshold (float), or ``None``/``"none"`` (keep every local maximum).
PeakFilter = Literal["median", "mean", "max", "none"] | float | None


def _check_maps(crm: torch.Tensor, name: str = "class response maps") -> None:
    if not isinstance(crm, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(crm).__name__}")
    if crm.dim() != 4:
        raise ValueError(f"{name} must be (B, C, H, W), got shape {tuple(crm.shape)}")
    if not crm.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {crm.dtype}")
    if crm.numel() and torch.isnan(crm).any():
        raise ValueError(f"{name} contain NaN")


def peak_mask(crm: torch.Tensor, win_size: int = 3) -> torch.Tensor:
    """Local maxima of each map, with the authors' plateau rule.

    A pixel is a peak when it is the maximum of the ``win_size x win_size`` window
    centred on it, the map being padded with ``-inf`` so that border pixels can be peaks.
    On a plateau of equal values exactly one pixel is kept: the first in raster order,
    which is what max-pooling's argmax returns in the authors' code. Equivalently, a
    pixel is a peak iff it is ``>=`` every window neighbour and ``>`` every neighbour that
    precedes it in raster order. (``x == max_pool(x)`` would keep every plateau pixel.)

    Args:
        crm (Tensor[B, C, H, W]): class response maps (float).
        win_size: odd window size ``r`` (3 in the paper).

    Returns:
        Tensor[B, C, H, W] (bool): True at peaks.
    """
    _check_maps(crm)
    if not isinstance(win_size, int) or win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"win_size must be a positive odd integer, got {win_size!r}")
    b, c, h, w = crm.shape
    offset = (win_size - 1) // 2
    padded = F.pad(crm, (offset,) * 4, value=-math.inf)
    # Compare each pixel with every window neighbour through shifted views of the padded
    # map (F.unfold would do the same but is pathologically slow on CPU for small maps).
    # Neighbours before the centre in raster order (rows above, or same row to the left)
    # must be strictly smaller, the others smaller or equal.
    is_peak = torch.ones_like(crm, dtype=torch.bool)
    for dy in range(win_size):
        for dx in range(win_size):
            if dy == offset and dx == offset:
                continue
            neighbour = padded[:, :, dy : dy + h, dx : dx + w]
            before = dy < offset or (dy == offset and dx < offset)
            is_peak &= crm > neighbour if before else crm >= neighbour
    return is_peak


def peak_threshold(crm: torch.Tensor, peak_filter: PeakFilter = "median") -> torch.Tensor:
    """Per-(image, class) threshold that a peak's value must reach (``>=``).

    Args:
        crm (Tensor[B, C, H, W]): class response maps.
        peak_filter: ``"median"`` (``torch.median``, the lower median of each map),
            ``"mean"``, ``"max"`` (only the global maximum passes), a float constant, or
            ``None``/``"none"`` (no filter).

    Returns:
        Tensor[B, C, 1, 1]: the thresholds (``-inf`` for no filter).
    """
    b, c = crm.shape[:2]
    flat = crm.reshape(b, c, -1)
    if peak_filter is None or peak_filter == "none":
        thr = flat.new_full((b, c), -math.inf)
    elif peak_filter == "median":
        thr = flat.median(dim=2).values
    elif peak_filter == "mean":
        thr = flat.mean(dim=2)
    elif peak_filter == "max":
        thr = flat.amax(dim=2)
    elif isinstance(peak_filter, (int, float)) and not isinstance(peak_filter, bool):
        if math.isnan(peak_filter):
            raise ValueError("a constant peak filter must not be NaN")
        thr = flat.new_full((b, c), float(peak_filter))
    else:
        raise ValueError(
            f"unknown peak_filter {peak_filter!r}: use 'median', 'mean', 'max', 'none', "
            "a number or None"
        )
    return thr.view(b, c, 1, 1)


def find_peaks(
    crm: torch.Tensor, win_size: int = 3, peak_filter: PeakFilter = "median"
) -> torch.Tensor:
    """Peaks of class response maps that pass the peak filter.

    Args:
        crm (Tensor[B, C, H, W]): class response maps.
        win_size: odd window size (3 in the paper).
        peak_filter: see :func:`peak_threshold`.

    Returns:
        Tensor[K, 4] (int64): the *peak positions*, one row ``(b, c, y, x)`` per peak
        (image of the batch, class, CRM cell), in raster order (``torch.nonzero``'s). Not
        to be confused with a response's ``peak_cells`` ``(c, y, x)`` or a prediction's
        ``peaks`` ``(x, y)`` in image pixels (docs/method.md §4).
    """
    return _kept_peaks(crm.detach(), win_size, peak_filter).nonzero()


def _kept_peaks(crm: torch.Tensor, win_size: int, peak_filter: PeakFilter) -> torch.Tensor:
    return peak_mask(crm, win_size) & (crm >= peak_threshold(crm, peak_filter))


class _PeakMean(torch.autograd.Function):
    """Mean of the kept peaks of each map; backward per the chosen rule."""

    @staticmethod
    def forward(ctx, crm, kept, exact_gradient):
        count = kept.flatten(2).sum(2)  # (B, C)
        has_peak = count > 0
        summed = (crm * kept).flatten(2).sum(2)
        # With a constant filter a map may keep no peak; its score falls back to the map's
        # maximum (a peak that always exists) so that the loss stays finite.
        fallback = crm.flatten(2).amax(2)
        scores = torch.where(has_peak, summed / count.clamp(min=1), fallback)
        weights = kept.to(crm.dtype)
        if exact_gradient:
            weights = weights / count.clamp(min=1).to(crm.dtype)[:, :, None, None]
        if not bool(has_peak.all()):
            argmax = F.one_hot(crm.flatten(2).argmax(2), crm.shape[2] * crm.shape[3])
            argmax = argmax.view_as(crm).to(crm.dtype)
            weights = torch.where(has_peak[:, :, None, None], weights, argmax)
        ctx.save_for_backward(weights)
        return scores

    @staticmethod
    def backward(ctx, grad_scores):
        (weights,) = ctx.saved_tensors
        return weights * grad_scores[:, :, None, None], None, None


def peak_stimulation(
    crm: torch.Tensor,
    win_size: int = 3,
    peak_filter: PeakFilter = "median",
    gradient: Literal["paper", "authors"] = "paper",
) -> torch.Tensor:
    """Class scores by peak stimulation: the mean of each map's kept peaks.

    ``s(b, c) = (1 / N_c) * sum_k M[b, c, y_k, x_k]`` over the ``N_c`` peaks of map
    ``(b, c)`` whose value is ``>=`` the peak filter threshold.

    Gradient (``dL/dM`` at each kept peak, 0 elsewhere):

    - ``"paper"``: ``(1 / N_c) * dL/ds_c``, the exact gradient of the mean (default);
    - ``"authors"``: ``dL/ds_c``, the authors' code, which omits the ``1 / N_c``.

    Args:
        crm (Tensor[B, C, H, W]): class response maps.
        win_size: odd peak window (3 in the paper).
        peak_filter: see :func:`peak_threshold`. A map with no peak passing a constant
            filter scores its maximum.
        gradient: ``"paper"`` or ``"authors"``.

    Returns:
        Tensor[B, C]: class scores.
    """
    if gradient not in ("paper", "authors"):
        raise ValueError(f"gradient must be 'paper' or 'authors', got {gradient!r}")
    with torch.no_grad():
        kept = _kept_peaks(crm.detach(), win_size, peak_filter)
    return _PeakMean.apply(crm, kept, gradient == "paper")
