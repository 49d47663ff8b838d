"""An on-disk proposal cache and its parallel, resumable precomputation.

Layout: ``<root>/<generator>-<settings hash>/<image id>.npz`` (the compact ``npz`` format
of :mod:`prm.proposals.io`) plus ``settings.json`` recording the settings the hash was
made from. Changing any setting of the generator gives a new folder, so proposals made
with other settings are never mixed up; the same settings find the same files again.

Every file is written atomically (temporary file + ``os.replace``), so an interrupted
run leaves only complete entries behind, and the next run skips them and goes on.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prm.files import write_text_atomic
from prm.paths import safe_relative_name

from .compact import CompactProposals
from .io import load_proposals, save_proposals

__all__ = [
    "IMAGE_SUFFIXES",
    "ProposalCache",
    "PrecomputeSummary",
    "precompute_proposals",
    "list_images",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_STALE_TEMP_SECONDS = 600


def _compute(generator, image) -> CompactProposals | torch.Tensor:
    """Run a generator, preferring its compact output when it has one."""
    propose = getattr(generator, "propose", None)
    return propose(image) if callable(propose) else generator(image)


def cache_file(folder: str | os.PathLike, image_id: str) -> Path:
    """The file of an image id in a cache's settings folder (ids made safe as names)."""
    return Path(folder) / safe_relative_name(image_id, ".npz", keep_folders=False)


def cache_folders(root: str | os.PathLike) -> list[Path]:
    """The settings folders (``<generator>-<hash>/``) a cache root holds, sorted."""
    root = Path(root)
    if (root / "settings.json").is_file():
        return [root]
    return sorted(p.parent for p in root.glob("*/settings.json"))


class ProposalCache:
    """Proposals on disk, keyed by image id and a hash of the generator's settings.

    Args:
        root: the cache folder (created when missing).
        generator: a proposal generator with ``settings() -> dict`` (JSON-serialisable,
            with a ``"generator"`` name) and ``settings_hash() -> str``, callable on an
            image; :class:`~prm.proposals.SelectiveSearch` is one.

    Example::

        cache = ProposalCache("proposals/", SelectiveSearch())
        masks = cache.get("2011_000003", image)   # computed once, then read from disk
    """

    def __init__(self, root: str | os.PathLike, generator):
        self.generator = generator
        settings = generator.settings()
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", str(settings.get("generator", "proposals")))
        self.folder = Path(root) / f"{name}-{generator.settings_hash()}"
        self.folder.mkdir(parents=True, exist_ok=True)
        settings_file = self.folder / "settings.json"
        if not settings_file.is_file():
            text = json.dumps(settings, indent=2, sort_keys=True) + "\n"
            write_text_atomic(settings_file, text)

    def path(self, image_id: str) -> Path:
        """The cache file of an image id (ids are made safe as file names)."""
        return cache_file(self.folder, image_id)

    def __contains__(self, image_id: str) -> bool:
        return self.path(image_id).is_file()

    def problem(self, image_id: str, image_size: tuple[int, int] | None = None) -> str | None:
        """Why the cached file of an image is unusable (corrupt, wrong size), or ``None``.

        A file that is there is not necessarily whole: one edited by hand, or copied
        from a broken disk, must not count as cached forever.
        """
        try:
            self.load(image_id, image_size, compact=True)
        except (ValueError, OSError) as exc:
            return str(exc)
        return None

    def _repair(self, image_id: str, problem: str) -> None:
        warnings.warn(
            f"proposal cache entry of image {image_id} is unusable ({problem}); computing it again",
            stacklevel=3,
        )
        self.path(image_id).unlink(missing_ok=True)

    def load(
        self, image_id: str, image_size: tuple[int, int] | None = None, compact: bool = False
    ) -> torch.Tensor | CompactProposals:
        """Cached proposals of an image: ``Tensor[P, H, W]`` bool (or CompactProposals).

        Raises:
            FileNotFoundError: the image is not in the cache.
            ValueError: the file is corrupt or of another size than ``image_size``.
        """
        return load_proposals(self.path(image_id), image_size, allow_empty=True, compact=compact)

    def save(self, image_id: str, proposals: torch.Tensor | CompactProposals) -> Path:
        """Store proposals of an image (atomically); returns the file."""
        return save_proposals(self.path(image_id), proposals)

    def get(self, image_id: str, image) -> torch.Tensor:
        """Cached proposals of an image, computed and stored first when missing.

        Args:
            image_id: the image's id (``target["image_id"]``).
            image: the image (``PIL.Image`` or ``Tensor[3, H, W]``), used when missing.

        Returns:
            Tensor[P, H, W] (bool), best first.
        """
        if image_id in self:
            try:
                return self.load(image_id, _size_of(image))
            except (ValueError, OSError) as exc:
                self._repair(image_id, str(exc))
        proposals = _compute(self.generator, image)
        self.save(image_id, proposals)
        return proposals.masks() if isinstance(proposals, CompactProposals) else proposals

    def remove_stale_temporaries(self, older_than: float = _STALE_TEMP_SECONDS) -> int:
        """Delete temporary files left by killed runs (older than ``older_than`` seconds,
        so that a run writing right now is not disturbed); returns how many."""
        now, removed = time.time(), 0
        for tmp in self.folder.glob(".*.tmp"):
            try:
                if now - tmp.stat().st_mtime > older_than:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


