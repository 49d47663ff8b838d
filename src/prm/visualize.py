"""Pictures of predictions: instance masks, peaks and peak response maps over the image.

Separate from the math (as pytorch-grad-cam's ``show_cam_on_image``): these functions
only draw what :class:`prm.Predictor` returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from prm.data.images import to_uint8_image

__all__ = ["PALETTE", "draw_instances", "draw_prms", "prediction_panel"]

# 20 well-separated colours (tab20-like), cycled per instance.
PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
        (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
        (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
    ],
    dtype=np.float32,
)  # fmt: skip


def _as_array(image: torch.Tensor | Image.Image | np.ndarray) -> np.ndarray:
    return to_uint8_image(image).cpu().permute(1, 2, 0).numpy().astype(np.float32)


def _cross(draw: ImageDraw.ImageDraw, x: float, y: float, colour, size: int = 4) -> None:
    for fill, width in (((0, 0, 0), 3), (colour, 1)):  # a black halo, then the colour
        draw.line([(x - size, y), (x + size, y)], fill=fill, width=width)
        draw.line([(x, y - size), (x, y + size)], fill=fill, width=width)


def draw_instances(
    image: torch.Tensor | Image.Image | np.ndarray,
    prediction: Mapping[str, torch.Tensor],
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    score_threshold: float | None = None,
) -> Image.Image:
    """Instance masks (filled, outlined), peaks (crosses) and ``class score`` labels.

    Args:
        image: the image, ``(3, H, W)`` tensor (uint8 or float in [0, 1]), PIL or
            ``(H, W, 3)`` array.
        prediction: a prediction dict with ``masks`` ``(N, H, W)``, ``labels`` and
            optionally ``scores`` (printed after the class) and ``peaks`` ``(N, 2)``
            ``(x, y)`` (marked with crosses; else the label goes to the mask's centre).
        class_names: names to print instead of class indices.
        alpha: mask opacity.
        score_threshold: draw only instances scoring at least this.

    Returns:
        An RGB ``PIL.Image`` of the image's size.
    """
    from scipy.ndimage import binary_erosion

    canvas = _as_array(image).copy()
    masks = prediction["masks"].cpu().numpy().astype(bool)
    labels = prediction["labels"].cpu().tolist()
    has_scores = "scores" in prediction  # ground truth has none
    scores = prediction["scores"].cpu().tolist() if has_scores else [1.0] * len(labels)
    keep = [i for i, s in enumerate(scores) if score_threshold is None or s >= score_threshold]
    # Paint the weakest first so that the most confident instances stay on top.
    for rank, i in enumerate(reversed(keep)):
        colour = PALETTE[(len(keep) - 1 - rank) % len(PALETTE)]
        m = masks[i]
        canvas[m] = (1 - alpha) * canvas[m] + alpha * colour
        canvas[m & ~binary_erosion(m, border_value=1)] = colour  # the outline
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    peaks = prediction.get("peaks")
    for order, i in enumerate(keep):
        colour = tuple(int(c) for c in PALETTE[order % len(PALETTE)])
        name = class_names[labels[i]] if class_names else str(labels[i])
        if peaks is not None:
            x, y = (float(v) for v in peaks[i])
            _cross(draw, x, y, colour)
        else:
            ys, xs = np.nonzero(masks[i])
            x, y = (float(xs.mean()), float(ys.mean())) if len(xs) else (0.0, 0.0)
        text = f"{name} {scores[i]:.2f}" if has_scores else name
        tx, ty = min(x + 5, out.width - 6 * len(text)), max(y - 12, 0)
        draw.rectangle([tx - 1, ty, tx + 6 * len(text), ty + 11], fill=(0, 0, 0))
        draw.text((tx, ty), text, fill=colour)
    return out


def draw_prms(
    image: torch.Tensor | Image.Image | np.ndarray,
    prediction: Mapping[str, torch.Tensor],
    alpha: float = 0.6,
) -> Image.Image:
    """The instances' peak response maps over a greyed image, with their peaks.

    Each PRM is scaled to its own maximum, the maps are combined by a pixel-wise maximum
    and shown with the ``inferno`` colour map.

    Args:
        image: as :func:`draw_instances`.
        prediction: with ``prms`` ``(N, H, W)`` and optionally ``peaks``.
        alpha: heat-map opacity where the response is high.

    Returns:
        An RGB ``PIL.Image``.
    """
    from matplotlib import colormaps

    base = _as_array(image).mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.6
    prms = prediction.get("prms")
    if prms is not None and len(prms):
        maps = prms.detach().cpu().float()
        maps = maps / maps.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
        heat = maps.amax(0)
        if tuple(heat.shape) != base.shape[:2]:  # maps of an image worked on smaller
            heat = F.interpolate(heat[None, None], size=base.shape[:2], mode="bilinear")[0, 0]
        heat = heat.numpy() ** 0.5  # sqrt: back-propagated maps are peaky
        colour = colormaps["inferno"](heat)[..., :3] * 255
        weight = alpha * heat[..., None]
        base = (1 - weight) * base + weight * colour
    out = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    peaks = prediction.get("peaks")
    if peaks is not None:
        draw = ImageDraw.Draw(out)
        for i, (x, y) in enumerate(peaks.tolist()):
            _cross(draw, x, y, tuple(int(c) for c in PALETTE[i % len(PALETTE)]))
    return out


def prediction_panel(
    image: torch.Tensor | Image.Image | np.ndarray,
    prediction: Mapping[str, torch.Tensor],
    class_names: Sequence[str] | None = None,
    target: Mapping[str, torch.Tensor] | None = None,
) -> Image.Image:
    """Side by side: the instances, the PRMs and (when given) the ground-truth masks."""
    panels = [draw_instances(image, prediction, class_names), draw_prms(image, prediction)]
    if target is not None and "masks" in target:
        gt = {"masks": target["masks"], "labels": target["labels"]}
        panels.append(draw_instances(image, gt, class_names))
    return side_by_side(panels)


def side_by_side(panels: Sequence[Image.Image], gap: int = 4) -> Image.Image:
    """Pictures of one height in a row on white, ``gap`` pixels apart."""
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    out = Image.new("RGB", (width, panels[0].height), (255, 255, 255))
    x = 0
    for panel in panels:
        out.paste(panel, (x, 0))
        x += panel.width + gap
    return out
