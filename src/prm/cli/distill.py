"""``prm distill``: train a Mask R-CNN on the pseudo-labels of ``prm pseudo-label``."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  # ShapeScenes on a CPU: the small backbone, from scratch, in minutes
  prm pseudo-label --checkpoint runs/shapes/last.pt --dataset shapes --split train \\
      --proposals prm --out pseudo/
  prm distill --pseudo-labels pseudo/instances.json --dataset shapes --split train \\
      --out runs/distill
  prm predict --checkpoint runs/distill/last.pt --dataset shapes --split test \\
      --out predictions/ --evaluate

  # GPU users: torchvision's maskrcnn_resnet50_fpn_v2 with ImageNet backbone weights
  prm distill --config distill.yaml --backbone resnet50_fpn_v2 --backbone-weights imagenet

  # PyTorch DDP on 4 GPUs (gloo on CPU): each process takes a quarter of every epoch
  torchrun --nproc_per_node 4 -m prm.cli distill --config distill.yaml

Output folder (written by rank 0): last.pt (atomic, every epoch; a rerun resumes it),
metrics.jsonl (one line per epoch), config.yaml (the settings used). Flags override
--config's values.
"""


HELP = "train a Mask R-CNN on PRM pseudo-labels (self-training)"
DESCRIPTION = "Train torchvision's Mask R-CNN on the instances.json of `prm pseudo-label`."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of DistillConfig settings")
    parser.add_argument("--pseudo-labels", help="instances.json of `prm pseudo-label`")
    parser.add_argument("--dataset", help="the dataset the pseudo-labels were made on")
    parser.add_argument("--root", help="dataset folder")
    parser.add_argument("--split", help="dataset split (the pseudo-labelled one)")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--backbone", choices=["small", "resnet50_fpn_v2"])
    parser.add_argument("--backbone-weights", help="'imagenet' or a ResNet-50 state dict")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device")
    parser.add_argument("--max-steps-per-epoch", type=int)
    parser.add_argument("--no-resume", action="store_true", help="start over")


def run(args: argparse.Namespace) -> int:
    from prm.engine.distill import distill, load_distill_config

    keys = (
        "pseudo_labels dataset root split out backbone backbone_weights epochs batch_size "
        "lr seed device max_steps_per_epoch"
    ).split()
    config = load_distill_config(args.config, **{k: getattr(args, k) for k in keys})
    path = distill(config, resume=not args.no_resume, progress=not args.quiet)
    print(f"distilled Mask R-CNN -> {path}")
    return 0
