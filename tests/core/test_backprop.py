"""Peak back-propagation (docs/method.md §4): the rule by hand, batching, and a clean model."""

import copy

import pytest
import torch
from torch import nn

import prm.backprop as bp
from prm.backprop import (
    PeakSelection,
    normalize_prms,
    peak_backprop_rule,
    peak_response_maps,
    select_peaks,
)
from prm.model import PeakResponseNet, SmallBackbone


def three_layer_net():
    """conv(1->2, 1x3) -> ReLU -> conv(2->1, 1x1), weights chosen for hand computation."""
    conv1 = nn.Conv2d(1, 2, (1, 3))
    conv2 = nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        conv1.weight.copy_(torch.tensor([[1.0, 1.0, 2.0], [0.5, 0.5, 0.5]]).view(2, 1, 1, 3))
        conv1.bias.copy_(torch.tensor([0.1, -0.2]))
        conv2.weight.copy_(torch.tensor([1.0, -2.0]).view(1, 2, 1, 1))
    return nn.Sequential(conv1, nn.ReLU(), conv2)


def test_rule_on_a_three_layer_network_worked_by_hand():
    net = three_layer_net()
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3).requires_grad_()
    with peak_backprop_rule():
        out = net(x)
    # Forward unchanged: h = relu([1+2+6+0.1, 0.5*6-0.2]) = [9.1, 2.8]; out = 9.1 - 5.6.
    assert out.item() == pytest.approx(3.5)
    out.backward()
    # conv2: U = [9.1, 2.8], U' = U - 2.8 = [6.3, 0], W+ = [1, 0], Z = 6.3
    #        grad_U = U' * W+ * (1 / Z) = [1, 0]; ReLU passes it (both units active).
    # conv1: U' = x - 1 = [0, 1, 2]; W+ = [[1, 1, 2], [.5, .5, .5]]
    #        Z = [0*1 + 1*1 + 2*2, .5*(0+1+2)] = [5, 1.5]; ratio = [1/5, 0/1.5] = [.2, 0]
    #        conv_transpose -> [.2, .2, .4]; grad_x = U' * that = [0, .2, .8]
    assert torch.allclose(x.grad.flatten(), torch.tensor([0.0, 0.2, 0.8]))
    # The ordinary gradient differs: [1, 1, 2] - 2 * [.5, .5, .5] = [0, 0, 1].
    x.grad = None
    net(x).backward()
    assert torch.allclose(x.grad.flatten(), torch.tensor([0.0, 0.0, 1.0]))


def test_zero_denominator_gives_zero_not_nan():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(-1.0)  # W+ = 0 so Z = 0 everywhere
    x = torch.rand(1, 1, 3, 3).requires_grad_()
    with peak_backprop_rule():
        conv(x).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert torch.equal(normalize_prms(torch.zeros(2, 3, 4, 4)), torch.zeros(2, 4, 4))


def test_eval_batch_norm_gradient_is_the_affine_scale():
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.1, -0.3, 2.0]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.5]))
        bn.weight.copy_(torch.tensor([1.5, -0.7, 0.2]))
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    grad = torch.randn(2, 3, 4, 4)
    with peak_backprop_rule():
        y = bn(x)
    assert torch.equal(y, bn(x))  # same forward value
    (ours,) = torch.autograd.grad(y, x, grad)
    (reference,) = torch.autograd.grad(bn(x), x, grad)
    assert torch.allclose(ours, reference, atol=1e-6)


def test_context_manager_leaves_nothing_behind_even_on_error():
    net = three_layer_net()
    x = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 1, 3)
    with pytest.raises(RuntimeError, match="boom"):
        with peak_backprop_rule():
            raise RuntimeError("boom")
    xg = x.clone().requires_grad_()
    net(xg).backward()
    assert torch.allclose(xg.grad.flatten(), torch.tensor([0.0, 0.0, 1.0]))  # ordinary rule


def tiny_model(num_classes=3, **kw):
    torch.manual_seed(0)
    model = PeakResponseNet(SmallBackbone((8, 16, 16)), num_classes, **kw)
    # Non-trivial BN statistics, so BN's affine scale matters.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.2, 1.5)
    return model.eval()


def loop_prms(model, image, peaks):
    """The straightforward way: one forward, then one .backward() per peak."""
    x = image[None].clone().requires_grad_()
    with peak_backprop_rule():
        crm = model.class_response_maps(x)
    maps = []
    for c, y, x0 in peaks.tolist():
        x.grad = None
        crm[0, c, y, x0].backward(retain_graph=True)
        prm = x.grad[0].sum(0).clamp(min=0)
        maps.append(prm / prm.sum() if prm.sum() > 0 else prm)
    model.zero_grad(set_to_none=True)
    return torch.stack(maps)


