"""Training configuration: one dataclass, filled from a preset, a YAML file and CLI flags.

Precedence: preset < YAML file < command-line flags. The resolved configuration is saved
as ``config.yaml`` in the run folder and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from prm.files import read_yaml, write_text_atomic
from prm.validation import check_number

__all__ = ["TrainConfig", "PRESETS", "load_config", "save_config"]


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    Data:
        dataset: ``voc``, ``coco``, ``folder`` or ``shapes`` (see ``prm.data.build_dataset``).
        root: dataset folder (for ``shapes``: an optional cache folder).
        train_split / val_split: splits; ``None`` / ``"auto"`` take the reader's
            ``DEFAULT_SPLITS`` (VOC ``Main/train`` / ``Main/val``, COCO ``train2017`` /
            ``val2017``, ShapeScenes ``train`` / ``val``, a folder's ``labels.csv`` /
            none); ``val_split=None`` skips validation.
        num_train_images / num_val_images: ShapeScenes split sizes (None: its defaults).
        val_fraction: hold out this fraction of the training split (drawn with ``seed``,
            the same images every run) as the validation set, instead of ``val_split``:
            for data with labels for one split only (a COCO training json, a folder CSV).
        annotation_file / image_dir: COCO data in its own layout: the training json and
            the folder of its images (instead of ``root/annotations/instances_<split>.json``
            and ``root/<split>/``; with both, no ``root`` is needed);
            ``val_annotation_file`` / ``val_image_dir`` the same for the validation split.
        image_size: square training size (448 as the authors; the aspect is not kept).
        flip: random horizontal flips; ``None`` (default): on, unless the dataset's
            reader says a mirror image changes its classes (``MIRROR_INVARIANT``: off for
            GlyphScenes' letters, on for every other reader).
        scale_jitter / colour_jitter: random zoom and shift / brightness and contrast
            changes (``prm.data.TrainTransform``; 0 = off).
        drop_difficult: VOC: drop ``difficult`` objects from the image labels (the
            authors count them positive).

    Model (see ``prm.model.build_model``):
        backbone, weights (``None``, a torchvision weights name such as
        ``IMAGENET1K_V1``, or a local ``.pth``), sub_pixel_factor, peak_stimulation
        (False trains the CAM/GAP baseline), peak_filter, win_size, gradient.

    Teacher (``prm.engine.teacher``):
        teacher: the checkpoint of a trained PRM network of the same classes; the
            student's class response maps are then also trained towards the teacher's
            (``None``: labels only).
        teacher_weight: the weight of that loss against the label loss (5).
        teacher_schedule: ``constant``, or ``linear``: the weight falls by epoch, to
            ``teacher_weight * (1 - e / epochs)`` in epoch ``e`` (0-based), so the last
            epochs learn mostly from the labels.

    Optimisation (the authors': SGD, momentum 0.9, weight decay 1e-4 on everything,
    batch 16, 20 epochs, constant learning rate 0.01 for the classifier and 0.01 x 0.01
    for the pretrained backbone):
        optimizer (``sgd``, the authors', or ``adamw``), epochs, batch_size, lr,
        backbone_lr_mult, frozen_layers (the backbone's first N layers are not trained
        and their BatchNorm statistics are kept: a pretrained stem costs no backward
        pass; see ``prm.engine.train.backbone_layers``), momentum (SGD), weight_decay,
        lr_schedule (``constant`` or ``cosine``), warmup_epochs (linear warm-up from 0,
        may be fractional; the schedule runs over the remaining epochs), early_stopping
        (stop after this many validations without a better validation mAP; ``None``:
        never). Whenever
        validation runs, the best checkpoint so far is kept as ``best.pt``.

    Runtime:
        seed, workers (DataLoader processes), device (``auto``, ``cpu``, ``cuda``...),
        channels_last, amp (``None`` or ``bf16`` autocast), compile (``torch.compile``),
        out (run folder), val_every (epochs), tensorboard, max_steps_per_epoch (for quick
        trials; None: whole epochs).
    """

    dataset: str = "voc"
    root: str | None = None
    train_split: str | None = None
    val_split: str | None = "auto"
    num_train_images: int | None = None
    num_val_images: int | None = None
    val_fraction: float | None = None
    annotation_file: str | None = None
    image_dir: str | None = None
    val_annotation_file: str | None = None
    val_image_dir: str | None = None
    image_size: int = 448
    flip: bool | None = None
    scale_jitter: float = 0.0
    colour_jitter: float = 0.0
    drop_difficult: bool = False

    backbone: str = "resnet50"
    weights: str | None = "IMAGENET1K_V1"
    sub_pixel_factor: int = 8
    peak_stimulation: bool = True
    peak_filter: str | float | None = "median"
    win_size: int = 3
    gradient: str = "paper"

    teacher: str | None = None
    teacher_weight: float = 5.0
    teacher_schedule: str = "constant"

    optimizer: str = "sgd"
    epochs: int = 20
    batch_size: int = 16
    lr: float = 0.01
    backbone_lr_mult: float = 0.01
    frozen_layers: int = 0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    early_stopping: int | None = None

    seed: int = 0
    workers: int = 4
    device: str = "auto"
    channels_last: bool = False
    amp: str | None = None
    compile: bool = False
    out: str = "runs/prm"
    val_every: int = 1
    tensorboard: bool = False
    max_steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        # Numbers first, each with a one-line message (from YAML or --set, anything goes).
        check_number("epochs", self.epochs, minimum=1, integer=True)
        check_number("batch_size", self.batch_size, minimum=1, integer=True)
        check_number("lr", self.lr, minimum=0, exclusive=True)
        check_number("backbone_lr_mult", self.backbone_lr_mult, minimum=0)
        check_number("frozen_layers", self.frozen_layers, minimum=0, integer=True)
        check_number("momentum", self.momentum, minimum=0, maximum=1, exclusive_max=True)
        check_number("weight_decay", self.weight_decay, minimum=0)
        check_number("teacher_weight", self.teacher_weight, minimum=0)
        check_number("image_size", self.image_size, minimum=32, integer=True)
        check_number("sub_pixel_factor", self.sub_pixel_factor, minimum=1, integer=True)
        check_number("win_size", self.win_size, minimum=1, integer=True)
        check_number("seed", self.seed, minimum=0, integer=True)
        check_number("workers", self.workers, minimum=0, integer=True)
        check_number("val_every", self.val_every, minimum=1, integer=True)
        for name in ("num_train_images", "num_val_images", "max_steps_per_epoch"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), minimum=1, integer=True)
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}"
            )
        if self.teacher_schedule not in ("constant", "linear"):
            raise ValueError(
                f"teacher_schedule must be 'constant' or 'linear', got {self.teacher_schedule!r}"
            )
        if self.val_fraction is not None:
            check_number(
                "val_fraction", self.val_fraction, minimum=0, maximum=1, exclusive=True,
                exclusive_max=True,
            )  # fmt: skip
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs must be in [0, epochs={self.epochs}), got {self.warmup_epochs}"
            )
        if self.early_stopping is not None and self.early_stopping < 1:
            raise ValueError(f"early_stopping must be None or >= 1, got {self.early_stopping}")
        if self.flip not in (None, True, False):
            raise ValueError(f"flip must be true, false or null (auto), got {self.flip!r}")
        if self.amp not in (None, "bf16"):
            raise ValueError(f"amp must be None or 'bf16', got {self.amp!r}")
        if self.gradient not in ("paper", "authors"):
            raise ValueError(f"gradient must be 'paper' or 'authors', got {self.gradient!r}")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (unknown names raise ``ValueError``)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown configuration keys: {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


#: Named starting points. ``voc`` is the authors' PASCAL VOC 2012 recipe (docs/method.md §3);
#: ``shapes`` trains the small backbone from scratch on ShapeScenes in minutes on a CPU.
PRESETS: dict[str, TrainConfig] = {
    "voc": TrainConfig(),
    "shapes": TrainConfig(
        dataset="shapes",
        image_size=128,
        backbone="small",
        weights=None,
        sub_pixel_factor=1,
        epochs=6,
        batch_size=16,
        optimizer="adamw",
        # Chosen on ShapeScenes' validation images over 3e-3 with no warm-up (issue 13):
        # classification mAP 93.4 vs 92.0 after 6 epochs, tuned mAP^r@0.5 59.3 vs 56.1.
        lr=6e-3,
        warmup_epochs=0.5,
        backbone_lr_mult=1.0,
        weight_decay=1e-4,
        lr_schedule="cosine",
        channels_last=True,
        workers=0,
        out="runs/shapes",
    ),
}
#: ``lite0-cpu``: the ``shapes`` recipe on EfficientNet-Lite0's ImageNet weights (the
#: ``lite0`` extra) cut at stride 8 and frozen, under a head of three ``conv3x3-BN-ReLU``
#: layers trained from scratch (``+3x128``). The frozen stem costs no backward pass, so it
#: trains faster than the small backbone; it learns GlyphScenes, which the small backbone
#: trained from scratch does not, and its maps stay on one letter, where Lite0 fine-tuned
#: at stride 16 spread them over the image (README, "GlyphScenes"). 7 epochs: validation
#: classification mAP was 95.2 after 6 and 97.2 after 9, and 7 is what fits the demo's
#: 10 minutes.
PRESETS["lite0-cpu"] = PRESETS["shapes"].replace(
    backbone="timm:efficientnet_lite0@8+3x128",
    weights="lite0",
    frozen_layers=5,
    epochs=7,
    out="runs/lite0-cpu",
)
#: ``student``: the ``shapes`` recipe (the small backbone from scratch) for 8 epochs, to
#: be trained with ``teacher`` set to a ``lite0-cpu`` network (``prm train --teacher``):
#: labels plus the teacher's class response maps at weight 5, falling linearly by epoch.
#: Chosen on GlyphScenes' validation images (weight 1 / 5 / 20, 6-10 epochs): the small
#: network learns the glyphs this way, and its PRMs retrieve better than the teacher's.
#: The linear schedule: validation mAP^r@0.5 49.2 against 46.1 on GlyphScenes, 72.0
#: against 72.0 on ShapeScenes (docs/recipes.md, the distilled recipe's screens). 8
#: epochs, not 10: with the back-propagation rule tuned, validation mAP^r@0.5 58.8 / 75.6
#: (GlyphScenes / ShapeScenes) against 58.4 / 76.8, equal within the seed noise (about
#: one point) at 80 % of the students' time. Widths 24 / 48 / 128 (``small:24,48,128``),
#: not 32 / 64 / 128: validation mAP^r@0.5 57.1 / 54.7 / 76.8 (GlyphScenes seeds 0 and
#: 1, ShapeScenes) against 58.8 / 55.1 / 75.6, equal within the seed noise (sums 188.6
#: and 189.5), at about 1.35x the students' images per second (README, "Cheaper students
#: and teachers").
PRESETS["student"] = PRESETS["shapes"].replace(
    backbone="small:24,48,128",
    epochs=8,
    teacher_weight=5.0,
    teacher_schedule="linear",
    out="runs/student",
)


def load_config(
    preset: str | None = None, path: str | Path | None = None, **overrides: Any
) -> TrainConfig:
    """Resolve a configuration: ``preset`` < YAML file ``path`` < ``overrides``.

    ``overrides`` whose value is ``None`` are ignored (flags the user did not give).
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = PRESETS[preset or "voc"]
    if path is not None:
        data = read_yaml(path, "configuration file") or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of configuration keys")
        try:
            config = config.replace(**data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    return config.replace(**{k: v for k, v in overrides.items() if v is not None})


def save_config(config: Any, path: str | Path) -> None:
    """Write a configuration dataclass (:class:`TrainConfig`, ``DistillConfig``) as YAML."""
    write_text_atomic(path, yaml.safe_dump(asdict(config), sort_keys=False))
