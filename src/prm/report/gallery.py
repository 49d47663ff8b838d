"""The report's gallery: per-image scores, the best / worst / random sample, saved to disk.

Each image gets a **per-image AP** (:func:`match_image`): predictions are matched to the
image's ground truth exactly as mAP^r matches them (greedy, in score order, at mask IoU
0.5 by default, crowd regions ignored); per class present in the image's ground truth or
predictions, AP is the area under that image's precision-recall envelope (a class
predicted but absent from the ground truth scores 0); the image's score is the mean over
those classes. An image with neither ground truth nor predictions has no score (``None``)
and is never "best" or "worst", only drawn at random.

:class:`GallerySampler` sees every image once while ``prm predict --evaluate`` or
``prm evaluate`` runs, keeps the ``count`` best, ``count`` worst and ``count`` random
(reservoir sampling, seeded) images with what the report draws (the photo, ground truth,
predicted masks, scores, peaks, each instance's PRM, the class response maps), and
writes them to ``RUN/gallery/`` as ``NNN.npz`` with an ``index.json``. File names never
come from image ids. Memory holds at most ``3 * count`` images' data at once.
"""

from __future__ import annotations

import heapq
import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from prm.data.images import to_uint8_image
from prm.evaluation.ap import precision_recall, voc_ap
from prm.evaluation.base import ground_truth, predicted_instances, prediction_masks, target_size
from prm.evaluation.instance import _crowd_overlap, match_instances
from prm.files import write_text_atomic
from prm.masks import mask_iou

__all__ = ["GROUPS", "GallerySampler", "load_gallery", "match_image"]

GROUPS = ("best", "worst", "random")
#: Longest side PRMs are stored at: they are smooth (upsampled network outputs), and
#: full-size float maps of every instance would make the run folder heavy.
PRM_STORE_SIZE = 192
INDEX_FILE = "index.json"


