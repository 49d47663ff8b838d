"""``prm evaluate``: score a COCO-format results file against a dataset's ground truth."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from .dataset_args import add_dataset_arguments, dataset_from_args, write_report

EPILOG = """examples:
  prm evaluate --dataset voc --root VOCdevkit/VOC2012 --split val --predictions results.json
  prm evaluate --dataset coco --root coco --split val2017 --predictions results.json \\
      --metrics coco instance --out eval/
  prm evaluate --dataset shapes --split val --predictions results.json --use-07-metric

  # a COCO export in its own layout
  prm evaluate --dataset coco --annotations export/labels.json --image-dir export/images \\
      --predictions results.json

The results file is a JSON list of {"image_id", "category_id", "segmentation" (compressed
RLE), "score"} as `prm predict` writes it; any method's results in that format work.
Metric definitions: docs/evaluation.md.
"""


# Kept literal (not imported) so that `prm --help` does not load torch; `run` validates.
MASK_METRICS = ("instance", "coco", "semantic")


HELP = "score a results file (mAP^r, ABO, COCO AP, semantic mIoU)"
DESCRIPTION = "Score a COCO-format results file against a dataset's instance masks."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser, default_split="the reader's evaluation split")
    parser.add_argument("--predictions", required=True, help="results .json to score")
    parser.add_argument(
        "--out",
        help="folder for metrics.json, table.txt, PR-curve PNGs and the HTML report "
        "(report/index.html)",
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=list(MASK_METRICS),
        metavar="NAME",
        help="metrics to compute, of instance (mAP^r, ABO), coco (COCO AP), semantic (mIoU) "
        "(default: all three); pointwise, classification and prm_quality need class scores, "
        "peaks and PRMs, which only `prm predict --evaluate` has",
    )
    parser.add_argument(
        "--iou-thresholds",
        nargs="+",
        type=float,
        default=[0.25, 0.5, 0.7, 0.75],
        metavar="T",
        help="mask IoU thresholds of mAP^r (default: 0.25 0.5 0.7 0.75)",
    )
    parser.add_argument("--use-07-metric", action="store_true", help="11-point VOC07 AP for mAP^r")
    parser.add_argument(
        "--use-ignore-mask",
        action="store_true",
        help="leave VOC's 255 boundary pixels out of mask IoU (default: count them, as "
        "chainercv and the published numbers do)",
    )
    parser.add_argument(
        "--class-agnostic-abo", action="store_true", help="also report class-agnostic ABO"
    )
    parser.add_argument(
        "--ties",
        choices=["chainercv", "stable"],
        default="chainercv",
        help="order of tied scores in mAP^r: chainercv's np.argsort(scores)[::-1] (default, "
        "equal to chainercv) or stable (the order in the file)",
    )


def run(args: argparse.Namespace) -> int:
    from prm.data.build import reader
    from prm.evaluation import METRICS, load_results, prediction_masks, run_evaluation
    from prm.report import GallerySampler

    unknown = [m for m in args.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(MASK_METRICS)}")
    not_in_file = [m for m in args.metrics if m not in MASK_METRICS]
    if not_in_file:
        raise ValueError(
            f"metric(s) {not_in_file} need class scores, peaks or PRMs, which a results file "
            f"does not hold; choose from {list(MASK_METRICS)} or run `prm predict --evaluate`"
        )
    # The reader's evaluation split and options (COCO keeps images without objects, whose
    # false positives must count).
    dataset = dataset_from_args(args, evaluation=True)
    results = load_results(args.predictions, dataset)

    sampler = GallerySampler(Path(args.out) / "gallery", dataset.classes) if args.out else None

    def pairs() -> Iterator[tuple[dict, dict]]:
        for index in range(len(dataset)):
            item = dataset[index]
            if item is None:  # a bad image the reader skipped (on_error="skip")
                continue
            target = item[1]
            prediction = results[index]
            try:  # decode here, so that a size mismatch names the results file
                masks = prediction_masks(prediction, target["size"])
            except ValueError as exc:
                raise ValueError(f"{args.predictions}: {exc}") from exc
            if sampler is not None:
                sampler.add(item[0], target, {**prediction, "masks": masks})
            yield target, {**prediction, "masks": masks}

    options = {}
    if "instance" in args.metrics:
        keys = ("iou_thresholds", "use_07_metric", "use_ignore_mask", "class_agnostic_abo", "ties")
        options["instance"] = {k: getattr(args, k) for k in keys}
    split = args.split or reader(args.dataset).DEFAULT_SPLITS["eval"]
    where = args.annotations or f"split {split}"
    print(f"{dataset!r} ({where}), {sum(len(r['scores']) for r in results)} predictions")
    run_evaluation(
        pairs(),
        dataset.classes,
        dataset.category_ids,
        metrics=args.metrics,
        out_dir=args.out,
        progress=not args.quiet,
        **options,
    )
    if args.out:
        page = write_report(args, sampler, dataset, str(Path(args.predictions).resolve()), split)
        print(f"wrote metrics.json, table.txt, precision-recall curves and {page} to {args.out}")
    return 0
