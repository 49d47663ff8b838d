"""The end-to-end demo: weakly supervised instance segmentation on a CPU in minutes.

``run_demo`` generates an embedded dataset (ShapeScenes, or GlyphScenes where colour is
no cue), trains two small networks from image-level labels
only (PRM: peak stimulation; CAM: global average pooling), tunes the retrieval weights
(alpha, beta) on validation images (as the paper tunes its retrieval on validation
data), predicts the test split with selective-search proposals, evaluates both, and
writes a report folder. PRM
retrieves each peak's mask with its peak response map; the CAM baseline retrieves with the
class response map in place of PRMs (the paper's CAM + proposals), which cannot tell apart
the instances of one class. A third row runs PRM without any proposals (the proposal-free
fallback).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from prm.data import build_dataset
from prm.engine import load_config, load_model, train
from prm.engine.inference import predict_dataset
from prm.engine.pseudo_label import PseudoLabelFilter
from prm.engine.tune import tune_retrieval
from prm.files import write_text_atomic
from prm.predictor import Predictor
from prm.report import GallerySampler, build_report, write_run_report

__all__ = ["DEMO_COLUMNS", "DEMO_DATASETS", "run_demo", "format_demo_table"]

#: The embedded datasets the demo runs on (``--dataset``), with their display names.
DEMO_DATASETS = {"shapes": "ShapeScenes", "glyphs": "GlyphScenes"}

#: (metric key, column title) of the demo's table.
DEMO_COLUMNS = [
    ("instance/mAP_r@0.25", "mAP^r@0.25"),
    ("instance/mAP_r@0.5", "mAP^r@0.5"),
    ("instance/mAP_r@0.75", "mAP^r@0.75"),
    ("instance/ABO", "ABO"),
    ("pointwise/mAP", "point. loc."),
    ("classification/mAP", "class. mAP"),
    ("prm_quality/mean", "PRM quality"),
]
_METRICS = ["instance", "pointwise", "classification", "prm_quality", "semantic"]
#: The retrieval settings tried on the validation images. The authors' beta = 1e-5 was set
#: for 448 x 448 inputs; the penalty counts pixels, so 128 px images need a larger one.
#: Alpha and beta trade off against each other (the best beta grows with alpha), so both
#: are tuned: on ShapeScenes' validation images PRM's best went from 52.1 (alpha 0.8, the
#: authors') to 56.1 mAP^r@0.5 (alpha 2, beta 2e-3); README, "The demo".
TUNING_GRID = {"alpha": [0.8, 2.0, 4.0], "beta": [3e-4, 1e-3, 2e-3, 4e-3, 1e-2]}
#: Proposals read per image: selective search makes 150-220 on the demo's 128 px scenes
#: and the first 200 hold more of the objects (recall@0.5 0.95 against 0.91 for 100).
PROPOSAL_COUNT = 200
#: ``--distill``: the pseudo-label filter, chosen on ShapeScenes' validation images
#: (README, "Self-training"), the Mask R-CNN's epochs and the row's name.
DISTILL_FILTER = PseudoLabelFilter(score_threshold=5.0, min_area=16)
DISTILL_EPOCHS = 4
DISTILL_ROW = "PRM -> Mask R-CNN (distilled)"


def format_demo_table(rows: dict[str, dict[str, Any]]) -> str:
    """A markdown table: one row per method, the :data:`DEMO_COLUMNS` in percent."""
    titles = [title for _, title in DEMO_COLUMNS]
    lines = ["| method | " + " | ".join(titles) + " |", "|---|" + "---|" * len(titles)]
    for method, metrics in rows.items():
        cells = []
        for key, _ in DEMO_COLUMNS:
            value = metrics.get(key)
            cells.append("-" if value is None else f"{100 * value:.1f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_demo(
    out: str | os.PathLike = "prm-demo",
    *,
    dataset: str = "shapes",
    preset: str = "shapes",
    train_images: int = 2000,
    val_images: int = 100,
    test_images: int = 300,
    epochs: int | None = None,
    seed: int = 0,
    workers: int = 2,
    num_overlays: int = 12,
    distill: bool = False,
    distill_images: int | None = None,
    distill_epochs: int = DISTILL_EPOCHS,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo and write ``out/report``; returns the report (also ``report.json``).

    ``out/report/index.html`` is the HTML report of the PRM run compared with the CAM
    run; each method's run folder (metrics, gallery, its own page) is
    ``out/report/runs/<prm|cam|prm-fallback>``.

    Args:
        out: working folder (data cache, runs, proposals, report).
        dataset: ``"shapes"`` (ShapeScenes) or ``"glyphs"`` (GlyphScenes); the same
            recipe and tuning grid for both.
        preset: the training recipe (``shapes``: the small backbone from scratch;
            ``lite0-cpu``: EfficientNet-Lite0's ImageNet weights, needs the ``lite0``
            extra), see :data:`prm.engine.PRESETS`.
        train_images: training images of the generated dataset (2000).
        val_images: validation images the retrieval settings are tuned on (100; 0 keeps
            the authors' values).
        test_images: test images evaluated (300).
        epochs: training epochs (the preset's by default).
        seed: seed of data generation and training.
        workers: processes for proposal generation.
        num_overlays: overlay PNGs per method.
        distill: add a row "PRM -> Mask R-CNN": the tuned PRM + selective search network
            pseudo-labels the training images (:data:`DISTILL_FILTER`), ``prm distill``'s
            small Mask R-CNN trains on them (opt-in: it takes longer than the rest of the
            demo on 2 CPU cores).
        distill_images: pseudo-label only the first N training images (default: all).
        distill_epochs: Mask R-CNN training epochs.
        progress: progress bars.
    """
    if dataset not in DEMO_DATASETS:
        raise ValueError(f"the demo runs on {', '.join(DEMO_DATASETS)}, not {dataset!r}")
    demo = _Demo(Path(out), num_overlays, progress)
    data_dir = demo.out / "data"
    val_set = build_dataset(dataset, data_dir, "val", num_images=val_images, seed=seed)
    demo.test_set = build_dataset(dataset, data_dir, "test", num_images=test_images, seed=seed)
    overrides = {"dataset": dataset, "root": str(data_dir), "num_train_images": train_images}
    overrides["seed"] = seed
    base = load_config(preset, **overrides, **({} if epochs is None else {"epochs": epochs}))
    demo.lap("generate data")
    checkpoints = {name: demo.train(base, name, on) for name, on in (("prm", True), ("cam", False))}

    print("== selective-search proposals for the validation and test images ==")
    cache = _proposals(demo.out / "proposals", (val_set, demo.test_set), workers, progress)
    demo.lap("proposals")
    predictors = demo.compare(checkpoints, cache, val_set if val_images > 0 else None)
    self_training = None
    if distill:
        print("== self-training: PRM pseudo-labels -> Mask R-CNN ==")
        train_set = build_dataset(dataset, data_dir, "train", num_images=train_images, seed=seed)
        self_training, student = _self_train(
            demo.out, predictors["prm"], (dataset, train_set), distill_images, distill_epochs,
            seed, workers, progress,
        )  # fmt: skip
        demo.lap("self-training: proposals + pseudo-label + distill")
        demo.evaluate(DISTILL_ROW, student, None, "distilled")
        demo.lap(f"predict + evaluate: {DISTILL_ROW}")
    settings = {"dataset": dataset, "train_config": asdict(base), "val_images": val_images}
    return demo.finish(settings, test_images, self_training)


