"""COCO results files: the interchange format between ``prm predict`` and ``prm evaluate``.

A results file is a JSON list of ``{"image_id", "category_id", "segmentation", "score"}``
with the segmentation as compressed RLE (``docs/conventions.md``). Any method's results
in this format can be evaluated, not only ours. ``image_id`` is the COCO integer id for
COCO data and the string id (file stem) for other datasets; ``category_id`` is
``dataset.category_ids[label]``. Extra keys (``bbox``, ...) are ignored on reading.

Reading keeps the masks as RLE (a few hundred bytes each), so a whole dataset's results
fit in memory; they are decoded image by image during evaluation.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pycocotools import mask as mask_utils

from prm.files import AtomicFile
from prm.masks import encode_rle

__all__ = ["load_results", "save_results", "results_entries"]

RESULT_KEYS = ("image_id", "category_id", "segmentation", "score")


def results_entries(
    prediction: Mapping, image_id: int | str, category_ids: Sequence[int]
) -> list[dict]:
    """The results-file entries of one image's prediction.

    Args:
        prediction: dict with ``masks`` (bool (N, H, W)) or ``rles``, ``labels`` (int64
            (N,)) and ``scores`` (float (N,)).
        image_id: the id to write (COCO integer id, or the string id of other datasets).
        category_ids: category id of each label (``dataset.category_ids``).

    Returns:
        N dicts ``{"image_id", "category_id", "segmentation", "score"}``.
    """
    rles = prediction["rles"] if "rles" in prediction else encode_rle(prediction["masks"])
    labels = torch.as_tensor(prediction["labels"]).tolist()
    scores = torch.as_tensor(prediction["scores"]).tolist()
    if not len(rles) == len(labels) == len(scores):
        raise ValueError(
            f"prediction of image {image_id} has {len(rles)} masks, {len(labels)} labels and "
            f"{len(scores)} scores; they must agree"
        )
    entries = []
    for rle, label, score in zip(rles, labels, scores, strict=True):
        if not 0 <= label < len(category_ids):
            raise ValueError(
                f"prediction of image {image_id} has label {label}, but only "
                f"{len(category_ids)} category ids are given"
            )
        entries.append(
            {
                "image_id": image_id,
                "category_id": int(category_ids[label]),
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"]},
                "score": float(score),
            }
        )
    return entries


def save_results(
    path: str | os.PathLike,
    predictions: Iterable[Mapping],
    image_ids: Iterable[int | str],
    category_ids: Sequence[int],
) -> int:
    """Write predictions as a COCO results file, streaming (one image at a time).

    Args:
        path: the ``.json`` file to write (its folder must exist).
        predictions: one prediction dict per image (may be a generator).
        image_ids: the id of each image, in the same order (int for COCO, str otherwise).
        category_ids: category id of each label (``dataset.category_ids``).

    Returns:
        The number of entries written.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: folder {path.parent} does not exist")
    writer = ResultsWriter(path)
    image_ids = iter(image_ids)
    try:
        for prediction in predictions:
            try:
                image_id = next(image_ids)
            except StopIteration:
                raise ValueError(f"{path}: more predictions than image ids") from None
            writer.add(results_entries(prediction, image_id, category_ids))
    except BaseException:
        writer.file.discard()  # an interrupted run leaves no half-written results file
        raise
    writer.close()
    return writer.count


