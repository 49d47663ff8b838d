"""No single image takes unbounded time or memory: a working size with scaling back."""

import numpy as np
import pytest
import torch
from PIL import Image

from prm.backprop import PeakSelection
from prm.engine.inference import predict_files
from prm.evaluation.prm_quality import PRMQualityEvaluator
from prm.masks import resize_nearest
from prm.model import build_model
from prm.predictor import Predictor, working_size


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("small", 2, class_names=["a", "b"])


def test_working_size_bounds_the_longest_side():
    assert working_size((6000, 8000), 2048) == (1536, 2048)
    assert working_size((300, 200), 2048) == (300, 200)
    assert working_size((6000, 8000), None) == (6000, 8000)


def test_a_large_image_is_predicted_at_the_working_size_and_scaled_back(model):
    """Issue 10, item 8: an 8000x6000 image with --proposals prm ran for minutes at 4 GB."""
    image = torch.rand(3, 300, 400)
    small = torch.nn.functional.interpolate(
        image[None], size=(48, 64), mode="bilinear", antialias=True
    )[0]
    options = {"input_size": 32, "peak_selection": PeakSelection(-1e9), "proposal_fn": "prm"}
    bounded = Predictor(model, max_size=64, **options)
    with pytest.warns(UserWarning, match="image 0 is 400x300 pixels, larger than max_size 64"):
        big = bounded([image])[0]
    reference = Predictor(model, max_size=None, **options)([small])[0]
    assert len(reference["masks"]) > 0
    assert big["masks"].shape == (len(reference["masks"]), 300, 400)
    assert torch.equal(big["masks"], resize_nearest(reference["masks"], (300, 400)))
    assert torch.equal(big["scores"], reference["scores"])
    assert big["prms"].shape[1:] == (48, 64)  # maps stay at the working size
    assert torch.allclose(big["peaks"], reference["peaks"] * 6.25)


def test_proposals_are_computed_on_the_working_size(model, tmp_path):
    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((300, 400, 3), dtype=np.uint8)).save(path)
    seen = []

    def proposals(image_id, image):
        seen.append(tuple(image.shape))
        masks = torch.zeros(2, *image.shape[1:], dtype=torch.bool)
        masks[0, :10, :10] = masks[1, 5:, 5:] = True
        return masks

    predictor = Predictor(model, input_size=32, peak_selection=PeakSelection(-1e9), max_size=64)
    with pytest.warns(UserWarning, match="larger than max_size"):
        predict_files(predictor, [path], ["a", "b"], proposals=proposals, progress=False)
    assert seen == [(3, 48, 64)]


def test_prm_quality_scores_prms_kept_at_the_working_size():
    """`prm predict --max-size N --evaluate` failed: PRMs at the working size were refused."""
    gt = torch.zeros(2, 300, 400, dtype=torch.bool)
    gt[0, :152, :200] = True  # aligned with the 4x4 blocks of the working size
    gt[1, 152:, 200:] = True
    target = {"image_id": 1, "masks": gt, "labels": torch.tensor([0, 1])}
    full = torch.zeros(2, 300, 400)
    full[0, :152, :] = 1.0  # half its mass on object 0
    full[1, 100:, 200:] = 1.0  # 148 of its 200 rows on object 1
    small = torch.nn.functional.avg_pool2d(full[None], 4)[0]
    scores = []
    for prms in (full, small):
        evaluator = PRMQualityEvaluator(["a", "b"])
        evaluator.process([target], [{"prms": prms, "labels": torch.tensor([0, 1])}])
        scores.append(evaluator.summarize()["prm_quality/mean"])
    assert scores[0] == pytest.approx((0.5 + 0.74) / 2)
    assert scores[1] == pytest.approx(scores[0], abs=1e-6)
    with pytest.raises(ValueError, match="same aspect ratio"):  # not a scaled copy
        PRMQualityEvaluator(["a", "b"]).process(
            [target], [{"prms": small[:, :, :50], "labels": [0, 1]}]
        )
