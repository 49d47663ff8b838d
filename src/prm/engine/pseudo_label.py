"""Pseudo ground truth from PRM predictions: the first half of self-training (WISE-style).

``pseudo_label(predictor, dataset, out_dir)`` predicts every image of a *training* split,
keeps the confident instances and writes them as a COCO instances json
(``<out_dir>/instances.json``: ``images``, ``annotations`` with RLE ``segmentation``,
``score``, ``area`` and ``bbox``, ``categories``) that ``prm distill`` trains on.

Filtering (:class:`PseudoLabelFilter`), in this order, per image:

1. **image labels**: an instance of a class the image is not labelled with is dropped
   (the only supervision used is the image-level labels the PRM network trained on;
   instance ground truth is never read);
2. **score**: ``score >= score_threshold`` (the predictor's ``score``, by default the
   peak's CRM value);
3. **area**: masks of fewer than ``min_area`` pixels are dropped;
4. **one instance per peak**: of instances whose peaks fall on the same image pixel,
   only the highest-scoring one is kept.

Resumable and shardable (:mod:`prm.engine.shards`): each process (``rank`` of
``world_size`` under ``torchrun``) takes images ``index % world_size == rank`` and
appends one JSON line per finished image to ``<out_dir>/parts/part-<rank>.jsonl``; a
rerun skips the images already there, and rank 0 merges the parts ordered by dataset
index, so the merged file does not depend on the number of processes or on
interruptions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from prm.engine.shards import read_records, run_shard
from prm.files import write_text_atomic
from prm.masks import encode_rle, masks_to_boxes

__all__ = [
    "PseudoLabelFilter",
    "filter_instances",
    "merge_parts",
    "pseudo_label",
    "pseudo_label_quality",
]

INSTANCES_FILE = "instances.json"


@dataclass
class PseudoLabelFilter:
    """Which predicted instances become pseudo ground truth (see the module docstring).

    Args:
        score_threshold: keep instances scoring at least this (default 0).
        min_area: keep masks of at least this many pixels (default 16).
        one_per_peak: keep at most one instance per peak pixel (default on).
    """

    score_threshold: float = 0.0
    min_area: int = 16
    one_per_peak: bool = True

    def validate(self) -> None:
        if not (
            isinstance(self.score_threshold, (int, float))
            and self.score_threshold == self.score_threshold
        ):
            raise ValueError(f"score_threshold must be a number, got {self.score_threshold!r}")
        if not isinstance(self.min_area, int) or self.min_area < 0:
            raise ValueError(f"min_area must be an integer >= 0, got {self.min_area!r}")


def filter_instances(
    prediction: dict[str, torch.Tensor],
    image_labels: torch.Tensor,
    filt: PseudoLabelFilter,
) -> tuple[list[int], dict[str, int]]:
    """Indices of the instances of one prediction kept as pseudo ground truth.

    Args:
        prediction: a :class:`~prm.predictor.Predictor` dict: ``masks`` (N, H, W) bool,
            ``labels`` (N,), ``scores`` (N,), optionally ``peaks`` (N, 2) ``(x, y)``.
        image_labels (Tensor[C]): the image's multi-hot labels.
        filt: the filter settings.

    Returns:
        ``(kept indices in decreasing score order, counts of instances dropped by each
        rule: {"label", "score", "area", "peak"})``.
    """
    labels = torch.as_tensor(prediction["labels"]).long().cpu()
    scores = torch.as_tensor(prediction["scores"]).float().cpu()
    masks = torch.as_tensor(prediction["masks"]).cpu()
    present = torch.as_tensor(image_labels).cpu() > 0
    areas = masks.flatten(1).sum(1) if len(masks) else torch.zeros(0, dtype=torch.long)
    peaks = prediction.get("peaks")
    dropped = {"label": 0, "score": 0, "area": 0, "peak": 0}
    seen_peaks: set[tuple[int, int]] = set()
    kept: list[int] = []
    # Stable sort: equal scores keep the predictor's order, so the result is deterministic.
    for i in torch.sort(scores, descending=True, stable=True).indices.tolist():
        label = int(labels[i])
        if not (0 <= label < len(present)) or not bool(present[label]):
            dropped["label"] += 1
            continue
        if float(scores[i]) < filt.score_threshold:
            dropped["score"] += 1
            continue
        if int(areas[i]) < filt.min_area:
            dropped["area"] += 1
            continue
        if filt.one_per_peak and peaks is not None:
            x, y = (int(v) for v in torch.as_tensor(peaks[i]).floor().tolist())
            if (x, y) in seen_peaks:
                dropped["peak"] += 1
                continue
            seen_peaks.add((x, y))
        kept.append(i)
    return kept, dropped


def _annotations(prediction: dict, kept: list[int], category_ids: Sequence[int]) -> list[dict]:
    """COCO annotation dicts (without ids) of the kept instances."""
    if not kept:
        return []
    masks = torch.as_tensor(prediction["masks"]).cpu()[kept].bool()
    rles = encode_rle(masks)
    boxes = masks_to_boxes(masks).int()
    boxes[:, 2:] -= boxes[:, :2]  # COCO's (x, y, width, height)
    out = []
    for j, i in enumerate(kept):
        out.append(
            {
                "category_id": int(category_ids[int(prediction["labels"][i])]),
                "segmentation": {"size": list(rles[j]["size"]), "counts": rles[j]["counts"]},
                "area": int(masks[j].sum()),
                "bbox": boxes[j].tolist(),
                "iscrowd": 0,
                "score": float(prediction["scores"][i]),
            }
        )
    return out


def pseudo_label(
    predictor,
    dataset,
    out_dir: str | os.PathLike,
    *,
    filt: PseudoLabelFilter | None = None,
    proposals=None,
    limit: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier=None,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path | None:
    """Pseudo-label a dataset split (see the module docstring).

    Args:
        predictor: a :class:`~prm.predictor.Predictor` (or anything returning its dicts).
        dataset: a ``prm.data`` dataset without a transform whose targets carry
            ``image_labels`` (float (C,) multi-hot); instance masks are never read.
        out_dir: output folder (``instances.json`` and ``parts/``).
        filt: the filter (default :class:`PseudoLabelFilter()`).
        proposals: per-image proposal source (:func:`prm.engine.inference.proposal_source`).
        limit: only the first ``limit`` images.
        rank, world_size: this process's shard (``torchrun``); one process by default.
        barrier: called once this rank is done, before rank 0 merges (``dist.barrier``).
        settings: extra values recorded with the run (e.g. the checkpoint); a rerun
            with other settings or filters is refused.
        progress: show a progress bar.

    Returns:
        The merged ``instances.json`` on rank 0, ``None`` on the other ranks.
    """
    filt = filt or PseudoLabelFilter()
    filt.validate()
    record = {"filter": asdict(filt), **(settings or {})}
    category_ids = list(dataset.category_ids)

    def work(index: int, image: torch.Tensor, target: dict, props) -> dict[str, Any]:
        if "image_labels" not in target:
            raise ValueError(
                f"image {target.get('image_id')} has no image-level labels: "
                "pseudo-labelling needs a labelled training split"
            )
        prediction = predictor([image], [props])[0]
        kept, dropped = filter_instances(prediction, target["image_labels"], filt)
        return {
            "image_id": str(target["image_id"]),
            "height": int(image.shape[1]),
            "width": int(image.shape[2]),
            "predicted": len(prediction["scores"]),
            "dropped": dropped,
            "annotations": _annotations(prediction, kept, category_ids),
        }

    records = run_shard(
        dataset,
        out_dir,
        work,
        settings=record,
        proposals=proposals,
        max_size=getattr(predictor, "max_size", None),
        limit=limit,
        rank=rank,
        world_size=world_size,
        barrier=barrier,
        progress=progress,
        desc="pseudo-label",
    )
    if records is None:
        return None
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return merge_parts(out_dir, dataset.classes, category_ids, {"images": count, **record})


def merge_parts(
    out_dir: str | os.PathLike,
    classes: Sequence[str],
    category_ids: Sequence[int],
    settings: dict[str, Any] | None = None,
) -> Path:
    """Merge ``<out_dir>/parts/*.jsonl`` into ``<out_dir>/instances.json`` (atomically).

    Images are ordered by dataset index (each once, whichever part holds it); image ids
    are ``index + 1`` and the string id is kept as ``prm_image_id`` (``file_name`` too).
    """
    out = Path(out_dir)
    records = read_records(out)
    images, annotations, skipped = [], [], []
    dropped = {"label": 0, "score": 0, "area": 0, "peak": 0}
    predicted = 0
    for index, r in records.items():
        if "skipped" in r:
            skipped.append([index, r["skipped"]])
            continue
        images.append(
            {
                "id": index + 1,
                "file_name": r["image_id"],
                "prm_image_id": r["image_id"],
                "height": r["height"],
                "width": r["width"],
            }
        )
        predicted += r["predicted"]
        for key, value in r["dropped"].items():
            dropped[key] = dropped.get(key, 0) + value
        for ann in r["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **ann})
    info = {
        "description": "prm pseudo-labels",
        "settings": settings or {},
        "predicted_instances": predicted,
        "kept_instances": len(annotations),
        "dropped": dropped,
        "skipped_images": skipped,
    }
    data = {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": int(c), "name": str(n)} for c, n in zip(category_ids, classes, strict=True)
        ],
    }
    path = out / INSTANCES_FILE
    write_text_atomic(path, json.dumps(data))
    return path


def pseudo_label_quality(
    pseudo_labels: str | os.PathLike, dataset, iou_threshold: float = 0.5
) -> dict[str, float]:
    """Precision and recall of pseudo-labels against the dataset's instance ground truth.

    For measurement only (training never reads the ground truth). Within each image and
    class, pseudo instances are matched greedily by decreasing score to the unmatched
    ground-truth mask of highest IoU, a match needing ``IoU >= iou_threshold``.

    Returns:
        ``{"precision", "recall", "pseudo_instances", "gt_instances", "images"}``:
        precision = matched / pseudo instances, recall = matched / ground-truth
        instances of the pseudo-labelled images.
    """
    from pycocotools import mask as mask_utils

    data = json.loads(Path(pseudo_labels).read_text())
    index_of = {dataset.image_id(i): i for i in range(len(dataset))}
    label_of = {int(c): i for i, c in enumerate(dataset.category_ids)}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    matched = pseudo = gt_count = 0
    for image in data["images"]:
        index = index_of[str(image["prm_image_id"])]
        target = dataset[index][1]
        gt_masks = torch.as_tensor(target["masks"]).bool()
        gt_labels = torch.as_tensor(target["labels"]).tolist()
        gt_count += len(gt_labels)
        used: set[int] = set()
        anns = sorted(by_image.get(int(image["id"]), []), key=lambda a: -a["score"])
        for ann in anns:
            pseudo += 1
            mask = torch.from_numpy(mask_utils.decode(ann["segmentation"])).bool()
            label = label_of[int(ann["category_id"])]
            best, best_iou = None, iou_threshold
            for j, gt_label in enumerate(gt_labels):
                if j in used or gt_label != label:
                    continue
                union = (mask | gt_masks[j]).sum().item()
                iou = (mask & gt_masks[j]).sum().item() / union if union else 0.0
                if iou >= best_iou:
                    best, best_iou = j, iou
            if best is not None:
                used.add(best)
                matched += 1
    return {
        "precision": matched / pseudo if pseudo else 0.0,
        "recall": matched / gt_count if gt_count else 0.0,
        "pseudo_instances": pseudo,
        "gt_instances": gt_count,
        "images": len(data["images"]),
    }
