"""``build_dataset``: one entry point for the CLI (``--dataset NAME --root PATH --split S``)."""

from __future__ import annotations

import os
from pathlib import Path

from .common import ItemDataset

__all__ = ["DATASETS", "build_dataset"]

DATASETS = ("voc", "coco", "folder", "shapes", "glyphs")

_DEFAULT_SPLITS = {
    "voc": "train",
    "coco": "val2017",
    "folder": None,
    "shapes": "train",
    "glyphs": "train",
}


def build_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str | None = None,
    **kwargs,
) -> ItemDataset:
    """Build a dataset by name, as the command line does.

    Args:
        name: ``"voc"``, ``"coco"``, ``"folder"``, ``"shapes"`` (ShapeScenes) or
            ``"glyphs"`` (GlyphScenes).
        root: where the data is:
            - voc: ``VOCdevkit/VOC2012`` (or ``VOCdevkit``);
            - coco: the folder holding ``annotations/instances_<split>.json`` and
              ``<split>/`` (override with ``annotation_file=`` / ``image_dir=``; with
              both, no root is needed);
            - folder: the image folder;
            - shapes, glyphs: optional cache folder (nothing needed: images are generated).
        split: which part (default in brackets):
            - voc: split name in ``ImageSets/Segmentation`` or ``Main``, ``"Main/NAME"``,
              or an id-list path [``train``];
            - coco: e.g. ``train2017``, ``val2017`` [``val2017``];
            - folder: the CSV of labels (``<root>/<split>.csv`` or a path); default
              ``<root>/labels.csv`` when it exists, else all images unlabelled;
            - shapes, glyphs: ``train``, ``val`` or ``test`` [``train``].
        **kwargs: passed to the reader (``transform``, ``on_error``, ...).

    Returns:
        the dataset (a :class:`torch.utils.data.Dataset` with ``classes`` and
        ``category_ids``).
    """
    name = name.lower()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    split = split if split is not None else _DEFAULT_SPLITS[name]
    if name == "shapes":
        from .shapes import ShapeScenes

        if root is not None:
            kwargs.setdefault("cache_dir", root)
        return ShapeScenes(split=split, **kwargs)
    if name == "glyphs":
        from .glyphs import GlyphScenes

        if root is not None:
            kwargs.setdefault("cache_dir", root)
        return GlyphScenes(split=split, **kwargs)
    if name == "coco" and kwargs.get("annotation_file") and kwargs.get("image_dir"):
        from .coco import COCODataset  # a COCO export in its own layout: no root needed

        return COCODataset(kwargs.pop("annotation_file"), kwargs.pop("image_dir"), **kwargs)
    if root is None:
        raise ValueError(f"dataset {name!r} needs a root folder (--root PATH)")
    root = Path(root)
    if name == "voc":
        from .voc import VOCDataset

        return VOCDataset(root, split, **kwargs)
    if name == "coco":
        from .coco import COCODataset

        annotation_file = kwargs.pop("annotation_file", None)
        if annotation_file is None:
            annotation_file = root / "annotations" / f"instances_{split}.json"
        image_dir = kwargs.pop("image_dir", None) or root / split
        return COCODataset(annotation_file, image_dir, **kwargs)
    from .folder import FolderDataset

    csv_file = kwargs.pop("csv_file", None)
    if csv_file is None and split is not None:
        csv_file = split if str(split).endswith(".csv") else f"{split}.csv"
    if csv_file is None and (root / "labels.csv").is_file():
        csv_file = root / "labels.csv"
    return FolderDataset(root, csv_file, **kwargs)
