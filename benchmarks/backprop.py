"""Peak back-propagation: ours against the authors' loop and against the floor.

One ResNet-50 (random weights: the cost does not depend on them) at 448 x 448, one
ShapeScenes image, and exactly K = 1 / 4 / 16 / 32 peaks (its K strongest, see
``benchmarks.common.FixedPeaks``). For each K, every method produces the K peak response
maps of the image:

- **ours**: ``prm.peak_response_maps`` with the default ``chunk_size`` (1 on a CPU, 16
  on a GPU) and with chunks of 1 / 4 / 16 peaks (a chunk larger than K is K, so it is
  timed once);
- **loop**: the authors' way: one forward under the rule, then one ``.backward()`` per
  peak from a one-hot gradient, parameters requiring gradients, through the whole
  maps (``benchmarks.common.loop_prms``; ours crops each peak's pass on a CPU);
- **floor**: one forward plus K input-only backward passes of the rule, each timed
  alone with nothing else in between (``benchmarks.common.floor_prms``): what the
  computation itself costs when peaks go one at a time;
- **ours, bfloat16** (``--bf16``; on by default, off with ``--quick``): the model and
  image in bfloat16, to see whether reduced precision is faster and how far the maps
  move.

Reported: median seconds per image (and CPU seconds), speed-up over the loop, ratio to
the floor, peak memory above the model's own, and the largest difference of the maps
from the loop's relative to the largest map value.

Usage:
    python -m benchmarks.backprop               # K = 1, 4, 16, 32; 3 runs each
    python -m benchmarks.backprop --quick       # K = 4, chunks 1 and 4, no bfloat16
    python -m benchmarks.backprop --device cuda --peaks 1 4 16 32 64
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
from typing import Any

import torch

from benchmarks.common import (
    FixedPeaks,
    PeakMemory,
    base_parser,
    floor_prms,
    fmt_s,
    loop_prms,
    machine_line,
    measure,
    measure_interleaved,
    public,
    relative_difference,
    save,
    setup,
    table,
)
from prm import backprop
from prm.backprop import PeakSelection, peak_response_maps
from prm.data import InferenceTransform, ShapeScenes
from prm.model import build_model

CHUNKS = (1, 4, 16)


def test_image(size: int) -> torch.Tensor:
    """A normalised ShapeScenes image ``(3, size, size)`` (real-looking activations)."""
    image, _ = ShapeScenes("test", 1, size=size, transform=InferenceTransform(size))[0]
    return image


def ours(model, image, k, chunk_size):
    """Our PRMs of the image's k strongest peaks: ``(peaks (K, 3), maps (K, H, W))``."""
    out = peak_response_maps(
        FixedPeaks(model, k), image[None], selection=PeakSelection(-math.inf), chunk_size=chunk_size
    )[0]
    return out["peak_cells"], out["prms"]


def floor(model, image, peaks, device, repeats):
    """Median over ``repeats`` runs of forward + sum of the backward passes (the peak
    memory is that of the warm-up run, as in ``benchmarks.common.measure``)."""
    with PeakMemory(device) as memory:
        floor_prms(model, image, peaks, device)  # warm-up
    totals, forwards, backwards, maps = [], [], [], None
    for _ in range(repeats):
        maps, forward_s, backward_s = floor_prms(model, image, peaks, device)
        totals.append(forward_s + sum(backward_s))
        forwards.append(forward_s)
        backwards.extend(backward_s)
    return {
        "wall_s": statistics.median(totals),
        "runs_s": [round(t, 4) for t in totals],
        "forward_s": round(statistics.median(forwards), 4),
        "backward_s_median": round(statistics.median(backwards), 4),
        "peak_mb": round(memory.mb, 1),
        "result": maps,
    }


def bf16_distance(maps16: torch.Tensor, peaks16, maps32: torch.Tensor, peaks32) -> dict:
    """How far bfloat16 maps are from float32 ones, over the peaks both found."""
    index32 = {tuple(p): i for i, p in enumerate(peaks32.tolist())}
    pairs = [(i, index32[tuple(p)]) for i, p in enumerate(peaks16.tolist()) if tuple(p) in index32]
    if not pairs:
        return {"common_peaks": 0}
    a = torch.stack([maps16[i].float() for i, _ in pairs])
    b = torch.stack([maps32[j] for _, j in pairs])
    return {
        "common_peaks": len(pairs),
        "max_diff_rel": relative_difference(a, b),
        # Both maps sum to 1: half the L1 distance is the share of mass that moved.
        "mass_moved_max": float((a - b).abs().flatten(1).sum(1).max() / 2),
    }