class ResultsWriter:
    """A COCO results JSON written image by image (flushed), so that no result is lost.

    The list goes to a :class:`~prm.files.AtomicFile`, renamed to ``path`` when complete;
    after an error it is closed as valid JSON and renamed to ``<stem>.partial.json``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file = AtomicFile(self.path, "x")
        self.file.handle.write("[")
        self.count = 0

    def add(self, entries: list[dict]) -> None:
        for entry in entries:
            self.file.handle.write(",\n" if self.count else "\n")
            self.file.handle.write(json.dumps(entry))
            self.count += 1
        self.file.handle.flush()

    def close(self, complete: bool = True) -> Path:
        self.file.handle.write("\n]\n")
        partial = self.path.with_name(f"{self.path.stem}.partial.json")
        return self.file.commit(None if complete else partial)


def load_results(
    path: str | os.PathLike,
    images: Any,
    category_ids: Sequence[int] | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> list[dict]:
    """Read a COCO results file into one prediction dict per image, masks kept as RLE.

    Args:
        path: the results ``.json`` file.
        images: a dataset (with ``image_id(i)`` and ``len``, e.g. from
            ``prm.data.build_dataset``) or a sequence of image ids. Ids in the file are
            matched to these as strings, so the COCO integer ``123`` matches ``"123"``.
        category_ids: category id of each label; default ``images.category_ids``.
        sizes: ``(H, W)`` of each image, to check the RLE sizes now (else they are
            checked when the masks are decoded).

    Returns:
        list aligned with ``images``: ``{"image_id", "labels": int64 (N,), "scores":
        float64 (N,), "rles": list of N RLE dicts, "entries": N indices of the entries in
        the file}``, entries in file order. An image
        without results gets N = 0.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file and the entry: not JSON, not a list, an entry without
            a required key, an unknown image id or category id, a malformed RLE, an RLE
            whose size differs from the image's, a non-finite score.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: results file not found")
    image_ids, category_ids = _images_and_categories(path, images, category_ids)
    if sizes is not None and len(sizes) != len(image_ids):
        raise ValueError(f"{path}: {len(sizes)} sizes given for {len(image_ids)} images")
    index = {str(image_id): i for i, image_id in enumerate(image_ids)}
    if len(index) != len(image_ids):
        seen: set[str] = set()
        twice = sorted({str(i) for i in image_ids if str(i) in seen or seen.add(str(i))})
        raise ValueError(
            f"the dataset lists image id(s) {twice[:5]} more than once, so the results in "
            f"{path} cannot be matched to images (fix the dataset, not the results file)"
        )
    label_of = {int(cid): label for label, cid in enumerate(category_ids)}
    out = [
        {"image_id": i, "labels": [], "scores": [], "rles": [], "entries": []} for i in image_ids
    ]
    for k, entry in enumerate(_read_entries(path)):
        where = f"{path}: entry {k}"
        i, label, score, rle = _read_entry(entry, where, index, label_of)
        # Without the image sizes, entries are not compared with each other: the first
        # entry of an image may be the wrong one. They are checked against the image
        # when decoded (prediction_masks), which names the entry by its index here.
        if sizes is not None and tuple(rle["size"]) != tuple(sizes[i]):
            raise ValueError(
                f"{where}: RLE of size {tuple(rle['size'])} for image {image_ids[i]!r}, "
                f"which is {tuple(sizes[i])}"
            )
        out[i]["entries"].append(k)
        out[i]["labels"].append(label)
        out[i]["scores"].append(float(score))
        out[i]["rles"].append(rle)
    for item in out:
        item["labels"] = torch.tensor(item["labels"], dtype=torch.int64)
        item["scores"] = torch.tensor(item["scores"], dtype=torch.float64)  # JSON: doubles
    return out


def _images_and_categories(path: Path, images: Any, category_ids) -> tuple[list, Sequence[int]]:
    """The image ids to match, and the category ids (given, else the dataset's)."""
    if hasattr(images, "image_id") and hasattr(images, "__len__"):
        image_ids = [images.image_id(i) for i in range(len(images))]
        if category_ids is None:
            category_ids = getattr(images, "category_ids", None)
    else:
        image_ids = list(images)
    if category_ids is None:
        raise ValueError(f"{path}: category_ids are needed to map category ids to labels")
    return image_ids, category_ids


def _read_entries(path: Path) -> list:
    """The JSON list of a results file."""
    try:
        with open(path) as f:
            entries = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(entries, list):
        raise ValueError(
            f"{path}: a results file must be a JSON list of detections, got a "
            f"{type(entries).__name__}"
        )
    return entries


def _read_entry(entry: Any, where: str, index: dict, label_of: dict) -> tuple:
    """``(image index, label, score, RLE)`` of one entry, each checked."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not a JSON object (got {type(entry).__name__})")
    missing = [key for key in RESULT_KEYS if key not in entry]
    if missing:
        raise ValueError(f"{where} lacks {missing} (has {sorted(entry)})")
    i = index.get(str(entry["image_id"]))
    if i is None:
        raise ValueError(
            f"{where}: unknown image_id {entry['image_id']!r} (not among the "
            f"{len(index)} images evaluated)"
        )
    label = label_of.get(entry["category_id"]) if _is_int(entry["category_id"]) else None
    if label is None:
        raise ValueError(
            f"{where}: unknown category_id {entry['category_id']!r} (known: {sorted(label_of)})"
        )
    score = entry["score"]
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
        raise ValueError(f"{where}: score must be a finite number, got {score!r}")
    return i, label, score, _read_rle(entry["segmentation"], where)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_rle(segmentation: Any, where: str) -> dict:
    """A validated compressed RLE ``{"size": [H, W], "counts": str}``."""
    if not isinstance(segmentation, dict) or not {"size", "counts"} <= segmentation.keys():
        raise ValueError(
            f"{where}: segmentation must be an RLE {{'size': [H, W], 'counts': ...}}, got "
            f"{str(segmentation)[:60]}"
        )
    size = segmentation["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) and s > 0 for s in size)):
        raise ValueError(f"{where}: RLE size must be [H, W] positive integers, got {size!r}")
    counts = segmentation["counts"]
    h, w = size
    if isinstance(counts, list):  # uncompressed RLE: compress it, it is far smaller
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != h * w:
            raise ValueError(
                f"{where}: uncompressed RLE counts must be non-negative integers summing to "
                f"H x W = {h * w}"
            )
        counts = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)["counts"]
        counts = counts.decode("ascii")
    elif not isinstance(counts, str) or not counts:
        raise ValueError(f"{where}: RLE counts must be a string (compressed) or a list")
    return {"size": [h, w], "counts": counts}
