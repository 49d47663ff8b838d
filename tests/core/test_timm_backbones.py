"""timm backbones: the PRM rule on depthwise/grouped convs, SiLU/ReLU6/GELU, SE, LayerNorm.

Each network (random weights) is checked against a direct, slow implementation of the
rule written independently of :mod:`prm.backprop`: every ``nn.Conv2d`` / ``nn.Linear`` of
a copy of the model is given an autograd function whose backward redistributes each
output cell's gradient over its input connections explicitly (``F.unfold`` / ``F.fold``,
group by group), one peak at a time.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prm.backprop import PeakSelection, peak_response_maps
from prm.model import PeakResponseNet, build_backbone, build_model

timm = pytest.importorskip("timm")

MODELS = [
    "resnet18",  # residual, BN, ReLU, max-pool
    "vgg11",  # plain convolutions and max-pools
    "efficientnet_lite0",  # depthwise convs, ReLU6
    "mobilenetv3_small_050",  # depthwise, hard-swish, squeeze-excitation (1x1 convs)
    "convnext_tiny",  # 7x7 depthwise, LayerNorm, GELU, nn.Linear pointwise convs
    "efficientnet_b0",  # SiLU + squeeze-excitation
    "regnetx_002",  # grouped (not depthwise) convolutions
]

EPS = 1e-10


class _DirectConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, conv):
        ctx.save_for_backward(u)
        ctx.conv = conv
        return conv._conv_forward(u, conv.weight, conv.bias)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        conv = ctx.conv
        shifted = u - u.min()
        kh, kw = conv.kernel_size
        g = conv.groups
        cols = F.unfold(
            shifted, (kh, kw), conv.dilation, conv.padding, conv.stride
        )  # (1, Cin*k, L)
        wpos = conv.weight.detach().clamp(min=0)  # (Cout, Cin/g, kh, kw)
        cout, cin_g = wpos.shape[:2]
        cols = cols[0].view(g, cin_g * kh * kw, -1)  # (g, Cin/g*k, L)
        wg = wpos.view(g, cout // g, cin_g * kh * kw)  # (g, Cout/g, Cin/g*k)
        z = wg @ cols  # (g, Cout/g, L)
        r = grad[0].reshape(g, cout // g, -1)
        ratio = torch.where(z < EPS, torch.zeros_like(z), r / (z + EPS))
        # relevance of connection (i -> j) = U'_i * W+_ji * ratio_j, summed over j
        rel = cols * (wg.transpose(1, 2) @ ratio)  # (g, Cin/g*k, L)
        out = F.fold(
            rel.reshape(1, -1, rel.shape[-1]),
            u.shape[2:],
            (kh, kw),
            dilation=conv.dilation,
            padding=conv.padding,
            stride=conv.stride,
        )
        return out, None


class _DirectLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, lin):
        ctx.save_for_backward(u)
        ctx.lin = lin
        return F.linear(u, lin.weight, lin.bias)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        shifted = u - u.min()
        wpos = ctx.lin.weight.detach().clamp(min=0)
        z = torch.einsum("...i,ji->...j", shifted, wpos)
        ratio = torch.where(z < EPS, torch.zeros_like(z), grad / (z + EPS))
        return torch.einsum("...i,ji,...j->...i", shifted, wpos, ratio), None


def direct_prms(model, image, peaks):
    """PRMs by the direct rule, one peak at a time. image (3, H, W); peaks (K, 3) (c, y, x)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.forward = lambda u, m=module: _DirectConv.apply(u, m)
        elif type(module) is nn.Linear:
            module.forward = lambda u, m=module: _DirectLinear.apply(u, m)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            raise AssertionError(f"unexpected layer type {type(module)}")
    maps = []
    for c, y, x in peaks.tolist():
        inp = image[None].clone().requires_grad_()
        model.class_response_maps(inp)[0, c, y, x].backward()
        m = inp.grad[0].sum(0).clamp(min=0)
        maps.append(m / m.sum() if m.sum() > 0 else m)
    return torch.stack(maps)


@pytest.mark.parametrize("name", MODELS)
def test_rule_on_timm_backbones_equals_direct_implementation(name):
    torch.manual_seed(0)
    model = build_model(f"timm:{name}", 3, peak_filter=None).eval()
    assert model.backbone.stride == 32
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith("gamma"):
                # ConvNeXt's layer scale starts at 1e-6, which would hide its blocks.
                param.uniform_(0.5, 1.5)
    image = torch.randn(3, 64, 64)
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        reference_out = model(image[None])
    out = peak_response_maps(
        model, image[None], selection=PeakSelection(class_threshold=-float("inf"))
    )[0]
    prms = out["prms"]
    assert len(prms) >= 3  # at least one peak per class
    assert torch.isfinite(prms).all() and (prms >= 0).all()
    assert torch.allclose(prms.flatten(1).sum(1), torch.ones(len(prms)), atol=1e-5)
    expected = direct_prms(model, image, out["peak_cells"])
    assert torch.allclose(prms, expected, rtol=1e-4, atol=1e-7), (prms - expected).abs().max()
    # The model is exactly as before: weights, buffers, outputs, ordinary gradients.
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(image[None]), reference_out)
    assert all(p.grad is None for p in model.parameters())


def test_the_rule_differs_from_the_plain_gradient_on_depthwise_convs():
    # Guards against the rule silently not applying to grouped convolutions.
    torch.manual_seed(0)
    model = build_model("timm:efficientnet_lite0", 2, peak_filter=None).eval()
    image = torch.randn(1, 3, 64, 64)
    out = peak_response_maps(model, image, selection=PeakSelection(class_threshold=-float("inf")))[
        0
    ]
    c, y, x = out["peak_cells"][0].tolist()
    inp = image.clone().requires_grad_()
    model.class_response_maps(inp)[0, c, y, x].backward()
    plain = inp.grad[0].sum(0).clamp(min=0)
    plain = plain / plain.sum()
    assert not torch.allclose(out["prms"][0], plain, atol=1e-4)


def test_timm_backbone_shapes_and_errors():
    backbone = build_backbone("timm:mobilenetv3_small_050")
    assert backbone(torch.randn(1, 3, 96, 64)).shape == (1, backbone.out_channels, 3, 2)
    assert not any("classifier" in k for k in backbone.state_dict())
    with pytest.raises(ValueError, match="unknown timm model"):
        build_backbone("timm:no_such_model_xyz")
    with pytest.raises(ValueError, match="not resnet18"):
        build_backbone("timm:resnet18", weights="lite0")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_backbone("timm:resnet18", weights="missing.pth")


def test_timm_backbone_weights_file_round_trip(tmp_path):
    source = timm.create_model("resnet18")
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("timm:resnet18", weights=str(path))
    assert torch.equal(backbone.model.conv1.weight, source.conv1.weight)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"):
        build_backbone("timm:resnet18", weights=str(tmp_path / "bad.pth"))


def test_peak_response_net_from_timm_trains_a_step():
    torch.manual_seed(0)
    model = build_model("timm:mobilenetv3_small_050", 4)
    assert isinstance(model, PeakResponseNet) and model.config()["backbone"].startswith("timm:")
    loss = F.multilabel_soft_margin_loss(model(torch.randn(2, 3, 64, 64)), torch.ones(2, 4))
    loss.backward()
    assert model.classifier.weight.grad is not None
