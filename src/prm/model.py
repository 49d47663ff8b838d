"""The network: a fully convolutional classifier with peak stimulation (docs/method.md §1-2).

``PeakResponseNet`` = backbone (an ImageNet classifier cut before global pooling) + a 1x1
convolution to ``C`` class response maps (CRMs) + optional sub-pixel upsampling + peak
stimulation (or global average pooling, the CAM-style ablation).

Backbones: ``resnet18/34/50/101`` (the paper's ResNet-50: conv1 ... layer4, stride 32),
``vgg16`` / ``vgg16_bn`` (the paper's VGG-16: the ``features`` block, stride 32) and
``small``, a 7-layer CNN (stride 8) that trains from scratch on a CPU in minutes for the
demo and tests, and ``small_res``, its residual sibling (stride 8). ImageNet weights
come from torchvision's weights API (cached under
``$TORCH_HOME``) or from a local ``.pth`` file; nothing is downloaded unless asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from prm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from prm.peaks import PeakFilter, find_peaks, peak_stimulation

__all__ = [
    "BACKBONES",
    "PeakResponseNet",
    "SmallBackbone",
    "SmallResBackbone",
    "build_backbone",
    "build_model",
]

_RESNETS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}
_VGGS = {"vgg16": 512, "vgg16_bn": 512}
#: Backbone names accepted by :func:`build_backbone` and :func:`build_model`.
BACKBONES = (*_RESNETS, *_VGGS, "small", "small_res")


class ResNetFeatures(nn.Module):
    """A torchvision ResNet without ``avgpool`` and ``fc`` (stride 32, no dilation).

    Submodule names match torchvision's, so a torchvision state dict loads directly.
    """

    def __init__(self, resnet: torchvision.models.ResNet):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(resnet, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class _Features(nn.Module):
    """A backbone that is one ``features`` module with ``out_channels`` output channels;
    ``he_init`` re-initialises its convolutions (Kaiming, fan-out) for training from scratch.
    """

    def __init__(self, features: nn.Module, out_channels: int | None = None, he_init=False):
        super().__init__()
        self.features = features
        if out_channels is not None:
            self.out_channels = out_channels
        for m in self.modules() if he_init else ():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class VGGFeatures(_Features):
    """A torchvision VGG's ``features`` block (13 convolutions, 5 max-pools, stride 32)."""

    def __init__(self, vgg: torchvision.models.VGG):
        super().__init__(vgg.features)


