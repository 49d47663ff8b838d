"""Pointwise localisation mAP (Oquab et al., CVPR 2015; used by PRM, docs/method.md §6).

For each class, every image is ranked by its class score. An image is a true positive
for the class when the class is present in it **and** the class's strongest peak (the
prediction's ``class_peaks[c]``) lies on an object of that class, within a tolerance;
otherwise (class absent, or peak elsewhere) it is a false positive. AP is the VOC AP of
that ranking, with the images showing the class as positives; mAP is the mean over
classes present in at least one image. So the metric punishes both a wrong class and a
wrong place, and with a perfect location it equals classification mAP.

"On an object" follows Oquab et al.: inside a ground-truth bounding box of the class
enlarged by ``tolerance`` pixels on every side (``region="box"``, the default; boxes are
the tight boxes of the instance masks). ``region="mask"`` instead asks for a Euclidean
distance <= ``tolerance`` to a mask pixel of the class. Oquab et al. and PRM state the
tolerance, 18 px, in the rescaled network input; PRM's input is 448 x 448 (aspect not
kept), so distances are measured after scaling the image to ``input_size`` = (448, 448)
by default; ``input_size=None`` measures in original image pixels. Crowd regions count as
objects of their class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from prm.masks import masks_to_boxes

from .ap import ranked_ap
from .base import Evaluator, Records, ground_truth, target_size
from .classification import image_vector, summarize_aps

__all__ = ["PointwiseLocalizationEvaluator", "point_on_object"]

REGIONS = ("box", "mask")


def point_on_object(
    point: Sequence[float],
    masks: torch.Tensor,
    tolerance: float,
    scale: tuple[float, float] = (1.0, 1.0),
    region: str = "box",
) -> bool:
    """Whether an image point lies on one of ``masks``, within a tolerance.

    Pixel ``(row r, column c)`` covers the square ``[c, c + 1] x [r, r + 1]`` in the
    ``(x, y)`` image coordinates of the point.

    Args:
        point: ``(x, y)`` in image pixel coordinates.
        masks (Tensor[N, H, W]): binary masks of the objects (of one class).
        tolerance: allowed distance in pixels of the scaled frame.
        scale: ``(sx, sy)`` factors from image pixels to that frame.
        region: ``"box"`` (inside a mask's box enlarged by ``tolerance``; Oquab et al.)
            or ``"mask"`` (Euclidean distance to a mask pixel <= ``tolerance``).

    Returns:
        True when the point is on (or near enough to) an object; False for no masks or a
        non-finite point.
    """
    x, y = float(point[0]), float(point[1])
    if len(masks) == 0 or not (np.isfinite(x) and np.isfinite(y)):
        return False
    sx, sy = scale
    if region == "box":
        return _point_in_boxes((x, y), masks_to_boxes(masks.bool()), tolerance, scale)
    if region == "mask":
        rows, cols = torch.nonzero(masks.bool().any(0), as_tuple=True)
        dx = torch.clamp(torch.maximum(cols.double() - x, x - (cols.double() + 1)), min=0) * sx
        dy = torch.clamp(torch.maximum(rows.double() - y, y - (rows.double() + 1)), min=0) * sy
        return bool(((dx**2 + dy**2) <= tolerance**2).any())
    raise ValueError(f"region must be one of {REGIONS}, got {region!r}")


def _point_in_boxes(
    point: tuple[float, float], boxes: torch.Tensor, tolerance: float, scale: tuple[float, float]
) -> bool:
    """Whether ``point`` is inside one of ``boxes`` (N, 4) grown by ``tolerance`` (scaled)."""
    x, y = point
    if not (np.isfinite(x) and np.isfinite(y)):
        return False
    boxes = boxes.double()  # x1, y1, x2, y2 with x2/y2 exclusive, as masks_to_boxes gives
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]  # empty masks
    dx = torch.clamp(torch.maximum(boxes[:, 0] - x, x - boxes[:, 2]), min=0) * scale[0]
    dy = torch.clamp(torch.maximum(boxes[:, 1] - y, y - boxes[:, 3]), min=0) * scale[1]
    return bool((torch.maximum(dx, dy) <= tolerance).any())


class PointwiseLocalizationEvaluator(Evaluator):
    """Pointwise localisation mAP of each class's strongest peak.

    Reads target ``masks``, ``labels`` (and ``size``) and prediction ``class_scores``
    (float (C,)) and ``class_peaks`` (float (C, 2), ``(x, y)`` in image pixels; a
    non-finite peak counts as mislocated).

    Args:
        classes: class names, index = label.
        tolerance: 18 px as in Oquab et al. and PRM, in the ``input_size`` frame.
        input_size: ``(H, W)`` the image is scaled to before measuring (PRM: 448 x 448);
            None measures in original image pixels.
        region: ``"box"`` (default, the papers' protocol) or ``"mask"``.
        use_07_metric: 11-point VOC07 AP instead of the area under the envelope.

    Summary keys: ``pointwise/mAP``, ``pointwise/AP/<class>``, ``pointwise/num_images``.
    """

    name = "pointwise"
    target_keys = ("masks", "labels")
    prediction_keys = ("class_scores", "class_peaks")

    def __init__(
        self,
        classes: Sequence[str],
        tolerance: float = 18.0,
        input_size: tuple[int, int] | None = (448, 448),
        region: str = "box",
        use_07_metric: bool = False,
    ):
        if region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
        self.tolerance = float(tolerance)
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.region = region
        self.use_07_metric = use_07_metric
        super().__init__(classes)

    def reset(self) -> None:
        self._scores = Records(self.num_classes, np.float64)  # a row per image
        self._present = Records(self.num_classes, bool)
        self._correct = Records(self.num_classes, bool)

    def process_image(self, target: Mapping, prediction: Mapping) -> None:
        image = target.get("image_id", "?")
        size = target_size(target)
        masks, labels, _ = ground_truth(target, size, self.num_classes)
        scores = image_vector(prediction["class_scores"], self.num_classes, "class_scores", image)
        peaks = torch.as_tensor(prediction["class_peaks"]).detach().cpu().double()
        if peaks.shape != (self.num_classes, 2):
            raise ValueError(
                f"'class_peaks' of image {image} has shape {tuple(peaks.shape)}, "
                f"expected ({self.num_classes}, 2)"
            )
        frame = self.input_size or size
        scale = (frame[1] / size[1], frame[0] / size[0])
        present = np.zeros(self.num_classes, dtype=bool)
        correct = np.zeros(self.num_classes, dtype=bool)
        boxes = masks_to_boxes(masks) if self.region == "box" else None  # once per image
        for c in labels.unique().tolist():
            present[c] = True
            point = tuple(peaks[c].tolist())
            if boxes is not None:
                correct[c] = _point_in_boxes(point, boxes[labels == c], self.tolerance, scale)
            else:
                correct[c] = point_on_object(
                    point, masks[labels == c], self.tolerance, scale, "mask"
                )
        self._scores.append(scores)
        self._present.append(present)
        self._correct.append(correct)

    def summarize(self) -> dict:
        scores, present, correct = self._scores.array, self._present.array, self._correct.array
        aps = {
            name: ranked_ap(
                scores[:, c],
                correct[:, c].astype(np.int8),
                int(present[:, c].sum()),
                self.use_07_metric,
            )
            for c, name in enumerate(self.classes)
        }
        return summarize_aps("pointwise", aps, len(scores))