def test_batched_and_chunked_equal_one_peak_at_a_time():
    model = tiny_model()
    images = torch.randn(2, 3, 40, 48)
    results = {
        cs: peak_response_maps(model, images, selection=PeakSelection(-1e9), chunk_size=cs)
        for cs in (1, 3, 64)
    }
    for b in range(2):
        reference = loop_prms(model, images[b], results[1][b]["peak_cells"])
        assert len(reference) > 3
        for cs, res in results.items():
            assert torch.equal(res[b]["peak_cells"], results[1][b]["peak_cells"])
            err = (res[b]["prms"] - reference).abs().max()
            assert err <= 1e-6 * reference.max(), (cs, err)
    # An image's PRMs do not depend on the other images of the batch.
    alone = peak_response_maps(model, images[1:], selection=PeakSelection(-1e9))[0]
    assert torch.allclose(alone["prms"], results[1][1]["prms"], atol=1e-7)


def test_prms_are_normalised_maps_at_input_resolution():
    model = tiny_model()
    res = peak_response_maps(model, torch.randn(1, 3, 32, 40))[0]
    k = len(res["peak_cells"])
    assert res["prms"].shape == (k, 32, 40)
    assert (res["prms"] >= 0).all()
    assert torch.allclose(res["prms"].flatten(1).sum(1), torch.ones(k))
    assert torch.equal(res["labels"], res["peak_cells"][:, 0])
    c, y, x = res["peak_cells"].T
    assert torch.equal(res["peak_values"], res["crm"][c, y, x])
    assert res["class_scores"].shape == (3,) and res["crm"].shape == (3, 4, 5)


def test_model_is_untouched_by_peak_backprop():
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(1, 3, 32, 32)
    scores_before = model(x)
    peak_response_maps(model, torch.randn(2, 3, 32, 32), chunk_size=4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())  # input-only gradients
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert type(model.classifier).forward is nn.Conv2d.forward
    assert not model.training
    assert torch.equal(model(x), scores_before)
    # ...and plain autograd on the model is ordinary again.
    xg = x.clone().requires_grad_()
    model.class_response_maps(xg)[0, 0, 1, 1].backward()
    plain = xg.grad.clone()
    xg.grad = None
    with peak_backprop_rule():
        model.class_response_maps(xg)[0, 0, 1, 1].backward()
    assert not torch.allclose(plain, xg.grad)


def test_sub_pixel_upsampling_is_back_propagated_through():
    model = tiny_model(sub_pixel_factor=4)
    image = torch.randn(3, 32, 32)
    res = peak_response_maps(model, image[None], chunk_size=5)[0]
    assert res["crm"].shape == (3, 16, 16)
    assert torch.allclose(res["prms"], loop_prms(model, image, res["peak_cells"]), atol=1e-7)


def test_thresholds_select_peaks():
    model = tiny_model()
    images = torch.randn(1, 3, 48, 48)
    everything = peak_response_maps(model, images, selection=PeakSelection(-1e9))[0]
    none = peak_response_maps(model, images, selection=PeakSelection(1e9))[0]
    assert len(none["peak_cells"]) == 0 and none["prms"].shape == (0, 48, 48)
    # Relative threshold 1: only the strongest peak of each class remains.
    top = peak_response_maps(model, images, selection=PeakSelection(-1e9, 1.0, "relative"))[0]
    assert sorted(top["labels"].tolist()) == [0, 1, 2]
    for c in range(3):
        assert top["peak_values"][top["labels"] == c].item() == everything["crm"][c].max().item()
    # Absolute threshold: strictly greater, as the authors.
    v = everything["peak_values"].median().item()
    absolute = peak_response_maps(model, images, selection=PeakSelection(-1e9, v))[0]
    assert (absolute["peak_values"] > v).all()
    assert len(absolute["peak_cells"]) == int((everything["peak_values"] > v).sum())


def test_select_peaks_rules():
    crm = torch.tensor([[[[0.0, 10.0], [5.0, 2.0]]]])
    peaks = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 1, 1]])
    scores = torch.tensor([[1.0]])
    assert select_peaks(crm, peaks, scores, PeakSelection(0.0, 5.0)).tolist() == [
        True,
        False,
        False,
    ]
    # relative 0.5: value >= 0 + 0.5 * (10 - 0)
    assert select_peaks(crm, peaks, scores, PeakSelection(0.0, 0.5, "relative")).tolist() == [
        True,
        True,
        False,
    ]
    assert not select_peaks(crm, peaks, scores, PeakSelection(2.0)).any()
    with pytest.raises(ValueError, match="relative"):
        PeakSelection(0.0, 2.0, "relative")
    with pytest.raises(ValueError, match="peak_threshold_mode"):
        PeakSelection(0.0, 1.0, "percent")


