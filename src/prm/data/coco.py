"""COCO instances json (``instances_<split>.json`` and its image folder).

- image-level labels from the non-crowd annotations;
- instance masks from polygons, uncompressed and compressed RLE (pycocotools); crowd
  regions are kept as instances with ``iscrowd=True`` for evaluation to ignore;
- category ids mapped to contiguous indices ``0 .. C-1`` in increasing id order, with the
  names in ``classes`` and the original ids in ``category_ids``.

COCO annotations refer to the stored pixels; the json's ``width``/``height`` are checked
against the image file, and EXIF orientation is ignored unless ``exif_transpose=True``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from pycocotools import mask as mask_utils

from prm.masks import decode_rle

from .common import ItemDataset, multi_hot
from .images import DataError, load_image

__all__ = ["COCODataset"]


class COCODataset(ItemDataset):
    """A COCO-format instance segmentation dataset with image-level labels.

    Items follow ``docs/conventions.md``: ``image_id`` is the COCO id as a string,
    ``image_labels`` float32 (C,), ``size`` (H, W), ``masks`` bool (N, H, W), ``labels``
    int64 (N,), ``iscrowd`` bool (N,), ``ignore_mask`` bool (H, W) (all False: COCO marks
    regions to ignore as crowd instances instead), ``area`` float64 (N,) (the json's
    ``area``, used by COCO AP's size ranges; the mask's pixel count where it has none).

    Args:
        annotation_file: the instances json.
        image_dir: folder of the images named by ``file_name``.
        transform: callable applied to the PIL image.
        keep_empty: keep images without non-crowd annotations (all-zero labels). Off by
            default, as for training; turn it on for evaluation so that false positives
            on empty images count.
        instance_masks: decode the masks (off: faster training).
        exif_transpose: apply EXIF orientation (only for json made on upright photos).
        on_error: ``"raise"`` or ``"skip"`` (see :mod:`prm.data.common`). Bad
            annotations (unknown image or category, malformed segmentation) and missing
            image files are found while indexing; a bad annotation skips its whole image,
            since dropping it alone would make that image's labels wrong.

    Raises (also with ``on_error="skip"``):
        FileNotFoundError: the json or the image folder is missing.
        DataError: the json is unreadable or lacks ``images``/``annotations``/``categories``.
    """

    DEFAULT_SPLITS = {"train": "train2017", "val": "val2017", "eval": "val2017"}
    EVAL_OPTIONS = {"keep_empty": True}

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        transform: Callable | None = None,
        keep_empty: bool = False,
        instance_masks: bool = True,
        exif_transpose: bool = False,
        on_error: str = "raise",
    ):
        super().__init__(transform, on_error)
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        self.instance_masks = instance_masks
        self.exif_transpose = exif_transpose
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"{self.image_dir}: COCO image folder not found")
        data = self._read_json(self.annotation_file)

        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        self.category_ids = [int(c["id"]) for c in categories]
        self.classes = [str(c["name"]) for c in categories]
        if len(set(self.category_ids)) != len(self.category_ids):
            raise DataError(self.annotation_file, "duplicate category ids")
        index_of = {cid: i for i, cid in enumerate(self.category_ids)}

        images = {}
        for im in data["images"]:
            if not {"id", "file_name", "width", "height"} <= im.keys():
                raise DataError(self.annotation_file, f"image entry lacks fields: {im!r:.120}")
            images[int(im["id"])] = im
        by_image: dict[int, list[dict]] = {image_id: [] for image_id in images}
        bad: dict[int, str] = {}  # image id -> first problem
        for ann in data["annotations"]:
            problem, image_id = self._check_annotation(ann, images, index_of)
            if problem is None:
                by_image[image_id].append(ann)
            elif image_id in images:
                bad.setdefault(image_id, problem)
            else:  # an annotation of an image the json does not list: nothing to skip
                self._bad(DataError(self.annotation_file, problem), f"annotation {ann.get('id')}")

        self.images: list[dict] = []
        self._annotations: list[list[dict]] = []
        self._labels: list[torch.Tensor] = []
        self.num_empty = 0  # images without non-crowd annotations (dropped unless keep_empty)
        for image_id in sorted(images):
            info = images[image_id]
            if image_id in bad:
                self._bad(DataError(self.annotation_file, bad[image_id]), str(image_id))
                continue
            path = self.image_dir / info["file_name"]
            if not path.is_file():
                self._bad(FileNotFoundError(f"{path}: image file not found"), str(image_id))
                continue
            anns = by_image[image_id]
            positive = [index_of[int(a["category_id"])] for a in anns if not a.get("iscrowd", 0)]
            if not positive:
                self.num_empty += 1
                if not keep_empty:
                    continue
            self.images.append(info)
            self._annotations.append(anns)
            self._labels.append(multi_hot(positive, len(self.classes)))
        self._index_of = index_of

    @staticmethod
    def _read_json(path: Path) -> dict:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: COCO annotation file not found")
        try:
            with open(path) as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(path, f"not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise DataError(path, "expected a JSON object with images/annotations/categories")
        missing = [k for k in ("images", "annotations", "categories") if k not in data]
        if missing:
            raise DataError(path, f"missing key(s) {missing}")
        return data

    @staticmethod
    def _check_annotation(ann: dict, images: dict, index_of: dict) -> tuple[str | None, int]:
        """(problem or None, image id) of one annotation."""
        ann_id = ann.get("id")
        try:
            image_id = int(ann["image_id"])
            category_id = int(ann["category_id"])
        except (KeyError, TypeError, ValueError):
            return f"annotation {ann_id} lacks an integer image_id/category_id", -1
        if image_id not in images:
            return f"annotation {ann_id} refers to image id {image_id}, not in 'images'", image_id
        if category_id not in index_of:
            return f"annotation {ann_id} has unknown category id {category_id}", image_id
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            if not seg or not all(isinstance(p, list) and len(p) >= 6 for p in seg):
                return f"annotation {ann_id} has a polygon with fewer than 3 points", image_id
        elif not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
            return f"annotation {ann_id} has no polygon or RLE segmentation", image_id
        return None, image_id

    def __len__(self) -> int:
        return len(self.images)

    def image_id(self, index: int) -> str:
        return str(self.images[index]["id"])

    def _load(self, index: int) -> tuple:
        info = self.images[index]
        path = self.image_dir / info["file_name"]
        image = load_image(path, exif_transpose=self.exif_transpose)
        h, w = image.height, image.width
        expected = (int(info["height"]), int(info["width"]))
        if (h, w) != expected:
            hint = "; the image may need exif_transpose=True" if (w, h) == expected else ""
            raise DataError(
                path,
                f"image is {w}x{h} but {self.annotation_file.name} says "
                f"{info['width']}x{info['height']}{hint}",
            )
        target = {"image_id": str(info["id"]), "image_labels": self._labels[index], "size": (h, w)}
        if self.instance_masks:
            target.update(self._read_instances(index, h, w, path))
        return image, target

    def _read_instances(self, index: int, h: int, w: int, path: Path) -> dict:
        anns = self._annotations[index]
        rles = []
        for ann in anns:
            seg = ann["segmentation"]
            if isinstance(seg, list):  # polygons of one object
                seg = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif [int(v) for v in seg["size"]] != [h, w]:
                raise DataError(
                    self.annotation_file,
                    f"annotation {ann.get('id')} RLE size {seg['size']} != image {[h, w]} "
                    f"({path.name})",
                )
            rles.append(seg)  # RLEs compressed or not: decode_rle reads both
        masks = decode_rle(rles, (h, w))  # one decode call for all
        return {
            "masks": masks,
            "labels": torch.tensor(
                [self._index_of[int(a["category_id"])] for a in anns], dtype=torch.int64
            ),
            "iscrowd": torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool),
            "ignore_mask": torch.zeros(h, w, dtype=torch.bool),
            # The json's area (a polygon's own area), which COCOeval's size ranges use;
            # the mask's pixel count where the json has none.
            "area": torch.tensor(
                [_area(a, m) for a, m in zip(anns, masks, strict=True)], dtype=torch.float64
            ),
        }


def _area(annotation: dict, mask: torch.Tensor) -> float:
    area = annotation.get("area")
    if isinstance(area, (int, float)) and not isinstance(area, bool) and area >= 0:
        return float(area)
    return float(mask.sum())