class SmallBackbone(_Features):
    """A small VGG-style CNN (stride 8) that trains from scratch on 2 CPU cores in minutes.

    Seven ``conv3x3-BN-ReLU`` layers; the 1st, 3rd and 5th have stride 2 (strided
    convolutions rather than max-pools: cheaper on a CPU, and they learned faster on
    ShapeScenes). Receptive field 59 px; about 0.44 M parameters with the default widths.

    Args:
        widths: channels of the three resolutions (1/2, 1/4, 1/8).
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128)):
        def conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        w0, w1, w2 = widths
        features = nn.Sequential(
            *conv(3, w0, stride=2),
            *conv(w0, w0),
            *conv(w0, w1, stride=2),
            *conv(w1, w1),
            *conv(w1, w2, stride=2),
            *conv(w2, w2),
            *conv(w2, w2),
        )
        super().__init__(features, w2, he_init=True)


class _BasicBlock(nn.Module):
    """ResNet's basic block: two ``conv3x3-BN`` with an identity (or 1x1) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        # Zero-initialised last BN: each block starts as the identity (Goyal et al. 2017).
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResBackbone(_Features):
    """A small residual CNN (stride 8) for training from scratch on a CPU.

    A ``conv3x3-BN-ReLU`` stem with stride 2, a basic residual block down to 1/4, one
    down to 1/8 and one more at 1/8: 7 convolutions on the main path (receptive field
    91 px), about 0.6 M parameters with the default widths and the multiply-adds of
    :class:`SmallBackbone` (whose full-width layer at 1/2 it drops for the shortcuts).

    Args:
        widths: channels of the three resolutions (1/2, 1/4, 1/8).
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128)):
        w0, w1, w2 = widths
        features = nn.Sequential(
            nn.Conv2d(3, w0, 3, 2, 1, bias=False),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
            _BasicBlock(w0, w1, stride=2),
            _BasicBlock(w1, w2, stride=2),
            _BasicBlock(w2, w2),
        )
        super().__init__(features, w2, he_init=True)


def _resolve_weights(name: str, weights: Any) -> tuple[Any, Path | None]:
    """Split ``weights`` into (torchvision weights enum or None, local file or None)."""
    if weights is None:
        return None, None
    if isinstance(weights, torchvision.models.WeightsEnum):
        return weights, None
    if isinstance(weights, (str, os.PathLike)):
        text = str(weights)
        if (
            name not in ("small", "small_res")
            and os.path.sep not in text
            and not text.endswith((".pth", ".pt"))
        ):
            enum = torchvision.models.get_model_weights(name)
            if text == "DEFAULT":
                return enum.DEFAULT, None
            if text in enum.__members__:
                return enum[text], None
            if "." in text and text.split(".")[-1] in enum.__members__:
                return enum[text.split(".")[-1]], None
            raise ValueError(
                f"unknown weights {text!r} for {name}: use one of "
                f"{['DEFAULT', *enum.__members__]} or a path to a .pth file"
            )
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist")
        return None, path
    raise ValueError(
        f"weights must be None, a torchvision weights enum, a name or a path, got {weights!r}"
    )


def load_weights_file(
    module: nn.Module, path: Path, what: str, container: str, keep: Callable[[str], str | None]
) -> None:
    """Load a state dict from a file (``weights_only``) into ``module``, checked key by key.

    Args:
        module: where the weights go.
        path: the file: a state dict, or a dict holding one under ``container``.
        what: how errors name ``module`` ("the backbone", "the timm model").
        container: the key of a wrapped state dict (``"model"``, ``"state_dict"``).
        keep: maps a key of the file to the module's key, or ``None`` to drop it (a head).

    Raises:
        ValueError: naming the file, when it is unreadable, not a state dict, or its keys
            or shapes do not match ``module``.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, ...
        raise ValueError(f"cannot read weights file {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get(container), dict):
        state = state[container]
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} does not hold a state dict")
    cleaned = {keep(key): value for key, value in state.items()}
    cleaned.pop(None, None)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(cleaned))
    unexpected = sorted(set(cleaned) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"weights file {path} does not match {what}: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    for key, value in cleaned.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"weights file {path}: {key} has shape {tuple(value.shape)}, "
                f"{what} expects {tuple(expected[key].shape)}"
            )
    module.load_state_dict(cleaned)


def _load_local_weights(features: nn.Module, path: Path) -> None:
    """Load a torchvision classification state dict (or a backbone-only one) from a file."""

    def keep(key: str) -> str | None:
        # Drop the ImageNet head (fc / classifier) and a possible "backbone." prefix.
        key = key.removeprefix("module.").removeprefix("backbone.")
        return None if key.startswith(("fc.", "classifier.")) else key

    load_weights_file(features, path, "the backbone", "model", keep)


def _small_widths(name: str) -> tuple[str, tuple[int, int, int] | None]:
    """``"small:24,48,128"`` -> ``("small", (24, 48, 128))``; other names unchanged."""
    base, sep, spec = name.partition(":")
    if not sep or base not in ("small", "small_res"):
        return name, None
    parts = spec.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(
            f"backbone {name!r}: the widths of {base!r} are three positive integers, "
            f"one per resolution (1/2, 1/4, 1/8), e.g. '{base}:24,48,128'"
        )
    return base, tuple(int(p) for p in parts)  # type: ignore[return-value]


