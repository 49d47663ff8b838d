"""Segment proposals: speed and quality of the built-in selective search, and of the
proposal-free fallback.

Speed: seconds per image of each generator setting on the 13 real photos of
``../shared/data`` resized so that their longer side is 224, 448 and 640 px (aspect
kept). ``cpu_s`` is the CPU time of this (single-threaded) process, which other load on
the machine does not inflate much; ``wall_s`` is the elapsed time.

Quality: average best overlap (ABO) and recall at IoU 0.5 of the first 100 / 200 / 1000
proposals against the ground-truth instances (class-agnostic; crowd instances left out;
VOC's 255 boundary band counts for neither mask), on

- ShapeScenes test (synthetic, 300 images of 128 px; ``prm.data.ShapeScenes``),
- the VOC fixture (3 photos, 12 hand-drawn instances),
- the COCO fixture (10 photos, 76 non-crowd instances, official annotations).

Fallback (``--checkpoint``, a ShapeScenes model such as ``prm train --preset shapes``
writes): instance segmentation on ShapeScenes test with the ordinary retrieval given
selective search proposals versus the PRM-support candidates of
``prm.proposals.prm_support_proposals`` (``Predictor(proposal_fn="prm")``): mAP^r at
IoU 0.25 / 0.5 / 0.75 and ABO (docs/evaluation.md).

Usage:
    python benchmarks/proposals.py                       # default settings, everything
    python benchmarks/proposals.py --settings fast fast-500 quality
    python benchmarks/proposals.py --checkpoint runs/shapes/last.pt --skip-speed
    python benchmarks/proposals.py --shapes 50 --no-save  # a quick look
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # single-threaded timings, before numpy loads

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data"
SIZES = (224, 448, 640)
TOP_K = (100, 200, 1000)

# Named generator settings: SelectiveSearch class method + overrides.
SETTINGS = {
    "single": ("single", {}),
    "fast": ("fast", {}),
    "fast-opencv": ("fast", {"segmenter": "opencv"}),
    "fast-500": ("fast", {"max_side": 500}),
    "fast-320": ("fast", {"max_side": 320}),
    "quality": ("quality", {}),
    "quality-320": ("quality", {"max_side": 320}),
    # Levers of issue 14 (--levers): a deterministic ranking that lets the hierarchies
    # take turns, a finer over-segmentation (k = 25 added) for small objects, both, ...
    "fast-rr": ("fast", {"ranking": "round-robin"}),
    "fast-fine": ("fast", {"scales": (25.0, 50.0, 100.0)}),
    "fast-fine-rr": ("fast", {"scales": (25.0, 50.0, 100.0), "ranking": "round-robin"}),
    # ... and merging on an edge cue (the colour distance across the shared boundary).
    "fast-edge": ("fast", {"similarities": ("ctsfe", "tsfe")}),
}
LEVERS = ("fast", "fast-rr", "fast-fine", "fast-fine-rr", "fast-edge")
SMALL = 32 * 32  # COCO's small objects: area < 32^2 pixels (at the evaluated size)


def generator(name: str):
    from prm.proposals import SelectiveSearch

    preset, overrides = SETTINGS[name]
    return getattr(SelectiveSearch, preset)(**overrides)


def datasets(shapes: int) -> dict:
    from prm.data import build_dataset
    from prm.data.shapes import ShapeScenes

    out = {"ShapeScenes test": ShapeScenes("test", num_images=shapes)}
    if (SHARED / "voc-sample").is_dir():
        out["VOC fixture"] = build_dataset("voc", SHARED / "voc-sample" / "VOC2012", "trainval")
        out["COCO fixture"] = build_dataset("coco", SHARED / "coco-sample", "val2017")
    return out


def photos_at(side: int) -> list[tuple[str, object, dict]]:
    """The fixture photos with masks, resized so that the longer side is ``side``
    (image bilinear, masks nearest; crowd instances left out), sorted by
    ``data/image_id``: ``[(name, PIL image, {"masks", "ignore_mask"})]``."""
    from prm.masks import resize_nearest

    photos = []
    for data, dataset in datasets(0).items():
        if data == "ShapeScenes test":
            continue
        for index in range(len(dataset)):
            image, target = dataset[index]
            scale = side / max(image.size)
            size = (round(image.height * scale), round(image.width * scale))
            masks = target["masks"][~target["iscrowd"].bool()]
            resized = {
                "masks": resize_nearest(masks, size),
                "ignore_mask": resize_nearest(target["ignore_mask"][None], size)[0],
            }
            photos.append((f"{data}/{target['image_id']}", image.resize(size[::-1]), resized))
    return sorted(photos, key=lambda photo: photo[0])


def levers(names, shapes: int, side: int = 448) -> dict:
    """Each setting on the fixture photos at ``side`` px, split into halves A (even
    positions in name order) and B (odd), by instance size, and on ShapeScenes test."""
    import numpy as np

    from prm.data.shapes import ShapeScenes
    from prm.proposals import best_overlaps

    photos = photos_at(side)
    halves = {"A": photos[0::2], "B": photos[1::2]}
    out = {"side": side, "halves": {h: [p[0] for p in items] for h, items in halves.items()}}
    for name in names:
        gen = generator(name)
        row, cpu = {}, 0.0
        for half, items in halves.items():
            best, area = {k: [] for k in TOP_K}, []
            for _, image, target in items:
                start = time.process_time()
                proposals = gen.propose(image)
                cpu += time.process_time() - start
                found = best_overlaps(proposals, target["masks"], TOP_K, target["ignore_mask"])
                for k in TOP_K:
                    best[k] += found[k].tolist()
                valid = target["masks"] & ~target["ignore_mask"].bool()
                area += valid.flatten(1).sum(1).tolist()
            small = np.array(area) < SMALL
            row[half] = {"instances": len(area), "small": int(small.sum())}
            for k in TOP_K:
                b = np.array(best[k])
                row[half][f"abo@{k}"] = float(b.mean())
                row[half][f"abo_large@{k}"] = float(b[~small].mean()) if (~small).any() else None
                row[half][f"abo_small@{k}"] = float(b[small].mean()) if small.any() else None
        row["cpu_s_per_photo"] = cpu / len(photos)
        row["ShapeScenes"] = quality(name, ShapeScenes("test", num_images=shapes))
        out[name] = row
        print(name, json.dumps(row), flush=True)
    return out


def quality(name: str, dataset) -> dict:
    from prm.proposals import ProposalEvaluator

    gen = generator(name)
    evaluator = ProposalEvaluator(top_k=TOP_K)
    cpu = 0.0
    for index in range(len(dataset)):
        image, target = dataset[index]
        start = time.process_time()
        proposals = gen.propose(image)
        cpu += time.process_time() - start
        evaluator.process([target], [{"proposals": proposals}])
    return {**evaluator.summarize(), "cpu_s_per_image": cpu / max(len(dataset), 1)}


def speed(name: str, repeats: int) -> dict:
    from PIL import Image

    photos = sorted((SHARED / "voc-sample" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    photos += sorted((SHARED / "coco-sample" / "val2017").glob("*.jpg"))
    if not photos:
        raise SystemExit(f"no photos under {SHARED}: the speed benchmark needs the fixtures")
    gen = generator(name)
    out = {}
    for size in SIZES:
        cpu, wall = [], []
        for path in photos:
            image = Image.open(path).convert("RGB")
            scale = size / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)))
            for _ in range(repeats):
                start_cpu, start_wall = time.process_time(), time.perf_counter()
                gen.propose(image)
                cpu.append(time.process_time() - start_cpu)
                wall.append(time.perf_counter() - start_wall)
        out[str(size)] = {
            "cpu_s": statistics.mean(cpu),
            "cpu_s_median": statistics.median(cpu),
            "wall_s": statistics.mean(wall),
            "images": len(photos),
        }
    return out


def fallback(checkpoint: str, shapes: int) -> dict:
    from prm.data.shapes import ShapeScenes
    from prm.engine.checkpoint import load_checkpoint, load_model
    from prm.evaluation.base import evaluate
    from prm.evaluation.instance import InstanceSegmentationEvaluator
    from prm.predictor import Predictor

    state = load_checkpoint(checkpoint)
    config = state.get("config", {})
    model = load_model(checkpoint)
    dataset = ShapeScenes("test", num_images=shapes, size=int(config.get("image_size", 128)))
    out = {"checkpoint": str(checkpoint), "epochs": state.get("epoch"), "images": len(dataset)}
    for label, proposal_fn in (
        ("selective search (fast)", generator("fast")),
        ("PRM support", "prm"),
        ("GrabCut + PRM support", "grabcut"),
    ):
        predictor = Predictor(
            model, input_size=int(config.get("image_size", 128)), proposal_fn=proposal_fn
        )
        evaluator = InstanceSegmentationEvaluator(
            dataset.classes, iou_thresholds=(0.25, 0.5, 0.75), class_agnostic_abo=True
        )
        start = time.process_time()

        def pairs(predictor=predictor):
            for index in range(len(dataset)):
                image, target = dataset[index]
                yield target, predictor([image])[0]

        metrics = evaluate(evaluator, pairs())
        metrics["cpu_s_per_image"] = (time.process_time() - start) / max(len(dataset), 1)
        out[label] = metrics
    return out


def synthetic_prms(masks, generator):
    """A stand-in PRM per instance (no trained model needed): the instance's mask,
    weighted towards its inside (distance to its edge) and speckled like a
    back-propagated map, blurred by a tenth of its size. Peaks at the maximum."""
    import numpy as np
    import torch
    from scipy import ndimage

    maps, peaks = [], []
    for mask in masks.numpy():
        inside = ndimage.distance_transform_edt(mask)
        speckle = generator.random(mask.shape) ** 3
        prm = ndimage.gaussian_filter(inside * speckle, 0.1 * np.sqrt(mask.sum()))
        y, x = np.unravel_index(np.argmax(prm), prm.shape)
        maps.append(prm / prm.sum())
        peaks.append((float(x), float(y)))
    return torch.from_numpy(np.stack(maps)).float(), torch.tensor(peaks)


def refine(dataset, limit: int, side: int = 448) -> dict:
    """Candidates without proposals (PRM support; GrabCut seeded by the PRMs) against
    selective search, given one synthetic PRM per instance (``synthetic_prms``): the IoU
    of the mask retrieval picks for each instance's peak with that instance."""
    import numpy as np
    import torch

    from prm.proposals import grabcut_proposals, prm_support_proposals
    from prm.retrieval import RetrievalConfig, resize_masks, retrieve_instances

    sources = {
        "selective search (fast)": lambda image, prms, peaks: generator("fast").propose(image),
        "PRM support": lambda image, prms, peaks: prm_support_proposals(prms, peaks),
        "GrabCut + PRM support": lambda image, prms, peaks: grabcut_proposals(image, prms, peaks),
    }
    ious = {name: [] for name in sources}
    large = {name: [] for name in sources}
    cpu = dict.fromkeys(sources, 0.0)
    rng = np.random.default_rng(0)
    count = min(limit, len(dataset))
    for index in range(count):
        image, target = dataset[index]
        scale = side / max(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)))
        keep = ~target["iscrowd"].bool()
        masks = resize_masks(target["masks"][keep], (image.height, image.width))
        masks = masks[masks.flatten(1).any(1)]
        if len(masks) == 0:
            continue
        prms, peaks = synthetic_prms(masks, rng)
        labels = torch.zeros(len(masks), dtype=torch.long)
        config = RetrievalConfig(nms_threshold=None, proposal_count=1000)
        for name, source in sources.items():
            start = time.process_time()
            candidates = source(image, prms, peaks)
            cpu[name] += time.process_time() - start
            found = retrieve_instances(prms, labels, torch.zeros(1, 14, 14), candidates, config)
            iou = torch.zeros(len(masks))
            for mask, k in zip(found["masks"], found["peak_index"].tolist()):
                inter = (mask & masks[k]).sum()
                iou[k] = inter / (mask | masks[k]).sum()
            ious[name] += iou.tolist()
            large[name] += iou[masks.flatten(1).sum(1) >= 32 * 32].tolist()
    return {
        name: {
            "images": count,
            "instances": len(ious[name]),
            "mean_iou": float(np.mean(ious[name])),
            "iou>=0.5": float(np.mean(np.array(ious[name]) >= 0.5)),
            "large_instances": len(large[name]),
            "mean_iou_large": float(np.mean(large[name])) if large[name] else None,
            "cpu_s_per_image": cpu[name] / max(count, 1),
        }
        for name in sources
    }


