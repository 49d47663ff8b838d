"""``prm train``: train a PRM network from image-level labels."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  # the authors' PASCAL VOC 2012 recipe (ResNet-50, 448 px, 20 epochs; ImageNet weights)
  prm train --preset voc --root VOCdevkit/VOC2012 --out runs/voc

  # fine-tune EfficientNet-Lite0's ImageNet weights (no download) on your photos
  prm train --dataset folder --root photos/ --backbone timm:efficientnet_lite0 \\
      --weights lite0 --image-size 448 --out runs/mine

  # the CPU demo recipe on the embedded synthetic dataset
  prm train --preset shapes --out runs/shapes --epochs 6

  # a YAML file of TrainConfig fields, a flag on top, then continue after an interruption
  prm train --config my.yaml --set lr=0.005 --out runs/mine
  prm train --config my.yaml --set lr=0.005 --out runs/mine --resume

  # COCO data in its own layout: a training json, its images, 10 % held out to validate
  prm train --dataset coco --annotations export/train.json --image-dir export/images \
      --val-fraction 0.1 --backbone timm:efficientnet_lite0 --weights lite0 --out runs/coco

  # a small network trained from scratch, following a Lite0 network's class maps
  prm train --preset lite0-cpu --dataset glyphs --out runs/teacher
  prm train --preset student --dataset glyphs --teacher runs/teacher/last.pt --out runs/student

  # two processes with PyTorch DDP (gloo on CPU, nccl on GPU)
  torchrun --nproc_per_node 2 -m prm.cli train --preset voc --root VOCdevkit/VOC2012

Every field of prm.engine.TrainConfig can be set with --set KEY=VALUE (YAML syntax).
The run folder gets config.yaml, last.pt (every epoch) and metrics.jsonl.
"""


HELP = "train a PRM network from image-level labels"
DESCRIPTION = "Train a peak-stimulated fully convolutional classifier."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=["voc", "shapes", "lite0-cpu", "student"],
        help="starting configuration (student: the shapes recipe for 8 epochs, to train "
        "with --teacher)",
    )
    parser.add_argument("--config", help="YAML file of configuration fields")
    parser.add_argument("--dataset", help="voc, coco, folder, shapes or glyphs")
    parser.add_argument("--root", help="dataset folder")
    parser.add_argument("--train-split", help="training split")
    parser.add_argument("--val-split", help="validation split ('none' to skip validation)")
    parser.add_argument(
        "--val-fraction",
        type=float,
        help="validate on this fraction of the training split, held out (seeded by "
        "--seed) instead of --val-split: for labels of one split only, e.g. a COCO "
        "training json",
    )
    parser.add_argument(
        "--annotations",
        dest="annotation_file",
        metavar="FILE",
        help="coco: the training instances json, anywhere (instead of "
        "root/annotations/instances_<train-split>.json)",
    )
    parser.add_argument(
        "--image-dir",
        metavar="DIR",
        help="coco: the folder of the training images (instead of root/<train-split>/)",
    )
    parser.add_argument(
        "--val-annotations",
        dest="val_annotation_file",
        metavar="FILE",
        help="coco: the validation instances json",
    )
    parser.add_argument(
        "--val-image-dir", metavar="DIR", help="coco: the folder of the validation images"
    )
    parser.add_argument(
        "--backbone",
        help="resnet18/34/50/101, vgg16, vgg16_bn, small, small_res (other widths: "
        "small:24,48,128, channels at 1/2, 1/4, 1/8), or timm:NAME (any timm model)",
    )
    parser.add_argument(
        "--weights",
        help="backbone weights: 'none', a torchvision name (IMAGENET1K_V1), a .pth; for "
        "timm backbones 'lite0' (installed package, no download) or 'timm' (download)",
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="classifier learning rate")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--sub-pixel-factor", type=int)
    parser.add_argument(
        "--no-peak-stimulation",
        action="store_true",
        help="train the CAM baseline (global average pooling)",
    )
    parser.add_argument(
        "--teacher",
        metavar="CHECKPOINT",
        help="a trained PRM network of the same classes: also train this network's class "
        "response maps towards the teacher's",
    )
    parser.add_argument(
        "--teacher-weight", type=float, help="weight of the teacher's loss (default 5)"
    )
    parser.add_argument(
        "--teacher-schedule",
        choices=["constant", "linear"],
        help="the teacher's weight in every epoch (constant), or falling by epoch to "
        "weight x (1 - epoch / epochs) (linear; the student preset's)",
    )
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--workers", type=int, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", help="run folder")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from OUT/last.pt (or the checkpoint given)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any TrainConfig field, e.g. --set amp=bf16 --set lr_schedule=cosine",
    )


def parse_sets(pairs: list[str]) -> dict:
    """``["lr=0.1", "amp=bf16"]`` -> ``{"lr": 0.1, "amp": "bf16"}`` (values read as YAML)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    from prm.engine import load_config, train

    keys = (
        "dataset root train_split backbone epochs batch_size lr image_size sub_pixel_factor "
        "device workers seed out val_fraction annotation_file image_dir val_annotation_file "
        "val_image_dir teacher teacher_weight teacher_schedule"
    ).split()
    overrides = {k: getattr(args, k) for k in keys}
    nulls = {}  # flags that explicitly ask for None ("none")
    for key, value in (("val_split", args.val_split), ("weights", args.weights)):
        if value is not None and value.lower() == "none":
            nulls[key] = None
        else:
            overrides[key] = value
    if args.no_peak_stimulation:
        overrides["peak_stimulation"] = False
    config = load_config(args.preset, args.config, **overrides).replace(**nulls)
    sets = parse_sets(args.set)
    if sets:
        config = config.replace(**sets)
    if args.preset == "student" and config.teacher is None:
        import warnings

        warnings.warn(
            "the student preset is meant to train with --teacher CHECKPOINT; without one it "
            "trains on the labels alone",
            stacklevel=1,
        )
    checkpoint = train(config, resume=args.resume, progress=not args.quiet)
    print(f"checkpoint: {checkpoint}")
    return 0
