"""``build_dataset``: one entry point for the CLI (``--dataset NAME --root PATH --split S``)."""

from __future__ import annotations

import os
from pathlib import Path

from .common import ItemDataset

__all__ = ["DATASETS", "build_dataset", "reader"]

DATASETS = ("voc", "coco", "folder", "shapes", "glyphs")


def reader(name: str) -> type[ItemDataset]:
    """The reader class of a dataset name (one of :data:`DATASETS`)."""
    name = name.lower()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "voc":
        from .voc import VOCDataset as cls
    elif name == "coco":
        from .coco import COCODataset as cls
    elif name == "shapes":
        from .shapes import ShapeScenes as cls
    elif name == "glyphs":
        from .glyphs import GlyphScenes as cls
    else:
        from .folder import FolderDataset as cls
    return cls


def build_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str | None = None,
    *,
    evaluation: bool = False,
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
        split: which part; default: the reader's ``DEFAULT_SPLITS["train"]``, or
            ``["eval"]`` with ``evaluation=True``:
            - voc: split name in ``ImageSets/Segmentation`` or ``Main``, ``"Main/NAME"``,
              or an id-list path [``Main/train``; evaluation ``val``];
            - coco: e.g. ``train2017``, ``val2017`` [``train2017``; evaluation
              ``val2017``];
            - folder: the CSV of labels (``<root>/<split>.csv`` or a path); default
              ``<root>/labels.csv`` when it exists, else all images unlabelled;
            - shapes, glyphs: ``train``, ``val`` or ``test`` [``train``; evaluation ``val``].
        evaluation: read the data as evaluation needs it: the reader's evaluation split
            by default and its ``EVAL_OPTIONS`` (COCO keeps images without objects).
        **kwargs: passed to the reader (``transform``, ``on_error``, ...).

    Returns:
        the dataset (a :class:`torch.utils.data.Dataset` with ``classes`` and
        ``category_ids``).
    """
    cls = reader(name)
    name = name.lower()
    if split is None:
        split = cls.DEFAULT_SPLITS["eval" if evaluation else "train"]
    if evaluation:
        kwargs = {**cls.EVAL_OPTIONS, **kwargs}
    if name in ("shapes", "glyphs"):
        if root is not None:
            kwargs.setdefault("cache_dir", root)
        return cls(split=split, **kwargs)
    if name == "coco" and kwargs.get("annotation_file") and kwargs.get("image_dir"):
        # A COCO export in its own layout: no root needed.
        return cls(kwargs.pop("annotation_file"), kwargs.pop("image_dir"), **kwargs)
    if root is None:
        raise ValueError(f"dataset {name!r} needs a root folder (--root PATH)")
    root = Path(root)
    if name == "voc":
        return cls(root, split, **kwargs)
    if name == "coco":
        annotation_file = kwargs.pop("annotation_file", None)
        if annotation_file is None:
            annotation_file = root / "annotations" / f"instances_{split}.json"
        image_dir = kwargs.pop("image_dir", None) or root / split
        return cls(annotation_file, image_dir, **kwargs)

    csv_file = kwargs.pop("csv_file", None)
    if csv_file is None and split is not None:
        csv_file = split if str(split).endswith(".csv") else f"{split}.csv"
    if csv_file is None and (root / "labels.csv").is_file():
        csv_file = root / "labels.csv"
    return cls(root, csv_file, **kwargs)
