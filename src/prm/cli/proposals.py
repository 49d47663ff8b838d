"""``prm proposals``: precompute segment proposals into an on-disk cache."""

from __future__ import annotations

import argparse

from .dataset_args import add_dataset_arguments, dataset_from_args

EPILOG = """examples:
  prm proposals --images photos/ --cache proposals/
  prm proposals --dataset voc --root VOCdevkit/VOC2012 --split val --cache proposals/ \\
      --workers 8
  prm proposals --dataset coco --root coco --split val2017 --cache proposals/ \\
      --preset quality --max-side 500 --evaluate

Proposals go to CACHE/selective_search-<settings hash>/<image id>.npz (the settings are in
settings.json next to them); rerunning with the same settings skips finished images, so
an interrupted run resumes. Read them back with prm.proposals.ProposalCache or
prm.proposals.load_proposals. Presets follow the selective search paper: single (one
hierarchy), fast (default, 8 hierarchies), quality (80 hierarchies, slowest).
See docs/proposals.md for measured quality and speed.
"""

PRESETS = ("single", "fast", "quality")


HELP = "precompute segment proposals (selective search) into a cache"
DESCRIPTION = (
    "Compute class-agnostic segment proposals for a dataset or an image "
    "folder, in parallel, into a resumable on-disk cache."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR", help="a folder of images (ids: file stems)")
    source.add_argument("--dataset", help="dataset reader: voc, coco, folder, shapes, glyphs")
    add_dataset_arguments(parser, required=False, default_split="the reader's evaluation split")
    parser.add_argument("--cache", required=True, metavar="DIR", help="cache folder")
    parser.add_argument(
        "--preset", choices=PRESETS, default="fast", help="generator settings (default: fast)"
    )
    parser.add_argument(
        "--max-proposals",
        type=int,
        metavar="N",
        help="keep at most N per image (default: 1000; quality: 2000)",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        metavar="PX",
        help="segment a copy resized to this longer side (faster; masks stay full size)",
    )
    parser.add_argument(
        "--duplicate-iou",
        type=float,
        metavar="T",
        help="drop proposals with mask IoU >= T to a better one (default: 0.9)",
    )
    parser.add_argument("--seed", type=int, help="seed of the ranking's random factor (0)")
    parser.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    parser.add_argument(
        "--skip-errors",
        action="store_true",
        help="list unreadable images and go on (exit status 1) instead of stopping",
    )
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="then report ABO and recall@0.5 of the top 100/200/1000 against the "
        "dataset's instance masks",
    )


def run(args: argparse.Namespace) -> int:
    from prm.proposals import (
        ProposalCache,
        ProposalEvaluator,
        SelectiveSearch,
        precompute_proposals,
    )

    from .predict import given_flags

    overrides = given_flags(args, ("max_proposals", "max_side", "duplicate_iou", "seed"))
    generator = getattr(SelectiveSearch, args.preset)(**overrides)
    cache = ProposalCache(args.cache, generator)

    if args.images:
        if args.evaluate:
            raise ValueError("--evaluate needs --dataset (an image folder has no ground truth)")
        source = args.images
    else:
        # build_dataset says which data needs --root.
        source = dataset_from_args(args, evaluation=True)
    summary = precompute_proposals(
        source,
        cache,
        workers=args.workers,
        skip_errors=args.skip_errors,
        progress=not args.quiet,
    )
    print(
        f"{summary.folder}: {summary.computed} computed, {summary.cached} already cached, "
        f"{len(summary.failed)} failed"
    )
    for name, problem in summary.failed:
        print(f"  failed: {name}: {problem}")

    if args.evaluate:
        evaluator = ProposalEvaluator()
        for index in range(len(source)):
            item = source[index]
            if item is None or "masks" not in item[1]:
                continue
            target = item[1]
            if target["image_id"] in cache:
                evaluator.process(
                    [target], [{"proposals": cache.load(target["image_id"], compact=True)}]
                )
        result = evaluator.summarize()
        print(
            f"{result['instances']} instances in {result['images']} images, "
            f"{result['mean_proposals']:.0f} proposals per image"
        )
        for k in evaluator.top_k:
            print(
                f"  top {k:>4}: ABO {result[f'abo@{k}']:.3f}  "
                f"recall@0.5 {result[f'recall@{k}']:.3f}"
            )
    return 1 if summary.failed else 0
