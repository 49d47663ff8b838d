"""Multi-label classification mAP (the PASCAL VOC classification task).

Per class, images are ranked by the predicted class score; an image is a positive when
its image-level label for the class is set. AP is the VOC AP of that ranking
(:func:`prm.evaluation.ap.voc_ap`), mAP the mean over classes with a positive image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .ap import ranked_ap
from .base import Evaluator, Records

__all__ = ["ClassificationEvaluator"]


class ClassificationEvaluator(Evaluator):
    """Classification mAP from image-level scores.

    Reads target ``image_labels`` (float (C,) multi-hot) and prediction ``class_scores``
    (float (C,), any monotone score: logits or probabilities).

    Args:
        classes: class names, index = label.
        use_07_metric: 11-point VOC07 AP instead of the area under the envelope.

    Summary keys: ``classification/mAP``, ``classification/AP/<class>`` (``None`` for a
    class without a positive image), ``classification/num_images``.
    """

    name = "classification"
    target_keys = ("image_labels",)
    prediction_keys = ("class_scores",)

    def __init__(self, classes: Sequence[str], use_07_metric: bool = False):
        self.use_07_metric = use_07_metric
        super().__init__(classes)

    def reset(self) -> None:
        self._scores = Records(self.num_classes, np.float64)  # a row per image
        self._positive = Records(self.num_classes, bool)

    def process_image(self, target: Mapping, prediction: Mapping) -> None:
        image = target.get("image_id", "?")
        labels = image_vector(target["image_labels"], self.num_classes, "image_labels", image)
        scores = image_vector(prediction["class_scores"], self.num_classes, "class_scores", image)
        self._positive.append(labels > 0.5)
        self._scores.append(scores)

    def summarize(self) -> dict:
        scores, positive = self._scores.array, self._positive.array
        aps = {}
        for c, name in enumerate(self.classes):
            # Every image is a record; only images showing the class are true positives.
            matches = positive[:, c].astype(np.int8)
            aps[name] = ranked_ap(
                scores[:, c], matches, int(positive[:, c].sum()), self.use_07_metric
            )
        return summarize_aps("classification", aps, len(scores))


def image_vector(value, num_classes: int, key: str, image) -> np.ndarray:
    """A per-class vector ``(C,)`` as float64 numpy, checked for length and finiteness."""
    array = torch.as_tensor(value).detach().cpu().double().numpy()
    if array.shape != (num_classes,):
        raise ValueError(
            f"'{key}' of image {image} has shape {array.shape}, expected ({num_classes},)"
        )
    if not np.isfinite(array).all():
        raise ValueError(f"'{key}' of image {image} has non-finite values")
    return array


def summarize_aps(prefix: str, aps: dict[str, float | None], num_images: int) -> dict:
    """``{prefix/mAP, prefix/AP/<class>..., prefix/num_images}`` from per-class APs."""
    defined = [ap for ap in aps.values() if ap is not None]
    results: dict = {f"{prefix}/mAP": float(np.mean(defined)) if defined else None}
    results.update({f"{prefix}/AP/{name}": ap for name, ap in aps.items()})
    results[f"{prefix}/num_images"] = num_images
    return results