def match_image(
    target: Mapping,
    prediction: Mapping,
    num_classes: int,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """Match one image's predictions to its ground truth and score the image.

    Args:
        target: ``masks`` bool (G, H, W), ``labels`` (G,), optionally ``iscrowd`` (G,).
        prediction: ``masks`` bool (N, H, W) or ``rles``, ``labels`` (N,), ``scores`` (N,).
        num_classes: number of classes.
        iou_threshold: mask IoU a true positive needs (mAP^r's rule).

    Returns:
        ``{"score": per-image AP (float, or None without ground truth and predictions),
        "matches": int8 ndarray (N,) in the prediction's order (1 true positive,
        0 false positive, -1 ignored: on a crowd region), "missed": bool ndarray (G,)
        (non-crowd ground truth no true positive found), "class_ap": {label: AP}}``.
    """
    size = target_size(target)
    gt_masks, gt_labels, crowd = ground_truth(target, size, num_classes)
    masks = prediction_masks(prediction, size)
    labels, scores = predicted_instances(prediction, len(masks), num_classes)
    order = torch.argsort(-scores, stable=True)
    s_masks, s_labels, s_scores = masks[order], labels[order], scores[order]
    keep = torch.nonzero(~crowd).flatten()
    gt, gt_l = gt_masks[keep], gt_labels[keep]
    iou = mask_iou(s_masks, gt)
    iou_same = torch.where(s_labels[:, None] == gt_l[None, :], iou, torch.full_like(iou, -1.0))
    crowd_overlap = _crowd_overlap(s_masks, s_labels, gt_masks[crowd], gt_labels[crowd])
    sorted_matches = match_instances(iou_same, crowd_overlap, [iou_threshold])[0]
    matches = np.zeros(len(masks), dtype=np.int8)
    matches[order.numpy()] = sorted_matches
    missed = np.zeros(len(gt_masks), dtype=bool)
    missed[keep.numpy()] = True
    if len(gt) and len(s_masks):
        best_gt = iou_same.max(1).indices.numpy()
        for i in np.nonzero(sorted_matches == 1)[0]:
            missed[keep[best_gt[i]].item()] = False

    class_ap: dict[int, float] = {}
    s_labels_np, s_scores_np = s_labels.numpy(), s_scores.double().numpy()
    for c in sorted(set(gt_l.tolist()) | set(s_labels_np.tolist())):
        n_pos = int((gt_l == c).sum())
        sel = s_labels_np == c
        if n_pos == 0:
            if (sorted_matches[sel] >= 0).any():  # false positives of an absent class
                class_ap[c] = 0.0
            continue
        precision, recall = precision_recall(s_scores_np[sel], sorted_matches[sel], n_pos)
        class_ap[c] = voc_ap(precision, recall) if len(precision) else 0.0
    score = float(np.mean(list(class_ap.values()))) if class_ap else None
    return {"score": score, "matches": matches, "missed": missed, "class_ap": class_ap}


def _small(maps: torch.Tensor) -> np.ndarray:
    """(K, H, W) float maps shrunk to :data:`PRM_STORE_SIZE` on the long side, float16."""
    maps = maps.detach().cpu().float()
    if len(maps) == 0:
        return np.zeros((0, 1, 1), dtype=np.float16)
    h, w = maps.shape[1:]
    scale = PRM_STORE_SIZE / max(h, w)
    if scale < 1:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        maps = F.interpolate(maps[None], size=size, mode="area")[0]
    return maps.numpy().astype(np.float16)


class GallerySampler:
    """Keeps the best, worst and random images of a run for the report's gallery.

    Call :meth:`add` once per image (any order), then :meth:`finish`.

    Args:
        out_dir: the gallery folder (``RUN/gallery``), created by :meth:`finish`; files in
            it from an earlier run are replaced.
        classes: class names, index = label.
        count: images per group (best, worst, random).
        seed: seed of the random sample.
        iou_threshold: mask IoU of a true positive for the per-image AP.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        classes: Sequence[str],
        count: int = 4,
        seed: int = 0,
        iou_threshold: float = 0.5,
    ):
        if count < 0:
            raise ValueError(f"gallery count must be >= 0, got {count}")
        self.out_dir = Path(out_dir)
        self.classes = list(classes)
        self.count = count
        self.iou_threshold = iou_threshold
        self._rng = random.Random(seed)
        self._best: list = []  # min-heap of (score, -seen, entry): the largest scores
        self._worst: list = []  # min-heap of (-score, -seen, entry): the smallest scores
        self._random: list = []
        self._seen = 0
        self._scored: list[float] = []

    def add(self, image: Any, target: Mapping, prediction: Mapping) -> float | None:
        """Score one image and keep it if it is among the best, worst or random ones.

        Args:
            image: the photo, ``(3, H, W)`` float in [0, 1] or uint8, or PIL.
            target: the ground truth (``image_id``, ``masks``, ``labels``, ...).
            prediction: ``masks`` or ``rles``, ``labels``, ``scores``; optionally
                ``peaks`` (N, 2) ``(x, y)``, ``prms`` (N, H, W), ``crm`` (C, h, w).

        Returns:
            The image's per-image AP (``None`` when undefined).
        """
        result = match_image(target, prediction, len(self.classes), self.iou_threshold)
        seen = self._seen
        self._seen += 1
        score = result["score"]
        if score is not None:
            self._scored.append(score)
        if self.count == 0:
            return score
        lazy = _LazyEntry(image, target, prediction, result, seen)
        if score is not None:
            _push(self._best, (score, -seen), lazy, self.count)
            _push(self._worst, (-score, -seen), lazy, self.count)
        # Reservoir sampling (algorithm R): each image kept with probability count / seen.
        if len(self._random) < self.count:
            self._random.append(lazy)
        else:
            j = self._rng.randrange(seen + 1)
            if j < self.count:
                self._random[j] = lazy
        return score

    def finish(self) -> Path:
        """Write ``NNN.npz`` per kept image and ``index.json``; returns the folder."""
        best = [e for _, _, e in sorted(self._best, key=lambda t: t[:2], reverse=True)]
        worst = [e for _, _, e in sorted(self._worst, key=lambda t: t[:2], reverse=True)]
        chosen: dict[int, tuple[str, Any]] = {}
        for group, entries in (
            ("best", best),
            ("worst", worst),
            ("random", sorted(self._random, key=lambda e: e.seen)),
        ):
            for entry in entries:
                chosen.setdefault(entry.seen, (group, entry))  # shown once, first group
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for old in self.out_dir.glob("*.npz"):
            old.unlink()
        items = []
        for number, (group, entry) in enumerate(chosen.values()):
            name = f"{number:03d}.npz"
            np.savez_compressed(self.out_dir / name, **entry.arrays())
            items.append(
                {
                    "file": name,
                    "group": group,
                    "image_id": str(entry.target.get("image_id", entry.seen)),
                    "index": entry.seen,
                    "score": entry.result["score"],
                }
            )
        index = {
            "format": 1,
            "classes": self.classes,
            "iou_threshold": self.iou_threshold,
            "images": self._seen,
            "scored_images": len(self._scored),
            "mean_image_ap": float(np.mean(self._scored)) if self._scored else None,
            "items": items,
        }
        write_text_atomic(self.out_dir / INDEX_FILE, json.dumps(index, indent=2))
        return self.out_dir


class _LazyEntry:
    """One image's data, kept as given until it is written (most are dropped first)."""

    def __init__(self, image, target, prediction, result, seen):
        self.image, self.target, self.prediction = image, target, prediction
        self.result, self.seen = result, seen
        # Keep only what the gallery draws: a prediction dict may hold much more.
        keys = ("masks", "rles", "labels", "scores", "peaks", "prms", "crm")
        self.prediction = {k: prediction[k] for k in keys if k in prediction}
        wanted = ("image_id", "masks", "labels", "iscrowd", "size")
        self.target = {k: target[k] for k in wanted if k in target}

    def arrays(self) -> dict[str, np.ndarray]:
        size = target_size(self.target)
        masks = prediction_masks(self.prediction, size)
        labels = torch.as_tensor(self.prediction["labels"]).long()
        gt_labels = torch.as_tensor(self.target["labels"]).long()
        crowd = self.target.get("iscrowd")
        out = {
            "image": to_uint8_image(self.image).cpu().permute(1, 2, 0).numpy(),
            "masks": masks.numpy(),
            "labels": labels.numpy(),
            "scores": torch.as_tensor(self.prediction["scores"]).float().numpy(),
            "matches": self.result["matches"],
            "gt_masks": self.target["masks"].bool().cpu().numpy(),
            "gt_labels": gt_labels.numpy(),
            "gt_crowd": (
                np.zeros(len(gt_labels), bool) if crowd is None else crowd.bool().cpu().numpy()
            ),
            "missed": self.result["missed"],
        }
        if "peaks" in self.prediction:
            out["peaks"] = torch.as_tensor(self.prediction["peaks"]).float().numpy()
        if "prms" in self.prediction:
            out["prms"] = _small(self.prediction["prms"])
        if "crm" in self.prediction:
            classes = sorted(set(labels.tolist()) | set(gt_labels.tolist()))
            crm = self.prediction["crm"]
            out["crm"] = _small(crm[classes]) if classes else np.zeros((0, 1, 1), np.float16)
            out["crm_classes"] = np.asarray(classes, dtype=np.int64)
        return out


def _push(heap: list, key: tuple, entry: _LazyEntry, count: int) -> None:
    item = (*key, entry)
    if len(heap) < count:
        heapq.heappush(heap, item)
    elif key > heap[0][:2]:
        heapq.heapreplace(heap, item)


def load_gallery(folder: str | os.PathLike) -> tuple[dict, list[dict]]:
    """Read a gallery folder: ``(index, items)``, each item its index entry + arrays.

    Raises:
        FileNotFoundError: no ``index.json`` there.
        ValueError: naming the file, when the index or an ``.npz`` is unreadable.
    """
    folder = Path(folder)
    path = folder / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no gallery index")
    try:
        index = json.loads(path.read_text())
        entries = index["items"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a gallery index ({exc})") from exc
    items = []
    for entry in entries:
        name = str(entry.get("file", ""))
        # Only plain names inside the folder: an index must not point elsewhere.
        if Path(name).name != name or not name.endswith(".npz"):
            raise ValueError(f"{path}: bad gallery file name {name!r}")
        try:
            with np.load(folder / name, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{folder / name}: unreadable gallery file ({exc})") from exc
        items.append({**entry, **arrays})
    return index, items
