"""Prediction over a dataset or a list of image files, streamed into evaluators and files.

``predict_dataset`` runs a :class:`~prm.predictor.Predictor` image by image, writes a COCO
results JSON (RLE masks, scores), draws overlay PNGs of the first images, and feeds every
``(target, prediction)`` pair to the evaluators as it goes, so memory does not grow with
the dataset (only RLEs are kept).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prm.data import COCODataset, DataError, load_image
from prm.data.images import to_image_tensor, to_uint8_image
from prm.evaluation import results_entries, run_evaluation
from prm.evaluation.results import ResultsWriter
from prm.paths import output_path, safe_relative_name
from prm.predictor import Predictor, working_size
from prm.visualize import prediction_panel

__all__ = [
    "PredictionSummary",
    "ProposalSource",
    "dataset_images",
    "predict_dataset",
    "predict_files",
    "predict_shards",
    "proposal_source",
    "unique_image_ids",
]

ProposalSource = Callable[[str, torch.Tensor], torch.Tensor]


def proposal_source(spec: str | None, cache_dir: str | os.PathLike | None = None):
    """Where each image's proposals come from, for the CLI's ``--proposals``.

    Args:
        spec: ``"selective-search"`` (the built-in generator, computed on the fly and
            kept in ``cache_dir`` when given), ``"prm"`` (the proposal-free fallback:
            returns ``None`` and lets the predictor build candidates from the PRMs), or a
            folder of precomputed proposals: the folder given to ``prm proposals
            --cache`` (or its ``<generator>-<hash>`` subfolder), or files
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
    from prm.proposals.cache import cache_file, cache_folders

    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"proposals {spec!r}: not 'selective-search', 'prm' or an existing folder"
        )
    # A `prm proposals --cache DIR` folder keeps its files in DIR/<generator>-<hash>/.
    caches = cache_folders(folder)
    if len(caches) > 1:
        raise ValueError(
            f"proposals {spec!r} holds caches of {len(caches)} generator settings "
            f"({', '.join(p.name for p in caches)}); pass one of these folders"
        )
    cache = caches[0] if caches else None

    def from_folder(image_id: str, image: torch.Tensor) -> torch.Tensor:
        size = tuple(image.shape[1:])
        tried = []
        if cache is not None:
            path = cache_file(cache, image_id)
            if path.is_file():
                return load_proposals(path, size, allow_empty=True)
            tried.append(str(path))
        # The id as a safe name (never a path out of the folder), with folders or flat
        # as a `prm proposals` cache names it.
        names = dict.fromkeys(
            safe_relative_name(image_id, keep_folders=keep) for keep in (True, False)
        )
        for name in names:
            for suffix in (".npz", ".json", ".mat"):
                path = folder / f"{name}{suffix}"
                if path.is_file():
                    return load_proposals(path, size, allow_empty=True)
                tried.append(str(path))
        raise FileNotFoundError(
            f"no proposals for image {image_id} in {folder}: looked for {', '.join(tried)}"
        )

    return from_folder


def dataset_images(
    dataset,
    proposals: ProposalSource | None = None,
    limit: int | None = None,
    skipped: list | None = None,
    progress: bool = True,
    desc: str = "predict",
    max_size: int | None = None,
) -> Iterator[tuple[int, torch.Tensor, dict, torch.Tensor | None]]:
    """The images of a dataset, ready for a :class:`Predictor`, with their proposals.

    Args:
        dataset: a ``prm.data`` dataset without a transform.
        proposals: per-image proposal source, or ``None``.
        limit: only the first ``limit`` images.
        skipped: unreadable items (``None`` from a reader with ``on_error="skip"``) are
            appended here as ``(image id, problem)``.
        progress, desc: progress bar.
        max_size: proposals of an image whose longest side exceeds it are computed on
            the image scaled down to it (the working size of ``Predictor(max_size=)``),
            so that no image takes unbounded time; ``None``: at full size.

    Yields:
        ``(index, image (3, H, W) float in [0, 1], target, proposals (P, H, W) or None)``.
    """
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for index in tqdm(range(count), desc=desc, disable=not progress, dynamic_ncols=True):
        loaded = _load_item(dataset, index, proposals, max_size)
        if loaded is not None:
            yield index, *loaded
        elif skipped is not None:
            skipped.append(dataset.skipped[-1] if dataset.skipped else (index, "?"))


