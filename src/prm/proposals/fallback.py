"""Proposal-free fallback: candidate masks from the peak response maps themselves.

Without any proposal generator the ordinary retrieval (docs/method.md §5) can still
pick one mask per peak if it is given candidates made from the PRMs: each PRM,
smoothed, is thresholded at several fractions of its maximum, and the connected
component at the peak (and, when the support breaks into several pieces, the whole
support) becomes a candidate. Retrieval's instance-aware, boundary-aware and background
terms then choose among them exactly as among MCG or selective search proposals.

These masks follow the PRM's support, not image edges, so they are coarser than real
proposals; docs/proposals.md gives their measured quality.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from .compact import CompactProposals

__all__ = ["fill_mask_holes", "prm_support_proposals"]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def fill_mask_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)``, in one labelling pass.

    A hole is a 4-connected component of the background that does not reach the
    image's border (the rule of ``binary_fill_holes``' default structure); SciPy finds
    them by dilating the border through the background one pixel a step, which costs a
    pass over the image per step.

    Args:
        mask (ndarray[H, W], bool).

    Returns:
        ndarray[H, W] (bool): ``mask`` with its holes filled.
    """
    background, count = ndimage.label(~mask)
    if count == 0:
        return mask.copy()
    edge = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    outside = np.zeros(count + 1, dtype=bool)
    outside[edge] = True
    outside[0] = True  # label 0: the mask itself
    return ~outside[background] | mask


def prm_support_proposals(
    prms: torch.Tensor,
    peaks: torch.Tensor | None = None,
    thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.5),
    smooth: float = 0.01,
    whole_support: bool = True,
    fill_holes: bool = True,
    duplicate_iou: float = 0.95,
) -> torch.Tensor:
    """Class-agnostic candidate masks from thresholded peak response maps.

    Args:
        prms (Tensor[K, H, W]): peak response maps (non-negative; any scale), at the
            resolution the masks are wanted at.
        peaks (Tensor[K, 2], optional): ``(x, y)`` pixel position of each map's peak.
            The component containing the peak is taken; without peaks (or when the
            peak falls outside the support) the component holding most response.
        thresholds: fractions of each smoothed map's maximum; a pixel is in the support
            when its response is at least that.
        smooth: Gaussian sigma as a fraction of ``max(H, W)`` applied before
            thresholding (back-propagated maps are speckled); 0 disables.
        whole_support: also add the whole thresholded support when it has several
            components (an instance broken by an occluder).
        fill_holes: fill holes inside each candidate.
        duplicate_iou: drop a candidate whose IoU with an earlier one is at least this.

    Returns:
        Tensor[P, H, W] (bool) in ranked order: all maps at ``thresholds[0]``, then all
        at ``thresholds[1]``, ... (so every peak has candidates among the first ones);
        ``P = 0`` when every map is zero.
    """
    if prms.dim() != 3:
        raise ValueError(f"prms must be (K, H, W), got shape {tuple(prms.shape)}")
    k, h, w = prms.shape
    if peaks is not None and tuple(peaks.shape) != (k, 2):
        raise ValueError(f"peaks must be (K, 2) = ({k}, 2) (x, y), got {tuple(peaks.shape)}")
    if not thresholds or any(not 0.0 < t <= 1.0 for t in thresholds):
        raise ValueError(f"thresholds must be fractions in (0, 1], got {tuple(thresholds)}")
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    maps = prms.detach().cpu().double().clamp(min=0).numpy()
    sigma = smooth * max(h, w)
    if sigma > 0 and k:
        maps = np.stack([ndimage.gaussian_filter(m, sigma, mode="constant") for m in maps])
    top = maps.reshape(k, -1).max(1) if k else np.zeros(0)

    candidates: list[np.ndarray] = []
    for t in thresholds:
        for i in range(k):
            if top[i] <= 0:
                continue
            support = maps[i] >= t * top[i]
            components, count = ndimage.label(support, structure=_EIGHT_CONNECTED)
            chosen = 0
            if peaks is not None:
                x, y = (int(round(float(v))) for v in peaks[i])
                if 0 <= y < h and 0 <= x < w:
                    chosen = components[y, x]
            if chosen == 0:  # the component holding most response
                mass = ndimage.sum_labels(maps[i], components, index=np.arange(1, count + 1))
                chosen = int(np.argmax(mass)) + 1
            masks = [components == chosen]
            if whole_support and count > 1:
                masks.append(support)
            for mask in masks:
                candidates.append(fill_mask_holes(mask) if fill_holes else mask)

    if not candidates:
        return torch.zeros((0, h, w), dtype=torch.bool)
    stacked = torch.from_numpy(np.stack(candidates))
    iou = CompactProposals.from_masks(stacked).iou()
    keep: list[int] = []
    for p in range(len(stacked)):
        if not keep or bool((iou[p, keep] < duplicate_iou).all()):
            keep.append(p)
    return stacked[keep]
