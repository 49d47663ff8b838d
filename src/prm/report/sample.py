"""A gallery for a run that has none, from its results file and the dataset."""

from __future__ import annotations

import os
from pathlib import Path

from prm.data.images import to_image_tensor

from .gallery import GallerySampler

__all__ = ["sample_from_results"]


def sample_from_results(
    run_dir: str | os.PathLike,
    results_file: str | os.PathLike,
    dataset,
    count: int = 4,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Score every image of ``dataset`` against a results file and save the gallery.

    What a results file holds is drawn (masks, labels, scores); peaks and PRMs are not
    in it.

    Args:
        run_dir: the run folder; the gallery goes to ``RUN/gallery``.
        results_file: COCO results JSON of ``dataset`` (as ``prm predict`` writes).
        dataset: a ``prm.data`` dataset without a transform.
        count, seed: images per group and the random sample's seed.
        progress: show a progress bar.

    Returns:
        The gallery folder.
    """
    from tqdm.auto import tqdm

    from prm.evaluation import load_results

    results = load_results(results_file, dataset)
    sampler = GallerySampler(Path(run_dir) / "gallery", dataset.classes, count, seed)
    for index in tqdm(range(len(dataset)), desc="gallery", disable=not progress):
        item = dataset[index]
        if item is None:  # unreadable, skipped by the reader
            continue
        image, target = item
        sampler.add(to_image_tensor(image), target, results[index])
    return sampler.finish()