def _size_of(image) -> tuple[int, int]:
    """``(H, W)`` of a PIL image or a ``(3, H, W)`` tensor."""
    if hasattr(image, "height") and hasattr(image, "width"):
        return (image.height, image.width)
    return tuple(image.shape[-2:])


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder`` (by suffix), sorted; ids are their stems.

    Raises:
        FileNotFoundError: no such folder.
        ValueError: no images, or two images with the same stem (``a.jpg``, ``a.png``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder not found")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise ValueError(f"{folder}: {stems[p.stem].name} and {p.name} have the same id")
        stems[p.stem] = p
    return paths


@dataclass
class PrecomputeSummary:
    """What :func:`precompute_proposals` did."""

    folder: Path
    computed: int = 0
    cached: int = 0  # already in the cache, skipped
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, problem)


# Worker state, set once per process by _init_worker (cheaper than pickling per task).
_worker: dict = {}


def _init_worker(cache: ProposalCache, dataset) -> None:
    torch.set_num_threads(1)
    _worker["cache"] = cache
    _worker["dataset"] = dataset


def _run_task(task: tuple[str, object]) -> tuple[str, str, str]:
    """One image: returns ``(image, status, problem)``, status computed/cached/failed."""
    kind, what = task
    cache: ProposalCache = _worker["cache"]
    name = str(what)
    try:
        if kind == "path":
            from ..data.images import load_image

            image_id, image = Path(what).stem, load_image(what)
        else:
            item = _worker["dataset"][what]
            if item is None:  # a reader with on_error="skip" dropped it
                return name, "failed", f"item {what} could not be read (skipped by the reader)"
            image, target = item
            image_id = str(target["image_id"])
        name = image_id
        status, problem = "computed", ""
        if image_id in cache:
            problem = cache.problem(image_id, _size_of(image))
            if problem is None:
                return name, "cached", ""
            status = "repaired"  # corrupt or of another size: computed again
        cache.save(image_id, _compute(cache.generator, image))
        return name, status, problem or ""
    except (ValueError, FileNotFoundError, OSError) as exc:
        return name, "failed", str(exc)


def precompute_proposals(
    source: str | os.PathLike | Sequence,
    cache: ProposalCache,
    *,
    workers: int = 1,
    skip_errors: bool = False,
    progress: bool = True,
) -> PrecomputeSummary:
    """Compute the proposals of every image into the cache, in parallel, resumably.

    Args:
        source: an image folder, a list of image paths, or a dataset (``dataset[i] ->
            (PIL image, target)`` without a transform; ``dataset.image_id(i)``, when it
            exists, lets cached images be skipped without reading them).
        cache: where to put them (and which generator to use).
        workers: processes; 1 runs in this process.
        skip_errors: on an unreadable image, record it in ``failed`` and go on (default:
            raise ``ValueError`` naming the image).
        progress: show a tqdm progress bar.

    Returns:
        a :class:`PrecomputeSummary`.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    dataset, tasks = _tasks(source)
    summary = PrecomputeSummary(cache.folder)
    cache.remove_stale_temporaries()
    todo = _not_cached(tasks, dataset, cache, summary)

    from tqdm import tqdm

    bar = tqdm(
        total=len(tasks), initial=summary.cached, disable=not progress, desc="proposals", unit="img"
    )

    def record(result: tuple[str, str, str]) -> None:
        name, status, problem = result
        if status == "failed":
            if not skip_errors:
                raise ValueError(problem if name in problem else f"{name}: {problem}")
            summary.failed.append((name, problem))
        elif status == "cached":
            summary.cached += 1
        else:
            if status == "repaired":
                warnings.warn(
                    f"proposal cache entry of image {name} was unusable ({problem}); "
                    "computed it again",
                    stacklevel=2,
                )
            summary.computed += 1
        bar.update()

    try:
        if workers == 1 or len(todo) <= 1:
            _init_worker(cache, dataset)
            for task in todo:
                record(_run_task(task))
        else:
            pool = _spawn_pool(workers, cache, dataset)
            try:
                for result in pool.imap_unordered(_run_task, todo):
                    record(result)
                pool.close()
            except BaseException:
                pool.terminate()  # finished files are complete; a rerun resumes
                raise
            finally:
                pool.join()
    finally:
        bar.close()
    return summary


def _tasks(source) -> tuple[Sequence | None, list[tuple[str, Any]]]:
    """``(dataset or None, [("path", file) or ("index", i), ...])`` of a source."""
    if isinstance(source, (str, os.PathLike)):
        return None, [("path", str(p)) for p in list_images(source)]
    if hasattr(source, "__getitem__") and not isinstance(source, (list, tuple)):
        return source, [("index", i) for i in range(len(source))]
    return None, [("path", str(p)) for p in source]


def _not_cached(tasks, dataset, cache: ProposalCache, summary: PrecomputeSummary) -> list:
    """The tasks left once complete cache entries are counted (and broken ones repaired),
    before any process starts, when ids are known up front."""
    todo = []
    for kind, what in tasks:
        if kind == "path":
            image_id = Path(what).stem
        elif hasattr(dataset, "image_id"):
            image_id = dataset.image_id(what)
        else:
            image_id = None
        if image_id is not None and image_id in cache:
            problem = cache.problem(image_id)
            if problem is None:
                summary.cached += 1
                continue
            cache._repair(image_id, problem)
        todo.append((kind, what))
    return todo


def _spawn_pool(workers: int, cache: ProposalCache, dataset):
    """A pool of ``workers`` "spawn" processes: fresh interpreters, no locks or thread
    pools inherited from a parent that already runs torch. One BLAS thread each: the
    pool is the parallelism."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    os.environ.update({k: "1" for k in saved})
    try:
        return multiprocessing.get_context("spawn").Pool(workers, _init_worker, (cache, dataset))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
