"""Training: image-level labels in, a peak-stimulated classifier out (docs/method.md §3).

``train(config)`` runs the whole loop: data, model, SGD with the authors' two learning
rates, multi-label soft-margin loss on the class scores, a checkpoint every epoch
(atomic; ``resume=True`` continues an interrupted run exactly), validation classification
mAP, a tqdm progress bar and a JSONL log. Under ``torchrun`` it trains with PyTorch DDP
(gloo on CPU, nccl on GPU).

Exact resumption: every epoch draws its shuffling and augmentation randomness from seeds
derived from ``(seed, epoch)`` alone, so an epoch replayed after a crash sees the same
batches as in an uninterrupted run, and the checkpoint of the previous epoch holds
everything else (weights, optimiser momentum, BatchNorm statistics, scheduler position).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from prm.data import InferenceTransform, TrainTransform, build_dataset, collate
from prm.data.build import reader
from prm.engine.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from prm.engine.config import TrainConfig, save_config
from prm.engine.kept import KeptOutputs
from prm.engine.teacher import Teacher, teacher_loss
from prm.evaluation import ClassificationEvaluator
from prm.files import write_text_atomic
from prm.model import PeakResponseNet, build_model

__all__ = [
    "train",
    "resolve_device",
    "build_datasets",
    "model_from_config",
    "classification_map",
    "backbone_layers",
    "freeze_layers",
    "frozen_stem",
]

StepCallback = Callable[[int, int, float], None]
#: The embedded, generated datasets (split sizes set by ``num_*_images``).
GENERATED = ("shapes", "glyphs")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


#: Bytes of teacher maps kept across epochs when training inputs repeat between epochs
#: (:func:`inputs_repeat`): one teacher forward pass per image and form (itself or its
#: mirror) instead of one per image and epoch. GlyphScenes' 1,900 images (not flipped)
#: need 12 MB, ShapeScenes' 1,900 in both forms 23 MB.
TEACHER_CACHE_BYTES = 1 << 30
#: Bytes of frozen-stem features kept the same way (:func:`frozen_stem`): the frozen
#: layers then run once per image and form. ``lite0-cpu`` on GlyphScenes' 1,900 images:
#: 78 MB; on ShapeScenes' (flipped) up to 156 MB.
STEM_CACHE_BYTES = 1 << 30


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**31)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - seeds third-party code using the legacy API
    torch.manual_seed(seed)


def build_datasets(config: TrainConfig, with_val: bool = True):
    """The training set (with training transforms, bad items skipped) and the val set."""
    train_kwargs: dict[str, Any] = {"on_error": "skip"}
    if config.dataset == "voc":
        train_kwargs["use_difficult"] = not config.drop_difficult
    val_kwargs = dict(train_kwargs)
    if config.dataset in GENERATED:
        train_kwargs["num_images"] = config.num_train_images
        val_kwargs["num_images"] = config.num_val_images
    for part, prefix in ((train_kwargs, ""), (val_kwargs, "val_")):
        for key in ("annotation_file", "image_dir"):
            value = getattr(config, prefix + key)
            if value is not None and config.dataset != "coco":
                raise ValueError(f"{prefix + key} is for the coco dataset, not {config.dataset}")
            if value is not None:
                part[key] = Path(value)
    if config.dataset in ("voc", "coco"):
        train_kwargs["instance_masks"] = False  # training reads image-level labels only
    defaults = reader(config.dataset).DEFAULT_SPLITS
    train_split = config.train_split if config.train_split is not None else defaults["train"]
    val_split = defaults["val"] if config.val_split == "auto" else config.val_split
    jitter = {"scale_jitter": config.scale_jitter, "colour_jitter": config.colour_jitter}
    augment = TrainTransform(config.image_size, flip=resolved_flip(config), **jitter)
    plain = InferenceTransform(config.image_size)

    def read(split: str, transform, kwargs: dict):
        return build_dataset(config.dataset, config.root, split, transform=transform, **kwargs)

    train_set = read(train_split, augment, train_kwargs)
    if len(train_set) == 0:
        raise ValueError(f"the {config.dataset} training split {train_split!r} has no images")
    if config.val_fraction is not None:
        train_idx, val_idx = held_out_indices(len(train_set), config.val_fraction, config.seed)
        # The same split read again with the inference transform (no augmentation).
        val_set = HeldOutPart(read(train_split, plain, train_kwargs), val_idx) if with_val else None
        return HeldOutPart(train_set, train_idx), val_set
    if not (with_val and val_split):
        return train_set, None
    return train_set, read(val_split, plain, val_kwargs)


def resolved_flip(config: TrainConfig) -> bool:
    """Whether training flips images: ``config.flip``, or when ``None`` the dataset
    reader's ``MIRROR_INVARIANT`` (flips only where a mirror image keeps the classes)."""
    if config.flip is not None:
        return bool(config.flip)
    return bool(getattr(reader(config.dataset), "MIRROR_INVARIANT", True))