def _load_item(dataset, index: int, proposals: ProposalSource | None, max_size: int | None):
    """``(image (3, H, W) float in [0, 1], target, proposals (P, H, W) or None)`` of item
    ``index``, or ``None`` for an unreadable one (the reader warned and recorded it).
    Proposals of an image larger than ``max_size`` are computed on it scaled down."""
    item = dataset[index]
    if item is None:
        return None
    pil, target = item
    image = to_image_tensor(pil)
    if proposals is None:
        return image, target, None
    work = working_size(tuple(image.shape[1:]), max_size)
    small = image
    if work != tuple(image.shape[1:]):
        small = F.interpolate(image[None], size=work, mode="bilinear", antialias=True)[0]
    return image, target, proposals(target["image_id"], to_uint8_image(small.clamp(0, 1)))


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
    on_image: Callable[[torch.Tensor, dict, dict], Any] | None = None,
) -> PredictionSummary:
    """Predict every image of a dataset, evaluating on the way.

    Args:
        predictor: the configured predictor.
        dataset: a ``prm.data`` dataset without a transform (items are PIL images and
            targets); unreadable items (``None``, with ``on_error="skip"``) are counted.
        proposals: per-image proposal source (see :func:`proposal_source`); ``None``
            uses the predictor's own ``proposal_fn``.
        results_file: write a COCO results JSON here, image by image; if the run stops
            on an error, what was done is kept in ``<stem>.partial.json``.
        overlay_dir: write ``<image id>.png`` panels (instances, PRMs, ground truth) of the
            first ``num_overlays`` images here, named by
            :func:`prm.paths.safe_relative_name` (never outside ``overlay_dir``; an id with
            folders gets subfolders). A panel that cannot be written is warned about.
        metrics: names of ``prm.evaluation.METRICS`` to compute (none by default), with
            :func:`prm.evaluation.run_evaluation` (one pass, streamed).
        report_dir: where ``run_evaluation`` writes metrics.json, table.txt and PR curves.
        print_table: print the metrics table.
        limit: only the first ``limit`` images.
        progress: show a progress bar.
        on_image: called as ``on_image(image, target, prediction)`` for every image
            (e.g. :meth:`prm.report.GallerySampler.add`).

    Returns:
        A :class:`PredictionSummary` (``metrics`` filled when ``metrics`` were asked for).
    """
    summary = PredictionSummary()
    category_ids, names = list(dataset.category_ids), list(dataset.classes)
    writer = ResultsWriter(results_file) if results_file is not None else None
    inputs = _input_files(dataset) if overlay_dir is not None else None
    max_size = getattr(predictor, "max_size", None)

    def pairs() -> Iterator[tuple[dict, dict]]:
        for _, image, target, props in dataset_images(
            dataset, proposals, limit, summary.skipped, progress, desc, max_size
        ):
            prediction = predictor([image], [props])[0]
            summary.images += 1
            summary.instances += len(prediction["scores"])
            if writer is not None:
                writer.add(results_entries(prediction, _result_id(dataset, target), category_ids))
            if overlay_dir is not None and len(summary.overlays) < num_overlays:
                panel = (image, prediction, names, target)
                _write_overlay(summary, overlay_dir, target["image_id"], panel, inputs)
            if on_image is not None:
                on_image(image, target, prediction)
            yield target, prediction

    with _finish_on_error(writer, summary):
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
    return summary


def predict_shards(
    predictor: Predictor,
    dataset,
    out_dir: str | os.PathLike,
    *,
    proposals: ProposalSource | None = None,
    results_file: str | os.PathLike | None = None,
    overlay_dir: str | os.PathLike | None = None,
    num_overlays: int = 8,
    limit: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    settings: dict[str, Any] | None = None,
    progress: bool = True,
) -> PredictionSummary | None:
    """:func:`predict_dataset` as a resumable pass, sharded across ``torchrun`` processes.

    Each rank predicts the images ``index % world_size == rank`` not done yet and appends
    their COCO results to ``<out_dir>/parts/part-<rank>.jsonl`` (see
    :mod:`prm.engine.shards`); once every rank is done, rank 0 writes ``results_file``
    (default ``<out_dir>/results.json``) with the images in dataset order: the same
    file as :func:`predict_dataset` writes in one process. Overlays are drawn for the
    images of index ``< num_overlays`` by the rank that predicts them.

    Args:
        settings: what the predictions depend on (checkpoint, predictor flags); a rerun
            with other settings is refused, since the parts would mix.
        Other arguments: as :func:`predict_dataset` (no evaluation here: evaluate the
            merged file with ``prm evaluate``).

    Returns:
        On rank 0 a :class:`PredictionSummary` (``images``, ``instances`` and ``skipped``
        of the whole pass, this rank's ``overlays``); ``None`` on the other ranks.
    """
    from prm.engine.shards import run_shard

    category_ids, names = list(dataset.category_ids), list(dataset.classes)
    inputs = _input_files(dataset) if overlay_dir is not None else None
    summary = PredictionSummary()

    def work(index: int, image: torch.Tensor, target: dict, props) -> dict[str, Any]:
        prediction = predictor([image], [props])[0]
        if overlay_dir is not None and index < num_overlays:
            panel = (image, prediction, names, target)
            _write_overlay(summary, overlay_dir, target["image_id"], panel, inputs)
        return {"results": results_entries(prediction, _result_id(dataset, target), category_ids)}

    records = run_shard(
        dataset,
        out_dir,
        work,
        settings=settings or {},
        proposals=proposals,
        max_size=getattr(predictor, "max_size", None),
        limit=limit,
        rank=rank,
        world_size=world_size,
        barrier=barrier,
        progress=progress,
        desc="predict",
    )
    if records is None:
        return None
    writer = ResultsWriter(results_file or Path(out_dir) / "results.json")
    for index, record in records.items():
        if "skipped" in record:
            summary.skipped.append((dataset.image_id(index), record["skipped"]))
            continue
        summary.images += 1
        summary.instances += len(record["results"])
        writer.add(record["results"])
    summary.results_file = writer.close()
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
    ``image_id`` (made unique by :func:`unique_image_ids` when two files share a stem)
    and ``label + 1`` as ``category_id``. Overlays never overwrite an input file.
    """
    files = _ImageFiles(paths, class_names)
    return predict_dataset(
        predictor,
        files,
        proposals=proposals,
        results_file=results_file,
        overlay_dir=overlay_dir,
        num_overlays=num_overlays,
        progress=progress,
    )


class _ImageFiles:
    """Image files as a dataset without ground truth: the items of :func:`predict_files`."""

    def __init__(self, paths: Sequence[str | os.PathLike], class_names: Sequence[str]):
        self.paths = [Path(p) for p in paths]
        self.ids = unique_image_ids(self.paths)
        self.classes = list(class_names)
        self.category_ids = list(range(1, len(class_names) + 1))
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            return load_image(path, exif_transpose=True), {"image_id": self.ids[index]}
        except (DataError, FileNotFoundError) as exc:
            warnings.warn(f"skipping {path}: {exc}", stacklevel=2)
            self.skipped.append((str(path), str(exc)))
            return None


def _result_id(dataset, target: dict):
    """The image id a results file gives an image: COCO's are integers."""
    return int(target["image_id"]) if isinstance(dataset, COCODataset) else target["image_id"]


