"""Drawing a gallery item's panels as PNG files (the pictures of the HTML report).

Small images (ShapeScenes' 128 px) are enlarged by an integer factor first, so that the
labels drawn on them stay legible; masks stay pixel-exact (nearest neighbour).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from prm.visualize import draw_instances, draw_prms

__all__ = ["render_item", "render_prediction"]

MIN_SIDE = 256  # enlarge smaller images to about this
MAX_PRMS = 12  # instance PRMs drawn per image
MISTAKE = (255, 40, 40)


def _scale_of(image: np.ndarray) -> int:
    return max(1, math.ceil(MIN_SIDE / max(image.shape[:2])))


def _enlarge(array: np.ndarray, scale: int) -> np.ndarray:
    """(..., H, W[, 3]) enlarged ``scale`` times along H and W (nearest neighbour)."""
    if scale == 1:
        return array
    axis = array.ndim - 3 if array.ndim >= 3 and array.shape[-1] == 3 else array.ndim - 2
    return array.repeat(scale, axis=axis).repeat(scale, axis=axis + 1)


def _peaks(peaks: np.ndarray, scale: int) -> torch.Tensor:
    """(N, 2) ``(x, y)`` pixel positions in the enlarged picture (pixel centres kept)."""
    return (torch.as_tensor(np.asarray(peaks, dtype=np.float32)) + 0.5) * scale - 0.5


def _maps(maps: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Stored (K, h, w) maps resized to ``size`` (bilinear), float32."""
    tensor = torch.from_numpy(np.asarray(maps, dtype=np.float32))
    if len(tensor) == 0 or tuple(tensor.shape[1:]) == size:
        return tensor
    return F.interpolate(tensor[None], size=size, mode="bilinear", align_corners=False)[0]


def _box(draw: ImageDraw.ImageDraw, mask: np.ndarray, text: str, dashed: bool = False) -> None:
    """A red box around a mask, labelled below (dashed: a missed ground truth)."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    if dashed:
        for a in range(x0, x1 + 1, 8):
            draw.line([(a, y0), (min(a + 4, x1), y0)], fill=MISTAKE, width=2)
            draw.line([(a, y1), (min(a + 4, x1), y1)], fill=MISTAKE, width=2)
        for a in range(y0, y1 + 1, 8):
            draw.line([(x0, a), (x0, min(a + 4, y1))], fill=MISTAKE, width=2)
            draw.line([(x1, a), (x1, min(a + 4, y1))], fill=MISTAKE, width=2)
    else:
        draw.rectangle([x0, y0, x1, y1], outline=MISTAKE, width=2)
    ty = min(y1 + 2, mask.shape[0] - 12)
    draw.rectangle([x0, ty, x0 + 6 * len(text) + 2, ty + 11], fill=MISTAKE)
    draw.text((x0 + 1, ty), text, fill=(255, 255, 255))


def render_prediction(item: Mapping, classes: Sequence[str]) -> Image.Image:
    """The photo with predicted masks, ``class score`` labels, peaks; false positives boxed.

    Args:
        item: ``image`` (H, W, 3) uint8, ``masks`` bool (N, H, W), ``labels``, ``scores``,
            ``matches`` (N,) (0 marks a false positive), optionally ``peaks`` (N, 2).
        classes: class names.
    """
    scale = _scale_of(item["image"])
    prediction = {
        "masks": torch.from_numpy(_enlarge(np.asarray(item["masks"], bool), scale)),
        "labels": torch.as_tensor(item["labels"]).long(),
        "scores": torch.as_tensor(item["scores"]).float(),
    }
    if "peaks" in item and len(item["peaks"]) == len(item["labels"]):
        prediction["peaks"] = _peaks(item["peaks"], scale)
    out = draw_instances(_enlarge(item["image"], scale), prediction, list(classes))
    draw = ImageDraw.Draw(out)
    masks = prediction["masks"].numpy()
    for i, match in enumerate(np.asarray(item["matches"])):
        if match == 0:
            _box(draw, masks[i], "FP")
    return out


def _render_truth(item: Mapping, classes: Sequence[str]) -> Image.Image:
    scale = _scale_of(item["image"])
    masks = _enlarge(np.asarray(item["gt_masks"], bool), scale)
    truth = {"masks": torch.from_numpy(masks), "labels": torch.as_tensor(item["gt_labels"]).long()}
    out = draw_instances(_enlarge(item["image"], scale), truth, list(classes))
    draw = ImageDraw.Draw(out)
    for g, missed in enumerate(np.asarray(item["missed"])):
        if missed:
            _box(draw, masks[g], "missed", dashed=True)
    return out


def render_item(
    item: Mapping, classes: Sequence[str], out_dir: str | Path, prefix: str
) -> dict[str, list[tuple[str, str]]]:
    """Write one gallery item's panels as ``<prefix>-*.png`` into ``out_dir``.

    Args:
        item: a gallery item (see :func:`prm.report.gallery.load_gallery`).
        classes: class names.
        out_dir: the report's image folder.
        prefix: file-name prefix (made by the caller, never from an image id).

    Returns:
        ``{"prediction": [(file, caption)] (the photo, then the prediction),
        "truth": [...], "prms": [...], "crms": [...]}``; file names relative to
        ``out_dir``, captions plain text.
    """
    out_dir = Path(out_dir)
    image = item["image"]
    h, w = image.shape[:2]
    scale = _scale_of(image)
    big = (h * scale, w * scale)
    panels: dict[str, list[tuple[str, str]]] = {
        k: [] for k in ("prediction", "truth", "prms", "crms")
    }

    def save(picture: Image.Image, kind: str, caption: str, key: str) -> None:
        name = f"{prefix}-{kind}.png"
        picture.save(out_dir / name)
        panels[key].append((name, caption))

    save(Image.fromarray(_enlarge(image, scale)), "photo", "photo", "prediction")
    save(render_prediction(item, classes), "pred", "prediction", "prediction")
    save(_render_truth(item, classes), "gt", "ground truth", "truth")
    labels = np.asarray(item["labels"]).tolist()
    scores = np.asarray(item["scores"]).tolist()
    if "prms" in item and len(item["prms"]) == len(labels):
        prms = _maps(item["prms"], big)
        peaks = item.get("peaks")
        for i in range(min(len(labels), MAX_PRMS)):
            one = {"prms": prms[i : i + 1]}
            if peaks is not None and len(peaks) == len(labels):
                one["peaks"] = _peaks(peaks[i : i + 1], scale)
            mark = {1: "", 0: ", FP", -1: ", ignored"}[int(item["matches"][i])]
            caption = f"PRM {i + 1}: {classes[labels[i]]} {scores[i]:.2f}{mark}"
            save(draw_prms(_enlarge(image, scale), one), f"prm{i:02d}", caption, "prms")
    if "crm" in item and "crm_classes" in item:
        crm = _maps(item["crm"], big).clamp(min=0)
        for k, c in enumerate(np.asarray(item["crm_classes"]).tolist()):
            one = {"prms": crm[k : k + 1]}
            caption = f"CRM: {classes[c]}"
            save(draw_prms(_enlarge(image, scale), one), f"crm{k:02d}", caption, "crms")
    return panels
