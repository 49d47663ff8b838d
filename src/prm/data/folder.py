"""A folder of a user's own images, with a CSV of image-level labels and optional masks.

The CSV has a header row; paths are relative to the image folder; multiple names in a
cell are separated by ``;``::

    file,labels,masks,instance_labels
    beach/0001.jpg,dog;person,masks/0001.png,dog;person;person
    beach/0002.jpg,cat,,

- ``file`` (required) and ``labels`` (class names; may be empty for an image with none);
- ``masks`` (optional): a PNG of instance indices (0 background, 1..N instances, 255
  ignore), with ``instance_labels`` naming the class of instance 1, 2, ... N in order.
  ``labels`` may then be left empty: it defaults to the instances' classes.

Without a CSV, every image in the folder is an item with no labels (for prediction).

Photos are turned upright by their EXIF orientation (``exif_transpose=True``), and masks
are taken to be drawn on the upright photo, as annotation tools such as labelme show it.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .common import BadDataWarning, ItemDataset, multi_hot
from .images import DataError, load_image, load_index_png

__all__ = ["FolderDataset", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE = 255


def _names(cell: str | None) -> list[str]:
    return [name.strip() for name in (cell or "").split(";") if name.strip()]


def _same_file(a: str, b: str) -> bool:
    return os.path.normpath(a.replace("\\", "/")) == os.path.normpath(b.replace("\\", "/"))


class FolderDataset(ItemDataset):
    """Images in a folder, labelled by a CSV (see the module docstring for its format).

    Items follow ``docs/conventions.md``; ``image_id`` is the path relative to ``root``
    without its extension (the file stem for a flat folder). Rows with masks also get
    ``masks``, ``labels``, ``iscrowd`` (all False) and ``ignore_mask`` (pixels = 255).

    Args:
        root: the image folder.
        csv_file: the CSV (absolute, or relative to the working directory or ``root``);
            ``None`` lists every image in ``root`` (recursively) with no labels.
        classes: class names in index order. Default: the sorted names of the CSV.
            With explicit classes, a name outside them is a bad row.
        transform: callable applied to the PIL image.
        exif_transpose: turn photos upright by their EXIF orientation.
        on_error: ``"raise"`` or ``"skip"`` (see :mod:`prm.data.common`).

    Raises (also with ``on_error="skip"``):
        FileNotFoundError: ``root`` or the CSV is missing.
        DataError: the CSV has no ``file`` column, or lists no image.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        csv_file: str | os.PathLike | None = None,
        *,
        classes: list[str] | None = None,
        transform: Callable | None = None,
        exif_transpose: bool = True,
        on_error: str = "raise",
    ):
        super().__init__(transform, on_error)
        self.root = Path(root)
        self.exif_transpose = exif_transpose
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: image folder not found")
        if csv_file is None:
            self.csv_file = None
            rows = [
                {"file": str(p.relative_to(self.root))}
                for p in sorted(self.root.rglob("*"))
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            ]
            if not rows:
                raise DataError(self.root, f"no image files ({', '.join(IMAGE_EXTENSIONS)})")
        else:
            self.csv_file = self._find_csv(Path(csv_file))
            rows = self._read_csv(self.csv_file)
        if classes is None:
            names = set()
            for row in rows:
                names.update(_names(row.get("labels")) + _names(row.get("instance_labels")))
            classes = sorted(names)
        self.classes = list(classes)
        self.category_ids = list(range(1, len(self.classes) + 1))
        self._index = {name: i for i, name in enumerate(self.classes)}

        self.rows: list[dict] = []
        first_line: dict[str, int] = {}  # image id -> CSV line of its first row
        duplicates: list[str] = []
        for line, row in enumerate(rows, start=2):
            try:
                indexed = self._index_row(row, line)
            except (DataError, FileNotFoundError) as error:
                self._bad(error, row["file"])
                continue
            image_id = indexed["image_id"]
            if image_id in first_line:
                earlier = first_line[image_id]
                if _same_file(rows[earlier - 2]["file"], row["file"]):
                    # Counted twice in training, two rows for one id in evaluation.
                    duplicates.append(f"line {line} repeats line {earlier}")
                    continue
                problem = (
                    f"{row['file']} has the image id {image_id!r} of line {earlier} "
                    f"({rows[earlier - 2]['file']}); rename one of them"
                )
                self._bad(DataError(self._where(line), problem), row["file"])
                continue
            first_line[image_id] = line
            self.rows.append(indexed)
        if duplicates:
            warnings.warn(
                f"{self.csv_file}: {len(duplicates)} duplicate row(s) of the same image "
                f"left out, the first row of each kept ({'; '.join(duplicates[:5])}"
                f"{'; ...' if len(duplicates) > 5 else ''})",
                BadDataWarning,
                stacklevel=2,
            )

    def _find_csv(self, path: Path) -> Path:
        for candidate in (path, self.root / path):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{path}: label CSV not found (also looked in {self.root})")

    @staticmethod
    def _read_csv(path: Path) -> list[dict]:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
            reader = csv.DictReader(f)
            fields = [name.strip() for name in reader.fieldnames or []]
            if "file" not in fields:
                raise DataError(path, f"the header must have a 'file' column, got {fields}")
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
        rows = [r for r in rows if r.get("file")]
        if not rows:
            raise DataError(path, "no image rows")
        return rows

    def _where(self, line: int) -> str:
        return f"{self.csv_file}, line {line}"

    def _index_row(self, row: dict, line: int) -> dict:
        path = self.root / row["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image file not found ({self._where(line)})")
        names = _names(row.get("labels"))
        instance_names = _names(row.get("instance_labels"))
        unknown = sorted(set(names + instance_names) - set(self._index))
        if unknown:
            raise DataError(self._where(line), f"unknown class name(s) {unknown}")
        mask = row.get("masks") or None
        if mask:
            if not instance_names:
                raise DataError(self._where(line), "'masks' given without 'instance_labels'")
            if not (self.root / mask).is_file():
                raise FileNotFoundError(f"{self.root / mask}: mask file not found")
        elif instance_names:
            raise DataError(self._where(line), "'instance_labels' given without 'masks'")
        labels = [self._index[n] for n in names or instance_names]
        return {
            "file": row["file"],
            "image_id": str(Path(row["file"]).with_suffix("")),
            "image_labels": multi_hot(labels, self.num_classes),
            "mask": mask,
            "instance_labels": [self._index[n] for n in instance_names],
        }

    def __len__(self) -> int:
        return len(self.rows)

    def image_id(self, index: int) -> str:
        return self.rows[index]["image_id"]

    def _load(self, index: int) -> tuple:
        row = self.rows[index]
        image = load_image(self.root / row["file"], exif_transpose=self.exif_transpose)
        size = (image.height, image.width)
        target = {"image_id": row["image_id"], "image_labels": row["image_labels"], "size": size}
        if row["mask"]:
            target.update(self._read_instances(row, size))
        return image, target

    def _read_instances(self, row: dict, size: tuple[int, int]) -> dict:
        path = self.root / row["mask"]
        hint = " (masks must match the upright, EXIF-rotated photo)" if self.exif_transpose else ""
        try:
            index_map = load_index_png(path, size=size, what="instance mask")
        except DataError as error:
            raise DataError(path, error.problem + hint) from error
        n = len(row["instance_labels"])
        present = set(np.unique(index_map).tolist()) - {0, IGNORE}
        if present != set(range(1, n + 1)):
            raise DataError(
                path,
                f"has instance values {sorted(present)} but instance_labels names {n} "
                f"instance(s) (1..{n}) for {row['file']}",
            )
        masks = np.stack([index_map == k for k in range(1, n + 1)]) if n else None
        h, w = size
        return {
            "masks": torch.from_numpy(masks) if n else torch.zeros(0, h, w, dtype=torch.bool),
            "labels": torch.tensor(row["instance_labels"], dtype=torch.int64),
            "iscrowd": torch.zeros(n, dtype=torch.bool),
            "ignore_mask": torch.from_numpy(index_map == IGNORE),
        }
