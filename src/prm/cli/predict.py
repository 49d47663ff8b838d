"""``prm predict``: instance masks for images, a folder or a dataset."""

from __future__ import annotations

import argparse

from .dataset_args import add_dataset_arguments, dataset_from_args, write_report

EPILOG = """examples:
  # a folder of photos: COCO results JSON + overlay PNGs (instances, PRMs, peaks)
  prm predict --checkpoint runs/voc/last.pt --images photos/ --out predictions/

  # a dataset split, with cached selective-search proposals, evaluated on the way
  prm predict --checkpoint runs/voc/last.pt --dataset voc --root VOCdevkit/VOC2012 \\
      --split val --proposals selective-search --proposal-cache proposals/ --evaluate

  # precomputed proposals (e.g. MCG .mat files named <image id>.mat)
  prm predict --checkpoint runs/voc/last.pt --dataset voc --root VOCdevkit/VOC2012 \\
      --split val --proposals mcg/ --evaluate

  # no proposals at all: candidates from the PRMs themselves
  prm predict --checkpoint runs/shapes/last.pt --images scene.png --proposals prm

  # a large split on 8 processes (each predicts every 8th image; rank 0 merges the
  # parts into results.json); rerun the same command to resume
  torchrun --nproc_per_node 8 -m prm.cli predict --checkpoint runs/voc/last.pt \
      --dataset voc --root VOCdevkit/VOC2012 --split train_aug --proposals mcg/ --out pred/

Output folder: results.json (COCO results: RLE masks, category ids, scores),
parts/ (with --resume or under torchrun: one JSON line per finished image), overlays/
(one PNG per image for the first --overlays images), and with --evaluate metrics.json,
table.txt, precision-recall curves and an HTML report (report/index.html, rebuilt by
`prm report OUT`).
"""


HELP = "instance masks for images, a folder or a dataset split"
DESCRIPTION = "Predict scored instance masks with a trained PRM network."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="a checkpoint from `prm train` or `prm distill`"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="image files and/or folders of images")
    source.add_argument("--dataset", help="voc, coco, folder, shapes or glyphs")
    add_dataset_arguments(parser, required=False, default_split="the reader's evaluation split")
    parser.add_argument("--out", required=True, help="output folder")
    add_predictor_arguments(parser)
    parser.add_argument("--overlays", type=int, default=8, help="overlay PNGs to write")
    parser.add_argument("--limit", type=int, help="only the first N images of the dataset")
    parser.add_argument("--evaluate", action="store_true", help="evaluate against the dataset")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=["instance", "coco", "semantic", "pointwise", "classification", "prm_quality"],
        metavar="NAME",
        help="metrics for --evaluate",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="with --dataset: keep one JSON line per finished image in OUT/parts/ and "
        "skip the images already there on a rerun (always on under torchrun, where each "
        "process takes every N-th image and rank 0 merges the parts into results.json)",
    )


#: RetrievalConfig fields that are flags (the others: --retrieval-config), with their help.
#: Types and defaults come from the dataclass; ``prm tune`` searches the GRID ones.
RETRIEVAL_FLAGS = {
    "alpha": "weight of the instance-aware term",
    "beta": "weight of the class-aware background penalty",
    "tau": "background threshold factor",
    "contour_width": "side of the contour's square element (odd)",
    "nms_threshold": "mask IoU at which NMS suppresses an instance",
    "proposal_count": "read only the first N proposals of each image. Selective search "
    "makes 150-220 on 128 px scenes; recall@0.5 of the first 100 / 200 / all was 0.91 / "
    "0.95 / 0.98 on ShapeScenes and 0.88 / 0.91 / 0.92 on GlyphScenes: raise it (or tune "
    "it) when your generator makes more",
}
#: Where `prm tune` saves its choice by default, next to the checkpoint, and where
#: `prm predict` looks for it.
TUNED_FILE = "retrieval.yaml"
#: PeakSelection fields that are flags.
PEAK_FLAGS = {
    "class_threshold": "minimum class score",
    "peak_threshold": "keep peaks above this (0 with 'absolute': a positive logit)",
}
#: The flags ``prm tune`` searches (several values each).
GRID = (
    "alpha",
    "beta",
    "tau",
    "contour_width",
    "nms_threshold",
    "proposal_count",
    *PEAK_FLAGS,
    "smooth_strided",
)