def _input_files(dataset) -> set[Path] | None:
    """Resolved paths of a dataset's image files, never to be written over (when known)."""
    from prm.data import FolderDataset

    if isinstance(dataset, FolderDataset):
        return {(dataset.root / row["file"]).resolve() for row in dataset.rows}
    if isinstance(dataset, COCODataset):
        return {(dataset.image_dir / im["file_name"]).resolve() for im in dataset.images}
    if isinstance(dataset, _ImageFiles):
        return {p.resolve() for p in dataset.paths}
    return None


def unique_image_ids(paths: Sequence[str | os.PathLike]) -> list[str]:
    """One distinct id per image file: its stem, with folders added where stems clash.

    ``a/good.jpg`` and ``b/good.jpg`` become ``a/good`` and ``b/good`` (as few parent
    folders as make them distinct); files that still clash (``x.jpg`` and ``x.png``, or
    one file given twice) keep their suffix and then get ``-2``, ``-3``... A warning
    names every id that is not the plain stem.

    Args:
        paths: the image files, in order.

    Returns:
        ids aligned with ``paths``.
    """
    paths = [Path(p) for p in paths]
    ids = [p.stem for p in paths]
    groups: dict[str, list[int]] = {}
    for i, stem in enumerate(ids):
        groups.setdefault(stem, []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        parts = [Path(os.path.abspath(paths[i])).with_suffix("").parts for i in members]
        for depth in range(2, max(len(p) for p in parts) + 1):
            names = ["/".join(p[-depth:]) for p in parts]
            if len(set(names)) == len(names):
                break
        for i, name in zip(members, names, strict=True):
            ids[i] = name
    seen: dict[str, int] = {}
    for i, image_id in enumerate(list(ids)):
        if ids.count(image_id) > 1:  # same folders and stem: keep the suffix
            image_id = f"{image_id}{paths[i].suffix}"
        count = seen[image_id] = seen.get(image_id, 0) + 1
        ids[i] = image_id if count == 1 else f"{image_id}-{count}"
    renamed = [f"{p} -> {i}" for p, i in zip(paths, ids, strict=True) if i != p.stem]
    if renamed:
        warnings.warn(
            "image files share a name; their ids are made unique: " + ", ".join(renamed),
            stacklevel=2,
        )
    return ids


def _write_overlay(summary, overlay_dir, image_id, panel_args, inputs=None) -> None:
    """Draw and save one overlay; a failure is warned about, never fatal (results stay)."""
    try:
        path = output_path(overlay_dir, image_id, ".png", inputs=inputs)
        prediction_panel(*panel_args).save(path)
    except (OSError, ValueError) as exc:
        warnings.warn(f"could not write the overlay of image {image_id}: {exc}", stacklevel=3)
        return
    summary.overlays.append(path)


@contextmanager
def _finish_on_error(writer: ResultsWriter | None, summary: PredictionSummary):
    """Close the results file when done; on an error keep what was done as partial."""
    try:
        yield
    except BaseException:
        if writer is not None:
            partial = writer.close(complete=False)
            warnings.warn(
                f"stopped after {summary.images} images; their {writer.count} results are "
                f"in {partial}",
                stacklevel=3,
            )
        raise
    if writer is not None:
        summary.results_file = writer.close()
