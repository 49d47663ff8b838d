"""Proposal-free candidates that follow image edges: GrabCut seeded by the PRMs.

The PRM-support fallback (:func:`prm_support_proposals`) thresholds each peak response
map, so its masks follow the map, not the object's outline. Here each map only seeds a
colour model: pixels where the smoothed map is high are probably the object, pixels where
it is near zero are probably not, and OpenCV's GrabCut (Rother, Kolmogorov, Blake,
*GrabCut*, SIGGRAPH 2004: Gaussian-mixture colour models and a graph cut, iterated)
decides the rest along the image's edges. The ordinary retrieval (docs/method.md §5)
then chooses among these candidates and the PRM-support ones as among any proposals.

Everything happens on a crop around each map's support, so the cost grows with the
objects, not with the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from .fallback import prm_support_proposals
from .selective_search import as_rgb_array

__all__ = ["grabcut_proposals"]

_FRAME = 2  # pixels of the crop's edge taken as sure background


def grabcut_proposals(
    image,
    prms: torch.Tensor,
    peaks: torch.Tensor | None = None,
    seeds: Sequence[tuple[float, float]] = ((0.5, 0.05), (0.3, 0.02)),
    smooth: float = 0.01,
    core: float = 0.9,
    iterations: int = 3,
    margin: float = 0.5,
    with_support: bool = True,
) -> torch.Tensor:
    """Candidate masks from GrabCut seeded by each peak response map.

    Args:
        image: the RGB image (``PIL.Image``, ``Tensor[3, H, W]`` uint8 or float in 0..1,
            or ``ndarray[H, W, 3]`` uint8).
        prms (Tensor[K, H, W]): peak response maps at the image's resolution
            (non-negative; any scale).
        peaks (Tensor[K, 2], optional): ``(x, y)`` pixel position of each map's peak;
            the GrabCut component holding it is kept (all components without peaks).
        seeds: ``(high, low)`` pairs, one GrabCut run each, on the box of the pixels at
            or above ``low`` times the smoothed map's maximum grown by ``margin``: pixels
            at or above ``high`` times the maximum start as probable object, the rest of
            the box as probable background, its frame (except along the image border) as
            background.
        smooth: Gaussian sigma, a fraction of ``max(H, W)``, applied to the maps first.
        core: pixels at or above this fraction of the maximum start as sure object.
        iterations: GrabCut iterations per run.
        margin: the box grows by this fraction of its size on each side (GrabCut needs
            background to learn from).
        with_support: also return :func:`prm_support_proposals` of the maps (after the
            GrabCut candidates), so retrieval can still fall back on them.

    Returns:
        Tensor[P, H, W] (bool): for each seed pair, one candidate per map (maps that are
        zero give none), then the PRM-support candidates.
    """
    rgb = as_rgb_array(image)
    _check_arguments(rgb, prms, peaks, seeds, core)
    k, h, w = prms.shape
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    maps = prms.detach().cpu().double().clamp(min=0).numpy()
    sigma = smooth * max(h, w)
    if sigma > 0 and k:
        maps = np.stack([ndimage.gaussian_filter(m, sigma, mode="constant") for m in maps])
    candidates: list[np.ndarray] = []
    for high, low in seeds:
        for i, prm in enumerate(maps):
            if prm.max() <= 0:
                continue
            mask = _grabcut(bgr, prm, (high, low, core), margin, iterations)
            mask = _component_at(mask, None if peaks is None else peaks[i])
            if mask.any():
                candidates.append(ndimage.binary_fill_holes(mask))
    out = torch.zeros((0, h, w), dtype=torch.bool)
    if candidates:
        out = torch.from_numpy(np.stack(candidates))
    if with_support:
        out = torch.cat([out, prm_support_proposals(prms, peaks, smooth=smooth)])
    return out


def _check_arguments(rgb: np.ndarray, prms: torch.Tensor, peaks, seeds, core: float) -> None:
    """The checks of :func:`grabcut_proposals`' arguments (``ValueError`` naming each)."""
    if prms.dim() != 3:
        raise ValueError(f"prms must be (K, H, W), got shape {tuple(prms.shape)}")
    k, h, w = prms.shape
    if rgb.shape[:2] != (h, w):
        raise ValueError(f"image is {rgb.shape[:2]}, the maps are {(h, w)}")
    if peaks is not None and tuple(peaks.shape) != (k, 2):
        raise ValueError(f"peaks must be (K, 2) = ({k}, 2) (x, y), got {tuple(peaks.shape)}")
    if not seeds or any(not 0.0 < low < high <= 1.0 for high, low in seeds):
        raise ValueError(f"seeds must be (high, low) with 0 < low < high <= 1, got {seeds}")
    if not 0.0 < core <= 1.0:
        raise ValueError(f"core must be in (0, 1], got {core}")


def _grabcut(bgr: np.ndarray, prm: np.ndarray, levels, margin: float, iterations: int):
    """One GrabCut run seeded by a (smoothed, non-zero) map, on the box of its support
    grown by ``margin``: ``(H, W)`` bool (the support itself when the box leaves GrabCut
    no background to learn from). ``levels``: ``(high, low, core)`` fractions of the
    map's maximum."""
    import cv2

    (h, w), top = prm.shape, prm.max()
    high, low, core = (level * top for level in levels)
    support = prm >= low
    ys, xs = np.nonzero(support)
    grow_y = int(margin * (ys.max() - ys.min() + 1)) + 2
    grow_x = int(margin * (xs.max() - xs.min() + 1)) + 2
    y0, y1 = max(ys.min() - grow_y, 0), min(ys.max() + 1 + grow_y, h)
    x0, x1 = max(xs.min() - grow_x, 0), min(xs.max() + 1 + grow_x, w)
    # As GrabCut's rectangle: the crop's frame is background, the inside probably
    # background, the high part of the map probably object, its core surely.
    crop = prm[y0:y1, x0:x1]
    seed = np.full(crop.shape, cv2.GC_PR_BGD, np.uint8)
    seed[crop >= high] = cv2.GC_PR_FGD
    seed[crop >= core] = cv2.GC_FGD
    frame = np.ones_like(seed, dtype=bool)
    frame[_FRAME:-_FRAME, _FRAME:-_FRAME] = False
    frame[:, :_FRAME] &= x0 > 0  # the image border is no evidence of background
    frame[:, -_FRAME:] &= x1 < w
    frame[:_FRAME] &= y0 > 0
    frame[-_FRAME:] &= y1 < h
    seed[frame & (seed == cv2.GC_PR_BGD)] = cv2.GC_BGD
    if not (seed == cv2.GC_BGD).any():  # GrabCut needs both colour models
        return support
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    image = np.ascontiguousarray(bgr[y0:y1, x0:x1])
    cv2.grabCut(image, seed, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = (seed == cv2.GC_FGD) | (seed == cv2.GC_PR_FGD)
    return mask


def _component_at(mask: np.ndarray, peak: torch.Tensor | None) -> np.ndarray:
    """The 8-connected component of ``mask`` holding ``peak`` (``(x, y)``), or the
    largest when the peak is outside it."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count <= 1:
        return mask
    chosen = 0
    if peak is not None:
        x, y = (int(round(float(v))) for v in peak)
        if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]:
            chosen = components[y, x]
    if chosen == 0:
        chosen = int(np.argmax(np.bincount(components.ravel())[1:])) + 1
    return components == chosen
