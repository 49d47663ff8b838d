"""The protocol every evaluator follows, and the loop that runs several in one pass.

detectron2-style: ``reset()`` clears the state, ``process(targets, predictions)`` takes one
batch (lists of per-image dicts, see ``docs/conventions.md``) and keeps only compact
per-image records, ``summarize()`` returns a flat, JSON-serialisable ``dict``. Undefined
values (AP of a class without ground truth) are ``None``, never NaN, so the dict can be
written with :func:`json.dump` as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from prm.masks import decode_rle

__all__ = ["Evaluator", "EvaluatorList", "evaluate", "prediction_masks"]


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
        masks = prediction["masks"]
        if masks.dim() != 3 or tuple(masks.shape[1:]) != size:
            raise ValueError(
                f"prediction masks of image {prediction.get('image_id', '?')} have shape "
                f"{tuple(masks.shape)}, expected (N, {size[0]}, {size[1]}) (the image size)"
            )
        return masks.bool()
    try:
        return decode_rle(prediction["rles"], size=size)
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
