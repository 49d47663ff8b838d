"""Overlays draw what the predictor returned, at the image's size."""

import numpy as np
import torch

from prm.visualize import draw_instances, draw_prms, prediction_panel


def prediction():
    masks = torch.zeros(2, 40, 60, dtype=torch.bool)
    masks[0, 5:15, 5:20] = True
    masks[1, 20:35, 30:55] = True
    prms = masks.float() / masks.flatten(1).sum(1)[:, None, None]
    return {
        "masks": masks,
        "labels": torch.tensor([0, 1]),
        "scores": torch.tensor([0.9, 0.4]),
        "peaks": torch.tensor([[10.0, 10.0], [40.0, 28.0]]),
        "prms": prms,
    }


def test_instances_are_painted_inside_their_masks_only():
    image = torch.zeros(3, 40, 60, dtype=torch.uint8)
    out = draw_instances(image, prediction(), ["a", "b"])
    assert out.size == (60, 40)
    pixels = torch.from_numpy(np.array(out)).permute(2, 0, 1)
    assert pixels[:, 25, 35].sum() > 0  # inside the second mask
    assert pixels[:, 38, 2].sum() == 0  # background stays black


def test_prm_heat_map_and_panel():
    image = torch.rand(3, 40, 60)
    assert draw_prms(image, prediction()).size == (60, 40)
    target = {"masks": prediction()["masks"], "labels": torch.tensor([0, 1])}
    panel = prediction_panel(image, prediction(), ["a", "b"], target)
    assert panel.size == (3 * 60 + 2 * 4, 40)
    empty = {k: v[:0] for k, v in prediction().items()}
    assert prediction_panel(image, empty).size == (2 * 60 + 4, 40)
