"""Reading and writing precomputed segment proposals of one image.

Formats (chosen by the file's suffix, or ``format=``):

``coco-rle`` (``.json``)
    ``{"size": [H, W], "segmentations": [RLE, ...], "scores": [...]}`` with COCO
    compressed RLEs as pycocotools writes them. Also read: a bare list of RLEs, and a
    list of ``{"segmentation": RLE, "score": s}`` (COCO results style).
``base64-rle`` (``.json``)
    The PRM authors' demo format: a list with one ``{"data": str, "shape": [H, W]}`` per
    proposal, ``data`` being base64 of little-endian uint32 ``(start, length)`` pairs,
    ``start`` 1-based over the row-major pixels. Recognised by its keys when reading.
``npz``
    The compact form (see :class:`CompactProposals`): ``superpixels`` ``(H, W)`` int32,
    ``membership`` ``(P, ceil(L/8))`` uint8 (bits packed along the cells), ``num_cells``
    and optional ``scores``. Also read: a plain ``masks`` array ``(P, H, W)``.
``mcg-mat`` (``.mat``)
    MCG's output: ``superpixels`` ``(H, W)`` labels 1..S, ``labels`` a cell array with one
    vector of (1-based) superpixel ids per proposal, optional ``scores``; as top-level
    variables or inside one struct (``save(f, 'candidates')``). Also read: a plain
    ``masks`` ``H x W x P`` array. MATLAB v7.3 (HDF5) files are not supported by scipy.

Proposals come back in ranked order: the file's order, or by descending score when the
file has scores (a stable sort, so a file already in ranked order keeps it).
Files are written atomically (a temporary file, then ``os.replace``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import scipy.io
import torch

from prm.files import write_atomic, write_text_atomic

from ..masks import decode_rle, encode_rle
from .compact import CompactProposals

__all__ = ["FORMATS", "load_proposals", "save_proposals", "encode_base64_rle", "decode_base64_rle"]

FORMATS = ("coco-rle", "base64-rle", "npz", "mcg-mat")
_SUFFIX_FORMAT = {".json": "coco-rle", ".npz": "npz", ".mat": "mcg-mat"}


def _error(path: Path, problem: str) -> ValueError:
    return ValueError(f"{path}: {problem}")


def _format_of(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in FORMATS:
            raise ValueError(f"unknown proposal format {format!r}; choose from {FORMATS}")
        return format
    suffix = path.suffix.lower()
    if suffix not in _SUFFIX_FORMAT:
        raise _error(
            path,
            f"cannot tell the proposal format from the suffix {suffix!r} "
            f"(use .json, .npz or .mat, or pass format= one of {FORMATS})",
        )
    return _SUFFIX_FORMAT[suffix]


# ---------------------------------------------------------------- base64 run lengths


def encode_base64_rle(mask: torch.Tensor) -> dict:
    """One mask in the PRM authors' format.

    Args:
        mask (Tensor[H, W]): binary mask.

    Returns:
        ``{"data": base64 of uint32 (start, length) pairs, "shape": [H, W]}``, ``start``
        1-based over the row-major pixels.
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be (H, W), got shape {tuple(mask.shape)}")
    flat = mask.detach().cpu().numpy().astype(bool).ravel()
    edges = np.flatnonzero(np.diff(np.concatenate([[False], flat, [False]])))
    starts, ends = edges[0::2], edges[1::2]
    pairs = np.stack([starts + 1, ends - starts], 1).astype("<u4")
    return {
        "data": base64.b64encode(pairs.tobytes()).decode("ascii"),
        "shape": [int(mask.shape[0]), int(mask.shape[1])],
    }


