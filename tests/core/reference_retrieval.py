"""The authors' per-peak, per-proposal retrieval loop, written out with PIL and scipy.

The straightforward version of ``prm.retrieve_instances`` (method.md §5): for every peak
and every proposal, resize the proposal, take its contour and sum. The tests check the
library against it, and ``benchmarks/retrieval.py`` times the library against it, so both
use this one copy.
"""

import numpy as np
import torch
from PIL import Image
from scipy import ndimage


def imresize(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """``scipy.misc.imresize``: byte-scale to 0..255, then a PIL resize to ``(h, w)``."""
    array = np.asarray(array, dtype=np.float64)
    low, high = array.min(), array.max()
    scale = 255.0 / (high - low) if high > low else 255.0
    data = (((array - low) * scale).clip(0, 255) + 0.5).astype(np.uint8)
    return np.array(Image.fromarray(data).resize((size[1], size[0]), resample))


def morphological_gradient(mask: np.ndarray, width: int) -> np.ndarray:
    """``cv2.morphologyEx(MORPH_GRADIENT)`` with a square: borders never erode."""
    square = np.ones((width, width), bool)
    dilated = ndimage.binary_dilation(mask, square)
    eroded = ndimage.binary_erosion(mask, square, border_value=1)
    return dilated & ~eroded


def authors_retrieval(prms, labels, crm, proposals, cfg) -> list[list]:
    """The authors' retrieval loop: for every peak, for every proposal, resize it, take
    its contour and score it; then sort and run greedy NMS merging PRMs.

    Args:
        prms (Tensor[K, h, w]): peak response maps at the network size.
        labels (Tensor[K]): class of each peak.
        crm (Tensor[C, hc, wc]): class response maps.
        proposals (Tensor[P, H, W], bool): proposals at the image size.
        cfg: :class:`prm.retrieval.RetrievalConfig` with one ``alpha``/``beta``/``tau``.

    Returns:
        The kept instances by decreasing score, each ``[score, class, mask (h, w),
        merged prm, proposal index, peak index]``.
    """
    prms, crm, proposals = prms.numpy(), crm.numpy(), proposals.numpy()
    height, width = prms.shape[1:]
    area = height * width
    instances = []
    for i, prm in enumerate(prms):
        c = int(labels[i])
        class_response = imresize(crm[c], (height, width), Image.BICUBIC)
        background = (class_response < cfg.tau * class_response.mean()).astype(np.float32)
        best, best_j, best_mask = -np.inf, None, None
        for j in range(min(cfg.proposal_count, len(proposals))):
            mask = imresize(proposals[j].astype(int), (height, width), Image.NEAREST).astype(bool)
            contour = morphological_gradient(mask, cfg.contour_width)
            low, high = cfg.proposal_size_limit
            if not (low * area <= mask.sum() < high * area):
                continue
            value = (
                cfg.alpha * prm[mask].sum() + prm[contour].sum() - cfg.beta * background[mask].sum()
            )
            if value > best:
                best, best_j, best_mask = value, j, mask
        if best_mask is not None:
            instances.append([best, c, best_mask, prm.copy(), best_j, i])
    instances.sort(key=lambda v: v[0], reverse=True)
    kept = []
    while instances:
        top = instances.pop(0)
        kept.append(top)
        rest = []
        for other in instances:
            inter = np.logical_and(top[2], other[2]).sum()
            union = np.logical_or(top[2], other[2]).sum()
            if inter / (union + 1e-10) < cfg.nms_threshold:
                rest.append(other)
            else:
                top[3] += other[3]
        instances = rest
    return kept


def random_blobs(generator: torch.Generator, count: int, size: tuple[int, int]) -> torch.Tensor:
    """``count`` random axis-aligned ellipses, ``Tensor[count, H, W]`` bool."""
    h, w = size
    yy = torch.arange(h, dtype=torch.float32)[:, None]
    xx = torch.arange(w, dtype=torch.float32)[None, :]
    cy = torch.rand(count, generator=generator) * h
    cx = torch.rand(count, generator=generator) * w
    ry = 2 + torch.rand(count, generator=generator) * h / 3
    rx = 2 + torch.rand(count, generator=generator) * w / 3
    out = torch.empty((count, h, w), dtype=torch.bool)
    for i in range(count):  # one at a time: 1000 float maps at once would be gigabytes
        out[i] = ((yy - cy[i]) / ry[i]) ** 2 + ((xx - cx[i]) / rx[i]) ** 2 <= 1
    return out
