"""``prm pseudo-label``: PRM predictions on a training split -> COCO instances json."""

from __future__ import annotations

import argparse

from .dataset_args import add_dataset_arguments

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
    from prm.cli.predict import checked_dataset, predictor_and_source, predictor_settings
    from prm.engine.pseudo_label import PseudoLabelFilter, pseudo_label
    from prm.engine.train import _Distributed, resolve_device
    from prm.validation import check_number

    check_number("--min-area", args.min_area, minimum=0, integer=True)
    if args.limit is not None:
        check_number("--limit", args.limit, minimum=1, integer=True)
    with _Distributed(resolve_device(args.device), backend="gloo") as ddp:
        model, predictor, source = predictor_and_source(args)
        extra = {"keep_empty": True} if args.dataset == "coco" else {}
        dataset = checked_dataset(args, model, **extra)
        filt = PseudoLabelFilter(args.score_threshold, args.min_area, not args.all_per_peak)
        # The filter is recorded by pseudo_label itself.
        filter_flags = {"score_threshold", "min_area", "all_per_peak"}
        settings = {k: v for k, v in predictor_settings(args).items() if k not in filter_flags}
        path = pseudo_label(
            predictor,
            dataset,
            args.out,
            filt=filt,
            proposals=source,
            limit=args.limit,
            rank=ddp.rank,
            world_size=ddp.world_size,
            barrier=ddp.barrier,
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
    return 0
