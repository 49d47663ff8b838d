"""``prm predict``: instance masks for images, a folder or a dataset."""

from __future__ import annotations

import argparse

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

Output folder: results.json (COCO results: RLE masks, category ids, scores),
overlays/ (one PNG per image for the first --overlays images), and with --evaluate
metrics.json, table.txt, precision-recall curves and an HTML report (report/index.html,
rebuilt by `prm report OUT`).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict",
        help="instance masks for images, a folder or a dataset split",
        description="Predict scored instance masks with a trained PRM network.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, help="a checkpoint from `prm train` or `prm distill`"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="image files and/or folders of images")
    source.add_argument("--dataset", help="voc, coco, folder or shapes")
    parser.add_argument("--root", help="dataset folder")
    parser.add_argument("--split", help="dataset split")
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
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def add_predictor_arguments(parser: argparse.ArgumentParser, grid: bool = False) -> None:
    """The flags that configure a :class:`~prm.predictor.Predictor` (shared with tune).

    With ``grid=True`` the retrieval weights take several values (a grid to search).
    """
    many = {"nargs": "+"} if grid else {}

    def default(value):
        return [value] if grid else value

    parser.add_argument(
        "--proposals",
        default="selective-search",
        help="'selective-search' (default), 'prm' (proposal-free) or a folder of "
        "precomputed proposals",
    )
    parser.add_argument("--proposal-cache", help="cache folder for selective-search proposals")
    parser.add_argument(
        "--input-size", type=int, default=None, help="network input size (default: training size)"
    )
    parser.add_argument(
        "--class-threshold",
        type=float,
        default=default(0.0),
        help="use a class's peaks only when its class score is at least this (default 0)",
        **many,
    )
    parser.add_argument(
        "--peak-threshold",
        type=float,
        default=default(0.0),
        help="keep peaks above this (default 0: a positive logit; 'absolute' mode)",
        **many,
    )
    parser.add_argument(
        "--peak-threshold-mode", choices=["absolute", "relative"], default="absolute"
    )
    parser.add_argument("--score", choices=["peak", "retrieval", "class"], default="peak")
    parser.add_argument(
        "--response",
        choices=["prm", "crm"],
        default="prm",
        help="'crm' retrieves with class response maps (the CAM baseline)",
    )
    parser.add_argument("--alpha", type=float, default=default(0.8), help="instance weight", **many)
    parser.add_argument(
        "--beta", type=float, default=default(1e-5), help="background penalty", **many
    )
    parser.add_argument(
        "--tau", type=float, default=default(0.95), help="background factor", **many
    )
    parser.add_argument("--contour-width", type=int, default=default(5), **many)
    parser.add_argument("--nms-threshold", type=float, default=default(0.3), **many)
    parser.add_argument(
        "--proposal-count",
        type=int,
        default=default(100),
        **many,
        help="read only the first N proposals of each image (default 100). Selective "
        "search makes 150-220 on 128 px scenes; recall@0.5 of the first 100 / 200 / all "
        "was 0.91 / 0.95 / 0.98 on ShapeScenes and 0.88 / 0.91 / 0.92 on GlyphScenes: "
        "raise it (or tune it) when your generator makes more",
    )
    parser.add_argument("--per-class-nms", action="store_true")
    parser.add_argument(
        "--retrieval-config",
        help="YAML of retrieval settings and thresholds (as `prm tune` writes); overrides "
        "the flags above. Default: the checkpoint folder's retrieval.yaml when `prm tune` "
        "wrote one there; 'none' ignores it",
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


def build_predictor(args: argparse.Namespace):
    """The model and :class:`~prm.predictor.Predictor` the flags describe."""
    from prm.engine import load_checkpoint, load_model
    from prm.engine.distill import distilled_predictor, is_distilled_checkpoint
    from prm.engine.train import resolve_device
    from prm.predictor import Predictor
    from prm.retrieval import RetrievalConfig

    if is_distilled_checkpoint(args.checkpoint):  # `prm distill`: one forward pass, no proposals
        return distilled_predictor(args.checkpoint, device=resolve_device(args.device))
    overrides = {}
    if args.sub_pixel_factor is not None:
        overrides["sub_pixel_factor"] = args.sub_pixel_factor
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, map_location=device, **overrides).to(device)
    input_size = args.input_size
    if input_size is None:
        input_size = load_checkpoint(args.checkpoint)["config"]["image_size"]
    retrieval = RetrievalConfig(
        alpha=args.alpha,
        beta=args.beta,
        tau=args.tau,
        contour_width=args.contour_width,
        proposal_count=args.proposal_count,
        nms_threshold=args.nms_threshold,
        nms_class_agnostic=not args.per_class_nms,
    )
    thresholds = {
        "class_threshold": args.class_threshold,
        "peak_threshold": args.peak_threshold,
        "peak_threshold_mode": args.peak_threshold_mode,
    }
    config_file = tuned_settings_file(args)
    if config_file is not None:
        retrieval, thresholds = read_retrieval_config(config_file, retrieval, thresholds)
    predictor = Predictor(
        model,
        input_size=input_size,
        **thresholds,
        retrieval=retrieval,
        proposal_fn="prm" if args.proposals in ("prm", "fallback") else None,
        response=args.response,
        score=args.score,
        chunk_size=args.chunk_size,
        device=device,
        max_size=getattr(args, "max_size", 2048) or None,
    )
    return model, predictor


