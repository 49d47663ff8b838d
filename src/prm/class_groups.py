"""Class groups: many fine-grained classes of a classifier merged into one class of yours.

An ImageNet classifier knows 118 dog breeds and no "dog". A group's class response map is
the element-wise maximum of its members' maps, so two dogs of different breeds are two
peaks, two instances, of one class "dog"; peak back-propagation flows through the max to
the member that wins at each location.

A map is a YAML file::

    source: imagenet-1k        # optional, informative
    groups:
      dog: ["151-268"]         # indices, "first-last" ranges or class names
      cat: [281, 282, 283, 284, 285]
      car: [sports car, cab]

The project ships ``voc`` (``prm/class_maps/imagenet_voc.yaml``): ImageNet-1k -> 19 PASCAL
VOC classes, conservative (only unambiguous ImageNet classes), without "person", which
ImageNet-1k does not have.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from prm.model import PeakResponseNet
from prm.peaks import PeakFilter

__all__ = [
    "BUILTIN_MAPS",
    "ClassGroups",
    "GroupedResponseNet",
    "load_class_groups",
]

#: Maps shipped with the package: name -> file in ``prm/class_maps``.
BUILTIN_MAPS = {"voc": "imagenet_voc.yaml", "coco": "imagenet_coco.yaml"}


@dataclass(frozen=True)
class ClassGroups:
    """Named groups of source-class indices.

    Attributes:
        names: the ``G`` group (output class) names.
        members: for each group, its source-class indices (sorted, non-empty).
        num_source: number of source classes (e.g. 1000).
    """

    names: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]
    num_source: int

    def __post_init__(self) -> None:
        if len(self.names) != len(self.members) or not self.names:
            raise ValueError("class groups need one non-empty member list per group name")
        seen: dict[int, str] = {}
        for name, members in zip(self.names, self.members):
            if not members:
                raise ValueError(f"class group {name!r} has no members")
            for index in members:
                if not 0 <= index < self.num_source:
                    raise ValueError(
                        f"class group {name!r}: index {index} is outside 0..{self.num_source - 1}"
                    )
                if index in seen:
                    raise ValueError(
                        f"source class {index} is in both {seen[index]!r} and {name!r}"
                    )
                seen[index] = name


def _parse_member(item: Any, where: str, name_to_index: dict[str, int] | None) -> list[int]:
    if isinstance(item, bool):
        raise ValueError(f"{where}: {item!r} is not a class index, range or name")
    if isinstance(item, int):
        return [item]
    if isinstance(item, str):
        text = item.strip()
        first, sep, last = text.partition("-")
        if sep and first.strip().isdigit() and last.strip().isdigit():
            lo, hi = int(first), int(last)
            if hi < lo:
                raise ValueError(f"{where}: empty range {text!r}")
            return list(range(lo, hi + 1))
        if text.isdigit():
            return [int(text)]
        if name_to_index is None:
            raise ValueError(f"{where}: class name {text!r} needs the source class names")
        if text.lower() not in name_to_index:
            raise ValueError(f"{where}: unknown source class {text!r}")
        return [name_to_index[text.lower()]]
    raise ValueError(f"{where}: {item!r} is not a class index, range or name")


def load_class_groups(
    spec: str | Path | dict,
    *,
    num_source: int = 1000,
    source_names: Sequence[str] | None = None,
) -> ClassGroups:
    """Read a class map: a built-in name (``"voc"``), a YAML file, or an already-parsed dict.

    Args:
        spec: ``"voc"``, the path of a YAML file (see the module docstring), or a dict
            ``{"groups": {name: [members]}}``.
        num_source: number of source classes, to check indices.
        source_names: source class names, to resolve members given by name
            (case-insensitive); ImageNet's when omitted and ``num_source`` is 1000.

    Returns:
        :class:`ClassGroups`. Errors name the file and the offending entry.
    """
    where = "class map"
    if isinstance(spec, dict):
        data = spec
    else:
        text = str(spec)
        if text in BUILTIN_MAPS:
            where = f"built-in class map {text!r}"
            data = yaml.safe_load(
                resources.files("prm").joinpath("class_maps", BUILTIN_MAPS[text]).read_text()
            )
        else:
            path = Path(text)
            where = str(path)
            if not path.is_file():
                raise FileNotFoundError(
                    f"class map {path} does not exist (built-in maps: {sorted(BUILTIN_MAPS)})"
                )
            try:
                data = yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("groups"), dict):
        raise ValueError(f"{where}: expected a mapping with a 'groups' mapping of name -> list")
    if source_names is None and num_source == 1000:
        try:
            from prm.classifier import imagenet_class_names

            source_names = imagenet_class_names()
        except ModuleNotFoundError:
            source_names = None
    lookup = None
    if source_names is not None:
        lookup = {str(n).lower(): i for i, n in enumerate(source_names)}
    names, members = [], []
    for name, items in data["groups"].items():
        if not isinstance(items, list):
            items = [items]
        indices: list[int] = []
        for item in items:
            indices.extend(_parse_member(item, f"{where}, group {name!r}", lookup))
        names.append(str(name))
        members.append(tuple(sorted(set(indices))))
    try:
        return ClassGroups(tuple(names), tuple(members), num_source)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


class GroupedResponseNet(nn.Module):
    """A PRM network whose class response maps are maxima over groups of a base network's.

    Only the member classes' maps are computed (a slice of the base network's 1x1
    classifier); group ``g``'s map is ``max_{k in g} M_k``. With ``normalize=True`` every
    map is shifted by ``-logsumexp(logits)`` of the base network's classifier logits over
    *all* its classes (a per-image constant, no gradient): the maps are then in
    log-probability units, so the class scores (their global averages, at least the best
    member's log-probability) can be thresholded the same way on every photo. The shift
    changes neither the peaks nor the PRMs.

    Args:
        base: a :class:`~prm.model.PeakResponseNet` (e.g. from
            :func:`prm.classifier.from_classifier`).
        groups: :class:`ClassGroups` over the base network's classes.
        normalize: subtract the per-image log-partition (see above).
        win_size, peak_filter: peak settings (the base network's by default).
    """

    def __init__(
        self,
        base: nn.Module,
        groups: ClassGroups,
        *,
        normalize: bool = True,
        win_size: int | None = None,
        peak_filter: PeakFilter | str = "base",
    ):
        super().__init__()
        if groups.num_source != base.num_classes:
            raise ValueError(
                f"class groups are over {groups.num_source} classes, the network has "
                f"{base.num_classes}"
            )
        self.base = base
        self.groups = groups
        self.normalize = normalize
        self.num_classes = len(groups.names)
        self.class_names = list(groups.names)
        self.sub_pixel_factor = base.sub_pixel_factor
        self.peak_stimulation = base.peak_stimulation
        self.gradient = base.gradient
        self.win_size = win_size if win_size is not None else base.win_size
        self.peak_filter = base.peak_filter if peak_filter == "base" else peak_filter
        flat = [i for members in groups.members for i in members]
        self.register_buffer("member_index", torch.tensor(flat), persistent=False)
        # (G, M) positions into the member maps; short groups repeat their first member,
        # which leaves the max unchanged.
        width = max(len(m) for m in groups.members)
        gather, start = [], 0
        for members in groups.members:
            row = list(range(start, start + len(members)))
            gather.append(row + [row[0]] * (width - len(row)))
            start += len(members)
        self.register_buffer("gather", torch.tensor(gather), persistent=False)

    def class_response_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Group response maps.

        Args:
            images (Tensor[B, 3, H, W]): normalised images.

        Returns:
            Tensor[B, G, h * f, w * f]: one map per group (``f`` the sub-pixel factor).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        features = self.base.backbone(images)
        weight = self.base.classifier.weight
        bias = self.base.classifier.bias
        idx = self.member_index
        crm = F.conv2d(features, weight[idx], bias[idx] if bias is not None else None)
        if self.sub_pixel_factor > 1:
            crm = F.interpolate(
                crm, scale_factor=self.sub_pixel_factor, mode="bilinear", align_corners=True
            )
        b, _, h, w = crm.shape
        grouped = crm[:, self.gather.flatten()].view(b, *self.gather.shape, h, w).amax(2)
        if self.normalize:
            with torch.no_grad():
                pooled = features.detach().mean(dim=(2, 3), keepdim=True)
                logits = F.conv2d(pooled, weight.detach(), bias).flatten(1)
                shift = torch.logsumexp(logits, dim=1)
            grouped = grouped - shift[:, None, None, None]
        return grouped

    # Scores, peaks and the forward pass work on grouped maps exactly as on a
    # PeakResponseNet's: they read only win_size, peak_filter, gradient, peak_stimulation.
    aggregate = PeakResponseNet.aggregate
    find_peaks = PeakResponseNet.find_peaks
    forward = PeakResponseNet.forward