def build_backbone(name: str, weights: Any = None, progress: bool = True) -> nn.Module:
    """A classification backbone cut before global pooling.

    Args:
        name: one of :data:`BACKBONES`, or ``"timm:NAME"`` for any timm model (see
            :func:`prm.classifier.build_timm_backbone`, whose ``weights`` also accept
            ``"lite0"``: EfficientNet-Lite0 ImageNet weights from an installed package).
            ``"small"`` and ``"small_res"`` take other widths as ``"small:24,48,128"``
            (channels at 1/2, 1/4 and 1/8 of the input; default ``32,64,128``).
        weights: ``None`` (random initialisation); a torchvision weights enum or its name
            (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ``"ResNet50_Weights.IMAGENET1K_V2"``),
            fetched through torchvision's cache (``$TORCH_HOME/hub/checkpoints``); or the
            path of a local ``.pth`` state dict of the torchvision model (its ``fc`` /
            ``classifier`` head is ignored), loaded with ``weights_only=True``.
        progress: show torchvision's download progress bar.

    Returns:
        An ``nn.Module`` mapping ``(B, 3, H, W)`` to ``(B, D, H / s, W / s)`` with an
        ``out_channels`` attribute ``D`` and stride ``s`` (32 for ResNet/VGG, 8 for small).
    """
    if name.startswith("timm:"):
        # Any timm model (prm.classifier); "timm:" keeps the torchvision names unambiguous.
        from prm.classifier import build_timm_backbone

        return build_timm_backbone(name, weights)
    name, widths = _small_widths(name)
    if name not in BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; choose from {list(BACKBONES)} or 'timm:MODEL_NAME'"
        )
    enum, path = _resolve_weights(name, weights)
    if name in ("small", "small_res"):
        if enum is not None:
            raise ValueError(f"the {name!r} backbone has no torchvision weights")
        small = SmallBackbone if name == "small" else SmallResBackbone
        features: nn.Module = small() if widths is None else small(widths)
    else:
        full = torchvision.models.get_model(name, weights=enum, progress=progress)
        if name in _RESNETS:
            features = ResNetFeatures(full)
            features.out_channels = _RESNETS[name]
        else:
            features = VGGFeatures(full)
            features.out_channels = _VGGS[name]
    if path is not None:
        _load_local_weights(features, path)
    return features