def decode_base64_rle(entry: dict) -> torch.Tensor:
    """Inverse of :func:`encode_base64_rle`: ``Tensor[H, W]`` bool."""
    if not isinstance(entry, dict) or "data" not in entry or "shape" not in entry:
        raise ValueError(f"expected {{'data': ..., 'shape': [H, W]}}, got {entry!r:.80}")
    try:
        h, w = (int(v) for v in entry["shape"])
        raw = base64.b64decode(entry["data"], validate=True)
    except (TypeError, ValueError, binascii.Error) as exc:
        raise ValueError(f"bad shape or base64 data ({exc})") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"shape must be positive, got {[h, w]}")
    if len(raw) % 8:
        raise ValueError(f"data is {len(raw)} bytes, not a whole number of uint32 pairs")
    pairs = np.frombuffer(raw, dtype="<u4").reshape(-1, 2).astype(np.int64)
    starts, lengths = pairs[:, 0] - 1, pairs[:, 1]
    if len(pairs) and (starts.min() < 0 or (starts + lengths).max() > h * w):
        raise ValueError(f"runs fall outside the {h}x{w} image")
    # +1 at each run's start, -1 after its end; the running sum is > 0 inside runs.
    delta = np.zeros(h * w + 1, dtype=np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, starts + lengths, -1)
    return torch.from_numpy(np.cumsum(delta[:-1]).reshape(h, w) > 0)


# ---------------------------------------------------------------- writing


def save_proposals(
    path: str | os.PathLike,
    proposals: torch.Tensor | CompactProposals,
    scores: torch.Tensor | None = None,
    format: str | None = None,
) -> Path:
    """Write the proposals of one image.

    Args:
        path: output file; its suffix picks the format unless ``format`` is given.
        proposals: ``Tensor[P, H, W]`` bool masks in ranked order, or CompactProposals.
        scores (Tensor[P], optional): a score per proposal (higher is better); written
            by every format but ``base64-rle``.
        format: one of ``FORMATS``.

    Returns:
        the path written.
    """
    path = Path(path)
    format = _format_of(path, format)
    compact = proposals if isinstance(proposals, CompactProposals) else None
    if compact is None:
        if not isinstance(proposals, torch.Tensor) or proposals.dim() != 3:
            raise ValueError(
                f"proposals must be a (P, H, W) tensor or CompactProposals, got "
                f"{getattr(proposals, 'shape', type(proposals).__name__)}"
            )
    count = len(compact) if compact is not None else proposals.shape[0]
    if scores is not None:
        scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
        if len(scores) != count:
            raise ValueError(f"{count} proposals but {len(scores)} scores")
    if format in ("npz", "mcg-mat") and compact is None:
        compact = CompactProposals.from_masks(proposals)
    masks = proposals if compact is None else None

    def dense() -> torch.Tensor:
        return masks if masks is not None else compact.masks()

    if format == "coco-rle":
        h, w = dense().shape[1:]
        doc = {"size": [h, w], "segmentations": encode_rle(dense())}
        if scores is not None:
            doc["scores"] = scores.tolist()
        write_text_atomic(path, json.dumps(doc))
    elif format == "base64-rle":
        doc = [encode_base64_rle(m) for m in dense()]
        if not doc:
            raise ValueError(
                f"{path}: the base64-rle format cannot store an empty set (it has no image "
                "size); use coco-rle, npz or mcg-mat"
            )
        write_text_atomic(path, json.dumps(doc))
    elif format == "npz":
        arrays = {
            "superpixels": compact.superpixels.numpy().astype(np.int32),
            "membership": np.packbits(compact.membership.numpy(), axis=1),
            "num_cells": np.int64(compact.membership.shape[1]),
        }
        if scores is not None:
            arrays["scores"] = scores.numpy()
        write_atomic(path, lambda f: np.savez_compressed(f, **arrays))
    else:  # mcg-mat
        labels = np.empty((len(compact), 1), dtype=object)
        for p, row in enumerate(compact.membership.numpy()):
            labels[p, 0] = (np.flatnonzero(row) + 1).astype(np.double)[None, :]
        arrays = {
            "superpixels": (compact.superpixels.numpy() + 1).astype(np.uint32),
            "labels": labels,
        }
        if scores is not None:
            arrays["scores"] = scores.numpy()[:, None]
        write_atomic(path, lambda f: scipy.io.savemat(f, arrays, do_compression=True))
    return path


# ---------------------------------------------------------------- reading