def markdown(report: dict) -> str:
    lines = [
        "# Segment proposal benchmark",
        "",
        f"{report['machine']}; single-threaded. Produced by `benchmarks/proposals.py`.",
        "",
    ]
    if report.get("speed"):
        lines += [
            "Seconds per image (CPU time; wall time in brackets), real photos resized to "
            "the given longer side:",
            "",
            "| settings | " + " | ".join(f"{s} px" for s in SIZES) + " |",
            "|---|" + "---|" * len(SIZES),
        ]
        for name, by_size in report["speed"].items():
            cells = [
                f"{by_size[str(s)]['cpu_s']:.2f} ({by_size[str(s)]['wall_s']:.2f})" for s in SIZES
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if report.get("quality"):
        lines += [
            "Quality of the first k proposals (ABO / recall at IoU 0.5):",
            "",
            "| data | settings | instances | proposals | "
            + " | ".join(f"ABO@{k} | R@{k}" for k in TOP_K)
            + " | s/img (CPU) |",
            "|---|---|---|---|" + "---|---|" * len(TOP_K) + "---|",
        ]
        for data, by_name in report["quality"].items():
            for name, r in by_name.items():
                if r.get("unchanged_by_max_side"):
                    continue
                cells = " | ".join(f"{r[f'abo@{k}']:.3f} | {r[f'recall@{k}']:.3f}" for k in TOP_K)
                lines.append(
                    f"| {data} | {name} | {r['instances']} | {r['mean_proposals']:.0f} | "
                    f"{cells} | {r['cpu_s_per_image']:.2f} |"
                )
        lines.append("")
    if report.get("levers"):
        lines += levers_markdown(report["levers"])
    if report.get("refine"):
        lines += [
            "Proposal-free candidates against selective search, given one stand-in PRM per "
            "instance (`--refine`; IoU of the candidate retrieval picks for each peak):",
            "",
            "| data | candidates | instances | mean IoU | IoU >= 0.5 | mean IoU, >= 32^2 px | "
            "s/img (CPU) |",
            "|---|---|---|---|---|---|---|",
        ]
        for data, by_name in report["refine"].items():
            for name, r in by_name.items():
                large = r["mean_iou_large"]
                lines.append(
                    f"| {data} | {name} | {r['instances']} | {r['mean_iou']:.3f} | "
                    f"{r['iou>=0.5']:.3f} | {'-' if large is None else f'{large:.3f}'} "
                    f"({r['large_instances']}) | {r['cpu_s_per_image']:.2f} |"
                )
        lines.append("")
    if report.get("fallback"):
        fb = report["fallback"]
        lines += [
            f"Instance segmentation on ShapeScenes test ({fb.get('images', '?')} images) with "
            f"`{Path(fb['checkpoint']).name}` (epoch {fb['epochs']}{'; ' if fb.get('note') else ''}"
            f"{fb.get('note', '')}), by where the candidate masks come from:",
            "",
            "| candidates | mAP^r@0.25 | mAP^r@0.5 | mAP^r@0.75 | ABO | class-agnostic ABO | "
            "s/img (CPU) |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, m in fb.items():
            if not isinstance(m, dict):
                continue
            cells = [m.get(f"instance/mAP_r@{t}") for t in ("0.25", "0.5", "0.75")]
            cells += [m.get("instance/ABO"), m.get("instance/ABO_class_agnostic")]
            text = " | ".join("-" if v is None else f"{v:.3f}" for v in cells)
            lines.append(f"| {label} | {text} | {m['cpu_s_per_image']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def levers_markdown(lv: dict) -> list[str]:
    names = [n for n in lv if n not in ("side", "halves")]
    lines = [
        f"Ranking and over-segmentation levers on the real fixture photos at {lv['side']} px "
        f"(halves A: {len(lv['halves']['A'])} photos, B: {len(lv['halves']['B'])}, "
        "alternating in name order), ABO of the first 100 / 200 / 1000 proposals over all "
        f"instances, those of at least 32^2 px and the smaller ones; ShapeScenes test ABO@200; "
        "CPU seconds per photo:",
        "",
        "| settings | half | instances (small) | all | >= 32^2 | < 32^2 | ShapeScenes @200 | "
        "s/photo (CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def three(r, key):
        values = [r[f"{key}@{k}"] for k in TOP_K]
        return " / ".join("-" if v is None else f"{v:.3f}" for v in values)

    for name in names:
        for half in ("A", "B"):
            r = lv[name][half]
            lines.append(
                f"| {name} | {half} | {r['instances']} ({r['small']}) | {three(r, 'abo')} | "
                f"{three(r, 'abo_large')} | {three(r, 'abo_small')} | "
                f"{lv[name]['ShapeScenes']['abo@200']:.3f} | {lv[name]['cpu_s_per_photo']:.2f} |"
            )
    text = []
    for chosen_on, held_out in (("A", "B"), ("B", "A")):
        chosen = max(names, key=lambda n: lv[n][chosen_on]["abo@200"])
        line = f"chosen on {chosen_on}: **{chosen}**, on {held_out} ABO@200 "
        line += f"{lv[chosen][held_out]['abo@200']:.3f}"
        if "fast" in lv:
            line += f" (default fast: {lv['fast'][held_out]['abo@200']:.3f})"
        text.append(line)
    return lines + ["", "Choosing by ABO@200 on one half: " + "; ".join(text) + ".", ""]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", nargs="+", default=["fast"], choices=list(SETTINGS))
    parser.add_argument(
        "--speed-settings",
        nargs="+",
        choices=list(SETTINGS),
        help="settings to time (default: --settings)",
    )
    parser.add_argument("--shapes", type=int, default=300, help="ShapeScenes test images")
    parser.add_argument("--repeats", type=int, default=1, help="timings per photo and size")
    parser.add_argument("--checkpoint", help="ShapeScenes model for the fallback comparison")
    parser.add_argument("--checkpoint-note", help="what the checkpoint is, for the table")
    parser.add_argument(
        "--refine",
        type=int,
        metavar="N",
        help="compare proposal-free candidates on N images of each data set (synthetic PRMs)",
    )
    parser.add_argument(
        "--levers",
        nargs="*",
        choices=list(SETTINGS),
        help=f"compare settings on the photos at 448 px in halves (default {' '.join(LEVERS)})",
    )
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument(
        "--markdown-only", action="store_true", help="rewrite proposals.md from proposals.json"
    )
    args = parser.parse_args()
    if args.markdown_only:
        report = json.loads((RESULTS / "proposals.json").read_text())
        (RESULTS / "proposals.md").write_text(markdown(report))
        return

    import torch

    torch.set_num_threads(1)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}",
        "settings": {
            name: generator(name).settings()
            for name in {*args.settings, *(args.speed_settings or [])}
        },
    }
    if not args.skip_speed:
        report["speed"] = {}
        for name in args.speed_settings or args.settings:
            report["speed"][name] = speed(name, args.repeats)
            print(name, json.dumps(report["speed"][name]), flush=True)
    if not args.skip_quality:
        report["quality"] = {}
        for data, dataset in datasets(args.shapes).items():
            report["quality"][data] = {}
            largest = getattr(getattr(dataset, "config", None), "size", None)  # ShapeScenes
            for name in args.settings:
                max_side = generator(name).max_side
                if largest is not None and max_side is not None and largest <= max_side:
                    # Never resized: the same proposals as without max_side.
                    report["quality"][data][name] = {"unchanged_by_max_side": True}
                    continue
                report["quality"][data][name] = quality(name, dataset)
                print(data, name, json.dumps(report["quality"][data][name]), flush=True)
    if args.levers is not None:
        report["levers"] = levers(args.levers or LEVERS, args.shapes)
    if args.refine:
        report["refine"] = {}
        for data, dataset in datasets(args.refine).items():
            report["refine"][data] = refine(dataset, args.refine)
            print(data, json.dumps(report["refine"][data]), flush=True)
    if args.checkpoint:
        report["fallback"] = fallback(args.checkpoint, args.shapes)
        report["fallback"]["note"] = args.checkpoint_note or ""
        print(json.dumps(report["fallback"], default=str), flush=True)
    text = markdown(report)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        previous = RESULTS / "proposals.json"
        if previous.is_file():  # keep the sections this run skipped
            old = json.loads(previous.read_text())
            settings = {**old.get("settings", {}), **report["settings"]}
            if "levers" in old and "levers" in report:  # settings not re-run keep theirs
                report["levers"] = {**old["levers"], **report["levers"]}
            report = {**old, **report, "settings": settings}
            text = markdown(report)
        (RESULTS / "proposals.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (RESULTS / "proposals.md").write_text(text)


if __name__ == "__main__":
    main()
