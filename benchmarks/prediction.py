"""End-to-end prediction: images / s on a folder of images, by image size and peaks.

A folder of ShapeScenes test images (PNG files written once to a temporary folder) is
read and segmented image by image with ``prm.Predictor``, as ``prm predict`` does:
reading and decoding the file, resizing and normalising, peak back-propagation,
proposal retrieval at the network size, masks and PRMs back at the image's size.

Two ways to get candidate masks:

- **selective search**: ``SelectiveSearch.fast()`` proposals computed beforehand (their
  cost is in ``benchmarks/proposals.py``; the time to make them is reported apart);
- **prm**: the proposal-free fallback (``proposal_fn="prm"``), candidates made from the
  PRMs themselves inside the timed call.

Networks have random weights (``FixedPeaks`` keeps each image's K strongest peaks so the
work per image is known): the small demo backbone at 128 / 256 / 448 px with K = 1 / 4 /
16, and the paper's ResNet-50 at 448 px with K = 1 / 4.

Usage:
    python -m benchmarks.prediction             # the whole grid
    python -m benchmarks.prediction --quick     # small backbone: 128 px K = 1 / 4, 256 px K = 4
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image

import prm.predictor
from benchmarks.common import (
    FixedPeaks,
    base_parser,
    fmt_s,
    machine_line,
    measure,
    public,
    save,
    setup,
    synchronize,
    table,
)
from prm.backprop import PeakSelection
from prm.data import ShapeScenes
from prm.model import build_model
from prm.predictor import Predictor
from prm.proposals import SelectiveSearch


def write_folder(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` ShapeScenes test images of ``size`` px as PNG files in ``folder``."""
    data = ShapeScenes("test", count, size=size)
    paths = []
    for index in range(count):
        image, _ = data[index]
        path = folder / f"{size}_{index:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


@contextmanager
def stage_times(device: torch.device) -> Iterator[dict[str, float]]:
    """Accumulate the seconds ``Predictor`` spends in peak back-propagation and in
    retrieval (by wrapping the two functions it calls, for the block only)."""
    spent = {"backprop": 0.0, "retrieval": 0.0}
    originals = {
        "backprop": prm.predictor.peak_response_maps,
        "retrieval": prm.predictor.retrieve_instances,
    }

    def timed(stage, fn):
        def wrapper(*args, **kwargs):
            synchronize(device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            synchronize(device)
            spent[stage] += time.perf_counter() - start
            return out

        return wrapper

    prm.predictor.peak_response_maps = timed("backprop", originals["backprop"])
    prm.predictor.retrieve_instances = timed("retrieval", originals["retrieval"])
    try:
        yield spent
    finally:
        prm.predictor.peak_response_maps = originals["backprop"]
        prm.predictor.retrieve_instances = originals["retrieval"]


def predict_folder(predictor: Predictor, paths: list[Path], proposals: list | None) -> int:
    """Segment every image of the folder, one at a time; returns the instances found."""
    found = 0
    for index, path in enumerate(paths):
        with Image.open(path) as file:
            image = file.convert("RGB")
        given = None if proposals is None else [proposals[index]]
        found += len(predictor([image], given)[0]["labels"])
    return found


def run(args) -> dict[str, Any]:
    device, info = setup(args)
    repeats = args.repeats or 3
    grid = [("small", 128, 1), ("small", 128, 4), ("small", 256, 4)]
    if not args.quick:
        grid = [("small", s, k) for s in (128, 256, 448) for k in (1, 4, 16)]
        grid += [("resnet50", 448, k) for k in (1, 4)]
    torch.manual_seed(0)
    models = {name: build_model(name, 6).eval().to(device) for name in {g[0] for g in grid}}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folders, proposals, proposal_s = {}, {}, {}
        for size in sorted({g[1] for g in grid}):
            folders[size] = write_folder(Path(tmp), args.images, size)
            generator = SelectiveSearch.fast()
            start = time.perf_counter()
            proposals[size] = [generator(Image.open(p).convert("RGB")) for p in folders[size]]
            proposal_s[size] = (time.perf_counter() - start) / args.images
        for backbone, size, k in grid:
            model = FixedPeaks(models[backbone], k)
            for mode in ("selective search", "prm"):
                if mode == "prm" and k != 4:
                    continue  # one column is enough to compare the fallback's cost
                predictor = Predictor(
                    model,
                    input_size=size,
                    peak_selection=PeakSelection(-math.inf),
                    proposal_fn="prm" if mode == "prm" else None,
                    device=device,
                )
                given = proposals[size] if mode == "selective search" else None
                with stage_times(device) as spent:
                    m = measure(
                        lambda p=predictor, g=given, s=size: predict_folder(p, folders[s], g),
                        device,
                        repeats,
                    )
                calls = (1 + repeats) * args.images  # the warm-up pass is counted too
                record = {
                    "backbone": backbone,
                    "image_size": size,
                    "peaks": k,
                    "candidates": mode,
                    "images": args.images,
                    "instances_found": m["result"],
                    "images_per_s": round(args.images / m["wall_s"], 3),
                    "s_per_image": round(m["wall_s"] / args.images, 4),
                    "backprop_s_per_image": round(spent["backprop"] / calls, 4),
                    "retrieval_s_per_image": round(spent["retrieval"] / calls, 4),
                    "proposal_s_per_image": round(proposal_s[size], 3)
                    if mode == "selective search"
                    else None,
                    **public(m),
                }
                print({key: v for key, v in record.items() if key != "runs_s"})
                results.append(record)
    return {
        "benchmark": "end-to-end prediction",
        "machine": info,
        "settings": {
            "images": args.images,
            "repeats": repeats,
            "data": "ShapeScenes test images as PNG files, read one at a time",
            "weights": "random; FixedPeaks keeps each image's K strongest peaks",
            "predictor": "Predictor(input_size=image size, class_threshold=-inf), defaults "
            "otherwise (chunk_size default, RetrievalConfig(), keep_prms=True)",
        },
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# End-to-end prediction benchmark",
        "",
        f"A folder of {s['images']} images read and segmented one at a time by "
        f"`prm.Predictor`; median of {s['repeats']} passes after a warm-up pass. "
        "Produced by `python -m benchmarks.prediction`.",
        "",
        f"Machine: {machine_line(report['machine'])}.",
        "",
    ]
    rows = [
        [
            r["backbone"],
            r["image_size"],
            r["peaks"],
            r["candidates"],
            f"{r['images_per_s']:.2f}",
            fmt_s(r["s_per_image"]),
            fmt_s(r["backprop_s_per_image"]),
            fmt_s(r["retrieval_s_per_image"]),
            "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}",
            fmt_s(r["proposal_s_per_image"]),
        ]
        for r in report["results"]
    ]
    lines += table(
        [
            "backbone",
            "image px",
            "peaks",
            "candidates",
            "images / s",
            "s / image",
            "of which back-propagation",
            "of which retrieval",
            "peak MB",
            "making the proposals, s / image",
        ],
        rows,
    )
    lines += [
        "",
        "selective search: proposals made beforehand (`SelectiveSearch.fast()`; the last",
        "column is what making them cost, not included in images / s). prm: the",
        "proposal-free fallback, candidates from the PRMs, included (in neither of the two",
        "stage columns). Stage columns: mean over all passes of the time `Predictor` spends",
        "in `peak_response_maps` and in `retrieve_instances`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--images", type=int, default=4, help="images in the folder")
    args = parser.parse_args()
    report = run(args)
    save("prediction", report, markdown, args)


if __name__ == "__main__":
    main()
