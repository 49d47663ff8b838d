"""The protocol every evaluator follows, and the loop that runs several in one pass.

After detectron2's (which calls the last step ``evaluate``): ``reset()`` clears the
state, ``process(targets, predictions)`` takes one batch (lists of per-image dicts, see
``docs/conventions.md``) and keeps only compact per-image records, ``summarize()``
returns a flat, JSON-serialisable ``dict``. Undefined values (AP of a class without
ground truth) are ``None``, never NaN, so the dict can be written with :func:`json.dump`
as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from prm.masks import decode_rle

__all__ = ["Evaluator", "EvaluatorList", "Records", "evaluate", "prediction_masks"]


class Records:
    """Rows of per-prediction or per-image records, kept in one growing numpy buffer.

    Why not a list of small per-image arrays: each would be its own ``malloc`` on the C
    heap, interleaved with the large transient mask tensors of every image, and would keep
    the freed space from going back to the system; RSS then grew by about 0.3 MB per image
    although the records themselves take a few bytes. One buffer that doubles when full
    keeps memory flat in the number of images.

    Args:
        columns: number of values per row.
        dtype: numpy dtype of the values.
    """

    def __init__(self, columns: int, dtype=np.float64):
        self._buffer = np.zeros((64, columns), dtype=dtype)
        self._rows = 0

    def append(self, rows) -> None:
        """Add rows: array-like ``(n, columns)`` (or ``(columns,)`` for one row)."""
        rows = np.asarray(rows, dtype=self._buffer.dtype).reshape(-1, self._buffer.shape[1])
        end = self._rows + len(rows)
        if end > len(self._buffer):
            grown = np.zeros(
                (max(end, 2 * len(self._buffer)), self._buffer.shape[1]), self._buffer.dtype
            )
            grown[: self._rows] = self._buffer[: self._rows]
            self._buffer = grown
        self._buffer[self._rows : end] = rows
        self._rows = end

    @property
    def array(self) -> np.ndarray:
        """The rows so far, ``(n, columns)`` (a view: copy it to keep it past ``append``)."""
        return self._buffer[: self._rows]

    def __len__(self) -> int:
        return self._rows


class Evaluator:
    """Base class: subclasses implement ``reset``, ``process_image`` and ``summarize``.

    Attributes:
        name: prefix of the evaluator's keys in the summary (``"instance"``, ``"coco"``...).
        target_keys / prediction_keys: the keys ``process`` reads; a missing one raises a
            ``ValueError`` naming it and the image.
    """

    name = "evaluator"
    target_keys: tuple[str, ...] = ()
    prediction_keys: tuple[str, ...] = ()

    def __init__(self, classes: Sequence[str]):
        if len(classes) == 0:
            raise ValueError(f"{type(self).__name__} needs at least one class name")
        if len(set(classes)) != len(classes):
            raise ValueError(f"{type(self).__name__}: class names must be unique: {classes}")
        self.classes = list(classes)
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def reset(self) -> None:
        """Forget everything processed so far."""
        raise NotImplementedError

    def process(self, targets: Sequence[Mapping], predictions: Sequence[Mapping]) -> None:
        """Take one batch.

        Args:
            targets: one target dict per image (as the datasets produce them).
            predictions: one prediction dict per image, in the same order.
        """
        if len(targets) != len(predictions):
            raise ValueError(
                f"{type(self).__name__}.process got {len(targets)} targets and "
                f"{len(predictions)} predictions; they must pair up one per image"
            )
        for target, prediction in zip(targets, predictions, strict=True):
            self._check_keys(target, prediction)
            self.process_image(target, prediction)

    def process_image(self, target: Mapping, prediction: Mapping) -> None:
        raise NotImplementedError

    def summarize(self) -> dict:
        """The metrics over everything processed since ``reset``, as a flat dict."""
        raise NotImplementedError

    def instances(self, target: Mapping, prediction: Mapping) -> tuple:
        """Validated ``(size, ground truth, predicted)`` of an image: ``size = (H, W)``,
        ground truth ``(masks bool (G, H, W), labels (G,), iscrowd (G,))`` and predicted
        ``(masks bool (N, H, W), labels (N,), scores (N,))`` (RLEs decoded)."""
        size = target_size(target)
        truth = ground_truth(target, size, self.num_classes)
        masks = prediction_masks(prediction, size)
        return size, truth, (masks, *predicted_instances(prediction, len(masks), self.num_classes))

    def _check_keys(self, target: Mapping, prediction: Mapping) -> None:
        image = target.get("image_id", "?")
        for kind, keys, item in (
            ("target", self.target_keys, target),
            ("prediction", self.prediction_keys, prediction),
        ):
            for key in keys:
                if key == "masks" and kind == "prediction" and "rles" in item:
                    continue  # RLE predictions (from a results file) are decoded on use
                if key not in item:
                    raise ValueError(
                        f"{type(self).__name__} needs '{key}' in each {kind} dict; the "
                        f"{kind} of image {image} has only {sorted(item)}"
                    )


def prediction_masks(prediction: Mapping, size: Sequence[int]) -> torch.Tensor:
    """The masks of a prediction dict, decoding its ``"rles"`` when it has no ``"masks"``.

    Args:
        prediction: a prediction dict with ``"masks"`` (bool (N, H, W)) or ``"rles"``
            (N COCO RLE dicts, as :func:`prm.evaluation.load_results` returns them).
        size: ``(H, W)`` the masks must have (the target's ``"size"``).

    Returns:
        Tensor[N, H, W] (bool).
    """
    size = tuple(int(s) for s in size)
    if "masks" in prediction:
        image = prediction.get("image_id", "?")
        masks = as_tensor(prediction["masks"], f"prediction masks of image {image}")
        if masks.dim() != 3 or tuple(masks.shape[1:]) != size:
            raise ValueError(
                f"prediction masks of image {prediction.get('image_id', '?')} have shape "
                f"{tuple(masks.shape)}, expected (N, {size[0]}, {size[1]}) (the image size)"
            )
        return masks.bool().cpu()  # evaluation runs on the CPU
    rles = prediction["rles"]
    entries = prediction.get("entries")
    for j, rle in enumerate(rles):
        rle_size = tuple(int(v) for v in rle.get("size", ())) if isinstance(rle, dict) else ()
        if rle_size and rle_size != size:  # name the entry at fault, not the first one
            which = f"entry {entries[j]}" if entries is not None else f"RLE {j}"
            raise ValueError(
                f"{which} (image {prediction.get('image_id', '?')}) is a mask of size "
                f"{rle_size}, but the image is {size}"
            )
    try:
        return decode_rle(rles, size=size)
    except ValueError as exc:
        raise ValueError(
            f"predictions of image {prediction.get('image_id', '?')} do not fit it: {exc}"
        ) from exc


def target_size(target: Mapping) -> tuple[int, int]:
    """``(H, W)`` of a target: its ``"size"``, else the shape of its masks."""
    if "size" in target:
        return tuple(int(s) for s in target["size"])
    if "masks" in target:
        return tuple(target["masks"].shape[1:])
    raise ValueError(f"target of image {target.get('image_id', '?')} has no 'size' nor 'masks'")


def ground_truth(
    target: Mapping, size: tuple[int, int], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated ``(masks bool (G, H, W), labels int64 (G,), iscrowd bool (G,))``."""
    image = target.get("image_id", "?")
    masks = as_tensor(target["masks"], f"target masks of image {image}")
    labels = as_tensor(target["labels"], f"target labels of image {image}").long()
    if masks.dim() != 3 or tuple(masks.shape[1:]) != size:
        raise ValueError(
            f"target masks of image {image} have shape {tuple(masks.shape)}, "
            f"expected (N, {size[0]}, {size[1]})"
        )
    if labels.shape != (len(masks),):
        raise ValueError(
            f"target of image {image} has {len(masks)} masks but labels of shape "
            f"{tuple(labels.shape)}"
        )
    check_labels(labels, num_classes, f"target of image {image}")
    crowd = target.get("iscrowd")
    if crowd is None:
        crowd = torch.zeros(len(masks), dtype=torch.bool)
    else:
        crowd = as_tensor(crowd, f"iscrowd of image {image}").bool()
    if crowd.shape != (len(masks),):
        raise ValueError(
            f"target of image {image} has {len(masks)} masks but iscrowd of shape "
            f"{tuple(crowd.shape)}"
        )
    return masks.bool().cpu(), labels, crowd


def ignore_mask(target: Mapping, size: tuple[int, int]) -> torch.Tensor:
    """The target's validated ``ignore_mask``, bool (H, W) on the CPU."""
    ignore = as_tensor(target["ignore_mask"], f"ignore_mask of image {target.get('image_id', '?')}")
    ignore = ignore.bool()
    if tuple(ignore.shape) != size:
        raise ValueError(
            f"ignore_mask of image {target.get('image_id', '?')} has shape "
            f"{tuple(ignore.shape)}, expected {size}"
        )
    return ignore


def predicted_instances(
    prediction: Mapping, num_masks: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated ``(labels int64 (N,), scores (N,))`` of a prediction dict.

    Scores keep the caller's precision: float64 stays float64 (two distinct float64
    scores must not become a tie), float32 stays float32; Python numbers and integers
    become float64, half precision float32.
    """
    image = prediction.get("image_id", "?")
    labels = as_tensor(prediction["labels"], f"prediction labels of image {image}").long()
    scores = as_tensor(prediction["scores"], f"prediction scores of image {image}")
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.double() if not scores.is_floating_point() else scores.float()
    if labels.shape != (num_masks,) or scores.shape != (num_masks,):
        raise ValueError(
            f"prediction of image {image} has {num_masks} masks, labels of shape "
            f"{tuple(labels.shape)} and scores of shape {tuple(scores.shape)}; "
            "they must agree"
        )
    if not torch.isfinite(scores).all():
        raise ValueError(f"prediction of image {image} has non-finite scores")
    check_labels(labels, num_classes, f"prediction of image {image}")
    return labels, scores


def as_tensor(value, what: str) -> torch.Tensor:
    """A CPU tensor from a tensor, a numpy array or a (nested) list, as users pass them.

    Python floats become float64 (numpy's default), not torch's float32.

    Raises:
        ValueError: naming ``what``, for anything that is not array-like.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        array = np.ascontiguousarray(value)  # negative strides (x[::-1]) are fine too
        if array.dtype == object:
            raise TypeError("ragged or mixed values")
        return torch.from_numpy(array)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{what} must be a torch tensor, numpy array or list of numbers, got "
            f"{type(value).__name__} ({exc})"
        ) from exc


def check_labels(labels: torch.Tensor, num_classes: int, what: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{what} has labels {sorted(set(labels.tolist()))}, outside 0..{num_classes - 1}"
        )


class EvaluatorList(Evaluator):
    """Several evaluators run as one: one pass over the data feeds them all.

    RLE predictions are decoded once per image here and shared by every evaluator that
    needs dense masks (the COCO evaluator uses the RLEs directly).
    """

    name = "all"

    def __init__(self, evaluators: Iterable[Evaluator]):
        self.evaluators = list(evaluators)
        names = [e.name for e in self.evaluators]
        if len(set(names)) != len(names):
            raise ValueError(f"two evaluators share a name (their keys would clash): {names}")

    def reset(self) -> None:
        for evaluator in self.evaluators:
            evaluator.reset()

    def process(self, targets: Sequence[Mapping], predictions: Sequence[Mapping]) -> None:
        if len(targets) != len(predictions):
            raise ValueError(
                f"EvaluatorList.process got {len(targets)} targets and "
                f"{len(predictions)} predictions; they must pair up one per image"
            )
        dense = []
        for target, prediction in zip(targets, predictions, strict=True):
            if "masks" not in prediction and "rles" in prediction:
                prediction = {
                    **prediction,
                    "masks": prediction_masks(prediction, target_size(target)),
                }
            dense.append(prediction)
        for evaluator in self.evaluators:
            evaluator.process(targets, dense)

    def summarize(self) -> dict:
        results: dict = {}
        for evaluator in self.evaluators:
            results.update(evaluator.summarize())
        return results


def evaluate(
    evaluators: Evaluator | Iterable[Evaluator],
    pairs: Iterable[tuple[Mapping, Mapping]],
    progress: bool = False,
) -> dict:
    """Run evaluators over ``(target, prediction)`` pairs in one pass.

    Args:
        evaluators: one evaluator or several (they are reset first).
        pairs: iterable of ``(target, prediction)`` dicts, one per image; consumed lazily,
            so a generator that predicts image by image never holds the dataset.
        progress: show a tqdm progress bar.

    Returns:
        The merged flat dict of every evaluator's ``summarize()``.
    """
    if not isinstance(evaluators, Evaluator):
        evaluators = EvaluatorList(evaluators)
    evaluators.reset()
    if progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="evaluate", unit="image")
    for target, prediction in pairs:
        evaluators.process([target], [prediction])
    return evaluators.summarize()
