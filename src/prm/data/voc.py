"""PASCAL VOC 2012 in its native layout (``VOCdevkit/VOC2012``).

- image-level labels from ``Annotations/<id>.xml`` (``difficult`` objects count as
  positive, as the PRM authors trained; ``use_difficult=False`` drops them);
- splits from ``ImageSets/Segmentation``, ``ImageSets/Main`` or any id-list file (such as
  the 10,582-image ``train_aug`` list used with SBD);
- instance ground truth from ``SegmentationObject/<id>.png`` (pixel = instance index
  1..N, 0 background, 255 boundary) and ``SegmentationClass/<id>.png`` (pixel = VOC class
  1..20), the instance's class being the class under its pixels. Images without these
  files (most of ``train_aug``) are items without instance keys.

Masks refer to the stored JPEG pixels, so EXIF orientation is ignored.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .common import ItemDataset, multi_hot
from .images import DataError, load_image, load_index_png

__all__ = ["VOC_CLASSES", "VOCDataset", "read_voc_xml", "read_split_file"]

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle",
    "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip

VOC_IGNORE = 255
LABEL_SOURCES = ("annotations", "segmentation", "union")


def read_split_file(path: str | os.PathLike) -> list[str]:
    """Image ids of a VOC id-list file, one per line.

    Extra columns are ignored, so ``ImageSets/Main/<class>_train.txt`` (``id  1``) reads
    too; blank lines and ``#`` comments are skipped.

    Raises:
        FileNotFoundError: no such file.
        DataError: the file lists no id.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found")
    ids = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            ids.append(line.split()[0])
    if not ids:
        raise DataError(path, "split file is empty (no image ids)")
    return ids


