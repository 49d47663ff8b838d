"""``prm pseudo-label``: PRM predictions on a training split -> COCO instances json."""

from __future__ import annotations

import argparse

from .dataset_args import add_dataset_arguments, dataset_from_args

EPILOG = """examples:
  # ShapeScenes: pseudo ground truth for `prm distill`, proposal-free
  prm pseudo-label --checkpoint runs/shapes/last.pt --dataset shapes --split train \\
      --proposals prm --out pseudo/

  # VOC on 8 processes (each takes every 8th image; rank 0 merges); rerun to resume
  torchrun --nproc_per_node 8 -m prm.cli pseudo-label --checkpoint runs/voc/last.pt \\
      --dataset voc --root VOCdevkit/VOC2012 --split train_aug --proposals mcg/ \\
      --score-threshold 30 --out pseudo-voc/

Output: <out>/instances.json (COCO instances: images, annotations with RLE masks, score,
area, bbox; categories) and <out>/parts/ (one JSON line per finished image, per process:
what a rerun resumes from). Kept instances: of a class the image is labelled with, score
>= --score-threshold, area >= --min-area pixels, at most one per peak pixel.
"""


HELP = "pseudo ground truth (COCO instances json) from PRM predictions"
DESCRIPTION = (
    "Predict a labelled training split and keep the confident instances "
    "as pseudo ground truth for `prm distill`."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from prm.cli.predict import add_predictor_arguments

    parser.add_argument("--checkpoint", required=True, help="a checkpoint from `prm train`")
    add_dataset_arguments(parser, default_split="the reader's training split")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--score-threshold", type=float, default=0.0)
    parser.add_argument("--min-area", type=int, default=16, help="minimum mask area (pixels)")
    parser.add_argument(
        "--all-per-peak",
        action="store_true",
        help="keep every instance of a peak pixel (default: the best one only)",
    )
    parser.add_argument("--limit", type=int, help="only the first N images")
    add_predictor_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import os

    import torch.distributed as dist

    from prm.cli.predict import build_predictor
    from prm.engine.inference import proposal_source
    from prm.engine.pseudo_label import PseudoLabelFilter, pseudo_label
    from prm.validation import check_number

    check_number("--min-area", args.min_area, minimum=0, integer=True)
    if args.limit is not None:
        check_number("--limit", args.limit, minimum=1, integer=True)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    started = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")  # only barriers: gloo works for CPU and GPU runs
        started = True
    try:
        model, predictor = build_predictor(args)
        extra = {"keep_empty": True} if args.dataset == "coco" else {}
        dataset = dataset_from_args(args, on_error="skip", **extra)
        names = model.class_names or [str(i) for i in range(model.num_classes)]
        if list(dataset.classes) != list(names):
            raise ValueError(
                f"checkpoint {args.checkpoint} was trained on classes {names}, "
                f"the dataset has {list(dataset.classes)}"
            )
        filt = PseudoLabelFilter(args.score_threshold, args.min_area, not args.all_per_peak)
        settings = {
            "checkpoint": os.path.abspath(args.checkpoint),
            "dataset": args.dataset,
            "split": args.split,
            "proposals": args.proposals,
        }
        path = pseudo_label(
            predictor,
            dataset,
            args.out,
            filt=filt,
            proposals=proposal_source(args.proposals, args.proposal_cache),
            limit=args.limit,
            rank=rank,
            world_size=world_size,
            barrier=dist.barrier if world_size > 1 else None,
            settings=settings,
            progress=not args.quiet,
        )
        if path is not None:
            import json

            info = json.loads(path.read_text())["info"]
            print(
                f"{info['kept_instances']} of {info['predicted_instances']} instances kept "
                f"(dropped: {info['dropped']}) -> {path}"
            )
    finally:
        if started:
            dist.destroy_process_group()
    return 0