def load_proposals(
    path: str | os.PathLike,
    image_size: tuple[int, int] | None = None,
    *,
    format: str | None = None,
    allow_empty: bool = False,
    compact: bool = False,
) -> torch.Tensor | CompactProposals:
    """Read the proposals of one image.

    Args:
        path: a file in one of ``FORMATS`` (by suffix; ``.json`` files are told apart
            by their content).
        image_size: ``(H, W)`` of the image; when given, proposals of another size raise.
        format: force a format instead of guessing it from the suffix.
        allow_empty: accept a file with no proposals (by default an empty set raises,
            since it almost always means a failed precomputation).
        compact: return :class:`CompactProposals` instead of dense masks.

    Returns:
        ``Tensor[P, H, W]`` bool in ranked order (or CompactProposals).

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file: unreadable or corrupt, wrong size, or empty.
    """
    path = Path(path)
    format = _format_of(path, format)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: proposals file not found")
    if format in ("coco-rle", "base64-rle"):
        masks, scores = _read_json(path)
        result: torch.Tensor | CompactProposals = masks
    elif format == "npz":
        result, scores = _read_npz(path)
    else:
        result, scores = _read_mat(path)

    size = result.size if isinstance(result, CompactProposals) else tuple(result.shape[1:])
    count = len(result)
    if count == 0 and not allow_empty:
        raise _error(path, "contains no proposals (pass allow_empty=True to accept that)")
    if size == (0, 0):  # an empty JSON list says nothing about the image size
        if image_size is None:
            raise _error(path, "an empty proposal list without a size needs image_size=(H, W)")
        size = tuple(image_size)
        result = torch.zeros((0, *size), dtype=torch.bool)
    if image_size is not None and tuple(size) != tuple(image_size):
        raise _error(
            path,
            f"proposals are {size[0]}x{size[1]} but the image is "
            f"{image_size[0]}x{image_size[1]} (proposals must be at the image's own size)",
        )
    if scores is not None:
        if len(scores) != count:
            raise _error(path, f"{count} proposals but {len(scores)} scores")
        order = torch.from_numpy(np.argsort(-scores, kind="stable"))
        if isinstance(result, CompactProposals):
            result = CompactProposals(result.superpixels, result.membership[order])
        else:
            result = result[order]
    if compact and not isinstance(result, CompactProposals):
        return CompactProposals.from_masks(result)
    if not compact and isinstance(result, CompactProposals):
        return result.masks()
    return result


def _read_json(path: Path) -> tuple[torch.Tensor, np.ndarray | None]:
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _error(path, f"not valid JSON ({exc})") from None
    scores = None
    size = None
    if isinstance(doc, dict):
        if "segmentations" not in doc:
            raise _error(path, "a proposals JSON object needs a 'segmentations' list")
        entries, size, scores = doc["segmentations"], doc.get("size"), doc.get("scores")
    elif isinstance(doc, list):
        entries = doc
        if entries and all(isinstance(e, dict) and "segmentation" in e for e in entries):
            if all("score" in e for e in entries):
                scores = [e["score"] for e in entries]
            entries = [e["segmentation"] for e in entries]
    else:
        raise _error(path, f"expected a JSON object or list, got {type(doc).__name__}")
    if not isinstance(entries, list):
        raise _error(path, "'segmentations' must be a list")
    try:
        if entries and all(isinstance(e, dict) and "data" in e for e in entries):
            masks = [decode_base64_rle(e) for e in entries]
            if len({tuple(m.shape) for m in masks}) != 1:
                raise ValueError(
                    f"masks of different shapes {sorted({tuple(m.shape) for m in masks})}"
                )
            masks = torch.stack(masks)
        else:
            if size is not None:
                size = tuple(int(v) for v in size)
            elif not entries:
                size = (0, 0)  # an empty list without a size: shape unknown
            masks = decode_rle(entries, size)
        if scores is not None:
            scores = np.asarray(scores, dtype=np.float64).ravel()
    except (ValueError, TypeError, KeyError) as exc:
        raise _error(path, f"bad proposal entry: {exc}") from None
    return masks, scores


