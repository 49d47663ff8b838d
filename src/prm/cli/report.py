"""``prm report``: (re)build the HTML report of a run folder."""

from __future__ import annotations

import argparse

from .dataset_args import add_dataset_arguments, dataset_from_args

EPILOG = """examples:
  prm report predictions/                      # after prm predict --evaluate --out predictions/
  prm report runs/prm-eval --compare runs/cam-eval     # add the comparison with another run
  prm report eval/ --dataset voc --root VOCdevkit/VOC2012 --split val   # sample a gallery

Writes RUN_DIR/report/index.html with its pictures in RUN_DIR/report/images/ (or --out):
the metrics, per-class AP (sortable table and bar chart), precision-recall curves, and a
gallery of the best, worst and random images by per-image AP. It reads metrics.json,
run.json and the gallery/ folder that `prm predict --evaluate` and `prm evaluate --out`
save. A run without a gallery gets one from its results file and the dataset (given by
--dataset/--root/--split or remembered in run.json). See docs/report.md.
"""


HELP = "(re)build the HTML report of a run folder"
DESCRIPTION = "Write a self-contained HTML report of an evaluated run."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="folder with metrics.json")
    parser.add_argument("--out", help="report folder (default RUN_DIR/report)")
    parser.add_argument("--compare", metavar="OTHER_RUN", help="a run to compare with")
    parser.add_argument("--title", help="page title (default: the run's name)")
    parser.add_argument("--dataset", help="dataset to sample a gallery from (voc, coco, ...)")
    add_dataset_arguments(parser, required=False)
    parser.add_argument(
        "--results", help="results file for sampling (default: the one in run.json)"
    )
    parser.add_argument(
        "--resample",
        action="store_true",
        help="sample the gallery again even if the run has one (masks only: no PRMs)",
    )
    parser.add_argument("--gallery", type=int, default=4, help="images per gallery group")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from prm.report import build_report, load_run, sample_from_results

    run_dir = Path(args.run_dir)
    info = load_run(run_dir)["info"]
    has_gallery = (run_dir / "gallery" / "index.json").is_file()
    remembered = info.get("dataset") if isinstance(info.get("dataset"), dict) else {}
    dataset_name = args.dataset or remembered.get("name")
    if args.dataset or args.resample or (not has_gallery and dataset_name):
        if not dataset_name:
            raise ValueError(
                f"{run_dir}: no dataset known to sample a gallery from; pass --dataset"
            )
        keys = ("root", "split", "annotations", "image_dir")
        flags = argparse.Namespace(dataset=dataset_name, **{k: remembered.get(k) for k in keys})
        results = args.results or info.get("results")
        if not results:
            raise ValueError(f"{run_dir}: no results file known; pass --results")
        results = Path(results)
        if not results.is_absolute() and not args.results:
            results = run_dir / results
        extra = {"keep_empty": True} if dataset_name == "coco" else {}
        dataset = dataset_from_args(args if args.dataset else flags, on_error="skip", **extra)
        sample_from_results(run_dir, results, dataset, args.gallery, progress=not args.quiet)
    path = build_report(run_dir, args.out, compare=args.compare, title=args.title)
    print(f"wrote {path}")
    return 0
