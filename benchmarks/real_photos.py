"""PRM vs CAM on real photos with instance masks, zero training (README "Real photos").

The model is EfficientNet-Lite0 with its ImageNet weights (the ``lite0`` extra) turned
into a PRM network (:func:`prm.pretrained.pretrained_model`): the COCO sample's classes
go through the shipped ImageNet -> COCO map, the VOC sample's through the ImageNet ->
VOC map. Ground-truth instances of classes a map lacks (``person`` above all) are left
out of the evaluation; mAP^r averages over the mapped classes that have ground truth.

For each photo the PRMs of every peak that passes the loosest setting are computed once;
every setting of the grid then keeps a subset of those peaks (the same subset for PRM and
for CAM, which share peaks) and retrieves masks from the same cached selective-search
proposals (or the proposal-free fallback). The default settings of ``prm explain`` are
chosen on the COCO sample (10 photos) and then reported on the VOC sample (3 photos,
never used to choose them). Both samples are tiny: the numbers say what happens on these
photos, not what a benchmark would say.

Usage:
    python benchmarks/real_photos.py --data ../shared/data            # grid + timing
    python benchmarks/real_photos.py --data ../shared/data --no-grid  # timing only
    python benchmarks/real_photos.py --data ../shared/data --proposal-free  # candidates
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

GRID = {
    "input_size": [320, 448],
    "class_probability": [0.05, 0.1],
    "peak_threshold": [0.5, 1.0],
    "win_size": [3],
    "merge": [None, 0.4],
}
# peak_threshold 1.0 keeps only each class's strongest peak, so merging changes nothing.
SKIP = {"peak_threshold": 1.0, "merge": 0.4}
LOOSE = {"class_probability": 0.02, "peak_threshold": 0.3}


def load_samples(data: Path):
    """[(name, dataset, group names)] for the two fixtures with instance masks."""
    from prm.data import build_dataset

    voc = build_dataset("voc", data / "voc-sample" / "VOC2012", "trainval")
    coco = build_dataset("coco", data / "coco-sample", "val2017", keep_empty=True)
    return [("coco", coco, "coco"), ("voc", voc, "voc")]


def mapped_target(target: dict, dataset_classes: list[str], group_names: list[str]) -> dict:
    """The target restricted to mapped classes, relabelled to group indices."""
    import torch

    index = {name: i for i, name in enumerate(group_names)}
    names = [dataset_classes[int(label)] for label in target["labels"]]
    keep = torch.tensor([name in index for name in names], dtype=torch.bool)
    out = {
        "masks": target["masks"][keep],
        "labels": torch.tensor([index[n] for n in names if n in index], dtype=torch.int64),
    }
    if "iscrowd" in target:
        out["iscrowd"] = target["iscrowd"][keep]
    return out


def _window_peaks(crm, peaks, win):
    import torch.nn.functional as F

    pooled = F.max_pool2d(crm[None], win, 1, win // 2)[0]
    c, y, x = peaks[:, 0], peaks[:, 1], peaks[:, 2]
    return crm[c, y, x] >= pooled[c, y, x]


def subset_mask(response: dict, setting: dict):
    """Which of the photo's loose peaks a setting keeps."""
    import torch

    from prm.pretrained import merge_peaks

    crm, peaks = response["crm"], response["peak_cells"]
    if len(peaks) == 0:
        return torch.zeros(0, dtype=torch.bool)
    c, y, x = peaks.unbind(1)
    values = crm[c, y, x]
    keep = response["class_scores"][c] >= math.log(setting["class_probability"])
    flat = crm.flatten(1)
    low, high = flat.amin(1)[c], flat.amax(1)[c]
    keep &= values >= high - (1.0 - setting["peak_threshold"]) * (high - low)
    if setting["win_size"] > 3:
        keep &= _window_peaks(crm, peaks, setting["win_size"])
    if setting["merge"] is not None and keep.any():
        rows = torch.cat([torch.zeros(len(peaks), 1, dtype=peaks.dtype), peaks], 1)[keep]
        merged = merge_peaks(crm[None], rows, setting["merge"])
        idx = torch.nonzero(keep).flatten()
        keep[idx[~merged]] = False
    return keep


