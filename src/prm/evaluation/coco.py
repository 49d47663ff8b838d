"""COCO-style mask AP through pycocotools' ``COCOeval`` (``iouType="segm"``).

The targets are converted to a COCO ground truth in memory: each instance becomes an
annotation with its mask as compressed RLE, ``iscrowd`` kept, so crowd regions are
handled exactly as COCO does (a detection matched to a crowd region is ignored, crowd
regions never count as missed), and ``area`` taken from the target's ``"area"`` when it
has one (:class:`~prm.data.COCODataset` passes on the json's ``area``: for a polygon, the
polygon's area, which is what pycocotools uses for the small/medium/large ranges), else
the mask's pixel count. Predictions become COCO results the way ``COCO.loadRes`` builds
them from a results file (area = mask area, bbox from the mask). Only RLEs are kept
between ``process`` and ``summarize``. With the json's areas, every number equals
pycocotools run on the json itself.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence

import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from prm.masks import encode_rle

from .base import (
    Evaluator,
    as_tensor,
    ground_truth,
    predicted_instances,
    prediction_masks,
    target_size,
)

__all__ = ["COCOEvaluator", "COCO_STATS"]

# Names of COCOeval.stats, in its order.
COCO_STATS = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


class COCOEvaluator(Evaluator):
    """COCO mask AP (AP, AP50, AP75, size buckets, AR) and per-class AP via pycocotools.

    Reads target ``masks``, ``labels``, ``size`` (and ``iscrowd``, ``area``) and prediction
    ``masks`` or ``rles``, ``labels``, ``scores``. The target's ``ignore_mask`` plays no
    part (COCO has none).

    Args:
        classes: class names, index = label.
        category_ids: COCO category id of each label (``dataset.category_ids``); default
            ``label + 1``.
        max_dets: most detections per image considered (COCO: 100, the highest-scored).

    Summary keys: ``coco/AP``, ``coco/AP50``, ``coco/AP75``, ``coco/APs``, ``coco/APm``,
    ``coco/APl``, ``coco/AR1``, ``coco/AR10``, ``coco/AR100`` (``AR<max_dets>``),
    ``coco/ARs``, ``coco/ARm``, ``coco/ARl`` and ``coco/AP/<class>``, fractions in [0, 1],
    ``None`` where COCOeval has nothing to average (it prints -1 there).
    """

    name = "coco"
    target_keys = ("masks", "labels")
    prediction_keys = ("masks", "labels", "scores")

    def __init__(
        self,
        classes: Sequence[str],
        category_ids: Sequence[int] | None = None,
        max_dets: int = 100,
    ):
        if category_ids is None:
            category_ids = range(1, len(classes) + 1)
        self.category_ids = [int(c) for c in category_ids]
        if len(self.category_ids) != len(classes) or len(set(self.category_ids)) != len(classes):
            raise ValueError(
                f"category_ids must give {len(classes)} distinct ids (one per class), "
                f"got {list(self.category_ids)}"
            )
        self.max_dets = int(max_dets)
        super().__init__(classes)

    def reset(self) -> None:
        self._image_ids: list = []
        self._sizes: list[tuple[int, int]] = []
        self._gts: list[list[dict]] = []  # per image: {"rle", "label", "iscrowd"}
        self._dts: list[list[dict]] = []  # per image: {"rle", "label", "score"}

    def process_image(self, target: Mapping, prediction: Mapping) -> None:
        size = target_size(target)
        masks, labels, crowd = ground_truth(target, size, self.num_classes)
        areas = _areas(target, masks)
        self._gts.append(
            [
                {"rle": rle, "label": int(label), "iscrowd": int(c), "area": area}
                for rle, label, c, area in zip(
                    encode_rle(masks), labels.tolist(), crowd.tolist(), areas, strict=True
                )
            ]
        )
        if "rles" in prediction:  # already RLE (a results file): no need to re-encode
            rles = list(prediction["rles"])
            bad = [tuple(r["size"]) for r in rles if tuple(int(s) for s in r["size"]) != size]
            if bad:
                raise ValueError(
                    f"prediction RLEs of image {target.get('image_id', '?')} have size "
                    f"{bad[0]}, expected {size}"
                )
        else:  # validated as every evaluator does, named by the target's image id
            image = {"image_id": target.get("image_id", "?"), "masks": prediction["masks"]}
            rles = encode_rle(prediction_masks(image, size))
        pred_labels, scores = predicted_instances(prediction, len(rles), self.num_classes)
        self._dts.append(
            [
                {"rle": rle, "label": int(label), "score": float(score)}
                for rle, label, score in zip(
                    rles, pred_labels.tolist(), scores.tolist(), strict=True
                )
            ]
        )
        self._image_ids.append(target.get("image_id", len(self._image_ids)))
        self._sizes.append(size)

    def coco_objects(self) -> tuple[COCO, COCO]:
        """The ground truth and the results as pycocotools ``COCO`` objects."""
        ids = _coco_image_ids(self._image_ids)
        images = [
            {"id": i, "height": h, "width": w} for i, (h, w) in zip(ids, self._sizes, strict=True)
        ]
        categories = [
            {"id": cid, "name": name, "supercategory": ""}
            for cid, name in zip(self.category_ids, self.classes, strict=True)
        ]
        gt_anns, dt_anns = [], []
        for image_id, gts, dts in zip(ids, self._gts, self._dts, strict=True):
            for g in gts:
                gt_anns.append(
                    _annotation(g["rle"], image_id, self.category_ids[g["label"]], len(gt_anns))
                )
                gt_anns[-1]["iscrowd"] = g["iscrowd"]
                if g["area"] is not None:  # the json's area, as COCOeval reads it there
                    gt_anns[-1]["area"] = g["area"]
            for d in dts:
                dt_anns.append(
                    _annotation(d["rle"], image_id, self.category_ids[d["label"]], len(dt_anns))
                )
                dt_anns[-1]["score"] = d["score"]
        return _coco(images, categories, gt_anns), _coco(images, categories, dt_anns)

    def summarize(self) -> dict:
        results: dict = {}
        keys = [*COCO_STATS[:8], f"AR{self.max_dets}", *COCO_STATS[9:]]
        if not self._image_ids:
            results.update({f"coco/{k}": None for k in keys})
            results.update({f"coco/AP/{name}": None for name in self.classes})
            return results
        gt, dt = self.coco_objects()
        cocoeval = COCOeval(gt, dt, iouType="segm")
        cocoeval.params.maxDets = [1, 10, self.max_dets]
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints as it goes
            cocoeval.evaluate()
            cocoeval.accumulate()
            cocoeval.summarize()
        for key, value in zip(keys, cocoeval.stats, strict=True):
            results[f"coco/{key}"] = float(value) if value > -1 else None
        # precision: (iou thresholds, recall points, categories, area ranges, max dets)
        precision = cocoeval.eval["precision"][:, :, :, 0, -1]
        for k, cat_id in enumerate(cocoeval.params.catIds):
            p = precision[:, :, k]
            name = self.classes[self.category_ids.index(cat_id)]
            results[f"coco/AP/{name}"] = float(p[p > -1].mean()) if (p > -1).any() else None
        return results


def _areas(target: Mapping, masks) -> list[float | None]:
    """The target's ``area`` per instance (``None``: use the mask's pixel count)."""
    if "area" not in target:
        return [None] * len(masks)
    image = target.get("image_id", "?")
    areas = as_tensor(target["area"], f"area of image {image}").double()
    if areas.shape != (len(masks),) or not bool(torch.isfinite(areas).all()):
        raise ValueError(
            f"target of image {image} has {len(masks)} masks but area {areas.tolist()}; "
            "give one finite area per instance"
        )
    return areas.tolist()


def _coco_image_ids(image_ids: list) -> list[int]:
    """COCO integer ids for the processed images.

    The targets' own ids when they are all integers (COCO data, where the id is the COCO
    id as a string), so that COCOeval breaks score ties between images in the same order
    as on the official files; else 1, 2, 3...
    """
    try:
        ids = [int(i) for i in image_ids]
    except (TypeError, ValueError):
        ids = []
    if len(ids) == len(image_ids) and len(set(ids)) == len(ids):
        return ids
    return list(range(1, len(image_ids) + 1))


def _annotation(rle: dict, image_id: int, category_id: int, index: int) -> dict:
    counts = rle["counts"]
    encoded = {
        "size": list(rle["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    return {
        "id": index + 1,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": encoded,
        "area": float(mask_utils.area(encoded)),
        "bbox": [float(v) for v in mask_utils.toBbox(encoded)],
        "iscrowd": 0,
    }


def _coco(images: list[dict], categories: list[dict], annotations: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
