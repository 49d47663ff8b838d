"""``prm tune``: choose the retrieval settings and thresholds on validation data."""

from __future__ import annotations

import argparse

from .dataset_args import add_dataset_arguments, dataset_from_args

EPILOG = """examples:
  # beta and the peak threshold on 200 validation images; the choice is saved next to
  # the checkpoint (runs/shapes/retrieval.yaml), where `prm predict` picks it up
  prm tune --checkpoint runs/shapes/last.pt --dataset shapes --split val --limit 200 \\
      --beta 1e-4 1e-3 3e-3 --peak-threshold-mode relative --peak-threshold 0 0.3 0.6
  prm predict --checkpoint runs/shapes/last.pt --dataset shapes --split test --evaluate

  # per-class values, as the paper, into a file of your choice
  prm tune --checkpoint runs/voc/last.pt --dataset voc --root VOCdevkit/VOC2012 \\
      --split val --proposals mcg/ --per-class --proposal-count 100 1000 \\
      --out retrieval.yaml
  prm predict --checkpoint runs/voc/last.pt --dataset voc --root VOCdevkit/VOC2012 \\
      --split val --proposals mcg/ --retrieval-config retrieval.yaml --evaluate

  # or keep them in a copy of the checkpoint, which predict then uses by itself
  prm tune --checkpoint runs/shapes/last.pt --dataset shapes --split val --limit 200 \\
      --beta 1e-4 1e-3 --out retrieval.yaml --save-checkpoint runs/shapes/tuned.pt

Tunable (several values each): --alpha --beta --tau --contour-width --nms-threshold
--proposal-count --class-threshold --peak-threshold (in --peak-threshold-mode) and
--smooth-strided no yes (the back-propagation rule: the paper's, or smoothed through
strided convolutions). Peak response maps and proposals are computed once per image
(and rule), with the loosest thresholds; every combination of the values given is then
scored with mAP^r (--metric). The best goes to --out as YAML (default: retrieval.yaml next to the
checkpoint, which `prm predict` then reads by itself). It warns when every combination
scores 0 and when a best value is the smallest or largest tried (extend the grid there).
"""


HELP = "grid-search the retrieval settings and thresholds on validation data"
DESCRIPTION = "Tune proposal retrieval on a dataset split with instance masks."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from prm.cli.predict import add_predictor_arguments

    parser.add_argument("--checkpoint", required=True, help="a checkpoint from `prm train`")
    add_dataset_arguments(parser, default_split="val")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument(
        "--out",
        help="YAML file for the chosen settings (default: retrieval.yaml next to the "
        "checkpoint, where `prm predict` finds it)",
    )
    parser.add_argument(
        "--save-checkpoint",
        metavar="PATH",
        help="also write a copy of the checkpoint that carries the chosen settings "
        "(`prm predict --checkpoint PATH` then uses them without --retrieval-config)",
    )
    add_predictor_arguments(parser, grid=True)
    parser.add_argument("--metric", default="instance/mAP_r@0.5", help="metric to maximise")
    parser.add_argument("--per-class", action="store_true", help="alpha/beta/tau per class")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict
    from pathlib import Path

    from prm.cli.predict import GRID, TUNED_FILE, build_predictor
    from prm.engine.inference import proposal_source
    from prm.engine.tune import tune_retrieval

    if args.retrieval_config is None:
        # The base of the grid is never the settings of an earlier tuning, unless asked.
        args = argparse.Namespace(**{**vars(args), "retrieval_config": "none"})
    model, predictor = build_predictor(args, grid=True)
    grid = {name: getattr(args, name) for name in GRID if getattr(args, name) is not None}
    dataset = dataset_from_args(args, split="val", evaluation=True, on_error="skip")
    result = tune_retrieval(
        predictor,
        dataset,
        grid or {"beta": [predictor.retrieval.beta]},
        proposals=proposal_source(args.proposals, args.proposal_cache),
        metric=args.metric,
        per_class=args.per_class,
        limit=args.limit,
        progress=not args.quiet,
    )
    for trial in result.trials:
        value = trial["value"]
        shown = "-" if value is None else f"{100 * value:.1f}"
        print(f"{result.metric} = {shown:>5}  {trial['params']}")
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / TUNED_FILE
    # As read_tuned_settings reads it: the peak selection under `predictor:`.
    chosen = {**asdict(result.peak_selection), "smooth_strided": result.smooth_strided}
    result.best.to_yaml(out, predictor=chosen)
    for message in result.warnings:
        print(f"warning: {message}")
    print(f"best {result.metric} = {100 * (result.value or 0):.1f} -> {out}")
    if out == Path(args.checkpoint).parent / TUNED_FILE:
        print("`prm predict` with this checkpoint now uses these settings")
    if args.save_checkpoint:
        from prm.engine.checkpoint import with_inference_settings

        saved = with_inference_settings(
            args.checkpoint,
            args.save_checkpoint,
            retrieval=result.best.to_dict(),
            peak_selection=asdict(result.peak_selection),
            smooth_strided=result.smooth_strided,
        )
        print(f"checkpoint with these settings -> {saved}")
    return 0
