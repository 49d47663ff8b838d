"""Speed and memory of evaluating every metric in one pass over synthetic 448 px images.

Each image is a ShapeScenes scene (``prm.data.ShapeScenes(size=448)``) with predictions
derived from its ground truth: every object found with probability 0.85 as its mask
shifted by up to 6 px and sometimes eroded, plus 0-2 false positives (random boxes of
random classes), scores that follow the mask quality with noise, class scores from the
image labels with noise, class peaks near the objects' centroids (80 %) or anywhere, and
one PRM per instance (the mask plus faint noise everywhere, at image size). All six
evaluators (mAP^r + ABO, COCO AP, semantic mIoU, pointwise, classification, PRM quality)
see every image.

Generating a 448 px scene takes ~60 ms, more than evaluating it, so the two are timed
apart: ``eval_s`` (wall) and ``eval_cpu_s`` (CPU time of this process, which other load
on the machine does not inflate) count only ``process`` and ``summarize``. Peak memory
is the peak RSS of a fresh process per dataset size; it should not grow with the number
of images.

Usage:
    python benchmarks/evaluation.py                       # 250 and 1000 images
    python benchmarks/evaluation.py --sizes 100 --no-save # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def derived_prediction(target: dict, num_classes: int, rng) -> dict:
    import numpy as np
    import torch
    from scipy.ndimage import binary_erosion

    h, w = target["size"]
    masks, labels, scores, peaks_of = [], [], [], {}
    for mask, label in zip(target["masks"], target["labels"].tolist(), strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        peaks_of.setdefault(label, (float(xs.float().mean()), float(ys.float().mean())))
        if rng.random() > 0.85:
            continue  # missed
        dy, dx = (int(v) for v in rng.integers(-6, 7, 2))
        m = torch.roll(mask, (dy, dx), dims=(0, 1))
        if rng.random() < 0.3:
            m = torch.from_numpy(binary_erosion(m.numpy(), iterations=int(rng.integers(1, 6))))
        quality = 1.0 - (abs(dy) + abs(dx)) / 12
        masks.append(m)
        labels.append(label)
        scores.append(quality + rng.normal(0, 0.2))
    for _ in range(int(rng.integers(0, 3))):  # false positives
        m = torch.zeros(h, w, dtype=torch.bool)
        y, x = int(rng.integers(0, h - 60)), int(rng.integers(0, w - 60))
        m[y : y + int(rng.integers(20, 60)), x : x + int(rng.integers(20, 60))] = True
        masks.append(m)
        labels.append(int(rng.integers(0, num_classes)))
        scores.append(rng.normal(0.3, 0.2))
    masks = torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool)
    noise = torch.from_numpy(rng.random((len(masks), h, w), dtype=np.float32)) * 0.002
    prms = masks.float() + noise
    prms = prms / prms.flatten(1).sum(1).clamp(min=1e-12)[:, None, None]
    class_peaks = torch.from_numpy(rng.uniform(0, w, (num_classes, 2))).float()
    for label, (x, y) in peaks_of.items():
        if rng.random() < 0.8:  # else the peak stays at a random place
            class_peaks[label] = (
                torch.tensor([x, y]) + torch.from_numpy(rng.normal(0, 4, 2)).float()
            )
    class_scores = (
        target["image_labels"] * 2 - 1 + torch.from_numpy(rng.normal(0, 0.8, num_classes)).float()
    )
    return {
        "masks": masks,
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "prms": prms,
        "class_scores": class_scores,
        "class_peaks": class_peaks,
    }


def run_once(num_images: int, image_size: int, seed: int) -> dict:
    """Evaluate ``num_images`` images in this process; return timings and peak RSS."""
    import numpy as np
    import torch

    from prm.data import ShapeScenes
    from prm.evaluation import METRICS, build_evaluators

    # The per-image kernels are small: more threads only contend (the second core is left
    # to whatever produces the predictions, as in `prm predict --evaluate`).
    torch.set_num_threads(1)
    dataset = ShapeScenes("test", num_images, size=image_size, seed=seed)
    evaluators = build_evaluators(list(METRICS), dataset.classes, dataset.category_ids)
    rng = np.random.default_rng(seed)
    rss_start = _peak_rss_mb()
    eval_s = eval_cpu_s = data_s = 0.0
    per_evaluator = {e.name: 0.0 for e in evaluators.evaluators}
    instances = predictions = 0
    start = time.perf_counter()
    for index in range(num_images):
        t0 = time.perf_counter()
        _, target = dataset[index]
        prediction = derived_prediction(target, dataset.num_classes, rng)
        t1 = time.perf_counter()
        c1 = time.process_time()
        for evaluator in evaluators.evaluators:
            t = time.perf_counter()
            evaluator.process([target], [prediction])
            per_evaluator[evaluator.name] += time.perf_counter() - t
        eval_s += time.perf_counter() - t1
        eval_cpu_s += time.process_time() - c1
        data_s += t1 - t0
        instances += len(target["labels"])
        predictions += len(prediction["labels"])
    t = time.perf_counter()
    c = time.process_time()
    metrics = {}
    for evaluator in evaluators.evaluators:
        s = time.perf_counter()
        metrics.update(evaluator.summarize())
        per_evaluator[evaluator.name] += time.perf_counter() - s
    summarize_s = time.perf_counter() - t
    eval_cpu_s += time.process_time() - c
    return {
        "num_images": num_images,
        "image_size": image_size,
        "instances": instances,
        "predictions": predictions,
        "eval_s": round(eval_s + summarize_s, 2),
        "eval_cpu_s": round(eval_cpu_s, 2),
        "summarize_s": round(summarize_s, 2),
        "per_evaluator_s": {k: round(v, 2) for k, v in per_evaluator.items()},
        "data_s": round(data_s, 2),
        "wall_s": round(time.perf_counter() - start, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "load_average_1min_end": round(os.getloadavg()[0], 2),
        "rss_before_loop_mb": round(rss_start, 1),
        "headline": {
            k: (None if metrics[k] is None else round(metrics[k], 4))
            for k in (
                "instance/mAP_r@0.5",
                "instance/ABO",
                "coco/AP",
                "semantic/mIoU",
                "pointwise/mAP",
                "classification/mAP",
                "prm_quality/mean",
            )
        },
    }


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # internal: one size
    args = parser.parse_args()

    if args.run is not None:
        print(json.dumps(run_once(args.run, args.image_size, args.seed)))
        return

    runs = []
    for n in args.sizes:  # a fresh process per size, so peak RSS is that size's own
        cmd = [sys.executable, __file__, "--run", str(n), "--image-size", str(args.image_size)]
        out = subprocess.run(
            [*cmd, "--seed", str(args.seed)], check=True, capture_output=True, text=True
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]))
    report = {
        "benchmark": "evaluation: all six evaluators in one pass",
        "machine": f"{platform.machine()}, {_cpu_count()} CPU cores, "
        f"Python {platform.python_version()}",
        "runs": runs,
    }
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / "evaluation.md").write_text(_markdown(report))
        print(f"wrote {RESULTS / 'evaluation.json'} and evaluation.md")


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _markdown(report: dict) -> str:
    lines = [
        "# Evaluation benchmark",
        "",
        f"{report['benchmark']}; {report['machine']}. Produced by `benchmarks/evaluation.py`.",
        "",
        "| images | instances | predictions | eval s (wall) | eval s (CPU) | (summarize s) "
        "| data s | RSS after imports MB | peak RSS MB | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['num_images']} | {r['instances']} | {r['predictions']} | {r['eval_s']} | "
            f"{r['eval_cpu_s']} | {r['summarize_s']} | {r['data_s']} | "
            f"{r['rss_before_loop_mb']} | {r['peak_rss_mb']} | {r['load_average_1min_end']} |"
        )
    lines += [
        "",
        "eval s: `process` + `summarize` of all evaluators (wall clock, and CPU time of the",
        "process, which other jobs on the machine do not inflate); data s: generating the",
        "scenes and predictions, not part of evaluation. load avg: the machine's 1-minute",
        "load average at the end of the run (2 cores: above 2 means other jobs competed).",
        "",
        "Seconds per evaluator (process + summarize):",
        "",
    ]
    names = list(report["runs"][0]["per_evaluator_s"])
    lines.append("| images | " + " | ".join(names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")
    for r in report["runs"]:
        lines.append(
            f"| {r['num_images']} | "
            + " | ".join(str(r["per_evaluator_s"][n]) for n in names)
            + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