def inputs_repeat(config: TrainConfig) -> bool:
    """Whether training inputs repeat between epochs: with no scale or colour jitter an
    image reaches the network as itself or, with random flips, its mirror image. Then
    a teacher's maps and a frozen stem's features of each input can be kept."""
    return config.scale_jitter == 0 and config.colour_jitter == 0


class HeldOutPart(torch.utils.data.Subset):
    """Some items of a dataset (by index), with its ``classes``, ``category_ids`` and ids."""

    def __init__(self, dataset, indices: Sequence[int]):
        super().__init__(dataset, list(indices))
        self.classes, self.category_ids = list(dataset.classes), list(dataset.category_ids)

    def image_id(self, index: int) -> str:
        return self.dataset.image_id(self.indices[index])


def held_out_indices(size: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train, val)`` indices: a seeded random ``fraction`` of ``range(size)`` held out.

    At least one image goes to each side; the same ``(size, fraction, seed)`` always
    gives the same split.
    """
    if size < 2:
        raise ValueError(f"val_fraction needs at least 2 training images, got {size}")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    count = min(max(1, round(fraction * size)), size - 1)
    return sorted(order[count:]), sorted(order[:count])


def model_from_config(config: TrainConfig, class_names: list[str]) -> PeakResponseNet:
    """The network a configuration describes."""
    keys = "weights sub_pixel_factor peak_stimulation peak_filter win_size gradient".split()
    settings = {k: getattr(config, k) for k in keys}
    return build_model(
        config.backbone,
        len(class_names),
        class_names=class_names,
        input_size=config.image_size,
        **settings,
    )


def backbone_layers(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's layers in input-to-output order, as ``frozen_layers`` counts them.

    The top-level modules of the module that holds them: a timm backbone's model, its
    sequences opened one level (EfficientNet-Lite0: ``conv_stem``, ``bn1``, then its 7
    stages, whole or cut with ``@16``; then a ``+NxW`` head's convolution, BN and ReLU
    modules), a ``features`` sequence (VGG, the small
    backbones: one layer per convolution, BN or ReLU), or the backbone's own children
    (ResNet: ``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` ... ``layer4``).
    """
    timm_model = getattr(backbone, "model", None)
    if timm_model is not None:
        head = getattr(backbone, "head", None)
        head_layers = list(head.children()) if head is not None else []
        if getattr(backbone, "cut", False):
            return list(timm_model.children()) + head_layers  # timm's wrapper opened them
        layers: list[nn.Module] = []
        for child in timm_model.children():
            layers.extend(child.children() if isinstance(child, nn.Sequential) else [child])
        return layers + head_layers
    return list(getattr(backbone, "features", backbone).children())


def frozen_stem(backbone: nn.Module, count: int) -> tuple[nn.Module, nn.Module] | None:
    """The backbone split after its first ``count`` layers (:func:`backbone_layers`):
    ``(stem, rest)`` with ``rest(stem(x)) == backbone(x)``, sharing its modules.

    ``None`` when nothing is frozen, nothing is left to train, or the backbone is not
    a chain of those layers (a timm model used whole: its ``forward_features`` may do
    more than call its children in turn).
    """
    layers = backbone_layers(backbone)
    if count <= 0 or count >= len(layers):
        return None
    if getattr(backbone, "model", None) is not None and not getattr(backbone, "cut", False):
        return None
    return nn.Sequential(*layers[:count]), nn.Sequential(*layers[count:])


