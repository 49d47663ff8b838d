"""Instance retrieval: ours against the authors' per-peak, per-proposal loop.

Synthetic but realistically sized inputs: K peak response maps at the network size
448 x 448 (random blobs of response, each summing to 1), peaks of 3 classes, 20 class
response maps of 14 x 14, and P proposals (random ellipses) at a VOC-like image size of
375 x 500, so both methods resize every proposal to 448 x 448 as the authors do.
``proposal_count`` is set to P so that every proposal is scored.

- **ours**: ``prm.retrieve_instances`` (proposals resized and contoured once, scores of
  all pairs from matrix products, then NMS);
- **loop**: the authors' loop (``benchmarks.common.authors_retrieval``): for every peak,
  for every proposal, resize it, take its morphological gradient and sum the PRM and
  the background under it; then sort and NMS.

The loop is slow, so it runs once per setting (its cost is the same every time: K x P
identical steps); above ``--loop-max-pairs`` peak-proposal pairs it runs on the first 8
peaks only and its time is scaled by K / 8 (marked "extrapolated": the loop's cost is
linear in the number of peaks, each peak scoring every proposal).

Usage:
    python -m benchmarks.retrieval              # 8 and 32 peaks x 100 / 200 / 1000
    python -m benchmarks.retrieval --quick      # 8 peaks x 100 / 200
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import (
    authors_retrieval,
    base_parser,
    fmt_s,
    machine_line,
    measure,
    public,
    random_blobs,
    save,
    setup,
    table,
)
from prm.retrieval import RetrievalConfig, retrieve_instances

NET_SIZE = (448, 448)
IMAGE_SIZE = (375, 500)
NUM_CLASSES = 20


def make_inputs(max_peaks: int, proposals: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """PRMs ``(K, 448, 448)``, labels ``(K,)``, CRMs ``(20, 14, 14)`` and proposals
    ``(P, 375, 500)`` bool; the first k peaks of ``max_peaks`` are used for k peaks."""
    g = torch.Generator().manual_seed(seed)
    prms = torch.rand(max_peaks, *NET_SIZE, generator=g) ** 4
    prms = prms * random_blobs(g, max_peaks, NET_SIZE)
    prms = prms / prms.flatten(1).sum(1)[:, None, None]
    return {
        "prms": prms,
        "labels": torch.randint(0, 3, (max_peaks,), generator=g),
        "crm": torch.randn(NUM_CLASSES, 14, 14, generator=g) * 4,
        "proposals": random_blobs(g, proposals, IMAGE_SIZE),
    }


def same_selection(ours: dict[str, torch.Tensor], loop: list[list]) -> bool:
    """Whether both kept the same peaks with the same proposals, in the same order."""
    return (
        ours["peak_index"].tolist() == [r[5] for r in loop]
        and ours["proposal_index"].tolist() == [r[4] for r in loop]
        and ours["labels"].tolist() == [r[1] for r in loop]
    )


def time_setting(inputs, k, p, device, repeats, loop_max_pairs, loop_cache) -> dict[str, Any]:
    """Ours and the loop on the first k peaks and p proposals; ``loop_cache``
    keeps loop timings by (peaks, proposals) so that an extrapolation reuses a run."""
    prms, labels = inputs["prms"][:k], inputs["labels"][:k]
    crm, proposals = inputs["crm"], inputs["proposals"][:p]
    config = RetrievalConfig(proposal_count=p)
    args = [t.to(device) for t in (prms, labels, crm, proposals)]
    record: dict[str, Any] = {"peaks": k, "proposals": p}
    ours = measure(lambda: retrieve_instances(*args, config), device, repeats)
    if k * p <= loop_max_pairs:
        loop = measure(
            lambda: authors_retrieval(prms, labels, crm, proposals, config), device, 1, warmup=0
        )
        loop_cache[k, p] = public(loop)
        loop["extrapolated"] = False
        record["same_selection"] = same_selection(ours["result"], loop["result"])
    else:
        sub = min(8, k)
        if (sub, p) not in loop_cache:  # the same inputs: the first peaks, same proposals
            loop_cache[sub, p] = public(
                measure(
                    lambda: authors_retrieval(prms[:sub], labels[:sub], crm, proposals, config),
                    device,
                    1,
                    warmup=0,
                )
            )
        loop = dict(loop_cache[sub, p])
        loop["wall_s"] *= k / sub
        loop["cpu_s"] *= k / sub
        loop["extrapolated"] = f"from {sub} peaks x {k / sub:g}"
        record["same_selection"] = None
    record["ours"], record["loop"] = public(ours), public(loop)
    record["speedup"] = round(loop["wall_s"] / ours["wall_s"], 1)
    print({key: v for key, v in record.items() if key not in ("ours", "loop")})
    return record


def run(args) -> dict[str, Any]:
    device, info = setup(args)
    peaks = args.peaks or ((8,) if args.quick else (8, 32))
    counts = args.proposals or ((100, 200) if args.quick else (100, 200, 1000))
    loop_max_pairs = args.loop_max_pairs or (2000 if args.quick else 10000)
    results, loop_cache = [], {}
    for p in counts:
        inputs = make_inputs(max(peaks), p)
        for k in sorted(peaks):
            repeats = args.repeats or (3 if p >= 1000 or args.quick else 5)
            results.append(time_setting(inputs, k, p, device, repeats, loop_max_pairs, loop_cache))
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
        f"proposals given at {s['image_size'][0]} x {s['image_size'][1]}. Median of several "
        "runs after a warm-up for ours; one run for the loop. Produced by "
        "`python -m benchmarks.retrieval`.",
        "",
        f"Machine: {machine_line(report['machine'])}.",
        "",
    ]
    rows = []
    for r in report["results"]:
        loop = r["loop"]
        loop_text = fmt_s(loop["wall_s"]) + (" (extrapolated)" if loop["extrapolated"] else "")
        same = {True: "yes", False: "NO", None: "-"}[r["same_selection"]]
        rows.append(
            [
                r["peaks"],
                r["proposals"],
                fmt_s(r["ours"]["wall_s"]),
                f"{r['ours']['peak_mb']:.0f}",
                loop_text,
                f"{r['speedup']:.1f}x",
                same,
            ]
        )
    lines += table(
        [
            "peaks",
            "proposals",
            "ours s",
            "ours peak MB",
            "loop s",
            "speed-up",
            "same selections",
        ],
        rows,
    )
    lines += [
        "",
        "speed-up: loop time / our time. same selections: both keep the same peaks with the",
        "same proposals in the same order (loop runs that were extrapolated are not",
        "compared; tests/core/test_retrieval.py checks scores and merged PRMs too).",
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
        help="run the loop in full up to this many pairs (default 10000; quick 2000)",
    )
    args = parser.parse_args()
    report = run(args)
    save("retrieval", report, markdown, args)


if __name__ == "__main__":
    main()