class _Demo:
    """A demo run's shared state, in its steps: the clock, training a network, predicting
    and evaluating the test split with one method (a row of the table), the report."""

    def __init__(self, out: Path, num_overlays: int, progress: bool):
        self.out, self.report_dir = out, out / "report"
        self.num_overlays, self.progress = num_overlays, progress
        self.test_set = None
        self.rows: dict[str, dict[str, Any]] = {}
        self.tuned: dict[str, dict[str, Any]] = {}
        self.timings: dict[str, float] = {}
        self.began = self.tick = time.perf_counter()

    def lap(self, name: str) -> None:
        """Record the seconds since the last lap as ``name``."""
        self.timings[name] = round(time.perf_counter() - self.tick, 1)
        self.tick = time.perf_counter()

    def train(self, base, name: str, stimulation: bool) -> Path:
        """Train the PRM (peak stimulation) or CAM network; returns its checkpoint."""
        config = base.replace(out=str(self.out / name), peak_stimulation=stimulation)
        print(f"== training the {name.upper()} network ({config.epochs} epochs) ==")
        train(config, resume=True, progress=self.progress)
        self.lap(f"train {name.upper()}")
        # The last epoch, not best.pt: the preset's cosine schedule ends at a learning rate
        # of 0, and the README's tables were measured with the last epoch.
        return Path(config.out) / "last.pt"

    def compare(self, checkpoints: dict, cache, val_set) -> dict[str, Predictor]:
        """Tune (on ``val_set`` unless ``None``), predict and evaluate each method."""
        # method -> (network, proposals, proposal_fn, file name); the predictor retrieves with
        # class response maps for the CAM network, which was trained without peak stimulation.
        source = lambda image_id, image: cache.load(image_id)  # noqa: E731
        runs = {
            "CAM + selective search": ("cam", source, None, "cam"),
            "PRM + selective search": ("prm", source, None, "prm"),
            "PRM, no proposals (fallback)": ("prm", None, "prm", "prm-fallback"),
        }
        predictors = {}
        for method, (net, proposals, proposal_fn, slug) in runs.items():
            predictor = Predictor(load_model(checkpoints[net]), proposal_fn=proposal_fn)
            predictor.retrieval = replace(predictor.retrieval, proposal_count=PROPOSAL_COUNT)
            if val_set is not None:
                self.tuned[method] = _tune(predictor, val_set, proposals, self.progress)
            self.evaluate(method, predictor, proposals, slug)
            self.lap(f"tune + predict + evaluate: {method}")
            predictors[slug] = predictor
        return predictors

    def evaluate(self, method: str, predictor, source, slug: str) -> None:
        """Predict and evaluate the test split: a row of the table and a run folder."""
        report_dir, test_set = self.report_dir, self.test_set
        run_dir = report_dir / "runs" / slug
        sampler = GallerySampler(run_dir / "gallery", test_set.classes)
        summary = predict_dataset(
            predictor,
            test_set,
            proposals=source,
            results_file=report_dir / f"results-{slug}.json",
            overlay_dir=report_dir / "overlays" / slug,
            num_overlays=self.num_overlays,
            metrics=_METRICS,
            report_dir=run_dir,
            print_table=False,
            progress=self.progress,
            desc=method,
            on_image=sampler.add,
        )
        self.rows[method] = summary.metrics
        write_run_report(
            run_dir,
            sampler,
            command="prm demo",
            name=method,
            classes=list(test_set.classes),
            category_ids=list(test_set.category_ids),
            results=f"../../results-{slug}.json",
        )

    def finish(self, settings: dict, test_images: int, self_training) -> dict[str, Any]:
        """Write ``report.json``, ``table.md`` and the HTML page; returns the report."""
        self.timings["total"] = round(time.perf_counter() - self.began, 1)
        report = {
            "table": format_demo_table(self.rows),
            "metrics": self.rows,
            "tuned_retrieval": self.tuned,
            "timings_s": self.timings,
            **settings,
            "test_images": test_images,
            "torch_threads": torch.get_num_threads(),
        }
        if self_training is not None:
            report["self_training"] = self_training
        write_text_atomic(self.report_dir / "report.json", json.dumps(report, indent=2))
        write_text_atomic(self.report_dir / "table.md", report["table"] + "\n")
        # The page people open: PRM's run, compared with CAM's on the same images.
        name = DEMO_DATASETS[settings["dataset"]]
        runs = self.report_dir / "runs"
        title = f"prm demo: PRM vs CAM on {name}"
        build_report(runs / "prm", self.report_dir, compare=runs / "cam", title=title)
        return report


