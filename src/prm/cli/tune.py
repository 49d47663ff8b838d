"""``prm tune``: choose the retrieval hyper-parameters on validation data."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  # shared (alpha, beta, tau) for all classes, on 200 validation images
  prm tune --checkpoint runs/shapes/last.pt --dataset shapes --split val --limit 200 \\
      --beta 1e-5 1e-4 1e-3 --alpha 0.5 0.8 1.5 --out retrieval.yaml

  # per-class values, as the paper, then use them for the test split
  prm tune --checkpoint runs/voc/last.pt --dataset voc --root VOCdevkit/VOC2012 \\
      --split val --proposals mcg/ --per-class --out retrieval.yaml
  prm predict --checkpoint runs/voc/last.pt --dataset voc --root VOCdevkit/VOC2012 \\
      --split val --proposals mcg/ --retrieval-config retrieval.yaml --evaluate

  # or keep them in a copy of the checkpoint, which predict then uses by itself
  prm tune --checkpoint runs/shapes/last.pt --dataset shapes --split val --limit 200 \\
      --beta 1e-4 1e-3 --out retrieval.yaml --save-checkpoint runs/shapes/tuned.pt

Peak response maps and proposals are computed once per image; every combination of the
values given is then scored with mAP^r (--metric). The best goes to --out as YAML.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from prm.cli.predict import add_predictor_arguments

    parser = subparsers.add_parser(
        "tune",
        help="grid-search the retrieval settings (alpha, beta, tau, ...) on validation data",
        description="Tune proposal retrieval on a dataset split with instance masks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint from `prm train`")
    parser.add_argument("--dataset", required=True, help="voc, coco, folder or shapes")
    parser.add_argument("--root", help="dataset folder")
    parser.add_argument("--split", default="val", help="split to tune on (default val)")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--out", required=True, help="YAML file for the chosen settings")
    parser.add_argument(
        "--save-checkpoint",
        metavar="PATH",
        help="also write a copy of the checkpoint that carries the chosen settings "
        "(`prm predict --checkpoint PATH` then uses them without --retrieval-config)",
    )
    add_predictor_arguments(parser, grid=True)
    parser.add_argument("--metric", default="instance/mAP_r@0.5", help="metric to maximise")
    parser.add_argument("--per-class", action="store_true", help="alpha/beta/tau per class")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from prm.cli.predict import GRID, build_predictor
    from prm.data import build_dataset
    from prm.engine.inference import proposal_source
    from prm.engine.tune import tune_retrieval

    model, predictor = build_predictor(args, grid=True)
    grid = {name: getattr(args, name) for name in GRID if getattr(args, name) is not None}
    dataset = build_dataset(args.dataset, args.root, args.split, evaluation=True, on_error="skip")
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
    out = result.best.to_yaml(args.out)
    print(f"best {result.metric} = {100 * (result.value or 0):.1f} -> {out}")
    if args.save_checkpoint:
        from dataclasses import asdict

        from prm.engine.checkpoint import with_inference_settings

        saved = with_inference_settings(
            args.checkpoint,
            args.save_checkpoint,
            retrieval=result.best.to_dict(),
            peak_selection=asdict(predictor.peak_selection),
        )
        print(f"checkpoint with these settings -> {saved}")
    return 0