#: Where `prm tune` saves its choice by default, next to the checkpoint, and where
#: `prm predict` looks for it.
TUNED_FILE = "retrieval.yaml"


def tuned_settings_file(args: argparse.Namespace):
    """The settings file ``prm predict`` should read: ``--retrieval-config``, else the
    checkpoint folder's ``retrieval.yaml`` when it exists, else ``None``."""
    from pathlib import Path

    given = getattr(args, "retrieval_config", None)
    if given is not None:
        return None if given.lower() == "none" else Path(given)
    found = Path(args.checkpoint).parent / TUNED_FILE
    if found.is_file():
        print(f"using the tuned settings in {found} (--retrieval-config none ignores them)")
        return found
    return None


def read_retrieval_config(path, base, thresholds=None):
    """Settings from a YAML file as ``prm tune`` writes it, over the flags' values.

    Args:
        path: the YAML file: ``retrieval:`` (fields of RetrievalConfig) and optionally
            ``predictor:`` (``class_threshold``, ``peak_threshold``,
            ``peak_threshold_mode``); a bare mapping is read as ``retrieval``.
        base: the RetrievalConfig of the flags.
        thresholds: the flags' predictor thresholds (a dict), or ``None``.

    Returns:
        the RetrievalConfig, or ``(RetrievalConfig, thresholds)`` when ``thresholds`` is
        given.
    """
    from dataclasses import replace
    from pathlib import Path

    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"retrieval configuration {path} does not exist")
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{path} must hold a mapping of retrieval settings")
    data = document.get("retrieval", document)
    predictor = document.get("predictor", {}) if "retrieval" in document else {}
    fields = set(type(base).__dataclass_fields__)
    unknown = sorted(set(data) - fields) if isinstance(data, dict) else []
    if not isinstance(data, dict) or unknown:
        raise ValueError(f"{path}: unknown retrieval settings {unknown}")
    known = {"class_threshold", "peak_threshold", "peak_threshold_mode"}
    if not isinstance(predictor, dict) or set(predictor) - known:
        raise ValueError(f"{path}: 'predictor' may hold only {sorted(known)}")
    data = dict(data)
    if "proposal_size_limit" in data:
        data["proposal_size_limit"] = tuple(data["proposal_size_limit"])
    retrieval = replace(base, **data)
    if thresholds is None:
        return retrieval
    return retrieval, {**thresholds, **predictor}


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
    from pathlib import Path

    from prm.engine.inference import predict_dataset, predict_files, proposal_source
    from prm.validation import check_number

    check_number("--overlays", args.overlays, minimum=0, integer=True)
    for flag, value in (("--limit", args.limit), ("--sub-pixel-factor", args.sub_pixel_factor)):
        if value is not None:
            check_number(flag, value, minimum=1, integer=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.evaluate and args.images:
        raise ValueError("--evaluate needs --dataset (images alone have no ground truth)")
    model, predictor = build_predictor(args)
    source = None
    if getattr(predictor, "needs_proposals", True):
        source = proposal_source(args.proposals, args.proposal_cache)
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
        from prm.data import build_dataset

        extra = {"keep_empty": True} if args.dataset == "coco" else {}
        dataset = build_dataset(args.dataset, args.root, args.split, on_error="skip", **extra)
        if list(dataset.classes) != list(names):
            raise ValueError(
                f"checkpoint {args.checkpoint} was trained on classes {names}, "
                f"the dataset has {list(dataset.classes)}"
            )
        sampler = None
        if args.evaluate:
            from prm.report import GallerySampler

            sampler = GallerySampler(out / "gallery", names)
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
        if sampler is not None:  # the HTML report (prm.report; `prm report` rebuilds it)
            from prm.report import dataset_flags, write_run_report

            page = write_run_report(
                out,
                sampler,
                command="prm predict",
                name=out.resolve().name,
                classes=names,
                category_ids=list(dataset.category_ids),
                results="results.json",
                dataset=dataset_flags(args.dataset, args.root, args.split),
                checkpoint=str(Path(args.checkpoint).resolve()),
            )
            print(f"report: {page}")
    print(
        f"{summary.images} images, {summary.instances} instances -> {summary.results_file}"
        + (f"; skipped {len(summary.skipped)} unreadable images" if summary.skipped else "")
    )
    if summary.images == 0:  # an empty results file is not a success
        first = (
            f" (first: {summary.skipped[0][0]}: {summary.skipped[0][1]})" if summary.skipped else ""
        )
        raise ValueError(f"no image could be read{first}")
    return 0