def freeze_layers(model: PeakResponseNet, count: int) -> list[nn.Module]:
    """Freeze the first ``count`` backbone layers: no gradients, BatchNorm in eval mode.

    Call it again after every ``model.train()`` (which puts BatchNorm back in training
    mode); the frozen layers are returned.

    Raises:
        ValueError: ``count`` is larger than the number of layers.
    """
    layers = backbone_layers(model.backbone)
    if count > len(layers):
        raise ValueError(f"frozen_layers={count}, but the backbone has only {len(layers)} layers")
    for layer in layers[:count]:
        layer.eval()
        for parameter in layer.parameters():
            parameter.requires_grad_(False)
    return layers[:count]


def _optimizer(model: PeakResponseNet, config: TrainConfig) -> torch.optim.Optimizer:
    # Two learning rates as the authors: the 1x1 classifier at lr, the (pretrained)
    # backbone at lr * backbone_lr_mult; weight decay on all parameters (frozen ones,
    # which have no gradient, are left out).
    trained = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [
        {"params": trained, "lr": config.lr * config.backbone_lr_mult},
        {"params": list(model.classifier.parameters()), "lr": config.lr},
    ]
    for group in groups:
        group["initial_lr"] = group["lr"]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, momentum=config.momentum, weight_decay=config.weight_decay)


def lr_factor(config: TrainConfig, epochs_done: float) -> float:
    """The learning-rate multiplier after ``epochs_done`` (fractional) epochs.

    Linear warm-up over ``warmup_epochs``, then the schedule (constant or cosine to 0)
    over the remaining epochs.
    """
    warmup = config.warmup_epochs
    if epochs_done < warmup:
        return (epochs_done + 1e-3) / warmup
    if config.lr_schedule == "cosine":
        progress = (epochs_done - warmup) / (config.epochs - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def teacher_weight(config: TrainConfig, epoch: int) -> float:
    """The weight of the teacher's loss in epoch ``epoch`` (0-based): ``teacher_weight``,
    or with the ``linear`` schedule ``teacher_weight * (1 - epoch / epochs)``."""
    if config.teacher_schedule == "linear":
        return config.teacher_weight * (1 - epoch / config.epochs)
    return config.teacher_weight


@torch.no_grad()
def classification_map(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    desc: str = "validate",
    progress: bool = True,
) -> dict[str, Any]:
    """Classification mAP of the model's class scores over a loader (``prm.evaluation``)."""
    evaluator = ClassificationEvaluator(loader.dataset.classes)
    was_training = model.training
    model.eval()
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not progress)
    for images, targets, _ in bar:
        if len(targets) == 0:
            continue
        images = images.to(device)
        if next(model.parameters()).is_contiguous(memory_format=torch.channels_last):
            images = images.contiguous(memory_format=torch.channels_last)
        scores = model(images).float().cpu()
        evaluator.process(targets, [{"class_scores": s} for s in scores])
    model.train(was_training)
    return evaluator.summarize()