def _read_npz(path: Path) -> tuple[torch.Tensor | CompactProposals, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _error(path, f"not a readable .npz file ({exc})") from None
    scores = arrays.get("scores")
    scores = None if scores is None else np.asarray(scores, dtype=np.float64).ravel()
    if "masks" in arrays:
        masks = arrays["masks"]
        if masks.ndim != 3:
            raise _error(path, f"'masks' must be (P, H, W), got shape {masks.shape}")
        return torch.from_numpy(masks.astype(bool)), scores
    if {"superpixels", "membership", "num_cells"} <= arrays.keys():
        num_cells = int(arrays["num_cells"])
        packed = arrays["membership"]
        if packed.ndim != 2 or packed.dtype != np.uint8 or packed.shape[1] != (num_cells + 7) // 8:
            raise _error(
                path,
                f"'membership' has shape {packed.shape}, expected "
                f"(P, {(num_cells + 7) // 8}) uint8",
            )
        membership = np.unpackbits(packed, axis=1, count=num_cells).astype(bool)
        try:
            return CompactProposals(
                torch.from_numpy(arrays["superpixels"].astype(np.int64)),
                torch.from_numpy(membership),
            ), scores
        except ValueError as exc:
            raise _error(path, str(exc)) from None
    raise _error(
        path,
        f"expected 'masks' or 'superpixels' + 'membership' + 'num_cells', found {sorted(arrays)}",
    )


def _read_mat(path: Path) -> tuple[torch.Tensor | CompactProposals, np.ndarray | None]:
    try:
        data = scipy.io.loadmat(path)
    except NotImplementedError:
        raise _error(
            path,
            "MATLAB v7.3 (HDF5) files are not supported; re-save it in "
            "MATLAB with save(..., '-v7')",
        ) from None
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise _error(path, f"not a readable .mat file ({exc})") from None
    variables = {k: v for k, v in data.items() if not k.startswith("__")}
    if not ({"superpixels", "labels"} <= variables.keys() or "masks" in variables):
        # MCG's struct saved as one variable: save(f, 'candidates').
        structs = [v for v in variables.values() if v.dtype.names and v.size == 1]
        for struct in structs:
            fields = {name: struct[name].item() for name in struct.dtype.names}
            if {"superpixels", "labels"} <= fields.keys() or "masks" in fields:
                variables = fields
                break
    scores = variables.get("scores")
    scores = None if scores is None else np.asarray(scores, dtype=np.float64).ravel()
    if "masks" in variables:
        masks = np.asarray(variables["masks"])
        if masks.ndim == 2:
            masks = masks[:, :, None]
        if masks.ndim != 3:
            raise _error(path, f"'masks' must be H x W x P, got shape {masks.shape}")
        return torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1)).astype(bool)), scores
    if not {"superpixels", "labels"} <= variables.keys():
        raise _error(
            path,
            f"expected MCG's 'superpixels' and 'labels' (or 'masks'), found {sorted(variables)}",
        )
    superpixels = np.asarray(variables["superpixels"])
    if superpixels.ndim != 2:
        raise _error(path, f"'superpixels' must be H x W, got shape {superpixels.shape}")
    superpixels = superpixels.astype(np.int64) - 1  # MATLAB counts from 1
    n = int(superpixels.max()) + 1 if superpixels.size else 0
    if superpixels.size and superpixels.min() < 0:
        raise _error(path, "'superpixels' must be labelled from 1")
    labels = np.asarray(variables["labels"], dtype=object).ravel()
    membership = np.zeros((len(labels), n), dtype=bool)
    for p, ids in enumerate(labels):
        ids = np.asarray(ids, dtype=np.int64).ravel() - 1
        if len(ids) and (ids.min() < 0 or ids.max() >= n):
            raise _error(path, f"proposal {p + 1} names superpixels outside 1..{n}")
        membership[p, ids] = True
    return CompactProposals(torch.from_numpy(superpixels), torch.from_numpy(membership)), scores
