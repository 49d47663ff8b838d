"""Prediction over a dataset or a list of image files, streamed into evaluators and files.

``predict_dataset`` runs a :class:`~prm.predictor.Predictor` image by image, writes a COCO
results JSON (RLE masks, scores), draws overlay PNGs of the first images, and feeds every
``(target, prediction)`` pair to the evaluators as it goes, so memory does not grow with
the dataset (only RLEs are kept).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prm.data import COCODataset, DataError, load_image
from prm.evaluation import results_entries, run_evaluation
from prm.predictor import Predictor, to_image_tensor
from prm.visualize import prediction_panel

__all__ = [
    "PredictionSummary",
    "ProposalSource",
    "dataset_images",
    "predict_dataset",
    "predict_files",
    "proposal_source",
]

ProposalSource = Callable[[str, torch.Tensor], torch.Tensor]


def proposal_source(spec: str | None, cache_dir: str | os.PathLike | None = None):
    """Where each image's proposals come from, for the CLI's ``--proposals``.

    Args:
        spec: ``"selective-search"`` (the built-in generator, computed on the fly and
            kept in ``cache_dir`` when given), ``"prm"`` (the proposal-free fallback:
            returns ``None`` and lets the predictor build candidates from the PRMs), or a
            folder of precomputed proposals: a ``prm proposals`` cache folder, or files
            named ``<image id>.npz`` / ``.json`` / ``.mat`` (any format
            :func:`prm.proposals.load_proposals` reads).
        cache_dir: cache folder for ``"selective-search"``.

    Returns:
        ``None`` for ``"prm"``, else ``source(image_id, image_uint8 (3, H, W)) -> (P, H, W)``.
    """
    from prm.proposals import ProposalCache, SelectiveSearch, load_proposals

    if spec in (None, "prm", "fallback"):
        return None
    if spec in ("selective-search", "selective_search", "ss"):
        generator = SelectiveSearch()
        if cache_dir is None:
            return lambda image_id, image: generator(image)
        cache = ProposalCache(cache_dir, generator)
        return lambda image_id, image: cache.get(image_id, image)
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"proposals {spec!r}: not 'selective-search', 'prm' or an existing folder"
        )

    def from_folder(image_id: str, image: torch.Tensor) -> torch.Tensor:
        size = tuple(image.shape[1:])
        for suffix in (".npz", ".json", ".mat"):
            path = folder / f"{image_id}{suffix}"
            if path.is_file():
                return load_proposals(path, size, allow_empty=True)
        raise FileNotFoundError(f"no proposals for image {image_id} in {folder}")

    return from_folder


def dataset_images(
    dataset,
    proposals: ProposalSource | None = None,
    limit: int | None = None,
    skipped: list | None = None,
    progress: bool = True,
    desc: str = "predict",
) -> Iterator[tuple[int, torch.Tensor, dict, torch.Tensor | None]]:
    """The images of a dataset, ready for a :class:`Predictor`, with their proposals.

    Args:
        dataset: a ``prm.data`` dataset without a transform.
        proposals: per-image proposal source, or ``None``.
        limit: only the first ``limit`` images.
        skipped: unreadable items (``None`` from a reader with ``on_error="skip"``) are
            appended here as ``(image id, problem)``.
        progress, desc: progress bar.

    Yields:
        ``(index, image (3, H, W) float in [0, 1], target, proposals (P, H, W) or None)``.
    """
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for index in tqdm(range(count), desc=desc, disable=not progress, dynamic_ncols=True):
        item = dataset[index]
        if item is None:  # unreadable: the reader warned and recorded it
            if skipped is not None:
                skipped.append(dataset.skipped[-1] if dataset.skipped else (index, "?"))
            continue
        pil, target = item
        image = to_image_tensor(pil)
        props = None
        if proposals is not None:
            props = proposals(target["image_id"], (image * 255).round().to(torch.uint8))
        yield index, image, target, props


@dataclass
class PredictionSummary:
    """What :func:`predict_dataset` did."""

    images: int = 0
    instances: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    results_file: Path | None = None
    overlays: list[Path] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def predict_dataset(
    predictor: Predictor,
    dataset,
    *,
    proposals: ProposalSource | None = None,
    results_file: str | os.PathLike | None = None,
    overlay_dir: str | os.PathLike | None = None,
    num_overlays: int = 8,
    metrics: Sequence[str] = (),
    report_dir: str | os.PathLike | None = None,
    print_table: bool = False,
    limit: int | None = None,
    progress: bool = True,
    desc: str = "predict",
) -> PredictionSummary:
    """Predict every image of a dataset, evaluating on the way.

    Args:
        predictor: the configured predictor.
        dataset: a ``prm.data`` dataset without a transform (items are PIL images and
            targets); unreadable items (``None``, with ``on_error="skip"``) are counted.
        proposals: per-image proposal source (see :func:`proposal_source`); ``None``
            uses the predictor's own ``proposal_fn``.
        results_file: write a COCO results JSON here.
        overlay_dir: write ``<image id>.png`` panels (instances, PRMs, ground truth) of the
            first ``num_overlays`` images here.
        metrics: names of ``prm.evaluation.METRICS`` to compute (none by default), with
            :func:`prm.evaluation.run_evaluation` (one pass, streamed).
        report_dir: where ``run_evaluation`` writes metrics.json, table.txt and PR curves.
        print_table: print the metrics table.
        limit: only the first ``limit`` images.
        progress: show a progress bar.

    Returns:
        A :class:`PredictionSummary` (``metrics`` filled when ``metrics`` were asked for).
    """
    summary = PredictionSummary()
    entries: list[dict] = []
    category_ids = list(dataset.category_ids)
    names = list(dataset.classes)
    coco = isinstance(dataset, COCODataset)
    if overlay_dir is not None:
        Path(overlay_dir).mkdir(parents=True, exist_ok=True)

    def pairs() -> Iterator[tuple[dict, dict]]:
        for _, image, target, props in dataset_images(
            dataset, proposals, limit, summary.skipped, progress, desc
        ):
            prediction = predictor([image], [props])[0]
            summary.images += 1
            summary.instances += len(prediction["scores"])
            if results_file is not None:
                image_id = target["image_id"]
                if coco:  # COCO results files use the integer image ids
                    image_id = int(image_id)
                entries.extend(results_entries(prediction, image_id, category_ids))
            if overlay_dir is not None and len(summary.overlays) < num_overlays:
                path = Path(overlay_dir) / f"{target['image_id']}.png"
                prediction_panel(image, prediction, names, target).save(path)
                summary.overlays.append(path)
            yield target, prediction

    if metrics:
        summary.metrics = run_evaluation(
            pairs(),
            names,
            category_ids,
            metrics=list(metrics),
            out_dir=report_dir,
            print_table=print_table,
        )
    else:
        for _ in pairs():
            pass
    if results_file is not None:
        summary.results_file = _write_json(results_file, entries)
    return summary


def predict_files(
    predictor: Predictor,
    paths: Sequence[str | os.PathLike],
    class_names: Sequence[str],
    *,
    proposals: ProposalSource | None = None,
    results_file: str | os.PathLike | None = None,
    overlay_dir: str | os.PathLike | None = None,
    num_overlays: int = 8,
    progress: bool = True,
) -> PredictionSummary:
    """Predict image files without ground truth (``prm predict --images``).

    Unreadable files are warned about, skipped and counted. Results use the file stem as
    ``image_id`` and ``label + 1`` as ``category_id``.
    """
    summary = PredictionSummary()
    entries: list[dict] = []
    category_ids = list(range(1, len(class_names) + 1))
    if overlay_dir is not None:
        Path(overlay_dir).mkdir(parents=True, exist_ok=True)
    for path in tqdm(paths, desc="predict", disable=not progress, dynamic_ncols=True):
        path = Path(path)
        try:
            image = to_image_tensor(load_image(path, exif_transpose=True))
        except (DataError, FileNotFoundError) as exc:
            warnings.warn(f"skipping {path}: {exc}", stacklevel=2)
            summary.skipped.append((str(path), str(exc)))
            continue
        props = None
        if proposals is not None:
            props = proposals(path.stem, (image * 255).round().to(torch.uint8))
        prediction = predictor([image], [props])[0]
        summary.images += 1
        summary.instances += len(prediction["scores"])
        if results_file is not None:
            entries.extend(results_entries(prediction, path.stem, category_ids))
        if overlay_dir is not None and len(summary.overlays) < num_overlays:
            out = Path(overlay_dir) / f"{path.stem}.png"
            prediction_panel(image, prediction, class_names).save(out)
            summary.overlays.append(out)
    if results_file is not None:
        summary.results_file = _write_json(results_file, entries)
    return summary


def _write_json(path: str | os.PathLike, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
    return path