class _Distributed:
    """Process-group bookkeeping for torchrun (closed on leaving a ``with``); a no-op in a
    single process. On a GPU each rank uses ``cuda:LOCAL_RANK``; the backend is nccl
    there, gloo on CPU, unless ``backend`` says (gloo serves barriers on both). A group
    the caller had already started is used and left open."""

    def __init__(self, device: torch.device, backend: str | None = None):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1
        self.device = device
        self.started = self.enabled and not dist.is_initialized()
        if self.started:
            if device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))

    def __enter__(self) -> _Distributed:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.item() / self.world_size

    def in_sync(self, model: nn.Module) -> bool:
        """Whether every rank holds the same weights (a cheap checksum, all-gathered)."""
        if not self.enabled:
            return True
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
        gathered = [torch.zeros_like(checksum) for _ in range(self.world_size)]
        dist.all_gather(gathered, checksum)
        return all(torch.equal(g, gathered[0]) for g in gathered)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel under torchrun, else itself."""
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def close(self) -> None:
        if self.started and dist.is_initialized():
            dist.destroy_process_group()


def train(
    config: TrainConfig,
    *,
    resume: bool | str | Path = False,
    on_step: StepCallback | None = None,
    progress: bool = True,
) -> Path:
    """Train a PRM network as ``config`` says; returns the checkpoint to use.

    That is ``best.pt``, the epoch with the best validation classification mAP, when
    validation ran, else ``last.pt``.

    Args:
        config: the run's :class:`TrainConfig`.
        resume: ``True`` continues from ``<out>/last.pt`` when it exists; a path continues
            from that checkpoint. The checkpoint must have the same backbone and classes.
            ``False`` refuses an ``out`` folder that already holds a run.
        on_step: called after every optimiser step as ``on_step(epoch, step, loss)``.
        progress: show progress bars.

    Writes into ``config.out``: ``config.yaml``, ``last.pt`` (every epoch), ``best.pt``
    (the best validation mAP so far), ``metrics.jsonl`` (one JSON object per epoch) and
    TensorBoard events when enabled.
    """
    with _Distributed(resolve_device(config.device)) as ddp:
        run = _Run(config, ddp, on_step, progress)
        run.resume(resume)
        for epoch in range(run.start_epoch, config.epochs):
            if run.stopped():
                break  # a resumed run that had stopped early stays stopped
            record = run.train_epoch(epoch)
            if ddp.is_main:
                run.validate_and_save(epoch, record)
            if run.stop_together(epoch):
                break
        if run.writer is not None:
            run.writer.close()
        if (run.out / "best.pt").is_file() and run.best["epoch"] is not None:
            return run.out / "best.pt"
        return run.out / "last.pt"


class _Run:
    """One training run's state, in the steps of :func:`train`: set-up (here), resume,
    one epoch of training, validation and checkpoint, and the early-stopping vote."""

    def __init__(self, config: TrainConfig, ddp: _Distributed, on_step, progress: bool):
        self.config, self.ddp, self.device = config, ddp, ddp.device
        self.on_step, self.progress = on_step, progress
        self.out = Path(config.out)
        _seed_everything(config.seed)
        self.train_set, val_set = build_datasets(config, with_val=ddp.is_main)
        if len(self.train_set) < config.batch_size * ddp.world_size:
            # Batches are full (drop_last): fewer images would train 0 steps and still
            # save a checkpoint, which looks like success.
            raise ValueError(
                f"{len(self.train_set)} training images make no full batch of "
                f"{config.batch_size * ddp.world_size} (batch_size {config.batch_size} x "
                f"{ddp.world_size} processes); lower --batch-size or add images"
            )
        self.classes = list(self.train_set.classes)
        self.model = model_from_config(config, self.classes).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        freeze_layers(self.model, config.frozen_layers)
        self.optimizer = _optimizer(self.model, config)
        self.teacher = None
        if config.teacher is not None:
            self.teacher = Teacher(
                config.teacher,
                self.classes,
                mean=self.model.mean,
                std=self.model.std,
                device=self.device,
                out=self.out,
                cache_bytes=TEACHER_CACHE_BYTES if inputs_repeat(config) else 0,
            )
        # Frozen layers compute the same features of the same input in every epoch: they
        # run once per input (an image or its mirror), later epochs train the rest from
        # kept features. Not under DDP or torch.compile, which wrap the whole network.
        self.stem: tuple[KeptOutputs, nn.Module] | None = None
        split = frozen_stem(self.model.backbone, config.frozen_layers)
        if split is not None and inputs_repeat(config):
            if not (ddp.enabled or config.compile):
                self.stem = KeptOutputs(split[0], STEM_CACHE_BYTES), split[1]
        self.start_epoch = 0
        # Best validation mAP so far, its epoch, and validations since it improved.
        self.best: dict[str, Any] = {"value": None, "epoch": None, "stale": 0}
        self.writer = None
        loading = {"batch_size": config.batch_size, "num_workers": config.workers}
        self.val_loader = (
            None if val_set is None else DataLoader(val_set, **loading, collate_fn=collate)
        )

    def resume(self, resume: bool | str | Path) -> None:
        """Load the checkpoint ``resume`` names, then prepare the output folder and the
        network to train (compiled, DDP-wrapped as configured)."""
        config, ddp, out = self.config, self.ddp, self.out
        resume_path = None
        if resume is False and (out / "last.pt").is_file():
            # Never overwrite a run by accident: its checkpoint would be lost.
            raise ValueError(
                f"{out} already holds a training run ({out / 'last.pt'}); pass resume=True "
                "(--resume) to continue it, or choose another output folder"
            )
        if resume is True and (out / "last.pt").is_file():
            resume_path = out / "last.pt"
        elif resume not in (False, True, None):
            resume_path = Path(resume)
        if resume_path is not None:
            state = load_checkpoint(resume_path, map_location=self.device)
            check_compatible(state, resume_path, backbone=config.backbone, class_names=self.classes)
            self._check_teacher(state.get("teacher"), resume_path)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.start_epoch = int(state["epoch"])
            self.best = state.get("best", self.best)
            if ddp.is_main:
                print(f"resuming {resume_path} after epoch {self.start_epoch}/{config.epochs}")
        if ddp.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(config, out / "config.yaml")
            _remove_stale_temporaries(out)
            if resume_path is not None:
                _reconcile_metrics(out / "metrics.jsonl", self.start_epoch, state.get("metrics"))
            if config.tensorboard:
                self.writer = _tensorboard(out)
        self.net = ddp.wrap(torch.compile(self.model) if config.compile else self.model)

    def _check_teacher(self, recorded: dict | None, checkpoint: Path) -> None:
        """A run resumes with the teacher it was trained with, or with none if none."""
        if self.teacher is not None:
            self.teacher.check_same(recorded, checkpoint)
        elif recorded is not None:
            raise ValueError(
                f"{checkpoint} was trained with teacher {recorded.get('path')}; resume it "
                "with --teacher and that file, or start a new run"
            )

    def stopped(self) -> bool:
        """Whether early stopping's patience is used up."""
        patience = self.config.early_stopping
        return patience is not None and self.best["stale"] >= patience

    def _loader(self, epoch: int) -> DataLoader:
        """The epoch's batches, shuffled and augmented from seeds of ``(seed, epoch)``."""
        seed = _epoch_seed(self.config.seed, epoch)
        _seed_everything(seed)  # augmentation in the main process (workers=0)
        generator = torch.Generator().manual_seed(seed)  # shuffling and worker seeds
        if self.ddp.enabled:
            sampler = DistributedSampler(self.train_set, seed=seed, drop_last=True)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(self.train_set, generator=generator)
        return DataLoader(
            self.train_set,
            batch_size=self.config.batch_size,
            sampler=sampler,
            num_workers=self.config.workers,
            collate_fn=collate,
            generator=generator,
            drop_last=True,
            persistent_workers=False,
        )

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch of optimiser steps; returns the epoch's record for ``metrics.jsonl``."""
        config, ddp, device, optimizer = self.config, self.ddp, self.device, self.optimizer
        loader = self._loader(epoch)
        steps = len(loader)
        if config.max_steps_per_epoch is not None:
            steps = min(steps, config.max_steps_per_epoch)
        loss_fn = nn.MultiLabelSoftMarginLoss()
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if config.amp == "bf16"
            else contextlib.nullcontext()
        )
        self.net.train()
        freeze_layers(self.model, config.frozen_layers)
        total_loss, seen, skipped, began = 0.0, 0, 0, time.perf_counter()
        total_teacher = 0.0
        weight = teacher_weight(config, epoch)
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not (self.progress and ddp.is_main),
            dynamic_ncols=True,
        )
        for step, (images, targets, bad) in enumerate(loader):
            if step >= steps:
                break
            skipped += bad
            factor = lr_factor(config, epoch + step / steps)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            if len(targets) == 0:
                continue
            images = images.to(device, non_blocking=True)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = torch.stack([t["image_labels"] for t in targets]).to(device)
            keys = [str(t["image_id"]) for t in targets]
            with autocast:
                if self.stem is not None:
                    stem, rest = self.stem
                    maps = self.model.maps_from_features(rest(stem(images, keys)))
                    scores = self.model.aggregate(maps)
                elif self.teacher is None:
                    scores = self.net(images)
                else:
                    scores, maps = self.net(images, return_maps=True)
                if self.teacher is not None:
                    target = self.teacher.maps(images, keys)
            loss = loss_fn(scores.float(), labels)
            if self.teacher is not None:
                distilled = teacher_loss(maps, target)
                loss = loss + weight * distilled
                total_teacher += distilled.item() * len(targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step}; "
                    "lower the learning rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(targets)
            seen += len(targets)
            elapsed = time.perf_counter() - began
            bar.set_postfix(
                loss=f"{total_loss / max(seen, 1):.4f}",
                img_s=f"{seen * ddp.world_size / max(elapsed, 1e-9):.1f}",
            )
            bar.update()
            if self.on_step is not None:
                self.on_step(epoch, step, loss.item())
        bar.close()
        if seen == 0:  # every batch was skipped: nothing was trained
            raise ValueError(
                f"epoch {epoch + 1} trained on no image ({skipped} unreadable); "
                "see the warnings above"
            )
        record = {
            "epoch": epoch + 1,
            "train_loss": ddp.mean(total_loss / max(seen, 1)),
            "lr": optimizer.param_groups[1]["lr"],
            "images_per_s": seen * ddp.world_size / max(time.perf_counter() - began, 1e-9),
            "skipped": skipped,
            "world_size": ddp.world_size,
            "ranks_in_sync": ddp.in_sync(self.model),
        }
        if self.teacher is not None:
            # The unweighted map loss: how closely the student follows its teacher.
            record["teacher_loss"] = ddp.mean(total_teacher / max(seen, 1))
            record["teacher_weight"] = weight
        return record

    def validate_and_save(self, epoch: int, record: dict[str, Any]) -> None:
        """Validate when due, then write the checkpoints and the epoch's log line (rank 0)."""
        config, out = self.config, self.out
        val_due = (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs
        improved = False
        if self.val_loader is not None and val_due:
            metrics = classification_map(
                self.model, self.val_loader, self.device, progress=self.progress
            )
            value = metrics.get("classification/mAP")
            record["val_classification_map"] = value
            best = self.best
            if value is not None and (best["value"] is None or value > best["value"]):
                self.best = {"value": value, "epoch": epoch + 1, "stale": 0}
                improved = True
            else:
                self.best = {**best, "stale": best["stale"] + 1}
            record["best_epoch"] = self.best["epoch"]
        state = {
            "model": self.model.state_dict(),
            "model_config": self.model.config(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch + 1,
            "config": asdict(config),
            "class_names": self.classes,
            "metrics": record,
            "best": self.best,
            "teacher": None if self.teacher is None else self.teacher.record(),
        }
        if improved:
            save_checkpoint(out / "best.pt", state)
        save_checkpoint(out / "last.pt", state)
        with open(out / "metrics.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, epoch + 1)
        if self.progress:
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
            tqdm.write(json.dumps(shown))

    def stop_together(self, epoch: int) -> bool:
        """Whether to stop early; every rank stops together (only rank 0 validates)."""
        ddp = self.ddp
        stop = self.stopped()
        if ddp.enabled:
            flag = torch.tensor([float(stop and ddp.is_main)], device=ddp.device)
            dist.all_reduce(flag)
            stop = bool(flag.item() > 0)
        ddp.barrier()
        if stop and ddp.is_main:
            print(
                f"early stopping after epoch {epoch + 1}: no better validation mAP "
                f"for {self.config.early_stopping} validations (best: epoch {self.best['epoch']})"
            )
        return stop


def _remove_stale_temporaries(out: Path) -> None:
    """Delete ``.last.pt.*.tmp`` files that a killed checkpoint save left behind."""
    for tmp in out.glob(".last.pt.*.tmp"):
        tmp.unlink(missing_ok=True)
        print(f"removed {tmp.name}, left by an interrupted checkpoint save")


def _reconcile_metrics(path: Path, epoch: int, record: dict | None) -> None:
    """Make ``metrics.jsonl`` end at the checkpoint's epoch before training resumes.

    The line of an epoch is written after its checkpoint; a run killed between the two
    lost the line, and the checkpoint's own copy (``state["metrics"]``) restores it.
    Lines after the checkpoint's epoch (a run killed after writing one) are dropped, as
    those epochs are trained again.
    """
    lines = path.read_text().splitlines() if path.is_file() else []
    kept = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        if isinstance(entry, dict) and int(entry.get("epoch", 0)) <= epoch:
            kept.append(json.dumps(entry))
    last = json.loads(kept[-1])["epoch"] if kept else 0
    if record is not None and last < epoch:
        kept.append(json.dumps(record))
    if kept != lines:
        write_text_atomic(path, "".join(line + "\n" for line in kept))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # tensorboard is optional
        raise ValueError("tensorboard logging needs `pip install tensorboard`") from exc
    return SummaryWriter(str(out / "tensorboard"))