def sub_response(response: dict, keep) -> dict:
    out = dict(response)
    for key in ("peak_cells", "labels", "peak_values", "prms"):
        out[key] = response[key][keep]
    return out


def fallback(predictor, response, size, image=None):
    """Proposal-free candidates from the response's maps: their support, or with an
    ``image`` GrabCut seeded by them (``Predictor(proposal_fn="prm"/"grabcut")``)."""
    import torch
    import torch.nn.functional as F

    from prm.predictor import crm_to_image_coords
    from prm.proposals import grabcut_proposals, prm_support_proposals

    prms = response["prms"]
    if len(prms) == 0:
        return torch.zeros((0, *size), dtype=torch.bool)
    prms = F.interpolate(prms[None].float(), size=size, mode="bilinear")[0]
    crm_size = tuple(response["crm"].shape[1:])
    peaks = crm_to_image_coords(response["peak_cells"][:, 1:], crm_size, 1, size)
    if image is not None:
        return grabcut_proposals(image, prms, peaks)
    return prm_support_proposals(prms, peaks)


def evaluate(targets, predictions, classes):
    from prm.evaluation import InstanceSegmentationEvaluator

    evaluator = InstanceSegmentationEvaluator(classes, iou_thresholds=(0.25, 0.5))
    for target, prediction in zip(targets, predictions):
        evaluator.process_image(target, prediction)
    summary = evaluator.summarize()
    return {
        "mAP_r@0.25": summary["instance/mAP_r@0.25"],
        "mAP_r@0.5": summary["instance/mAP_r@0.5"],
        "ABO": summary["instance/ABO"],
        "predictions": summary["instance/num_predictions"],
    }


def photo_responses(name, dataset, map_name, cache_root, threads, input_size=448):
    """Loose PRM and CAM responses, proposals and timings of every photo of a sample.

    Responses are cached under ``cache_root/responses`` (timings then say ``cached``).
    """
    import torch

    from prm.predictor import to_image_tensor
    from prm.pretrained import PretrainedSettings, pretrained_model, pretrained_predictor
    from prm.proposals import ProposalCache, SelectiveSearch

    if threads is not None:
        torch.set_num_threads(threads)
    settings = PretrainedSettings(merge=None, input_size=input_size, **LOOSE)
    model = pretrained_model(map_name, settings=settings)
    prm_pred = pretrained_predictor(model, settings=settings, proposal_fn=None)
    cam_pred = pretrained_predictor(model, settings=settings, proposal_fn=None, response="crm")
    cache = ProposalCache(cache_root, SelectiveSearch())
    photos = []
    for i in range(len(dataset)):
        image, target = dataset[i]
        image_id = target["image_id"]
        tensor = to_image_tensor(image)
        t0 = time.perf_counter()
        fresh = image_id not in cache
        proposals = cache.get(image_id, image)
        t_prop = time.perf_counter() - t0
        stored = Path(cache_root) / "responses" / f"{name}-{image_id}-{input_size}.pt"
        t_fwd = t_prm = t_ret = None
        if stored.is_file() and threads is None:
            response, cam = torch.load(stored, weights_only=True)
        else:
            x = prm_pred.preprocess(tensor)[None]
            with torch.no_grad():
                t0 = time.perf_counter()
                model.class_response_maps(x)
                t_fwd = time.perf_counter() - t0
            t0 = time.perf_counter()
            response, _ = prm_pred.respond(tensor, proposals)
            t_prm = time.perf_counter() - t0
            cam, _ = cam_pred.respond(tensor, proposals)
            t0 = time.perf_counter()
            prm_pred.retrieve(response, proposals)
            t_ret = time.perf_counter() - t0
            stored.parent.mkdir(parents=True, exist_ok=True)
            torch.save((response, cam), stored)
        k = len(response["peak_cells"])
        photos.append(
            {
                "id": image_id,
                "target": mapped_target(target, dataset.classes, model.class_names),
                "size": tuple(tensor.shape[1:]),
                "proposals": proposals,
                "image": tensor,
                "prm": response,
                "cam": cam,
                "timing": {
                    "forward_s": t_fwd,
                    "peaks": k,
                    "per_peak_s": max(t_prm - t_fwd, 0.0) / k if k and t_prm else None,
                    "prms_s": t_prm,
                    "proposals_s": t_prop if fresh else None,
                    "retrieval_s": t_ret,
                },
            }
        )
        print(f"  {name} {image_id} @{input_size}: {k} loose peaks, PRMs {t_prm} s", flush=True)
    return model.class_names, prm_pred, photos


