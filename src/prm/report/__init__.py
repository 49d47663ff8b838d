"""The HTML report of a run: metrics, per-class tables and charts, PR curves, a gallery
of the best, worst and random images, and the comparison of two runs.

``prm predict --evaluate``, ``prm evaluate --out`` and ``prm demo`` write it;
``prm report RUN_DIR`` (re)builds it from the run folder. See ``docs/report.md``.
"""

from .gallery import GROUPS, GallerySampler, load_gallery, match_image
from .page import build_report, dataset_flags, load_run, write_run_info, write_run_report
from .sample import sample_from_results

__all__ = [
    "GROUPS",
    "GallerySampler",
    "build_report",
    "dataset_flags",
    "load_gallery",
    "load_run",
    "match_image",
    "sample_from_results",
    "write_run_info",
    "write_run_report",
]
