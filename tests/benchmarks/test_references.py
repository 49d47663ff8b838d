"""The benchmarks' straightforward versions compute what ours compute.

The benchmarks time ``prm`` against reference implementations (the authors' loops, the
floor); their ratios only mean something if both sides produce
the same output. tests/core checks ``prm`` against its own copies of the loops; these
tests check the copies the benchmarks actually run.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from benchmarks.common import (
    FixedPeaks,
    authors_retrieval,
    floor_prms,
    imresize,
    loop_prms,
    measure,
    measure_interleaved,
    morphological_gradient,
    random_blobs,
    relative_difference,
)
from prm.backprop import PeakSelection, peak_response_maps
from prm.model import PeakResponseNet, SmallBackbone
from prm.retrieval import RetrievalConfig, retrieve_instances


def tiny_model(num_classes=3):
    torch.manual_seed(0)
    model = PeakResponseNet(SmallBackbone(), num_classes)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so its scale matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-1.0, 1.5)
    return model.eval()


def test_fixed_peaks_keeps_the_k_strongest_of_each_image():
    model = tiny_model()
    crm = model.class_response_maps(torch.randn(2, 3, 48, 48)).detach()
    every = model.find_peaks(crm)
    top = FixedPeaks(model, 5).find_peaks(crm)
    assert not FixedPeaks(model, 5).training  # follows the model's eval mode
    for b in range(2):
        mine = top[top[:, 0] == b]
        values = crm[b, mine[:, 1], mine[:, 2], mine[:, 3]]
        assert len(mine) == 5
        assert torch.all(values[:-1] >= values[1:])  # strongest first
        rest = every[every[:, 0] == b]
        all_values = crm[b, rest[:, 1], rest[:, 2], rest[:, 3]]
        assert values[-1] >= torch.sort(all_values, descending=True).values[4]
    # Fewer peaks than k: all of them.
    assert len(FixedPeaks(model, 10_000).find_peaks(crm)) == len(every)


def test_loop_and_floor_equal_ours():
    model = tiny_model()
    image = torch.randn(3, 40, 48)
    ours = peak_response_maps(
        FixedPeaks(model, 6), image[None], selection=PeakSelection(-math.inf), chunk_size=1
    )[0]
    peaks = ours["peak_cells"]
    assert len(peaks) == 6
    loop = loop_prms(model, image, peaks)
    floor, forward_s, backward_s = floor_prms(model, image, peaks, torch.device("cpu"))
    assert forward_s > 0 and len(backward_s) == 6
    assert all(p.grad is None for p in model.parameters())  # the loop cleans up
    chunked = peak_response_maps(  # 4 + 2: batched and single
        FixedPeaks(model, 6), image[None], selection=PeakSelection(-math.inf), chunk_size=4
    )[0]["prms"]
    for other in (loop, floor, chunked):
        assert other.shape == ours["prms"].shape
        assert relative_difference(other, ours["prms"]) <= 1e-6


def test_references_handle_no_peaks():
    model = tiny_model()
    image = torch.randn(3, 32, 32)
    none = torch.zeros((0, 3), dtype=torch.long)
    assert loop_prms(model, image, none).shape == (0, 32, 32)
    assert floor_prms(model, image, none, torch.device("cpu"))[0].shape == (0, 32, 32)


@pytest.mark.parametrize("seed", range(3))
def test_benchmark_copy_of_the_authors_retrieval_selects_as_ours(seed):
    g = torch.Generator().manual_seed(seed)
    net_size, image_size = (36, 44), (50, 61)
    k = 6
    prms = torch.rand(k, *net_size, generator=g) ** 4 * random_blobs(g, k, net_size)
    prms = prms / prms.flatten(1).sum(1)[:, None, None]
    labels = torch.randint(0, 3, (k,), generator=g)
    crm = torch.randn(3, 5, 6, generator=g) * 4
    proposals = random_blobs(g, 40, image_size)
    config = RetrievalConfig(beta=2e-4, proposal_count=40)
    ours = retrieve_instances(prms, labels, crm, proposals, config)
    loop = authors_retrieval(prms, labels, crm, proposals, config)
    assert len(loop) >= 2
    assert ours["peak_index"].tolist() == [r[5] for r in loop]
    assert ours["proposal_index"].tolist() == [r[4] for r in loop]
    assert ours["retrieval_scores"].tolist() == pytest.approx([r[0] for r in loop], rel=1e-5)


@pytest.mark.parametrize("width", [3, 5])
def test_the_loops_resize_and_contour_are_the_authors(width):
    # Their proposal resize is scipy.misc.imresize of the 0/1 int mask (bytes 0/255, PIL
    # nearest); their contour OpenCV's gradient of those bytes. Both against definitions
    # that share no code with them: pixel-centre sampling, and dilation minus erosion
    # with pixels outside the image ignored (scipy, border_value=1 for the erosion).
    g = torch.Generator().manual_seed(width)
    masks = random_blobs(g, 8, (61, 47))
    masks[0, :, :3] = True  # on the border
    for mask in masks:
        raw = imresize(mask.numpy().astype(int), (40, 52), Image.NEAREST)
        assert set(np.unique(raw)) <= {0, 255}
        rows = ((np.arange(40) + 0.5) * 61 / 40).astype(int)
        cols = ((np.arange(52) + 0.5) * 47 / 52).astype(int)
        assert np.array_equal(raw.astype(bool), mask.numpy()[np.ix_(rows, cols)])
        square = np.ones((width, width), bool)
        dilated = ndimage.binary_dilation(raw.astype(bool), square)
        eroded = ndimage.binary_erosion(raw.astype(bool), square, border_value=1)
        assert np.array_equal(morphological_gradient(raw, width), dilated & ~eroded)


def test_measure_reports_the_median_and_the_memory_a_call_needs():
    calls = []

    def allocate():
        calls.append(1)
        block = torch.ones(64 * 2**20 // 4)  # 64 MB, touched
        return float(block[-1])

    record = measure(allocate, torch.device("cpu"), repeats=3, warmup=1)
    assert len(calls) == 4 and len(record["runs_s"]) == 3
    assert record["wall_s"] == pytest.approx(sorted(record["runs_s"])[1], abs=1e-4)
    assert record["result"] == 1.0
    if record["rss_method"] == "VmHWM":  # Linux: the call's own peak
        assert 60 <= record["peak_mb"] < 200
    with pytest.raises(ValueError, match="repeats"):
        measure(allocate, torch.device("cpu"), repeats=0)


def test_measure_interleaved_runs_in_rotating_rounds():
    order = []

    def make(name):
        def fn():
            order.append(name)
            return name

        return fn

    records = measure_interleaved({n: make(n) for n in "abc"}, torch.device("cpu"), repeats=3)
    # Warm-ups a b c, then rounds a b c / b c a / c a b.
    assert "".join(order) == "abc" + "abc" + "bca" + "cab"
    for name, record in records.items():
        assert record["result"] == name and len(record["runs_s"]) == 3
    with pytest.raises(ValueError, match="repeats"):
        measure_interleaved({"a": make("a")}, torch.device("cpu"), repeats=0)


def test_relative_difference():
    a = torch.tensor([[0.0, 2.0], [1.0, 4.0]])
    assert relative_difference(a, a) == 0.0
    assert relative_difference(a + torch.tensor([[0.0, 0.0], [0.0, 1.0]]), a) == 0.25
    assert relative_difference(torch.zeros(0, 2), torch.zeros(0, 2)) == 0.0


def test_training_benchmark_losses_are_comparable_between_settings():
    # The "loss change vs default" column assumes that a repeated run of one setting
    # gives the same losses, and that a setting which changes nothing numerically
    # (channels_last) stays within float32 round-off.
    from benchmarks.training import make_batches, train_steps
    from prm.engine.config import PRESETS

    batches, classes = make_batches(32, 4)
    config = PRESETS["shapes"].replace(weights=None, batch_size=4, image_size=32)
    cpu = torch.device("cpu")
    first = train_steps(config, classes, batches, 2, cpu)
    again = train_steps(config, classes, batches, 2, cpu)
    assert len(first["losses"]) == 4 and first["losses"] == again["losses"]
    last = train_steps(config.replace(channels_last=True), classes, batches, 2, cpu)
    assert last["losses"] == pytest.approx(first["losses"], rel=1e-4)


def test_prediction_stage_timer_restores_the_predictor():
    import prm.predictor
    from benchmarks.prediction import stage_times

    before = (prm.predictor.peak_response_maps, prm.predictor.retrieve_instances)
    with pytest.raises(RuntimeError, match="boom"):
        with stage_times(torch.device("cpu")) as spent:
            assert prm.predictor.peak_response_maps is not before[0]
            raise RuntimeError("boom")
    assert spent == {"backprop": 0.0, "retrieval": 0.0}
    assert (prm.predictor.peak_response_maps, prm.predictor.retrieve_instances) == before
