"""Fixtures of the engine tests: an untrained small PRM network, as a predictor and a
checkpoint (its predictions are arbitrary but deterministic)."""

import pytest
import torch

from prm.backprop import PeakSelection
from prm.engine import save_checkpoint
from prm.model import build_model
from prm.predictor import Predictor

SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]


@pytest.fixture(scope="module")
def random_predictor():
    """Proposal-free, every class and peak kept: many instances from a random network."""
    torch.manual_seed(0)
    model = build_model("small", 6, class_names=SHAPES)
    return Predictor(
        model,
        input_size=32,
        peak_selection=PeakSelection(class_threshold=-1e9, peak_threshold=0.0),
        proposal_fn="prm",
    )


@pytest.fixture
def random_checkpoint(tmp_path):
    """A `prm train`-style checkpoint of the same untrained network (32 px inputs)."""
    torch.manual_seed(0)
    model = build_model("small", 6, class_names=SHAPES)
    path = tmp_path / "prm.pt"
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "model_config": model.config(),
            "config": {"image_size": 32},
            "class_names": SHAPES,
        },
    )
    return path


@pytest.fixture
def one_thread():
    """One torch thread for the test (bit-exact comparisons between processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