def yes_no(text: str) -> bool:
    """``yes`` / ``no`` (also true / false, 1 / 0) -> bool, for argparse."""
    value = text.strip().lower()
    if value in ("yes", "true", "1"):
        return True
    if value in ("no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


def add_predictor_arguments(parser: argparse.ArgumentParser, grid: bool = False) -> None:
    """The flags that configure a :class:`~prm.predictor.Predictor` (shared with tune).

    Peak and retrieval flags left out take the tuned file's (``--retrieval-config``, else
    the checkpoint folder's :data:`TUNED_FILE`), else the checkpoint's stored settings
    (see ``prm tune --save-checkpoint``), else the defaults of
    :class:`~prm.backprop.PeakSelection` / :class:`~prm.retrieval.RetrievalConfig`.
    With ``grid=True`` the :data:`GRID` fields take several values (a grid to search).
    """
    parser.add_argument(
        "--proposals",
        default="selective-search",
        help="'selective-search' (default), 'prm' (proposal-free) or a folder of "
        "precomputed proposals",
    )
    parser.add_argument("--proposal-cache", help="cache folder for selective-search proposals")
    parser.add_argument(
        "--input-size", type=int, help="network input size (default: training size)"
    )
    from prm.backprop import PeakSelection
    from prm.retrieval import RetrievalConfig

    parser.add_argument("--peak-threshold-mode", choices=["absolute", "relative"])
    parser.add_argument("--score", choices=["peak", "retrieval", "class"], default="peak")
    parser.add_argument(
        "--response",
        choices=["prm", "crm"],
        help="'crm' retrieves with class response maps (the CAM baseline); default: the "
        "checkpoint's kind ('crm' for a network trained without peak stimulation)",
    )
    # Types and defaults from the settings classes; the grid's flags take several values.
    for settings, flags in ((PeakSelection(), PEAK_FLAGS), (RetrievalConfig(), RETRIEVAL_FLAGS)):
        for name, text in flags.items():
            default = getattr(settings, name)
            parser.add_argument(
                f"--{name.replace('_', '-')}",
                type=float if default is None else type(default),
                help=f"{text} (default: the checkpoint's, else {default})",
                **({"nargs": "+"} if grid and name in GRID else {}),
            )
    parser.add_argument(
        "--smooth-strided",
        type=yes_no,
        metavar="yes|no",
        help="back-propagate the peaks through strided convolutions with the smoothed rule "
        "(yes; no checkerboard, not the paper's rule) or the paper's rule (no). Default: "
        "the tuned file's or the checkpoint's, else no",
        **({"nargs": "+"} if grid else {}),
    )
    parser.add_argument("--per-class-nms", action="store_true", help="NMS within each class")
    parser.add_argument(
        "--retrieval-config",
        help="YAML of retrieval settings and thresholds (as `prm tune` writes); over the "
        "checkpoint's, under the flags given. Default: the checkpoint folder's "
        f"{TUNED_FILE} when `prm tune` wrote one there; 'none' ignores it",
    )
    parser.add_argument("--sub-pixel-factor", type=int, help="override the checkpoint's")
    parser.add_argument("--chunk-size", type=int, help="peaks back-propagated at once")
    parser.add_argument(
        "--max-size",
        type=int,
        default=2048,
        help="longest side an image is worked on at; larger images are scaled down and "
        "their masks scaled back (default 2048; 0: no limit)",
    )
    parser.add_argument("--device", default="auto")


def given_flags(args: argparse.Namespace, names) -> dict:
    """The flags of ``names`` the user gave (not ``None``), by name."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def build_predictor(args: argparse.Namespace, grid: bool = False):
    """The model and :class:`~prm.predictor.Predictor` the flags describe.

    A ``prm distill`` checkpoint gives its one-pass predictor (no proposals, no peak or
    retrieval settings). Otherwise settings: the checkpoint's < the tuned file
    (``--retrieval-config FILE``, else the checkpoint folder's :data:`TUNED_FILE` unless
    ``--retrieval-config none``) < flags. With ``grid=True`` the :data:`GRID` flags
    (lists to search) are left to the caller.
    """
    from dataclasses import replace

    from prm.engine.distill import distilled_predictor, is_distilled_checkpoint
    from prm.engine.train import resolve_device
    from prm.predictor import Predictor
    from prm.retrieval import RetrievalConfig

    if is_distilled_checkpoint(args.checkpoint):  # `prm distill`: one forward pass, no proposals
        return distilled_predictor(args.checkpoint, device=resolve_device(args.device))
    rule = None if grid else args.smooth_strided
    predictor = Predictor.from_checkpoint(
        args.checkpoint,
        device=resolve_device(args.device),
        smooth_strided=rule,
        sub_pixel_factor=args.sub_pixel_factor,
        input_size=args.input_size or "model",
        proposal_fn="prm" if args.proposals in ("prm", "fallback") else None,
        response=args.response,
        score=args.score,
        chunk_size=args.chunk_size,
        max_size=getattr(args, "max_size", 2048) or None,
    )
    retrieval, selection = predictor.retrieval, predictor.peak_selection
    config_file = tuned_settings_file(args)
    if config_file is not None:
        retrieval, selection, smooth = read_tuned_settings(
            config_file, retrieval, selection, predictor.smooth_strided
        )
        predictor.smooth_strided = smooth if rule is None else rule
    peaks = given_flags(
        args, [n for n in [*PEAK_FLAGS, "peak_threshold_mode"] if not (grid and n in GRID)]
    )
    predictor.peak_selection = replace(selection, **peaks)
    flags = given_flags(args, [n for n in RETRIEVAL_FLAGS if not (grid and n in GRID)])
    if args.per_class_nms:
        flags["nms_class_agnostic"] = False
    predictor.retrieval = RetrievalConfig.from_dict(flags, source="flags", base=retrieval)
    return predictor.model, predictor


def tuned_settings_file(args: argparse.Namespace):
    """The settings file to read: ``--retrieval-config``, else the checkpoint folder's
    :data:`TUNED_FILE` when it exists, else ``None`` (also for ``--retrieval-config none``)."""
    from pathlib import Path

    given = getattr(args, "retrieval_config", None)
    if given is not None:
        return None if given.lower() == "none" else Path(given)
    found = Path(args.checkpoint).parent / TUNED_FILE
    if found.is_file():
        print(f"using the tuned settings in {found} (--retrieval-config none ignores them)")
        return found
    return None


def read_tuned_settings(path, retrieval, selection, smooth_strided: bool = False):
    """Retrieval settings, peak selection and back-propagation rule from a YAML file as
    ``prm tune`` writes it.

    Args:
        path: the YAML file: ``retrieval:`` (:class:`~prm.retrieval.RetrievalConfig`
            fields) and optionally ``predictor:`` (:class:`~prm.backprop.PeakSelection`
            fields: ``class_threshold``, ``peak_threshold``, ``peak_threshold_mode``, and
            the rule ``smooth_strided``, true or false); a bare mapping is read as
            ``retrieval``. Absent fields keep the bases' values.
        retrieval: the base :class:`~prm.retrieval.RetrievalConfig`.
        selection: the base :class:`~prm.backprop.PeakSelection`.
        smooth_strided: the base rule.

    Returns:
        ``(RetrievalConfig, PeakSelection, smooth_strided)``.

    Raises:
        ValueError: naming the file, for unknown fields or invalid values.
    """
    from dataclasses import fields, replace

    from prm.files import read_yaml
    from prm.retrieval import RetrievalConfig

    retrieval = RetrievalConfig.from_yaml(path, base=retrieval)
    document = read_yaml(path, "retrieval configuration") or {}
    peaks = document.get("predictor", {}) if "retrieval" in document else {}
    known = {f.name for f in fields(selection)} | {"smooth_strided"}
    if not isinstance(peaks, dict) or set(peaks) - known:
        raise ValueError(f"{path}: 'predictor' may hold only {sorted(known)}")
    peaks = dict(peaks)
    smooth_strided = peaks.pop("smooth_strided", smooth_strided)
    if not isinstance(smooth_strided, bool):
        raise ValueError(f"{path}: smooth_strided must be true or false, got {smooth_strided!r}")
    try:
        selection = replace(selection, **peaks)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return retrieval, selection, smooth_strided


#: Flags that do not change the predictions (left out of a resumable run's settings).
_NOT_SETTINGS = {"func", "command", "out", "quiet", "threads", "overlays", "limit", "device"}
_NOT_SETTINGS |= {"evaluate", "metrics", "resume", "proposal_cache"}


def predictor_settings(args: argparse.Namespace) -> dict:
    """The flags a resumable run's predictions depend on (a rerun must repeat them)."""
    import os

    settings = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    settings["checkpoint"] = os.path.abspath(args.checkpoint)
    return dict(sorted(settings.items()))


def checked_dataset(args: argparse.Namespace, model, **kwargs):
    """``build_dataset`` of the flags, refused if its classes are not the checkpoint's."""
    dataset = dataset_from_args(args, on_error="skip", **kwargs)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    if list(dataset.classes) != list(names):
        raise ValueError(
            f"checkpoint {args.checkpoint} was trained on classes {names}, "
            f"the dataset has {list(dataset.classes)}"
        )
    return dataset


def _run_sharded(args: argparse.Namespace, out) -> int:
    """``prm predict --dataset`` as a resumable pass, sharded under torchrun."""
    from prm.engine.inference import predict_shards
    from prm.engine.train import _Distributed, resolve_device

    if args.evaluate:
        raise ValueError(
            "--evaluate does not run with --resume or under torchrun: evaluate the merged "
            f"results with `prm evaluate --predictions {out / 'results.json'}`"
        )
    with _Distributed(resolve_device(args.device), backend="gloo") as ddp:
        model, predictor, source = predictor_and_source(args)
        summary = predict_shards(
            predictor,
            checked_dataset(args, model, evaluation=True),
            out,
            proposals=source,
            overlay_dir=out / "overlays" if args.overlays > 0 else None,
            num_overlays=args.overlays,
            limit=args.limit,
            rank=ddp.rank,
            world_size=ddp.world_size,
            barrier=ddp.barrier,
            settings=predictor_settings(args),
            progress=not args.quiet,
        )
    if summary is not None:
        _print_summary(summary)
    return 0


def predictor_and_source(args: argparse.Namespace):
    """The model, predictor and proposal source (``None`` where it needs none) of the flags."""
    from prm.engine.inference import proposal_source

    model, predictor = build_predictor(args)
    needs = getattr(predictor, "needs_proposals", True)
    return model, predictor, proposal_source(args.proposals, args.proposal_cache) if needs else None


def _print_summary(summary) -> None:
    print(
        f"{summary.images} images, {summary.instances} instances -> {summary.results_file}"
        + (f"; skipped {len(summary.skipped)} unreadable images" if summary.skipped else "")
    )
    if summary.images == 0:  # an empty results file is not a success
        first = (
            f" (first: {summary.skipped[0][0]}: {summary.skipped[0][1]})" if summary.skipped else ""
        )
        raise ValueError(f"no image could be read{first}")


def _image_paths(items: list[str]) -> list:
    from pathlib import Path

    from prm.proposals import list_images

    paths = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths.extend(list_images(path))  # raises ValueError for a folder of no images
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    return paths


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from prm.engine.inference import predict_dataset, predict_files
    from prm.report import GallerySampler
    from prm.validation import check_number

    check_number("--overlays", args.overlays, minimum=0, integer=True)
    for flag, value in (("--limit", args.limit), ("--sub-pixel-factor", args.sub_pixel_factor)):
        if value is not None:
            check_number(flag, value, minimum=1, integer=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.evaluate and args.images:
        raise ValueError("--evaluate needs --dataset (images alone have no ground truth)")
    if args.resume or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if args.images:
            raise ValueError(
                "--resume and torchrun work on a --dataset; for image files use "
                "--dataset folder --root FOLDER"
            )
        return _run_sharded(args, out)
    model, predictor, source = predictor_and_source(args)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    common = {
        "proposals": source,
        "results_file": out / "results.json",
        "overlay_dir": out / "overlays" if args.overlays > 0 else None,
        "num_overlays": args.overlays,
        "progress": not args.quiet,
    }
    if args.images:
        summary = predict_files(predictor, _image_paths(args.images), names, **common)
    else:
        dataset = checked_dataset(args, model, evaluation=True)
        sampler = GallerySampler(out / "gallery", names) if args.evaluate else None
        summary = predict_dataset(
            predictor,
            dataset,
            metrics=args.metrics if args.evaluate else (),
            report_dir=out if args.evaluate else None,
            print_table=True,
            limit=args.limit,
            on_image=sampler.add if sampler else None,
            **common,
        )
        if sampler is not None:
            from prm.data.build import reader

            # run.json must name the split predicted, so that `prm report` resamples it.
            split = args.split or reader(args.dataset).DEFAULT_SPLITS["eval"]
            checkpoint = str(Path(args.checkpoint).resolve())
            page = write_report(args, sampler, dataset, "results.json", split, checkpoint)
            print(f"report: {page}")
    _print_summary(summary)
    return 0