def read_voc_xml(path: str | os.PathLike) -> list[dict]:
    """Objects of a VOC annotation file.

    Tolerates what real exporters write: float box coordinates, an empty
    ``<difficult/>`` tag (= 0), surrounding white space and upper case in names.

    Returns:
        list of ``{"name": str, "difficult": bool}``, possibly empty.

    Raises:
        FileNotFoundError: no such file.
        DataError: the file is not well-formed XML or an object has no name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(path, f"not well-formed XML ({exc})") from exc
    objects = []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip().lower()
        if not name:
            raise DataError(path, f"object {i} has no <name>")
        difficult = (obj.findtext("difficult") or "0").strip()
        try:
            is_difficult = bool(int(float(difficult or "0")))
        except ValueError as exc:
            raise DataError(path, f"object {i} has <difficult>{difficult}</difficult>") from exc
        objects.append({"name": name, "difficult": is_difficult})
    return objects


class VOCDataset(ItemDataset):
    """PASCAL VOC 2012 with image-level labels and, where annotated, instance masks.

    Items follow ``docs/conventions.md``: ``(image, target)`` with ``image_id`` (the file
    stem), ``image_labels`` (float32 (20,)), ``size`` (H, W) and, for images with
    segmentation files, ``masks`` (bool (N, H, W)), ``labels`` (int64 (N,)),
    ``iscrowd`` (all False) and ``ignore_mask`` (bool (H, W), the 255 boundary band).

    Args:
        root: the ``VOC2012`` folder (or a ``VOCdevkit`` folder that contains it).
        split: a split name looked up in ``ImageSets/Segmentation`` then
            ``ImageSets/Main`` (``"train"``, ``"val"``, ``"train_aug"`` if you put that
            list there), an explicit ``"Main/train"``, or a path to an id-list file.
        transform: callable applied to the PIL image (e.g. :class:`TrainTransform`).
        use_difficult: count ``difficult`` objects in the image-level labels (authors).
        instance_masks: read the segmentation PNGs when present (off: faster training).
        labels_from: where image-level labels come from: ``"annotations"`` (the XML,
            as the authors), ``"segmentation"`` (classes in ``SegmentationClass``), or
            ``"union"``. ``"annotations"`` falls back to the segmentation for an image
            without XML.
        on_error: ``"raise"`` or ``"skip"`` (see :mod:`prm.data.common`).
        classes: class names (defaults to the 20 VOC classes).

    Raises (also with ``on_error="skip"``, as they concern the whole dataset):
        FileNotFoundError: ``root`` or the split file is missing.
        DataError: the split file is empty.
    """

    # Image-level training on ImageSets/Main; instance masks (the paper's table) on the
    # segmentation val split.
    DEFAULT_SPLITS = {"train": "Main/train", "val": "Main/val", "eval": "val"}

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        transform: Callable | None = None,
        use_difficult: bool = True,
        instance_masks: bool = True,
        labels_from: str = "annotations",
        on_error: str = "raise",
        classes: list[str] | None = None,
    ):
        super().__init__(transform, on_error)
        if labels_from not in LABEL_SOURCES:
            raise ValueError(f"labels_from must be one of {LABEL_SOURCES}, got {labels_from!r}")
        self.root = self._find_root(Path(root))
        self.split = split
        self.use_difficult = use_difficult
        self.instance_masks = instance_masks
        self.labels_from = labels_from
        self.classes = list(classes or VOC_CLASSES)
        self.category_ids = list(range(1, len(self.classes) + 1))
        self._index = {name: i for i, name in enumerate(self.classes)}
        self.split_file = self._find_split(split)
        self.ids: list[str] = []
        self._labels: list[torch.Tensor | None] = []  # None: read from the segmentation
        # Indexing reads every XML now (a few seconds for train_aug), so that a bad file
        # stops or is skipped before training starts, not an hour into it.
        for image_id in read_split_file(self.split_file):
            try:
                labels = self._index_item(image_id)
            except (DataError, FileNotFoundError) as error:
                self._bad(error, image_id)
                continue
            self.ids.append(image_id)
            self._labels.append(labels)

    @staticmethod
    def _find_root(root: Path) -> Path:
        if (root / "VOC2012").is_dir() and not (root / "JPEGImages").is_dir():
            root = root / "VOC2012"
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: VOC root folder not found")
        if not (root / "JPEGImages").is_dir():
            raise FileNotFoundError(
                f"{root}: not a VOC2012 folder (no JPEGImages/); pass VOCdevkit/VOC2012"
            )
        return root

    def _find_split(self, split: str) -> Path:
        candidate = Path(split)
        if candidate.suffix == ".txt" or candidate.is_file():
            return candidate
        sets = self.root / "ImageSets"
        if "/" in split:  # "Main/train" or "Segmentation/val"
            return sets / f"{split}.txt"
        for folder in ("Segmentation", "Main"):
            if (sets / folder / f"{split}.txt").is_file():
                return sets / folder / f"{split}.txt"
        raise FileNotFoundError(
            f"{sets}: no split {split!r} in ImageSets/Segmentation or ImageSets/Main "
            "(pass a split name, 'Main/NAME', or the path of an id-list file)"
        )

    def _paths(self, image_id: str) -> dict[str, Path]:
        return {
            "image": self.root / "JPEGImages" / f"{image_id}.jpg",
            "xml": self.root / "Annotations" / f"{image_id}.xml",
            "object": self.root / "SegmentationObject" / f"{image_id}.png",
            "class": self.root / "SegmentationClass" / f"{image_id}.png",
        }

    def _has_segmentation(self, paths: dict[str, Path]) -> bool:
        return paths["object"].is_file() and paths["class"].is_file()

    def _index_item(self, image_id: str) -> torch.Tensor | None:
        """Image-level labels from the XML, or None when they come from the masks."""
        paths = self._paths(image_id)
        if not paths["image"].is_file():
            raise FileNotFoundError(f"{paths['image']}: image file not found")
        has_seg = self._has_segmentation(paths)
        if self.labels_from == "segmentation" or (not paths["xml"].is_file() and has_seg):
            if not has_seg:
                missing = paths["class"] if paths["object"].is_file() else paths["object"]
                raise FileNotFoundError(f"{missing}: segmentation file not found")
            return None  # labels are read from the masks with the image
        objects = read_voc_xml(paths["xml"])
        unknown = sorted({o["name"] for o in objects} - set(self._index))
        if unknown:
            raise DataError(paths["xml"], f"unknown class name(s) {unknown}")
        if not objects:
            raise DataError(paths["xml"], "no <object> in the annotation")
        kept = [self._index[o["name"]] for o in objects if self.use_difficult or not o["difficult"]]
        return multi_hot(kept, self.num_classes)

    def __len__(self) -> int:
        return len(self.ids)

    def image_id(self, index: int) -> str:
        return self.ids[index]

    def _load(self, index: int) -> tuple:
        image_id = self.ids[index]
        paths = self._paths(image_id)
        image = load_image(paths["image"])  # VOC masks refer to the stored pixels
        size = (image.height, image.width)
        target: dict = {"image_id": image_id, "size": size}
        image_labels = self._labels[index]
        want_seg = self.instance_masks or image_labels is None or self.labels_from == "union"
        if want_seg and self._has_segmentation(paths):
            instances = self._read_instances(paths, size)
            if self.instance_masks:
                target.update(instances)
            seg_labels = multi_hot(instances["labels"].tolist(), self.num_classes)
            if image_labels is None:
                image_labels = seg_labels
            elif self.labels_from == "union":
                image_labels = torch.maximum(image_labels, seg_labels)
        target["image_labels"] = image_labels
        return image, target

    def _read_instances(self, paths: dict[str, Path], size: tuple[int, int]) -> dict:
        objects = load_index_png(paths["object"], size=size, what="SegmentationObject mask")
        classes = load_index_png(paths["class"], size=size, what="SegmentationClass mask")
        ignore = (objects == VOC_IGNORE) | (classes == VOC_IGNORE)
        masks, labels = [], []
        for instance in np.unique(objects):
            if instance in (0, VOC_IGNORE):
                continue
            mask = objects == instance
            # The instance's class is the majority class under it (they agree in VOC;
            # a stray boundary pixel of another class must not split the instance).
            under = classes[mask]
            under = under[(under != 0) & (under != VOC_IGNORE)]
            if under.size == 0:
                raise DataError(
                    paths["class"], f"instance {instance} has no class in SegmentationClass"
                )
            value = int(np.bincount(under).argmax())
            if not 1 <= value <= self.num_classes:
                raise DataError(paths["class"], f"class value {value} is not a VOC class")
            masks.append(mask)
            labels.append(value - 1)
        h, w = size
        return {
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w).bool(),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "iscrowd": torch.zeros(len(labels), dtype=torch.bool),
            "ignore_mask": torch.from_numpy(ignore),
        }