def test_bad_inputs():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        peak_response_maps(model, torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="floating point"):
        peak_response_maps(model, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    nan = torch.randn(1, 3, 32, 32)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        peak_response_maps(model, nan)
    with pytest.raises(ValueError, match="chunk_size"):
        peak_response_maps(model, torch.randn(1, 3, 32, 32), chunk_size=0)
    model.train()
    with pytest.raises(ValueError, match="eval"):
        peak_response_maps(model, torch.randn(1, 3, 32, 32))


def _strided_share(smooth: bool) -> torch.Tensor:
    """Input share of a 3x3 stride-2 all-ones convolution on a flat image."""
    conv = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.ones(1, 1, 17, 17)
    x[0, 0, 0, 0] = 0.0  # m = 0, so U' = 1 everywhere else
    x.requires_grad_()
    with peak_backprop_rule(smooth_strided=smooth):
        out = conv(x)
    out.sum().backward()
    return x.grad[0, 0]


def test_smoothed_rule_removes_the_checkerboard_of_a_strided_convolution():
    # Each output shares its unit among its 9 inputs (1/9 each); odd rows/columns are
    # read by two outputs, even ones by one: 4/9, 2/9 and 1/9, a checkerboard of ratio 4.
    rule = _strided_share(False)[4:12, 4:12]
    assert rule.max() / rule.min() == pytest.approx(4.0, rel=1e-5)
    # The tent [1, 2, 1] / 4 evens the alternation out: flat inside, same mass.
    smooth = _strided_share(True)
    inner = smooth[4:12, 4:12]
    assert inner.max() / inner.min() == pytest.approx(1.0, abs=1e-5)
    assert inner.mean() == pytest.approx(float(rule.mean()), rel=1e-5)
    assert smooth.sum() == pytest.approx(float(_strided_share(False).sum()), rel=0.05)


def test_smoothed_rule_is_taken_from_the_model_and_leaves_stride_1_alone():
    torch.manual_seed(0)
    model = PeakResponseNet(SmallBackbone(), num_classes=2).eval()
    x = torch.randn(1, 3, 32, 32)
    select = PeakSelection(class_threshold=-1e9)
    plain = peak_response_maps(model, x, selection=select)[0]["prms"]
    model.smooth_strided = True
    smooth = peak_response_maps(model, x, selection=select)[0]["prms"]
    assert not torch.allclose(plain, smooth)
    assert torch.allclose(smooth.flatten(1).sum(1), torch.ones(len(smooth)))
    off = peak_response_maps(model, x, selection=select, smooth_strided=False)[0]["prms"]
    assert torch.equal(off, plain)
    # Without a strided convolution the option changes nothing.
    conv = nn.Conv2d(1, 1, 3, padding=1)
    y = torch.rand(1, 1, 8, 8, requires_grad=True)
    grads = []
    for smooth_strided in (False, True):
        with peak_backprop_rule(smooth_strided):
            (g,) = torch.autograd.grad(conv(y).sum(), y)
        grads.append(g)
    assert torch.equal(*grads)


def _odd_convs() -> nn.Module:
    """Strided, dilated, grouped, 5x5 and 1x1 convolutions, with max-pooling between."""
    from prm.model import _Features

    features = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, 1, 2, dilation=2, groups=4),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 5, 2, 2),
        nn.ReLU(),
        nn.Conv2d(12, 12, 1),
    )
    return _Features(features, 12)


@pytest.mark.parametrize("backbone", ["small", "small_res", "odd"])
def test_cropped_backward_equals_the_whole_maps(backbone, monkeypatch):
    # A peak's gradient reaches only part of each map; back-propagating through that part
    # (the CPU default) must give the maps of the whole-map computation, with both rules,
    # also for peaks at the border of odd-sized images.
    from prm.model import SmallResBackbone

    torch.manual_seed(0)
    net = {"small": lambda: SmallBackbone((8, 16, 16)), "small_res": SmallResBackbone}
    net["odd"] = _odd_convs
    model = PeakResponseNet(net[backbone](), 3).eval()
    images = torch.randn(2, 3, 75, 90)
    cropped = []
    whole = bp._cropped_backward
    monkeypatch.setattr(bp, "_cropped_backward", lambda *a: cropped.append(1) or whole(*a))
    for smooth in (False, True):
        maps = {}
        for crop in (False, True):
            monkeypatch.setattr(bp, "_CROP", crop)
            found = peak_response_maps(
                model, images, selection=PeakSelection(-1e9), smooth_strided=smooth
            )
            maps[crop] = [r["prms"] for r in found]
        assert cropped, "no backward pass was cropped"
        for a, b in zip(maps[True], maps[False]):
            assert len(a) > 10 and a.shape == b.shape
            assert (a - b).abs().max() <= 1e-5 * b.max(), (smooth, (a - b).abs().max())