def time_methods(model, model16, image, k, chunk_sizes, default_chunk, repeats):
    """Every method on the image's k strongest peaks; one dict per method."""
    device = image.device
    methods: dict[str, dict[str, Any]] = {}
    chunks = sorted({min(c, k) for c in chunk_sizes})  # a chunk larger than K is K
    default = min(default_chunk, k)
    peaks, _ = ours(model, image, k, default)
    if len(peaks) != k:
        raise SystemExit(f"the test image has {len(peaks)} peaks, fewer than {k}")
    fns = {}
    for chunk in [default] + [c for c in chunks if c != default]:
        name = f"ours (default, chunk {chunk})" if chunk == default else f"ours (chunk {chunk})"
        fns[name] = lambda c=chunk: ours(model, image, k, c)
    fns["loop"] = lambda: loop_prms(model, image, peaks)
    # In rounds (see measure_interleaved): ours and the loop see the same machine.
    methods.update(measure_interleaved(fns, device, repeats))
    peaks, maps = methods[f"ours (default, chunk {default})"]["result"]
    methods["floor"] = floor(model, image, peaks, device, repeats)
    reference = methods["loop"]["result"]
    for m in methods.values():
        result = m["result"]
        m["max_diff_rel"] = relative_difference(
            result[1] if isinstance(result, tuple) else result, reference
        )
    if model16 is not None:
        m = measure(lambda: ours(model16, image.to(torch.bfloat16), k, None), device, repeats)
        m.update(bf16_distance(m["result"][1], m["result"][0], maps, peaks))
        methods["ours, bfloat16 (default chunk)"] = m
    loop_s, floor_s = methods["loop"]["wall_s"], methods["floor"]["wall_s"]
    for name, m in methods.items():
        m["speedup_vs_loop"] = round(loop_s / m["wall_s"], 3)
        m["ratio_to_floor"] = round(m["wall_s"] / floor_s, 3)
        methods[name] = public(m)
        print(k, name, {key: v for key, v in methods[name].items() if key != "runs_s"})
    return methods


def run(args) -> dict[str, Any]:
    device, info = setup(args)
    repeats = args.repeats or 3
    peaks_list = args.peaks or ((4,) if args.quick else (1, 4, 16, 32))
    chunk_sizes = args.chunks or ((1, 4) if args.quick else CHUNKS)
    torch.manual_seed(0)
    model = build_model(args.backbone, 20).eval().to(device)
    image = test_image(args.size).to(device)
    default_chunk = backprop._default_chunk_size(device)
    bf16 = args.bf16 if args.bf16 is not None else not args.quick
    model16 = copy.deepcopy(model).to(torch.bfloat16) if bf16 else None
    rows = [
        {
            "peaks": k,
            "methods": time_methods(model, model16, image, k, chunk_sizes, default_chunk, repeats),
        }
        for k in peaks_list
    ]
    return {
        "benchmark": "peak back-propagation",
        "machine": info,
        "settings": {
            "backbone": args.backbone,
            "image_size": args.size,
            "num_classes": 20,
            "repeats": repeats,
            "default_chunk_size": default_chunk,
            "weights": "random (timing does not depend on them)",
        },
        "results": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Peak back-propagation benchmark",
        "",
        f"{s['backbone']} at {s['image_size']} x {s['image_size']}, one image, K peaks; "
        f"median of {s['repeats']} runs after a warm-up; ours and the loop run in "
        "rounds (one run each per round, the order rotating). Produced by "
        "`python -m benchmarks.backprop`.",
        "",
        f"Machine: {machine_line(report['machine'])}.",
        "",
    ]
    rows = []
    for record in report["results"]:
        for name, m in record["methods"].items():
            diff = m.get("max_diff_rel")
            diff_text = "-" if diff is None else f"{diff:.1e}"
            if "mass_moved_max" in m:
                diff_text = (
                    f"{m['max_diff_rel']:.1e} vs fp32 ({m['mass_moved_max']:.1%} of the mass "
                    f"moved; {m['common_peaks']}/{record['peaks']} same peaks)"
                )
            cpu = m.get("cpu_s")
            rows.append(
                [
                    record["peaks"],
                    name,
                    fmt_s(m["wall_s"]) + (f" ({fmt_s(cpu)})" if cpu is not None else ""),
                    f"{m['speedup_vs_loop']:.2f}x",
                    f"{m['ratio_to_floor']:.2f}",
                    "-" if m.get("peak_mb") is None else f"{m['peak_mb']:.0f}",
                    diff_text,
                ]
            )
    lines += table(
        [
            "peaks",
            "method",
            "s / image (CPU s)",
            "speed-up vs loop",
            "time / floor",
            "peak MB",
            "max map difference / map max",
        ],
        rows,
    )
    lines += [
        "",
        "loop: forward once, then one `.backward()` per peak (the authors' way). floor: the",
        "forward plus each peak's input-only backward pass, each timed alone and summed",
        "(nothing else), so `time / floor` is the overhead of everything else. peak MB:",
        "peak memory above what was in use before the call (resident set on a CPU,",
        "`max_memory_allocated` on a GPU). Map differences are against the loop's maps",
        "(bfloat16: against ours in float32).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--peaks", type=int, nargs="+", help="numbers of peaks to time")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=448, help="square input size")
    parser.add_argument("--chunks", type=int, nargs="+", help="chunk sizes (default 1 4 16)")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="time the bfloat16 model too (default: yes, no with --quick)",
    )
    args = parser.parse_args()
    report = run(args)
    save("backprop", report, markdown, args)


if __name__ == "__main__":
    main()
