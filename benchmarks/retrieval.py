"""Instance retrieval: ours against the authors' per-peak, per-proposal loop.

Synthetic but realistically sized inputs: K peak response maps at the network size
448 x 448 (random blobs of response, each summing to 1), peaks of 3 classes, 20 class
response maps of 14 x 14, and P proposals at a VOC-like image size of 375 x 500, so both
methods resize every proposal to 448 x 448 as the authors do. ``proposal_count`` is set
to P so that every proposal is scored. Two kinds of proposals:

- **dense**: random ellipses as ``(P, H, W)`` bool masks (what MCG files decode to);
- **compact**: unions of the cells of one random over-segmentation, as
  :class:`prm.proposals.CompactProposals` (what ``SelectiveSearch.propose`` and the
  proposal cache give); the loop gets the same proposals as dense masks.

Methods:

- **ours**: ``prm.retrieve_instances`` (each proposal resized and contoured once, over
  its bounding box; sums read from prefix sums at the masks' run ends; then NMS);
- **loop**: the authors' loop (``benchmarks.common.authors_retrieval``: PIL resize,
  OpenCV gradient and boolean-indexed sums for every pair; then sort and NMS). Its
  per-pair profile (resize / contour / sums, ms per pair) is recorded with it.

Both are timed in the same rotating rounds (``measure_interleaved``), so that a busy
machine slows both alike: the ratio is the number to read. Above ``--loop-max-pairs``
peak-proposal pairs the loop runs on the first 8 peaks only and its time is scaled by
K / 8 (marked "extrapolated": its cost is linear in the number of peaks, each peak
resizing and scoring every proposal).

Usage:
    python -m benchmarks.retrieval --threads 1        # 8 and 32 peaks x 100 / 200 / 1000
    python -m benchmarks.retrieval --threads 1 --quick  # 8 peaks x 200
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import (
    authors_retrieval,
    base_parser,
    fmt_s,
    machine_line,
    measure_interleaved,
    public,
    random_blobs,
    random_regions,
    save,
    setup,
    table,
)
from prm.retrieval import RetrievalConfig, retrieve_instances

NET_SIZE = (448, 448)
IMAGE_SIZE = (375, 500)
NUM_CLASSES = 20


def make_inputs(max_peaks: int, proposals: int, seed: int = 0) -> dict[str, Any]:
    """PRMs ``(K, 448, 448)``, labels ``(K,)``, CRMs ``(20, 14, 14)``, ``"dense"``
    proposals ``(P, 375, 500)`` bool and ``"compact"`` ones (CompactProposals over a
    600-cell map of the same size); the first k of ``max_peaks`` peaks serve k peaks."""
    g = torch.Generator().manual_seed(seed)
    prms = torch.rand(max_peaks, *NET_SIZE, generator=g) ** 4
    prms = prms * random_blobs(g, max_peaks, NET_SIZE)
    prms = prms / prms.flatten(1).sum(1)[:, None, None]
    return {
        "prms": prms,
        "labels": torch.randint(0, 3, (max_peaks,), generator=g),
        "crm": torch.randn(NUM_CLASSES, 14, 14, generator=g) * 4,
        "dense": random_blobs(g, proposals, IMAGE_SIZE),
        "compact": random_regions(g, proposals, IMAGE_SIZE),
    }


def same_selection(ours: dict[str, torch.Tensor], loop: list[list]) -> bool:
    """Whether both kept the same peaks with the same proposals, in the same order."""
    return (
        ours["peak_index"].tolist() == [r[5] for r in loop]
        and ours["proposal_index"].tolist() == [r[4] for r in loop]
        and ours["labels"].tolist() == [r[1] for r in loop]
    )


def time_setting(inputs, kind, k, p, device, repeats, loop_max_pairs) -> dict[str, Any]:
    """Ours and the loop on the first k peaks and p proposals, in the same rounds."""
    prms, labels, crm = inputs["prms"][:k], inputs["labels"][:k], inputs["crm"]
    proposals = inputs[kind]
    dense = inputs["dense"] if kind == "dense" else proposals.masks()
    config = RetrievalConfig(proposal_count=p)
    args = [t.to(device) for t in (prms, labels, crm)]
    on_device = proposals.to(device) if kind == "dense" else proposals
    sub = k if k * p <= loop_max_pairs else min(8, k)
    profile: dict[str, float] = {}
    records = measure_interleaved(
        {
            "ours": lambda: retrieve_instances(*args, on_device, config),
            "loop": lambda: authors_retrieval(
                prms[:sub], labels[:sub], crm, dense, config, profile
            ),
        },
        device,
        repeats,
    )
    ours, loop = records["ours"], records["loop"]
    record: dict[str, Any] = {"kind": kind, "peaks": k, "proposals": p}
    record["same_selection"] = same_selection(ours["result"], loop["result"]) if sub == k else None
    loop = public(loop)
    loop["extrapolated"] = False if sub == k else f"from {sub} peaks x {k / sub:g}"
    for key in ("wall_s", "cpu_s", "min_s"):
        loop[key] = round(loop[key] * k / sub, 4)
    pairs = profile.pop("pairs")
    loop["ms_per_pair"] = {step: round(1000 * v / pairs, 3) for step, v in profile.items()}
    record["ours"], record["loop"] = public(ours), loop
    record["speedup"] = round(loop["wall_s"] / ours["wall_s"], 1)
    record["speedup_cpu"] = round(loop["cpu_s"] / ours["cpu_s"], 1)
    print({key: v for key, v in record.items() if key not in ("ours", "loop")})
    return record


def run(args) -> dict[str, Any]:
    device, info = setup(args)
    peaks = args.peaks or ((8,) if args.quick else (8, 32))
    counts = args.proposals or ((200,) if args.quick else (100, 200, 1000))
    loop_max_pairs = args.loop_max_pairs or 10000
    results = []
    for p in counts:
        inputs = make_inputs(max(peaks), p)
        for kind in ("dense", "compact"):
            for k in sorted(peaks):
                if kind == "compact" and k != min(peaks):
                    continue  # the loop is the same; one peak count shows the difference
                repeats = args.repeats or 3
                results.append(time_setting(inputs, kind, k, p, device, repeats, loop_max_pairs))
    return {
        "benchmark": "instance retrieval",
        "machine": info,
        "settings": {
            "network_size": NET_SIZE,
            "image_size": IMAGE_SIZE,
            "loop_max_pairs": loop_max_pairs,
            "config": "RetrievalConfig() with proposal_count = P",
        },
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Instance retrieval benchmark",
        "",
        f"K peaks x P proposals; scoring at {s['network_size'][0]} x {s['network_size'][1]}, "
        f"proposals given at {s['image_size'][0]} x {s['image_size'][1]}. Ours and the "
        "authors' loop timed in the same rotating rounds (median of the rounds). Produced "
        "by `python -m benchmarks.retrieval`.",
        "",
        f"Machine: {machine_line(report['machine'])}.",
        "",
    ]
    rows = []
    for r in report["results"]:
        loop = r["loop"]
        loop_text = fmt_s(loop["wall_s"]) + (" (extrapolated)" if loop["extrapolated"] else "")
        same = {True: "yes", False: "NO", None: "-"}[r["same_selection"]]
        step = loop["ms_per_pair"]
        rows.append(
            [
                r["kind"],
                r["peaks"],
                r["proposals"],
                fmt_s(r["ours"]["wall_s"]),
                f"{r['ours']['peak_mb']:.0f}",
                loop_text,
                f"{step['resize']:.2f} / {step['contour']:.2f} / {step['sums']:.2f}",
                f"{r['speedup']:.1f}x",
                f"{r['speedup_cpu']:.1f}x",
                same,
            ]
        )
    lines += table(
        [
            "proposals as",
            "peaks",
            "proposals",
            "ours s",
            "ours peak MB",
            "loop s",
            "loop ms per pair: resize / contour / sums",
            "speed-up (wall)",
            "speed-up (CPU)",
            "same selections",
        ],
        rows,
    )
    lines += [
        "",
        "speed-up: loop time / our time, wall clock and CPU time of the process, from the",
        "same rounds. same selections: both keep the same peaks with the same proposals in",
        "the same order (extrapolated loop runs are not compared; tests/core/",
        "test_retrieval.py checks scores and merged PRMs on several seeds, for both kinds).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--peaks", type=int, nargs="+", help="numbers of peaks")
    parser.add_argument("--proposals", type=int, nargs="+", help="numbers of proposals")
    parser.add_argument(
        "--loop-max-pairs",
        type=int,
        help="run the loop on all peaks up to this many pairs (default 10000)",
    )
    args = parser.parse_args()
    report = run(args)
    save("retrieval", report, markdown, args)


if __name__ == "__main__":
    main()
