"""Binary mask utilities shared by retrieval, proposals and evaluation.

Masks are ``torch.bool`` tensors ``(N, H, W)``. Run-length encodings follow COCO's
compressed RLE (``{"size": [H, W], "counts": str}``) as pycocotools writes it.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torchvision
from pycocotools import mask as mask_utils

__all__ = ["encode_rle", "decode_rle", "mask_iou", "masks_to_boxes", "resize_nearest"]


def encode_rle(masks: torch.Tensor) -> list[dict]:
    """Encode binary masks as COCO compressed RLE.

    Args:
        masks (Tensor[N, H, W]): binary masks (any dtype; nonzero is foreground).

    Returns:
        list of N dicts ``{"size": [H, W], "counts": str}`` (JSON-serialisable).
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    array = np.asfortranarray(masks.detach().cpu().numpy().astype(np.uint8).transpose(1, 2, 0))
    rles = mask_utils.encode(array) if masks.shape[0] else []
    return [{"size": list(r["size"]), "counts": r["counts"].decode("ascii")} for r in rles]


def decode_rle(rles: list[dict], size: tuple[int, int] | None = None) -> torch.Tensor:
    """Decode COCO RLEs (compressed or uncompressed) into a bool tensor ``(N, H, W)``.

    Args:
        rles: list of ``{"size": [H, W], "counts": str | bytes | list[int]}``.
        size: ``(H, W)``, required when ``rles`` is empty; checked against each RLE.

    Returns:
        Tensor[N, H, W] (bool).
    """
    if not rles:
        if size is None:
            raise ValueError("decode_rle needs size=(H, W) for an empty list")
        return torch.zeros((0, *size), dtype=torch.bool)
    fixed = []
    for i, rle in enumerate(rles):
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise ValueError(f"RLE {i} must be a dict with 'size' and 'counts', got {rle!r:.80}")
        h, w = (int(v) for v in rle["size"])
        if size is not None and (h, w) != tuple(size):
            raise ValueError(f"RLE {i} has size {(h, w)}, expected {tuple(size)}")
        counts = rle["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            counts = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)["counts"]
        elif isinstance(counts, str):
            counts = counts.encode("ascii")
        fixed.append({"size": [h, w], "counts": counts})
    sizes = {tuple(r["size"]) for r in fixed}
    if len(sizes) != 1:
        raise ValueError(f"RLEs of different sizes cannot be stacked: {sorted(sizes)}")
    with warnings.catch_warnings():
        # pycocotools' Cython __array__ predates numpy 2's copy keyword: harmless noise.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        decoded = mask_utils.decode(fixed)  # (H, W, N) uint8
    return torch.from_numpy(np.ascontiguousarray(decoded.transpose(2, 0, 1))).bool()


def mask_iou(
    a: torch.Tensor, b: torch.Tensor, chunk: int = 256, exact: bool = False
) -> torch.Tensor:
    """Intersection over union of every pair of masks.

    Args:
        a (Tensor[N, H, W]): binary masks.
        b (Tensor[M, H, W]): binary masks of the same size.
        chunk: rows of ``a`` processed at once (bounds memory to ``chunk x H x W`` floats).
        exact: return float64 IoUs divided from exact integer pixel counts, so that
            ``iou >= t`` holds exactly when ``|a & b| / |a | b| >= t`` (an IoU of exactly
            0.7 is not rounded to 0.69999999 as float32 would). Used by evaluation.

    Returns:
        Tensor[N, M] (float32, or float64 with ``exact``); 0 where both masks are empty.
    """
    if a.dim() != 3 or b.dim() != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"mask_iou needs (N, H, W) and (M, H, W), got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    # float32 sums of 0/1 products are exact integers below 2^24 pixels; beyond, float64.
    count_dtype = torch.float64 if exact and a.shape[1] * a.shape[2] >= 2**24 else torch.float32
    bf = b.flatten(1).to(count_dtype)
    area_b = bf.sum(1)
    out = []
    for start in range(0, a.shape[0], chunk):
        af = a[start : start + chunk].flatten(1).to(count_dtype)
        inter = af @ bf.T
        union = af.sum(1)[:, None] + area_b[None, :] - inter
        if exact:  # the division of two exact counts, correctly rounded once
            inter, union = inter.double(), union.double()
        out.append(torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter)))
    if not out:
        return torch.zeros((0, b.shape[0]), dtype=torch.float64 if exact else torch.float32)
    return torch.cat(out)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes around masks, ``(x1, y1, x2, y2)`` with x2/y2 exclusive (COCO-style extent).

    :func:`torchvision.ops.masks_to_boxes` with its inclusive ``x2, y2`` moved one pixel
    out, so that a box's width is the mask's width in pixels.

    Args:
        masks (Tensor[N, H, W]): binary masks.

    Returns:
        Tensor[N, 4] (float32); an empty mask gets ``(0, 0, 0, 0)``.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {tuple(masks.shape)}")
    boxes = torchvision.ops.masks_to_boxes(masks)
    boxes[:, 2:] += masks.flatten(1).any(1, keepdim=True).to(boxes.dtype)
    return boxes


def resize_nearest(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, h, w)`` -> ``(N, H, W)`` by nearest neighbour (index selection: no float copy).

    Pixel ``i`` of the output takes pixel ``floor((i + 0.5) * h / H)`` of the input.
    """
    h, w = masks.shape[1:]
    rows = ((torch.arange(size[0]) + 0.5) * h / size[0]).long().clamp(max=h - 1)
    cols = ((torch.arange(size[1]) + 0.5) * w / size[1]).long().clamp(max=w - 1)
    return masks[:, rows][:, :, cols]