def run_grid(classes, predictor, by_size, settings_list, combos=None):
    """Metrics of every setting; ``by_size``: input size -> photos (same order)."""
    combos = combos or list(itertools.product(("prm", "cam"), ("selective-search", "prm-fallback")))
    rows = []
    for setting in settings_list:
        photos = by_size[setting["input_size"]]
        targets = [p["target"] for p in photos]
        row = {"setting": setting}
        for response_kind, proposals_kind in combos:
            predictions = []
            cpu = 0.0  # candidates (selective search: cached, so 0) and retrieval
            for photo in photos:
                response = photo[response_kind]
                sub = sub_response(response, subset_mask(photo["prm"], setting))
                start = time.process_time()
                if proposals_kind == "selective-search":
                    proposals = photo["proposals"]
                elif proposals_kind == "grabcut":
                    proposals = fallback(predictor, sub, photo["size"], photo["image"])
                else:
                    # The fallback segments from the maps' own support (CAM's class maps
                    # for the CAM row).
                    proposals = fallback(predictor, sub, photo["size"])
                predictions.append(predictor.retrieve(sub, proposals))
                cpu += time.process_time() - start
            metrics = evaluate(targets, predictions, classes)
            metrics["cpu_s_per_photo"] = cpu / max(len(photos), 1)
            row[f"{response_kind}/{proposals_kind}"] = metrics
        rows.append(row)
    return rows


def _timed(row: dict, key: str, fn, *args):
    # Wall time, and this process's CPU time: on a machine loaded by other work, CPU time
    # at one thread is close to what the computation needs by itself.
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn(*args)
    row[f"{key}_s"] = time.perf_counter() - w0
    row[f"{key}_cpu_s"] = time.process_time() - c0
    return result


def time_default(name, dataset, map_name, threads, with_proposals, limit=None, ids=None):
    """Seconds per photo of the default pipeline, stage by stage.

    The first ``limit`` photos, or those whose id is in ``ids``.
    """
    import torch

    from prm.predictor import to_image_tensor
    from prm.pretrained import DEFAULTS, pretrained_model, pretrained_predictor
    from prm.proposals import SelectiveSearch

    torch.set_num_threads(threads)
    model = pretrained_model(map_name)
    predictor = pretrained_predictor(model, proposal_fn="prm")
    generator = SelectiveSearch()
    rows = []
    indices = range(min(len(dataset), limit or len(dataset)))
    if ids:
        indices = [i for i in range(len(dataset)) if dataset.image_id(i) in ids]
    for i in indices:
        image, target = dataset[i]
        tensor = to_image_tensor(image)
        row = {"id": target["image_id"], "threads": threads}
        if with_proposals:
            proposals = _timed(row, "proposals", generator, (tensor * 255).round().byte())
        x = predictor.preprocess(tensor)[None]
        with torch.no_grad():
            _timed(row, "forward", model.class_response_maps, x)
        response, fallback_proposals = _timed(
            row, "forward_and_prms", predictor.respond, tensor, None
        )
        row["peaks"] = len(response["peak_cells"])
        chosen = proposals if with_proposals else fallback_proposals
        _timed(row, "retrieval", predictor.retrieve, response, chosen)
        rows.append(row)
        print(f"  timing {name} {row}", flush=True)
    return {"input_size": DEFAULTS.input_size, "photos": rows}


