"""Self-training: a torchvision Mask R-CNN trained on PRM pseudo-labels (``prm distill``).

``distill(config)`` trains :class:`torchvision.models.detection.MaskRCNN` on the COCO
instances json of ``prm pseudo-label``, reading the images from the dataset split the
pseudo-labels were made on (the json's ``prm_image_id`` names each image; the dataset's
own instance masks are never read). Features shared with ``prm train``: a YAML config
(:class:`DistillConfig`), an atomic checkpoint every epoch (``last.pt``, written with
:func:`prm.engine.checkpoint.save_checkpoint`, read with ``weights_only=True``), exact
resumption, a JSONL log (``metrics.jsonl``) and a progress bar.

Exact resumption: each epoch's shuffling, flips and torchvision's internal sampling
(RPN / RoI positive-negative sampling uses the global torch RNG) are seeded from
``(seed, epoch)`` alone, and the checkpoint holds the weights, the SGD momentum and the
epoch, so an interrupted run resumed from its last checkpoint ends with the weights of
an uninterrupted one (bit for bit on one CPU thread).

Backbones (``backbone``):

- ``"small"``: a 5-layer GroupNorm CNN (stride 8, 128 channels, one feature map) with
  small box and mask heads; trains from scratch on ShapeScenes (128 px) on a CPU in
  minutes;
- ``"resnet50_fpn_v2"``: torchvision's ``maskrcnn_resnet50_fpn_v2`` for GPU users;
  ``backbone_weights: imagenet`` uses torchvision's ImageNet ResNet-50 weights (they
  must already be in the torch hub cache or be downloadable by the user: nothing is
  fetched by the tests), or give the path of a ResNet-50 state dict.

:class:`DistilledPredictor` returns the same dicts as :class:`prm.predictor.Predictor`, so
``prm predict --checkpoint distill/last.pt`` and ``prm evaluate`` work unchanged.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from prm.engine.checkpoint import load_checkpoint, save_checkpoint
from prm.engine.config import save_config
from prm.files import read_yaml
from prm.masks import masks_to_boxes
from prm.predictor import to_image_tensor

__all__ = [
    "DistillConfig",
    "DistilledPredictor",
    "SMALL_INFERENCE",
    "PseudoLabelDataset",
    "build_maskrcnn",
    "distill",
    "is_distilled_checkpoint",
    "load_distilled",
]

MODEL_KIND = "maskrcnn"
#: The small backbone's test-time settings (torchvision ``MaskRCNN`` arguments): the
#: fastest of 9 within 1 point of the best validation mAP^r@0.5 on ShapeScenes
#: (docs/distill.md); the mask head runs once per detection and dominates the cost.
SMALL_INFERENCE = {
    "rpn_pre_nms_top_n_test": 150,
    "rpn_post_nms_top_n_test": 50,
    "box_detections_per_img": 15,
    "box_score_thresh": 0.1,
}


@dataclass
class DistillConfig:
    """Everything a ``prm distill`` run depends on (also its YAML file's keys).

    Args:
        pseudo_labels: the ``instances.json`` of ``prm pseudo-label``.
        dataset, root, split: the dataset split the pseudo-labels were made on (images).
        out: output folder (``last.pt``, ``metrics.jsonl``, ``config.yaml``).
        backbone: ``"small"`` or ``"resnet50_fpn_v2"``.
        backbone_weights: for ``resnet50_fpn_v2``: ``"imagenet"`` or a state-dict path.
        min_size, max_size: Mask R-CNN's image resizing (shorter / longer side).
        epochs, batch_size, lr, momentum, weight_decay: SGD (cosine learning rate).
        flip: random horizontal flips; ``None`` (default): on, unless the dataset's
            reader says a mirror image changes its classes (``MIRROR_INVARIANT``: off
            for GlyphScenes' letters), as ``prm train`` does.
        seed: seed of everything random.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        max_steps_per_epoch: cut epochs short (smoke tests).
        inference: test-time ``MaskRCNN`` arguments (``rpn_pre_nms_top_n_test``,
            ``rpn_post_nms_top_n_test``, ``box_detections_per_img``, ``box_score_thresh``)
            saved with the model, over the backbone's defaults (:data:`SMALL_INFERENCE`
            for ``small``, torchvision's for ``resnet50_fpn_v2``).
    """

    pseudo_labels: str = ""
    dataset: str = "shapes"
    root: str | None = None
    split: str | None = "train"
    out: str = "runs/distill"
    backbone: str = "small"
    backbone_weights: str | None = None
    min_size: int = 128
    max_size: int = 128
    epochs: int = 12
    batch_size: int = 4
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    flip: bool | None = None
    seed: int = 0
    device: str = "auto"
    max_steps_per_epoch: int | None = None
    inference: dict[str, float] | None = None

    def validate(self) -> None:
        if self.backbone not in ("small", "resnet50_fpn_v2"):
            raise ValueError(
                f"backbone must be 'small' or 'resnet50_fpn_v2', got {self.backbone!r}"
            )
        for name in ("epochs", "batch_size", "min_size", "max_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.flip not in (None, True, False):
            raise ValueError(f"flip must be true, false or null (auto), got {self.flip!r}")
        if not self.pseudo_labels:
            raise ValueError("pseudo_labels (the instances.json of `prm pseudo-label`) is required")


def load_distill_config(path: str | os.PathLike | None = None, **overrides: Any) -> DistillConfig:
    """A :class:`DistillConfig` from a YAML file (optional) with overrides on top."""
    data = {} if path is None else read_yaml(path, "config") or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a distill config must be a mapping of settings")
    known = {f.name for f in fields(DistillConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown} (known: {sorted(known)})")
    data.update({k: v for k, v in overrides.items() if v is not None})
    config = DistillConfig(**data)
    config.validate()
    return config


# ---------------------------------------------------------------------------- model


class _SmallBackbone(nn.Sequential):
    """Stride-8 CNN with GroupNorm (batch-size independent): (B, 3, H, W) -> (B, 128, H/8, W/8)."""

    def __init__(self, channels: int = 128):
        def block(cin, cout, stride):
            return [
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.GroupNorm(8, cout),
                nn.ReLU(inplace=True),
            ]

        super().__init__(
            *block(3, 32, 2),
            *block(32, 64, 2),
            *block(64, 64, 1),
            *block(64, channels, 2),
            *block(channels, channels, 1),
        )
        self.out_channels = channels


def build_maskrcnn(
    num_classes: int,
    backbone: str = "small",
    *,
    min_size: int = 128,
    max_size: int = 128,
    backbone_weights: str | None = None,
    **inference: float,
) -> nn.Module:
    """A torchvision Mask R-CNN for ``num_classes`` object classes (+ background).

    Args:
        num_classes: ``C``; the model's labels are ``1..C`` (0 is background).
        backbone: ``"small"`` (CPU, from scratch) or ``"resnet50_fpn_v2"``.
        min_size, max_size: the model's internal image resizing.
        backbone_weights: ``resnet50_fpn_v2`` only: ``"imagenet"`` or a state-dict path.
        **inference: test-time settings (keys of :data:`SMALL_INFERENCE`) over the
            backbone's defaults.

    Returns:
        ``torchvision.models.detection.MaskRCNN`` (train mode).
    """
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn_v2
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    stray = sorted(set(inference) - set(SMALL_INFERENCE))
    if stray:
        raise ValueError(f"unknown inference settings {stray}; known: {list(SMALL_INFERENCE)}")
    if backbone == "resnet50_fpn_v2":
        weights = None
        if backbone_weights == "imagenet":
            from torchvision.models import ResNet50_Weights

            weights = ResNet50_Weights.IMAGENET1K_V1
        model = maskrcnn_resnet50_fpn_v2(
            weights=None,
            weights_backbone=weights,
            num_classes=num_classes + 1,
            min_size=min_size,
            max_size=max_size,
            **inference,
        )
        if backbone_weights not in (None, "imagenet"):
            path = Path(backbone_weights)
            if not path.is_file():
                raise FileNotFoundError(f"backbone weights {path} do not exist")
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing = model.backbone.body.load_state_dict(state, strict=False)
            if len(missing.missing_keys) == len(model.backbone.body.state_dict()):
                raise ValueError(f"{path} holds no ResNet-50 weights")
        return model
    if backbone != "small":
        raise ValueError(f"backbone must be 'small' or 'resnet50_fpn_v2', got {backbone!r}")
    if backbone_weights is not None:
        raise ValueError("the small backbone trains from scratch: backbone_weights must be unset")
    body = _SmallBackbone()
    channels = body.out_channels
    return MaskRCNN(
        body,
        num_classes=None,  # given by the box and mask predictors below
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=AnchorGenerator(
            sizes=((12, 24, 48, 96),), aspect_ratios=((0.5, 1.0, 2.0),)
        ),
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        box_head=TwoMLPHead(channels * 49, 256),
        box_predictor=FastRCNNPredictor(256, num_classes + 1),
        box_batch_size_per_image=128,
        mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
        mask_head=MaskRCNNHeads(channels, [128, 128], 1),
        mask_predictor=MaskRCNNPredictor(128, 128, num_classes + 1),
        **{**SMALL_INFERENCE, **inference},
    )


# ---------------------------------------------------------------------------- data


class PseudoLabelDataset:
    """Images of a dataset split with the pseudo ground truth of a ``prm pseudo-label`` json.

    Item ``i``: ``(image (3, H, W) float in [0, 1], target)`` with torchvision's detection
    target: ``boxes`` (N, 4) float ``(x1, y1, x2, y2)``, ``labels`` (N,) int64 in
    ``1..C``, ``masks`` (N, H, W) uint8. Images with no kept instance are negatives.
    """

    def __init__(self, pseudo_labels: str | os.PathLike, dataset):
        path = Path(pseudo_labels)
        if not path.is_file():
            raise FileNotFoundError(f"pseudo-labels {path} do not exist")
        try:
            data = json.loads(path.read_text())
            images = data["images"]
            annotations = data["annotations"]
            categories = data["categories"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a COCO instances json ({exc})") from None
        names = [c["name"] for c in categories]
        if names != list(dataset.classes):
            raise ValueError(f"{path} has classes {names}, the dataset has {list(dataset.classes)}")
        label_of = {int(c): i + 1 for i, c in enumerate(dataset.category_ids)}
        index_of = {dataset.image_id(i): i for i in range(len(dataset))}
        self.dataset = dataset
        self.classes = names
        self.items: list[tuple[int, list[dict]]] = []
        by_image: dict[int, list[dict]] = {}
        for ann in annotations:
            if int(ann["category_id"]) not in label_of:
                raise ValueError(f"{path}: annotation {ann.get('id')} has an unknown category")
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
        for image in images:
            name = str(image.get("prm_image_id", image.get("file_name")))
            if name not in index_of:
                raise ValueError(f"{path}: image {name!r} is not in the dataset split")
            self.items.append((index_of[name], by_image.get(int(image["id"]), [])))
        self.label_of = label_of

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, anns = self.items[i]
        item = self.dataset[index]
        if item is None:
            raise ValueError(f"image {self.dataset.image_id(index)} cannot be read")
        image = to_image_tensor(item[0])
        height, width = image.shape[1:]
        if anns:
            rles = [a["segmentation"] for a in anns]
            masks = torch.from_numpy(np.ascontiguousarray(mask_utils.decode(rles))).permute(2, 0, 1)
            if tuple(masks.shape[1:]) != (height, width):
                raise ValueError(
                    f"pseudo-label masks of image {self.dataset.image_id(index)} are "
                    f"{tuple(masks.shape[1:])}, the image is {(height, width)}"
                )
        else:
            masks = torch.zeros((0, height, width), dtype=torch.uint8)
        boxes = masks_to_boxes(masks.bool()).float() if len(masks) else torch.zeros((0, 4))
        labels = torch.tensor(
            [self.label_of[int(a["category_id"])] for a in anns], dtype=torch.int64
        )
        return image, {"boxes": boxes, "labels": labels, "masks": masks.to(torch.uint8)}


def _flip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}


# ---------------------------------------------------------------------------- training


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**31)


def distill(
    config: DistillConfig,
    *,
    dataset=None,
    resume: bool = True,
    progress: bool = True,
    on_epoch: Callable[[int], None] | None = None,
) -> Path:
    """Train Mask R-CNN on pseudo-labels; returns the final checkpoint (``<out>/last.pt``).

    ``dataset`` is the split the pseudo-labels were made on (a ``prm.data`` dataset
    without a transform; by default built from ``config.dataset``, ``root`` and ``split``).
    With ``resume=True`` an existing ``<out>/last.pt`` of the same configuration is
    continued from its epoch (a finished run returns at once); one of another
    configuration is refused. ``on_epoch(epoch)`` is called after each epoch's
    checkpoint and log line are written.
    """
    from prm.data import build_dataset
    from prm.engine.train import _Distributed, resolve_device

    config.validate()
    with _Distributed(resolve_device(config.device)) as ddp:
        if dataset is None:
            dataset = build_dataset(config.dataset, config.root, config.split)
        data = PseudoLabelDataset(config.pseudo_labels, dataset)
        if len(data) < ddp.world_size:
            raise ValueError(
                f"{config.pseudo_labels} has {len(data)} images, fewer than the "
                f"{ddp.world_size} processes"
            )
        model, optimizer, start = _set_up(config, data.classes, ddp, resume)
        net = ddp.wrap(model)
        for epoch in range(start, config.epochs):
            record = _train_epoch(net, optimizer, data, config, ddp, epoch, progress)
            record["ranks_in_sync"] = ddp.in_sync(model)
            if ddp.is_main:
                _save_epoch(config, model, optimizer, data.classes, record)
            ddp.barrier()  # nobody goes on (or returns) before the checkpoint is written
            if on_epoch is not None:
                on_epoch(epoch + 1)
        return Path(config.out) / "last.pt"


def _set_up(config: DistillConfig, classes, ddp, resume: bool):
    """``(model, optimizer, first epoch)``: new, or from ``<out>/last.pt`` when resuming;
    rank 0 prepares the output folder (config, log cut at the checkpoint's epoch)."""
    from prm.engine.train import _reconcile_metrics, _remove_stale_temporaries

    torch.manual_seed(config.seed)  # the initial weights: the same in every run of a config
    model = build_maskrcnn(
        len(classes),
        config.backbone,
        min_size=config.min_size,
        max_size=config.max_size,
        backbone_weights=config.backbone_weights,
        **(config.inference or {}),
    ).to(ddp.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    out, state = Path(config.out), {}
    checkpoint = out / "last.pt"
    if resume and checkpoint.is_file():
        state = load_checkpoint(checkpoint, map_location=ddp.device)
        if state.get("config", {}) != _comparable(config):
            raise ValueError(
                f"{checkpoint} was written by a run with another configuration; "
                "use another --out or --no-resume"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    start = int(state.get("epoch", 0))
    if ddp.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out)
        _reconcile_metrics(out / "metrics.jsonl", start, state.get("metrics"))
        save_config(config, out / "config.yaml")
    return model, optimizer, start


def _train_epoch(net, optimizer, data, config: DistillConfig, ddp, epoch: int, progress) -> dict:
    """One epoch of SGD steps on this rank's share; returns the epoch's log record."""
    from prm.engine.train import resolved_flip

    steps = math.ceil(len(data) // ddp.world_size / config.batch_size)  # drop_last shards
    steps = min(steps, config.max_steps_per_epoch or steps)
    seed = _epoch_seed(config.seed, epoch)
    generator = torch.Generator().manual_seed(seed)
    # torchvision's RPN / RoI samplers draw from the global RNG: seeded per epoch (and
    # rank) so that a resumed run repeats an uninterrupted one.
    torch.manual_seed(seed + ddp.rank)
    if ddp.enabled:
        sampler = DistributedSampler(data, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        order = list(sampler)
    else:
        order = torch.randperm(len(data), generator=generator).tolist()
    flips = torch.rand(len(data), generator=generator) < 0.5  # the same on every rank
    flip = resolved_flip(config)  # TrainConfig's rule: off where a mirror changes a class
    net.train()
    began, totals = time.perf_counter(), {}
    bar = tqdm(
        range(steps),
        desc=f"distill {epoch + 1}/{config.epochs}",
        disable=not (progress and ddp.is_main),
    )
    for step in bar:
        done = (epoch * steps + step) / (config.epochs * steps)
        warm = min(1.0, done * config.epochs * 4)  # a quarter-epoch linear warm-up
        for group in optimizer.param_groups:
            group["lr"] = config.lr * warm * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
        images, targets = [], []
        for i in order[step * config.batch_size : (step + 1) * config.batch_size]:
            image, target = data[i]
            if flip and bool(flips[i]):
                image, target = _flip(image, target)
            images.append(image.to(ddp.device))
            targets.append({k: v.to(ddp.device) for k, v in target.items()})
        losses = net(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise ValueError(f"the loss became {loss.item()} at epoch {epoch + 1}; lower lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in [*losses.items(), ("loss", loss)]:
            totals[key] = totals.get(key, 0.0) + value.item()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - began
    return {
        "epoch": epoch + 1,
        **{k: ddp.mean(v / steps) for k, v in totals.items()},  # over all ranks
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": steps * config.batch_size * ddp.world_size / max(seconds, 1e-9),
        "world_size": ddp.world_size,
    }


def _save_epoch(config: DistillConfig, model, optimizer, classes, record: dict) -> None:
    """The epoch's checkpoint (atomic), then its log line."""
    out = Path(config.out)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": record["epoch"],
        "config": _comparable(config),
        "model_config": {  # what load_distilled rebuilds the model from
            "kind": MODEL_KIND,
            "backbone": config.backbone,
            "num_classes": len(classes),
            "class_names": list(classes),
            "min_size": config.min_size,
            "max_size": config.max_size,
            "inference": dict(config.inference or {}),
        },
        "class_names": list(classes),
        "metrics": record,
    }
    save_checkpoint(out / "last.pt", state)
    with open(out / "metrics.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")


def _comparable(config: DistillConfig) -> dict[str, Any]:
    """The settings a resumed run must share (not where it runs, how long it goes, or
    the test-time settings)."""
    state = asdict(config)
    for key in ("device", "epochs", "out", "inference"):
        state.pop(key)
    return state


# ---------------------------------------------------------------------------- inference


def is_distilled_checkpoint(path: str | os.PathLike) -> bool:
    """Whether a prm checkpoint holds a distilled Mask R-CNN (not a PRM network)."""
    state = load_checkpoint(path)
    return state.get("model_config", {}).get("kind") == MODEL_KIND


def load_distilled(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", **inference: float
) -> nn.Module:
    """Rebuild a distilled Mask R-CNN (eval mode) with ``class_names`` and ``num_classes``;
    ``inference`` settings override those saved with it (see :class:`DistillConfig`)."""
    state = load_checkpoint(path, map_location)
    config = state.get("model_config", {})
    if config.get("kind") != MODEL_KIND:
        raise ValueError(f"{path} is not a `prm distill` checkpoint")
    model = build_maskrcnn(
        config["num_classes"],
        config["backbone"],
        min_size=config["min_size"],
        max_size=config["max_size"],
        **{**config.get("inference", {}), **inference},
    )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not match its model description: {exc}") from None
    model.class_names = list(config["class_names"])
    model.num_classes = int(config["num_classes"])
    return model.eval()


class DistilledPredictor:
    """A distilled Mask R-CNN behind :class:`prm.predictor.Predictor`'s interface.

    Args:
        model: from :func:`load_distilled`.
        score_threshold: drop detections scoring below this (default 0.05).
        mask_threshold: mask probability above which a pixel is foreground (0.5).
        device: where to run (the model's device by default).

    ``__call__(images, proposals=None)`` returns one dict per image, as ``Predictor``:
    ``masks`` (N, H, W) bool, ``labels`` (N,) in ``0..C-1``, ``scores`` (N,), ``boxes``
    (N, 4), ``peaks`` (N, 2) ``(x, y)`` (the mask's centroid: Mask R-CNN has no peaks),
    ``prms`` (N, H, W) (the mask probabilities), ``peak_values``, ``retrieval_scores``,
    ``instance_class_scores`` (N,), ``class_scores`` (C,) (the best detection score of
    each class, 0 without one), ``class_peaks`` (C, 2) and ``crm`` (C, H, W) (per
    class, the highest score-weighted mask probability). Proposals are ignored.
    """

    needs_proposals = False
    max_size = None

    def __init__(
        self,
        model: nn.Module,
        *,
        score_threshold: float = 0.05,
        mask_threshold: float = 0.5,
        device: torch.device | str | None = None,
    ):
        self.model = model.eval()
        self.num_classes = int(model.num_classes)
        self.score_threshold = score_threshold
        self.mask_threshold = mask_threshold
        self.device = torch.device(device) if device else next(model.parameters()).device

    @torch.no_grad()
    def __call__(self, images, proposals=None) -> list[dict[str, torch.Tensor]]:
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            images = list(images)
        tensors = [to_image_tensor(image).to(self.device) for image in images]
        outputs = self.model(tensors)
        return [self._convert(o, tuple(t.shape[1:])) for o, t in zip(outputs, tensors, strict=True)]

    def _convert(self, output: dict, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        keep = output["scores"] >= self.score_threshold
        scores = output["scores"][keep].cpu().float()
        labels = output["labels"][keep].cpu().long() - 1
        probs = output["masks"][keep, 0].cpu().float() if keep.any() else torch.zeros((0, *size))
        order = torch.sort(scores, descending=True, stable=True).indices
        scores, labels, probs = scores[order], labels[order], probs[order]
        masks = probs > self.mask_threshold
        ys = torch.arange(size[0], dtype=torch.float32)[None, :, None]
        xs = torch.arange(size[1], dtype=torch.float32)[None, None, :]
        weight = probs.sum((1, 2)).clamp_min(1e-6)
        peaks = torch.stack(
            [(probs * xs).sum((1, 2)) / weight, (probs * ys).sum((1, 2)) / weight], 1
        )
        # The class maps reports draw: each class's best score-weighted mask probability.
        crm = torch.zeros((self.num_classes, *size))
        for i in range(len(scores)):
            crm[labels[i]] = torch.maximum(crm[labels[i]], probs[i] * scores[i])
        class_scores = torch.zeros(self.num_classes)
        class_peaks = torch.zeros((self.num_classes, 2))
        for i in reversed(range(len(scores))):  # the best instance of each class wins
            class_scores[labels[i]] = scores[i]
            class_peaks[labels[i]] = peaks[i]
        return {
            "masks": masks,
            "labels": labels,
            "scores": scores,
            "boxes": masks_to_boxes(masks) if len(masks) else torch.zeros((0, 4)),
            "peaks": peaks.reshape(-1, 2),
            "prms": probs,
            "peak_values": scores.clone(),
            "retrieval_scores": scores.clone(),
            "instance_class_scores": class_scores[labels] if len(labels) else scores.clone(),
            "class_scores": class_scores,
            "class_peaks": class_peaks,
            "crm": crm,
        }


def distilled_predictor(
    path, device="cpu", inference: dict | None = None, **kwargs
) -> tuple[nn.Module, DistilledPredictor]:
    """``(model, DistilledPredictor)`` of a ``prm distill`` checkpoint (``inference``:
    test-time settings over the checkpoint's, as :func:`load_distilled`)."""
    model = load_distilled(path, device, **(inference or {})).to(device)
    return model, DistilledPredictor(model, device=device, **kwargs)


__all__ += ["distilled_predictor", "load_distill_config"]