class PeakResponseNet(nn.Module):
    """A fully convolutional classifier whose class scores come from peak stimulation.

    ``forward(x)`` returns class scores ``(B, C)`` (train and eval mode alike);
    :meth:`class_response_maps` returns the maps ``(B, C, h, w)`` they come from.

    Args:
        backbone: module mapping ``(B, 3, H, W)`` to ``(B, D, h, w)``.
        num_classes: ``C``.
        in_channels: ``D`` (defaults to ``backbone.out_channels``).
        sub_pixel_factor: integer factor of bilinear (``align_corners=True``) upsampling
            of the CRMs before peak finding (the authors train with 8 and run their demo
            with 1; it has no weights, so it may be changed after training).
        peak_stimulation: score by the mean of peaks (True) or by global average pooling
            (False: the paper's CAM-style ablation baseline).
        win_size: odd peak window (3).
        peak_filter: ``"median"`` (default), ``"mean"``, ``"max"``, a float or ``None``.
        gradient: ``"paper"`` (exact gradient of the mean) or ``"authors"`` (without 1/N).
        class_names: optional names of the ``C`` classes, kept with checkpoints.
        backbone_name: optional name of the backbone, kept with checkpoints.
        input_size: the ``(h, w)`` (or int, square) size the network was trained at, which
            :class:`~prm.predictor.Predictor` resizes images to; ``None`` if unknown.
        mean, std: the input normalisation it was trained with (ImageNet's by default).
        inference: inference settings kept with checkpoints, plain data:
            ``{"peak_selection": {...}, "retrieval": {...}, "smooth_strided": bool}``
            (fields of :class:`~prm.backprop.PeakSelection` and
            :class:`~prm.retrieval.RetrievalConfig`, and the back-propagation rule, e.g.
            what ``prm tune`` chose); the predictor's defaults where absent.

    Everything but the weights is in :meth:`config`, which checkpoints store, so a model
    loaded with :func:`prm.engine.load_model` knows how it is to be used.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        in_channels: int | None = None,
        *,
        sub_pixel_factor: int = 1,
        peak_stimulation: bool = True,
        win_size: int = 3,
        peak_filter: PeakFilter = "median",
        gradient: Literal["paper", "authors"] = "paper",
        class_names: Sequence[str] | None = None,
        backbone_name: str | None = None,
        input_size: int | Sequence[int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        inference: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not isinstance(sub_pixel_factor, int) or sub_pixel_factor < 1:
            raise ValueError(f"sub_pixel_factor must be an integer >= 1, got {sub_pixel_factor!r}")
        if not isinstance(win_size, int) or win_size < 1 or win_size % 2 == 0:
            raise ValueError(f"win_size must be a positive odd integer, got {win_size!r}")
        if gradient not in ("paper", "authors"):
            raise ValueError(f"gradient must be 'paper' or 'authors', got {gradient!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        in_channels = in_channels if in_channels is not None else backbone.out_channels
        self.backbone = backbone
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=True)
        self.num_classes = num_classes
        self.sub_pixel_factor = sub_pixel_factor
        self.peak_stimulation = peak_stimulation
        self.win_size = win_size
        self.peak_filter = peak_filter
        self.gradient = gradient
        self.class_names = list(class_names) if class_names is not None else None
        self.backbone_name = backbone_name
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.input_size = tuple(int(v) for v in input_size) if input_size is not None else None
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.inference = dict(inference or {})

    def class_response_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Class response maps (after sub-pixel upsampling when enabled).

        Args:
            images (Tensor[B, 3, H, W]): normalised images.

        Returns:
            Tensor[B, C, h * f, w * f]: CRMs, ``h = H / stride``, ``f = sub_pixel_factor``.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        return self.maps_from_features(self.backbone(images))

    def maps_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Class response maps from the backbone's output (as :meth:`class_response_maps`).

        Args:
            features (Tensor[B, D, h, w]): the backbone's features.

        Returns:
            Tensor[B, C, h * f, w * f]: CRMs.
        """
        crm = self.classifier(features)
        if self.sub_pixel_factor > 1:
            crm = F.interpolate(
                crm, scale_factor=self.sub_pixel_factor, mode="bilinear", align_corners=True
            )
        return crm

    def aggregate(self, crm: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, C)`` from CRMs ``(B, C, h, w)``: peak stimulation or GAP."""
        if self.peak_stimulation:
            return peak_stimulation(crm, self.win_size, self.peak_filter, self.gradient)
        return crm.mean(dim=(2, 3))

    def find_peaks(self, crm: torch.Tensor) -> torch.Tensor:
        """Peaks ``(K, 4)`` rows ``(b, c, y, x)`` of CRMs with this model's window/filter."""
        return find_peaks(crm, self.win_size, self.peak_filter)

    def forward(
        self, images: torch.Tensor, return_maps: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Class scores (logits).

        Args:
            images (Tensor[B, 3, H, W]): normalised images.
            return_maps: also return the class response maps the scores come from (in
                one pass, e.g. for a loss on the maps, under DDP too).

        Returns:
            Tensor[B, C]: class scores, for a multi-label soft-margin loss; with
            ``return_maps``, ``(scores, crm)`` with ``crm`` as
            :meth:`class_response_maps`.
        """
        crm = self.class_response_maps(images)
        scores = self.aggregate(crm)
        return (scores, crm) if return_maps else scores

    def config(self) -> dict[str, Any]:
        """The constructor arguments that define this model (stored in checkpoints)."""
        same = "sub_pixel_factor peak_stimulation win_size peak_filter gradient class_names"
        return {
            "backbone": self.backbone_name,
            "num_classes": self.num_classes,
            "in_channels": self.classifier.in_channels,
            **{key: getattr(self, key) for key in same.split()},
            "input_size": list(self.input_size) if self.input_size is not None else None,
            **{key: getattr(self, key) for key in ("mean", "std", "inference")},
        }


def build_model(
    backbone: str = "resnet50",
    num_classes: int = 20,
    *,
    weights: Any = None,
    class_names: Sequence[str] | None = None,
    **kwargs: Any,
) -> PeakResponseNet:
    """Build a :class:`PeakResponseNet` on a named backbone.

    Args:
        backbone: one of :data:`BACKBONES` (``"resnet50"`` as in the paper).
        num_classes: number of classes ``C``.
        weights: backbone weights, see :func:`build_backbone`.
        class_names: optional class names.
        **kwargs: passed to :class:`PeakResponseNet` (``sub_pixel_factor``,
            ``peak_stimulation``, ``win_size``, ``peak_filter``, ``gradient``).

    Returns:
        The model (in train mode).
    """
    features = build_backbone(backbone, weights)
    return PeakResponseNet(
        features, num_classes, class_names=class_names, backbone_name=backbone, **kwargs
    )