def _self_train(out: Path, teacher, data, images, epochs, seed, workers, progress):
    """Pseudo-label ``data = (name, train_set)`` with ``teacher`` and distill a Mask R-CNN.

    Returns:
        ``(what to report, the student's predictor)``.
    """
    from prm.engine.distill import DistillConfig, distilled_predictor
    from prm.engine.distill import distill as train_student
    from prm.engine.pseudo_label import pseudo_label, pseudo_label_quality
    from prm.engine.train import HeldOutPart

    name, train_set = data
    count = len(train_set) if images is None else min(images, len(train_set))
    cache = _proposals(
        out / "proposals", (HeldOutPart(train_set, range(count)),), workers, progress
    )
    labels = pseudo_label(
        teacher,
        train_set,
        out / "pseudo-labels",
        filt=DISTILL_FILTER,
        proposals=lambda image_id, image: cache.load(image_id),
        limit=count,
        progress=progress,
    )
    config = DistillConfig(
        pseudo_labels=str(labels),
        dataset=name,
        split="train",
        out=str(out / "distill"),
        epochs=epochs,
        seed=seed,
        device="cpu",
    )
    checkpoint = train_student(config, dataset=train_set, progress=progress)
    info = json.loads(Path(labels).read_text())["info"]
    report = {
        "images": count,
        "filter": asdict(DISTILL_FILTER),
        "epochs": epochs,
        "kept_instances": info["kept_instances"],
        # Measured against the ground truth, which the student never sees.
        "pseudo_label_quality": pseudo_label_quality(labels, train_set),
    }
    return report, distilled_predictor(checkpoint)[1]


def _proposals(folder: Path, splits, workers: int, progress: bool):
    """Selective-search proposals of every image of ``splits``, cached in ``folder``."""
    from prm.proposals import ProposalCache, SelectiveSearch, precompute_proposals

    cache = ProposalCache(folder, SelectiveSearch())
    for split in splits:
        precompute_proposals(split, cache, workers=workers, progress=progress)
    return cache


def _tune(predictor: Predictor, val_set, source, progress: bool) -> dict[str, Any]:
    """Tune the predictor's retrieval on the validation images (it keeps the best)."""
    result = tune_retrieval(predictor, val_set, TUNING_GRID, proposals=source, progress=progress)
    predictor.retrieval = result.best
    return {
        **{name: getattr(result.best, name) for name in (*TUNING_GRID, "proposal_count")},
        "val " + result.metric: result.value,
    }
