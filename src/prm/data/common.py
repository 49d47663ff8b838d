"""What every reader shares: the bad-data policy, the item format and ``collate``.

Bad-data policy (``on_error``), the same for every reader:

- ``"raise"`` (default): the first bad file raises :class:`~prm.data.images.DataError`
  (a ``ValueError``) or ``FileNotFoundError`` naming the file and the problem.
- ``"skip"``: the bad item is left out with a :class:`BadDataWarning` naming the file and
  the problem. Problems found while indexing (an unknown class in an XML file, an
  annotation for a missing image, a missing image file) drop the item from the dataset
  before training starts; problems found only when the pixels are read (a truncated
  JPEG, a mask of the wrong size) make ``dataset[i]`` return ``None``, which
  :func:`collate` drops and counts. Either way ``dataset.skipped`` lists
  ``(item, problem)`` pairs (in the process that met them: a ``DataLoader`` worker has
  its own copy), and :attr:`Batch.skipped` carries the per-batch count to the training
  loop from any worker.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset

from .images import DataError

__all__ = ["BadDataWarning", "Batch", "ItemDataset", "collate", "multi_hot"]

ON_ERROR = ("raise", "skip")


class BadDataWarning(UserWarning):
    """A bad data item was skipped (``on_error="skip"``); the message names the file."""


def multi_hot(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Image-level labels as a multi-hot vector.

    Args:
        labels: class indices (repeats allowed) in ``0 .. num_classes - 1``.
        num_classes: C.

    Returns:
        Tensor[C] (float32), 1 for each class present.
    """
    out = torch.zeros(num_classes, dtype=torch.float32)
    if len(labels):
        out[torch.as_tensor(list(labels), dtype=torch.long)] = 1.0
    return out


class ItemDataset(Dataset):
    """Base class of the readers: the ``on_error`` policy and the ``skipped`` record.

    Subclasses set ``classes``, ``category_ids`` and implement ``__len__`` and
    ``_load(index) -> (PIL image, target)``; they report indexing-time problems through
    :meth:`_bad` and let :class:`DataError`/``FileNotFoundError`` escape from ``_load``.
    """

    classes: list[str]
    category_ids: list[int]
    #: The reader's usual splits: ``"train"`` and ``"val"`` for training and its
    #: validation, ``"eval"`` for evaluating instance masks (what ``prm predict`` and
    #: ``prm evaluate`` read when no split is given). ``None``: the reader decides.
    DEFAULT_SPLITS: dict[str, str | None] = {"train": None, "val": None, "eval": None}
    #: Reader options for evaluation (e.g. COCO keeps images without objects, so that
    #: false positives on them count).
    EVAL_OPTIONS: dict[str, object] = {}
    #: Whether a mirror image shows the same classes. Training flips images at random
    #: (``TrainConfig.flip``'s default) only for readers where this holds; a reader of
    #: letters, digits or other chiral classes sets it to ``False``.
    MIRROR_INVARIANT: bool = True

    def __init__(self, transform: Callable | None = None, on_error: str = "raise"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.transform = transform
        self.on_error = on_error
        self.skipped: list[tuple[str, str]] = []

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _bad(self, error: DataError | FileNotFoundError, item: str) -> None:
        """Raise ``error``, or (``on_error="skip"``) warn and record it as skipped."""
        if self.on_error == "raise":
            raise error
        self.skipped.append((item, str(error)))
        warnings.warn(f"skipping {item}: {error}", BadDataWarning, stacklevel=3)

    def _load(self, index: int) -> tuple[Any, dict]:
        raise NotImplementedError

    def image_id(self, index: int) -> str:
        """The ``target["image_id"]`` of item ``index`` without reading the image."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, dict] | None:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        try:
            image, target = self._load(index)
        except (DataError, FileNotFoundError) as error:
            self._bad(error, self.image_id(index))
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} images, {self.num_classes} classes"
            f"{', ' + str(len(self.skipped)) + ' skipped' if self.skipped else ''})"
        )


class Batch(NamedTuple):
    """A batch from :func:`collate`; unpack as ``images, targets, skipped = batch``.

    Attributes:
        images: Tensor[B, 3, H, W] when every image is a tensor of one size, else a list
            of B images (tensors of different sizes or PIL images). ``B`` may be 0 when
            every item of the batch was skipped.
        targets: list of B target dicts (see ``docs/conventions.md``).
        skipped: how many items of this batch were bad and left out.
    """

    images: torch.Tensor | list
    targets: list[dict]
    skipped: int


def collate(items: Sequence[tuple[Any, dict] | None]) -> Batch:
    """``DataLoader`` ``collate_fn``: drop skipped (``None``) items and count them.

    Args:
        items: what ``dataset[i]`` returned for the batch's indices.

    Returns:
        :class:`Batch` ``(images, targets, skipped)``. Targets stay a list of dicts
        because instance masks differ in number and size between images.
    """
    kept = [item for item in items if item is not None]
    skipped = len(items) - len(kept)
    images = [image for image, _ in kept]
    targets = [target for _, target in kept]
    if not images:
        return Batch(torch.zeros(0, 3, 0, 0), targets, skipped)
    if all(isinstance(im, torch.Tensor) for im in images) and (
        len({tuple(im.shape) for im in images}) == 1
    ):
        return Batch(torch.stack(images), targets, skipped)
    return Batch(images, targets, skipped)
