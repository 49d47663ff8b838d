"""``prm demo``: weakly supervised instance segmentation end to end, on a CPU, in minutes."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  prm demo                          # the full demo (about 10 minutes on 2 CPU cores)
  prm demo --out /tmp/demo --train-images 500 --test-images 50 --epochs 2   # a smoke run
  prm demo --dataset glyphs --out prm-demo-glyphs   # grey glyphs: shape is the only cue
  prm demo --distill                # + PRM pseudo-labels -> Mask R-CNN (self-training)
  prm demo --dataset glyphs --teacher lite0-cpu   # a small network taught by Lite0's maps

It generates an embedded dataset (ShapeScenes, or GlyphScenes with --dataset glyphs:
synthetic scenes with exact instance masks), trains a PRM
network and a CAM baseline from image-level labels only, tunes the retrieval settings
(alpha, beta, tau, contour width) of each on validation images, predicts the test split with
selective-search proposals, and prints mAP^r, ABO, pointwise localisation and
classification mAP of both.
OUT/report holds index.html (the HTML report: PRM against CAM, open it in a browser),
report.json, table.md, the results files and overlay PNGs (instances | PRMs | ground
truth), and runs/<method>/ with each method's metrics, gallery and own report.
Re-running resumes finished steps.
"""


HELP = "train and evaluate PRM against CAM on synthetic data (CPU, minutes)"
DESCRIPTION = "The end-to-end demo on an embedded synthetic dataset."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", help="working folder (default prm-demo, or prm-demo-glyphs for glyphs)"
    )
    parser.add_argument(
        "--dataset",
        choices=["shapes", "glyphs"],
        default="shapes",
        help="shapes: ShapeScenes (default); glyphs: GlyphScenes, grey letters",
    )
    parser.add_argument(
        "--preset",
        choices=["shapes", "lite0-cpu", "student"],
        help="training recipe: shapes (small CNN from scratch, the default) or lite0-cpu "
        "(EfficientNet-Lite0 ImageNet weights to stride 8, frozen, and a conv head trained "
        "from scratch; the lite0 extra; the recipe for --dataset glyphs); with --teacher "
        "the default is student (the shapes recipe, 8 epochs)",
    )
    parser.add_argument(
        "--teacher",
        choices=["lite0-cpu"],
        help="first train teacher networks with this recipe, then the demo's networks on "
        "the labels plus their teacher's class response maps (2.4-3x the time)",
    )
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument(
        "--val-images", type=int, default=100, help="images to tune retrieval on (0: don't)"
    )
    parser.add_argument("--test-images", type=int, default=300)
    parser.add_argument("--epochs", type=int, help="training epochs (default: the preset's)")
    parser.add_argument(
        "--teacher-epochs",
        type=int,
        help="with --teacher: the teachers' training epochs (default: --epochs when given, "
        "else 4, chosen on validation images; the lite0-cpu preset alone trains 7)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes (2): selective search, and with 2 or more the PRM and CAM networks "
        "train side by side and the table's rows run in two processes, each with half "
        "of --threads (at least 1); 1 runs everything in one process, one after the other, "
        "with the same results",
    )
    parser.add_argument(
        "--distill",
        action="store_true",
        help="add the row 'PRM -> Mask R-CNN': pseudo-label the training images with the "
        "tuned PRM network and train `prm distill`'s small Mask R-CNN on them (longer than "
        "the rest of the demo on 2 CPU cores)",
    )
    parser.add_argument(
        "--distill-images", type=int, help="with --distill: only the first N training images"
    )
    parser.add_argument(
        "--distill-epochs", type=int, default=4, help="with --distill: Mask R-CNN epochs (4)"
    )


def run(args: argparse.Namespace) -> int:
    from prm.demo import DEMO_DATASETS, run_demo

    out = args.out or ("prm-demo" if args.dataset == "shapes" else f"prm-demo-{args.dataset}")
    args.preset = args.preset or ("student" if args.teacher else "shapes")
    keys = (
        "dataset preset teacher train_images val_images test_images epochs teacher_epochs seed "
        "workers distill distill_images distill_epochs"
    ).split()
    report = run_demo(out, progress=not args.quiet, **{k: getattr(args, k) for k in keys})
    print()
    print(f"{DEMO_DATASETS[args.dataset]} test split, {args.test_images} images (percent):")
    print(report["table"])
    minutes = report["timings_s"]["total"] / 60
    print(f"\ntook {minutes:.1f} min; report, results and overlays in {out}/report")
    return 0
