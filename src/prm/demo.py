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

import contextlib
import json
import multiprocessing
import os
import threading
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from prm.data import build_dataset
from prm.engine import load_config, load_model, train
from prm.engine.inference import predict_dataset
from prm.engine.pseudo_label import PseudoLabelFilter
from prm.engine.tune import RULE, tune_retrieval
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
#: authors') to 56.1 mAP^r@0.5 (alpha 2, beta 2e-3); README, "The demo". The background
#: threshold tau and the contour's width, the paper's other retrieval settings, are tuned
#: with them: on GlyphScenes' validation images the distilled PRM network went from 50.1
#: to 54.6 (tau 1.1, contour 9), ShapeScenes' from 59.3 to 61.9 (tau 1.3, contour 5), and
#: tau 1.6 or contours of 13-25 px were not chosen (README, "GlyphScenes").
TUNING_GRID = {
    "alpha": [0.8, 2.0, 4.0],
    "beta": [3e-4, 1e-3, 2e-3, 4e-3, 1e-2],
    "tau": [0.95, 1.1, 1.3],
    "contour_width": [5, 9],
    "smooth_strided": [False, True],
}
#: ``smooth_strided``: the PRM rows also choose the back-propagation rule, the paper's or
#: smoothed through the small network's strided convolutions (no checkerboard in the
#: maps). On the distilled GlyphScenes students of seeds 0 and 1 the smoothed rule took
#: validation mAP^r@0.5 from 54.6 to 58.4 and from 50.9 to 54.9 (docs/recipes.md, the
#: distilled recipe's runs). The CAM rows retrieve with class response maps, which
#: involve no rule.
#: With a teacher (``--teacher``) the class threshold is tuned too: the map loss pulls
#: most of a student's response below 0, so its class scores sit lower than a labels-only
#: network's and the default threshold 0 drops most true classes (on ShapeScenes'
#: validation images 47.5 mAP^r@0.5 at 0 against 67.1 tuned; docs/recipes.md).
TEACHER_GRID = {**TUNING_GRID, "class_threshold": [-6.0, -3.0, -1.0, 0.0]}
#: Proposals read per image: selective search makes 150-220 on the demo's 128 px scenes
#: and the first 200 hold more of the objects (recall@0.5 0.95 against 0.91 for 100).
PROPOSAL_COUNT = 200
#: ``--distill``: the pseudo-label filter, chosen on ShapeScenes' validation images
#: (README, "Self-training"), the Mask R-CNN's epochs and the row's name.
#: Epochs of the teachers (``--teacher``) unless ``epochs`` or ``teacher_epochs`` says
#: otherwise: 4, not the ``lite0-cpu`` preset's 7. Chosen on validation images with the
#: demo's tuner, as the students' 8 epochs were: the students of 4-, 5- and 7-epoch
#: teachers reached validation mAP^r@0.5 60.7 / 53.8 / 75.5, 58.3 / 54.2 / 78.5 and
#: 57.1 / 54.7 / 76.8 (GlyphScenes seeds 0 and 1, ShapeScenes; sums 190.0, 191.0 and
#: 188.6, equal within the seed noise) at 4/7 of the teachers' time (README, "Cheaper
#: students and teachers").
TEACHER_EPOCHS = 4
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
    teacher: str | None = None,
    train_images: int = 2000,
    val_images: int = 100,
    test_images: int = 300,
    epochs: int | None = None,
    teacher_epochs: int | None = None,
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
            tuning grid for both.
        preset: the training recipe (``shapes``: the small backbone from scratch;
            ``lite0-cpu``: EfficientNet-Lite0's frozen ImageNet stem under a conv head
            trained from scratch, needs the ``lite0`` extra; GlyphScenes needs it), see
            :data:`prm.engine.PRESETS`.
        teacher: a preset (``lite0-cpu``) to train teacher networks with first (a PRM
            and a CAM one, as the demo's own); the demo's networks then train with
            ``preset`` (``student``) on the labels plus their teacher's class response
            maps (:mod:`prm.engine.teacher`), and the class threshold is tuned with
            the retrieval settings (:data:`TEACHER_GRID`). ``None``: labels only.
        train_images: training images of the generated dataset (2000).
        val_images: validation images the retrieval settings are tuned on (100; 0 keeps
            the authors' values).
        test_images: test images evaluated (300).
        epochs: training epochs of every network, teachers too unless
            ``teacher_epochs`` is given (by default each preset's).
        teacher_epochs: training epochs of the teachers (default: ``epochs`` when
            given, else :data:`TEACHER_EPOCHS`).
        seed: seed of data generation and training.
        workers: processes for proposal generation; with 2 or more the PRM and CAM
            networks also train side by side and the table's rows run in two processes,
            each with half of torch's threads (at least 1). The results equal those of
            ``workers=1`` run with that many threads. The processes are spawned, so a
            script that calls ``run_demo`` with ``workers > 1`` needs the
            ``if __name__ == "__main__":`` guard.
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
    if teacher_epochs is not None and teacher is None:
        raise ValueError("teacher_epochs is the teachers' epochs: give a teacher too")
    if dataset == "glyphs" and preset in ("shapes", "student") and teacher is None:
        warnings.warn(
            "the 'shapes' preset's small network stays at chance level on GlyphScenes; "
            "--preset lite0-cpu (the lite0 extra) learns it (README, 'GlyphScenes')",
            stacklevel=2,
        )
    demo = _Demo(Path(out), num_overlays, progress)
    data_dir = demo.out / "data"
    val_set = build_dataset(dataset, data_dir, "val", num_images=val_images, seed=seed)
    demo.test_set = build_dataset(dataset, data_dir, "test", num_images=test_images, seed=seed)
    overrides = {"dataset": dataset, "root": str(data_dir), "num_train_images": train_images}
    overrides["seed"] = seed
    base = _validate_at_the_end(
        load_config(preset, **overrides, **({} if epochs is None else {"epochs": epochs}))
    )
    demo.lap("generate data")
    settings = {"dataset": dataset, "train_config": asdict(base), "val_images": val_images}
    teachers = None
    if teacher is not None:
        teacher_base = _validate_at_the_end(
            load_config(teacher, **overrides, epochs=_teacher_epochs(epochs, teacher_epochs))
        )
        settings["teacher_config"] = asdict(teacher_base)
        teachers = demo.train_both(teacher_base, workers, prefix="teacher-")
        demo.grid = TEACHER_GRID
    checkpoints = demo.train_both(base, workers, teachers)

    print("== selective-search proposals for the validation and test images ==")
    cache = _proposals(demo.out / "proposals", (val_set, demo.test_set), workers, progress)
    demo.lap("proposals")
    predictors = demo.compare(checkpoints, cache, val_set if val_images > 0 else None, workers)
    self_training = None
    if distill:
        print("== self-training: PRM pseudo-labels -> Mask R-CNN ==")
        train_set = build_dataset(dataset, data_dir, "train", num_images=train_images, seed=seed)
        self_training, student = _self_train(
            demo.out, predictors["prm"], (dataset, train_set), distill_images, distill_epochs,
            seed, workers, progress,
        )  # fmt: skip
        demo.lap("self-training: proposals + pseudo-label + distill")
        demo.rows[DISTILL_ROW] = demo.evaluate(DISTILL_ROW, student, None, "distilled")
        demo.lap(f"predict + evaluate: {DISTILL_ROW}")
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
        self.grid = TUNING_GRID  # travels with the demo into its second process
        self.began = self.tick = time.perf_counter()

    def lap(self, name: str) -> None:
        """Record the seconds since the last lap as ``name``."""
        self.timings[name] = round(time.perf_counter() - self.tick, 1)
        self.tick = time.perf_counter()

    def train_both(
        self, base, workers: int, teachers: dict | None = None, prefix: str = ""
    ) -> dict[str, Path]:
        """Train the PRM and the CAM network into ``out/<prefix>prm`` and ``.../cam``:
        side by side in two processes when ``workers > 1`` (the CAM one silent), else one
        after the other. ``teachers``: the checkpoint each one follows (by name)."""
        teachers = teachers or {}
        what = f"{prefix.rstrip('-')} networks" if prefix else "networks"
        jobs = {"prm": (f"{prefix}prm", True), "cam": (f"{prefix}cam", False)}
        if teachers:
            what += " from their teachers"
        if workers < 2:
            checkpoints = {}
            for name, (folder, on) in jobs.items():
                print(f"== training the {name.upper()} {what} ({base.epochs} epochs) ==")
                checkpoints[name] = _train_network(
                    base, self.out, folder, on, self.progress, teacher=teachers.get(name)
                )
                self.lap(f"train {prefix}{name.upper()}")
            return checkpoints
        print(f"== training the PRM and CAM {what} ({base.epochs} epochs, 2 processes) ==")
        with _side_process() as (pool, threads):
            cam = pool.submit(
                _train_network, base, self.out, jobs["cam"][0], False, False, threads,
                teachers.get("cam"),
            )  # fmt: skip
            prm = _train_network(
                base, self.out, jobs["prm"][0], True, self.progress, teacher=teachers.get("prm")
            )
            checkpoints = {"prm": prm, "cam": cam.result()}
        self.lap(f"train {prefix}PRM + {prefix}CAM (2 processes)")
        return checkpoints

    def compare(self, checkpoints: dict, cache, val_set, workers: int = 1) -> dict[str, Predictor]:
        """Tune (on ``val_set`` unless ``None``), predict and evaluate each method.

        With ``workers > 1`` the work runs in two processes, this one and a second one,
        each taking the next task of :data:`_TASKS` when it is free: the second one runs
        the fallback row, this one tunes the CAM row and runs the PRM row, and the CAM
        row's test predictions go to whichever is free first. The results are the same
        either way.
        """
        predictors: dict[str, Predictor] = {}
        done: dict[str, tuple] = {}
        if workers < 2:
            for method in _ROWS:
                done[method] = self.row(method, checkpoints, cache, val_set)
        else:
            done = self._rows_in_two_processes(checkpoints, cache, val_set)
        for method, (metrics, tuned, retrieval, seconds) in sorted(
            done.items(), key=lambda item: list(_ROWS).index(item[0])
        ):
            net, _, proposal_fn, slug = _ROWS[method]
            self.rows[method] = metrics
            if tuned is not None:
                self.tuned[method] = tuned
            self.timings[f"tune + predict + evaluate: {method}"] = seconds
            predictor = Predictor(load_model(checkpoints[net]), proposal_fn=proposal_fn)
            predictor.retrieval, predictor.peak_selection, predictor.smooth_strided = retrieval
            predictors[slug] = predictor
        self.tick = time.perf_counter()
        return predictors

    def _rows_in_two_processes(self, checkpoints: dict, cache, val_set) -> dict[str, tuple]:
        """:meth:`row` of every method, the :data:`_TASKS` shared by two processes."""
        pending = list(_TASKS)
        done: dict[str, tuple] = {}
        tunings: dict[str, Any] = {}  # method -> tuning, or the job that makes it
        side: list = []
        lock = threading.RLock()  # the pool's callback thread takes tasks too

        def take() -> tuple[str, str] | None:
            with lock:
                return pending.pop(0) if pending else None

        def tuning_of(method: str):
            with lock:
                found = tunings.get(method)
            # A job of :func:`_elsewhere` returns ``(kind, method, tuning)``.
            return found.result()[2] if isinstance(found, Future) else found

        def side_next(_finished=None) -> None:
            with lock:
                task = take()
                if task is None:
                    return
                kind, method = task
                print(f"== {method}: {_TASK_NAMES[kind]} in a second process ==")
                tuning = tuning_of(method) if kind == "evaluate" else None
                job = pool.submit(
                    _elsewhere, self, task, checkpoints, cache, val_set, threads, tuning
                )
                if kind == "tune":
                    tunings[method] = job
                side.append(job)
                job.add_done_callback(side_next)

        with _side_process() as (pool, threads):
            side_next()
            while (task := take()) is not None:
                kind, method = task
                if kind == "tune":
                    tunings[method] = self.tune(method, checkpoints, cache, val_set)
                else:
                    tuning = tuning_of(method) if kind == "evaluate" else None
                    done[method] = self.row(method, checkpoints, cache, val_set, tuning)
            with lock:  # no task is left to take, so no job is added after this
                jobs = list(side)
            for job in jobs:
                kind, method, result = job.result()
                if kind != "tune":
                    done[method] = result
        return done

    def _predictor(self, method: str, checkpoints: dict, cache) -> tuple[Predictor, Any]:
        """``method``'s predictor, untuned, and its proposal source (see ``_ROWS``)."""
        net, uses_cache, proposal_fn, _ = _ROWS[method]
        # The predictor retrieves with class response maps for the CAM network, which was
        # trained without peak stimulation.
        source = (lambda image_id, image: cache.load(image_id)) if uses_cache else None
        predictor = Predictor(load_model(checkpoints[net]), proposal_fn=proposal_fn)
        predictor.retrieval = replace(predictor.retrieval, proposal_count=PROPOSAL_COUNT)
        return predictor, source

    def tune(self, method: str, checkpoints: dict, cache, val_set) -> tuple:
        """Tune ``method``'s settings on ``val_set`` (none: its defaults).

        Returns:
            ``(tuned settings or None, (the RetrievalConfig, PeakSelection and
            back-propagation rule to use), seconds)``.
        """
        began = time.perf_counter()
        predictor, source = self._predictor(method, checkpoints, cache)
        tuned = None
        if val_set is not None:
            grid = self.grid
            if predictor.response != "prm":  # class response maps: no back-propagation
                grid = {name: values for name, values in grid.items() if name != RULE}
            tuned = _tune(predictor, val_set, source, grid, self.progress)
        used = (predictor.retrieval, predictor.peak_selection, predictor.smooth_strided)
        return tuned, used, time.perf_counter() - began

    def row(self, method: str, checkpoints: dict, cache, val_set, tuning=None) -> tuple:
        """One row of the table: tune, predict and evaluate ``method`` (see ``_ROWS``).

        ``tuning``: what :meth:`tune` returned for it, if it ran already (elsewhere).

        Returns:
            ``(metrics, tuned settings or None, (the RetrievalConfig, PeakSelection and
            back-propagation rule used), seconds of tuning and evaluating)``.
        """
        if tuning is None:
            tuning = self.tune(method, checkpoints, cache, val_set)
        tuned, used, seconds = tuning
        began = time.perf_counter()
        predictor, source = self._predictor(method, checkpoints, cache)
        predictor.retrieval, predictor.peak_selection, predictor.smooth_strided = used
        metrics = self.evaluate(method, predictor, source, _ROWS[method][3])
        return metrics, tuned, used, round(seconds + time.perf_counter() - began, 1)

    def evaluate(self, method: str, predictor, source, slug: str) -> dict[str, float]:
        """Predict and evaluate the test split into a run folder; returns the metrics."""
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
        write_run_report(
            run_dir,
            sampler,
            command="prm demo",
            name=method,
            classes=list(test_set.classes),
            category_ids=list(test_set.category_ids),
            results=f"../../results-{slug}.json",
        )
        return summary.metrics

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


#: The table's rows: method -> (network, reads the selective-search cache, proposal_fn,
#: file name). Without proposals the predictor makes them from the PRMs (the fallback).
_ROWS = {
    "CAM + selective search": ("cam", True, None, "cam"),
    "PRM + selective search": ("prm", True, None, "prm"),
    "PRM, no proposals (fallback)": ("prm", False, "prm", "prm-fallback"),
}
#: The rows' work in two processes, in the order the two take it: the second process
#: takes the first task (the fallback row), this one the next (the CAM row's tuning),
#: and then each takes the next when free. The CAM row's tuning (360 settings) and its
#: test predictions are separate tasks so that the two processes finish close together:
#: on the distilled GlyphScenes demos the PRM row took 152-154 s, the fallback 162-186 s,
#: the CAM row 50-51 s, a third of it tuning (commits 87d2e71 and 98c937d).
_TASKS = (
    ("row", "PRM, no proposals (fallback)"),
    ("tune", "CAM + selective search"),
    ("row", "PRM + selective search"),
    ("evaluate", "CAM + selective search"),
)
_TASK_NAMES = {
    "tune": "tuning",
    "row": "tuning and test predictions",
    "evaluate": "test predictions",
}


def _teacher_epochs(epochs: int | None, teacher_epochs: int | None) -> int:
    """The teachers' epochs: ``teacher_epochs``, else ``epochs``, else the demo's own."""
    if teacher_epochs is not None:
        return teacher_epochs
    return TEACHER_EPOCHS if epochs is None else epochs


def _validate_at_the_end(config):
    """``config`` validating once, after its last epoch. The demo predicts with the last
    epoch's weights (the cosine schedule ends at a learning rate of 0), so the validation
    after every other epoch, which chooses ``best.pt``, would change no number of the
    table; it cost about 20 s of the demo's time per pair of networks. Validation draws
    no random number that training uses: the networks are the same to the bit."""
    return config.replace(val_every=config.epochs)


def _train_network(
    base, out: Path, name: str, stimulation: bool, progress: bool, threads=None, teacher=None
):
    """Train the PRM (peak stimulation) or CAM network into ``out/name``; returns its
    last checkpoint. ``threads``: torch threads of this process (when run in another);
    ``teacher``: the checkpoint whose maps it also follows."""
    if threads is not None:
        torch.set_num_threads(threads)
    teacher = None if teacher is None else str(teacher)
    config = base.replace(out=str(out / name), peak_stimulation=stimulation, teacher=teacher)
    train(config, resume=True, progress=progress)
    # The last epoch, not best.pt: the preset's cosine schedule ends at a learning rate
    # of 0, and the README's tables were measured with the last epoch.
    return Path(config.out) / "last.pt"


def _elsewhere(demo: _Demo, task, checkpoints, cache, val_set, threads: int, tuning):
    """A task ``(kind, method)`` of :data:`_TASKS`, silently, in a second process:
    returns ``(kind, method, what _Demo.tune or _Demo.row returned)``."""
    torch.set_num_threads(threads)
    demo.progress = False
    kind, method = task
    if kind == "tune":
        return kind, method, demo.tune(method, checkpoints, cache, val_set)
    return kind, method, demo.row(method, checkpoints, cache, val_set, tuning)


@contextlib.contextmanager
def _side_process():
    """A second ("spawn") process for half of the demo's work, and the torch threads each
    process gets meanwhile: the cores are split between the two (one each on 2 cores,
    where two single-threaded processes train 1.4x faster than one with two threads)."""
    saved = torch.get_num_threads()
    threads = max(1, saved // 2)
    torch.set_num_threads(threads)
    try:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            yield pool, threads
    finally:
        torch.set_num_threads(saved)


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


def _tune(predictor: Predictor, val_set, source, grid, progress: bool) -> dict[str, Any]:
    """Tune the predictor's retrieval on the validation images (it keeps the best)."""
    result = tune_retrieval(predictor, val_set, grid, proposals=source, progress=progress)
    result.apply(predictor)
    chosen = {**vars(result.best), **vars(result.peak_selection), RULE: result.smooth_strided}
    return {
        **{name: chosen[name] for name in (*grid, "proposal_count")},
        "val " + result.metric: result.value,
    }
