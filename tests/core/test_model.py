"""The fully convolutional class-response network (docs/method.md §1) and its weights."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from prm.model import BACKBONES, PeakResponseNet, SmallBackbone, build_backbone, build_model
from prm.peaks import peak_stimulation


@pytest.mark.parametrize(
    "name, channels, stride",
    [
        ("resnet18", 512, 32),
        ("resnet34", 512, 32),
        ("resnet50", 2048, 32),
        ("resnet101", 2048, 32),
        ("vgg16", 512, 32),
        ("small", 128, 8),
        ("small_res", 128, 8),
    ],
)
def test_backbones_are_cut_before_global_pooling(name, channels, stride):
    model = build_model(name, num_classes=4).eval()
    x = torch.randn(1, 3, 64, 96)
    crm = model.class_response_maps(x)
    assert crm.shape == (1, 4, 64 // stride, 96 // stride)
    assert model.classifier.in_channels == channels
    assert model.classifier.kernel_size == (1, 1) and model.classifier.bias is not None
    assert model(x).shape == (1, 4)


def test_resnet50_at_448_gives_14x14_maps():
    model = build_model("resnet50", 20).eval()
    with torch.no_grad():
        assert model.class_response_maps(torch.randn(1, 3, 448, 448)).shape == (1, 20, 14, 14)


def test_forward_is_peak_stimulation_or_gap():
    torch.manual_seed(0)
    model = build_model("small", 5)
    x = torch.randn(2, 3, 64, 64)
    for mode in (True, False):  # train and eval mode return class scores alike
        model.train(mode)
        crm = model.class_response_maps(x)
        assert torch.allclose(model(x), peak_stimulation(crm), atol=1e-6)
    model.eval()
    crm = model.class_response_maps(x)
    assert torch.allclose(model(x), peak_stimulation(crm))
    cam = build_model("small", 5, peak_stimulation=False).eval()
    cam.load_state_dict(model.state_dict())
    assert torch.allclose(cam(x), crm.mean(dim=(2, 3)), atol=1e-6)


def test_sub_pixel_factor_upsamples_with_align_corners():
    torch.manual_seed(0)
    base = build_model("small", 3).eval()
    fine = build_model("small", 3, sub_pixel_factor=8).eval()
    fine.load_state_dict(base.state_dict())  # the upsampling has no weights
    x = torch.randn(1, 3, 64, 64)
    coarse = base.class_response_maps(x)
    expected = F.interpolate(coarse, scale_factor=8, mode="bilinear", align_corners=True)
    assert torch.allclose(fine.class_response_maps(x), expected, atol=1e-6)
    assert fine.class_response_maps(x).shape == (1, 3, 64, 64)


def test_training_gradient_reaches_only_the_peaks():
    model = build_model("small", 2)
    x = torch.randn(1, 3, 32, 32)
    crm = model.class_response_maps(x)
    crm.retain_grad()
    model.aggregate(crm).sum().backward()
    # Each map's gradient is 1/N_c at its N_c kept peaks (the paper's exact rule).
    for c in range(2):
        g = crm.grad[0, c]
        n = int((g > 0).sum())
        assert n >= 1 and torch.allclose(g[g > 0], torch.full((n,), 1.0 / n))


def test_local_weights_file(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # a torchvision state dict, fc included
    features = build_backbone("resnet18", weights=path)
    assert torch.equal(features.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(features.bn1.running_var, reference.bn1.running_var)


def test_weights_enum_through_torchvision_cache(tmp_path, monkeypatch):
    # Put a file where torchvision's cache would hold the ImageNet weights: the weights
    # API must load it from disk and never try to download.
    reference = torchvision.models.resnet18()
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    for spec in (weights, "IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"):
        model = build_model("resnet18", 3, weights=spec)
        assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)


def test_bad_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_backbone("resnet18", weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET9K'"):
        build_backbone("resnet18", weights="IMAGENET9K")
    other = tmp_path / "vgg.pth"
    torch.save(torchvision.models.vgg11().features.state_dict(), other)
    with pytest.raises(ValueError, match="vgg.pth.*does not match"):
        build_backbone("resnet18", weights=other)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read weights file .*broken.pth"):
        build_backbone("resnet18", weights=broken)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("alexnet")


def test_constructor_validation():
    with pytest.raises(ValueError, match="win_size"):
        PeakResponseNet(SmallBackbone(), 3, win_size=4)
    with pytest.raises(ValueError, match="sub_pixel_factor"):
        PeakResponseNet(SmallBackbone(), 3, sub_pixel_factor=0)
    with pytest.raises(ValueError, match="class names"):
        PeakResponseNet(SmallBackbone(), 3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="num_classes"):
        PeakResponseNet(SmallBackbone(), 0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        build_model("small", 3).class_response_maps(torch.randn(1, 1, 32, 32))
    assert set(BACKBONES) >= {"resnet50", "vgg16", "small"}


def test_config_round_trip():
    model = build_model("small", 3, class_names=["a", "b", "c"], sub_pixel_factor=2)
    config = model.config()
    assert config["backbone"] == "small" and config["class_names"] == ["a", "b", "c"]
    assert config["sub_pixel_factor"] == 2 and config["peak_filter"] == "median"


def test_small_res_blocks_start_as_identities_and_learn():
    """Zero-initialised last BN: a block is its shortcut at first; gradients still flow."""
    torch.manual_seed(0)
    model = build_model("small_res", 3)
    block = model.backbone.features[-1]  # the last block, with an identity shortcut
    x = torch.rand(2, 128, 8, 8)  # non-negative, as after a ReLU
    block.eval()
    assert torch.allclose(block(x), x)
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert block.bn2.weight.grad is not None and block.bn2.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="'small_res' backbone has no torchvision weights"):
        build_model("small_res", 3, weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1)


@pytest.mark.parametrize("name", ["small", "small_res"])
def test_small_backbones_take_other_widths(name):
    model = build_model(f"{name}:24,48,96", 3).eval()
    widths = [m.out_channels for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths[0] == 24 and 48 in widths and widths[-1] == 96
    assert model.classifier.in_channels == 96
    assert model.class_response_maps(torch.randn(1, 3, 64, 64)).shape == (1, 3, 8, 8)
    # The checkpoint's model config keeps the widths, so the network is rebuilt as trained.
    assert model.config()["backbone"] == f"{name}:24,48,96"
    rebuilt = build_model(model.config()["backbone"], 3)
    rebuilt.load_state_dict(model.state_dict())
    default = sum(p.numel() for p in build_model(name, 3).parameters())
    assert sum(p.numel() for p in model.parameters()) < default


@pytest.mark.parametrize("spec", ["small:24,48", "small:24,48,0", "small:a,b,c", "small:"])
def test_bad_small_widths_are_named(spec):
    with pytest.raises(ValueError, match="three positive integers"):
        build_model(spec, 3)


def test_widths_are_not_taken_by_other_backbones():
    with pytest.raises(ValueError, match="unknown backbone 'resnet18:24,48,96'"):
        build_model("resnet18:24,48,96", 3)