def _rank(row: dict) -> tuple:
    """How settings are ranked: PRM + selective search mAP^r@0.5, then @0.25, then ABO."""
    m = row["prm/selective-search"]
    return (m["mAP_r@0.5"] or 0.0, m["mAP_r@0.25"] or 0.0, m["ABO"] or 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data", help="the fixtures folder")
    parser.add_argument("--cache", default=".cache/real_photos", help="proposal/response cache")
    parser.add_argument("--no-grid", action="store_true", help="the default setting only")
    parser.add_argument("--threads", type=int, nargs="*", default=[1, 2], help="timing runs")
    parser.add_argument("--timing-limit", type=int, help="time only the first N photos")
    parser.add_argument("--timing-only", action="store_true", help="skip the metrics")
    parser.add_argument("--timing-ids", nargs="+", help="time only these image ids")
    parser.add_argument("--samples", nargs="+", default=["coco", "voc"], help="coco, voc")
    parser.add_argument("--out", help="results file (default benchmarks/results/...)")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument(
        "--proposal-free",
        action="store_true",
        help="the default setting only, PRMs with selective search, the PRM-support "
        "fallback and GrabCut (written to real_photos_proposal_free.json)",
    )
    args = parser.parse_args()
    args.no_grid = args.no_grid or args.proposal_free

    from prm.pretrained import DEFAULTS

    data = Path(args.data)
    out = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "load_before": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "grid": GRID,
        "defaults": {k: getattr(DEFAULTS, k) for k in GRID},
        "samples": {},
    }
    default = {k: getattr(DEFAULTS, k) for k in GRID}
    for name, dataset, map_name in load_samples(data):
        if name not in args.samples:
            continue
        sample = {}
        if args.timing_only:
            sample["timing"] = [
                time_default(name, dataset, map_name, t, t == 1, args.timing_limit, args.timing_ids)
                for t in args.threads
            ]
            out["samples"][name] = sample
            continue
        sizes = GRID["input_size"] if not args.no_grid else [DEFAULTS.input_size]
        by_size = {}
        for size in sizes:
            classes, predictor, photos = photo_responses(
                name, dataset, map_name, args.cache, None, size
            )
            by_size[size] = photos
        sample["photos"] = [p["id"] for p in photos]
        sample["instances"] = int(sum(len(p["target"]["labels"]) for p in photos))
        sample["classes_with_gt"] = sorted(
            {classes[int(label)] for p in photos for label in p["target"]["labels"]}
        )
        t0 = time.perf_counter()
        if args.proposal_free:
            kinds = ("selective-search", "prm-fallback", "grabcut")
            sample["rows"] = run_grid(
                classes, predictor, by_size, [default], [("prm", k) for k in kinds]
            )
            print(name, json.dumps(sample["rows"][0]), flush=True)
            out["samples"][name] = sample
            continue
        rows = run_grid(classes, predictor, by_size, [default])
        if not args.no_grid:
            settings_list = [
                dict(zip(GRID, values))
                for values in itertools.product(*GRID.values())
                if dict(zip(GRID, values)) != default
                and not all(dict(zip(GRID, values))[k] == v for k, v in SKIP.items())
            ]
            for setting in settings_list:
                rows += run_grid(classes, predictor, by_size, [setting])
                print(f"  {name} {json.dumps(rows[-1])}", flush=True)
        sample["grid_s"] = time.perf_counter() - t0
        sample["rows"] = rows
        best = max(rows, key=_rank)
        print(name, "default:", json.dumps(rows[0]), flush=True)
        print(name, "best PRM mAP@0.5:", json.dumps(best), flush=True)
        sample["timing"] = [
            time_default(name, dataset, map_name, t, t == 1, args.timing_limit)
            for t in args.threads
        ]
        out["samples"][name] = sample
    out["load_after"] = os.getloadavg()
    out["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stem = "real_photos_timing" if args.timing_only else "real_photos"
        stem = "real_photos_proposal_free" if args.proposal_free else stem
        target = Path(args.out) if args.out else RESULTS / f"{stem}.json"
        target.write_text(json.dumps(out, indent=1, default=str) + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main()
