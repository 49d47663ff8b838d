"""Presenting metrics: a text table, a JSON file and precision-recall curve plots.

Kept apart from the metric code: nothing here computes a number.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prm.files import write_text_atomic

from .ap import voc_ap

__all__ = ["format_table", "plot_pr_curves", "split_metrics", "write_report"]


def format_cell(value: Any, undefined: str = "-") -> str:
    """A metric as tables show it: fractions in percent (1 decimal), counts as they are."""
    if value is None:
        return undefined
    if isinstance(value, float):
        return f"{100 * value:.1f}"
    return str(value)


def split_metrics(
    metrics: Mapping[str, Any], classes: Sequence[str]
) -> tuple[dict[str, Any], list[str], dict[str, dict[str, Any]]]:
    """``(summary, per-class columns, {class: {column: value}})`` of a flat metrics dict.

    Keys ``<family>/<name>/<class>`` are per class (in :func:`format_table` and the HTML
    report); a class name may hold ``/``. With no class list, any key of 3+ parts is.
    """
    # Longest first: a class named "a/b" must win over a class named "b".
    names = sorted(set(classes) | {"background"}, key=len, reverse=True)
    summary: dict[str, Any] = {}
    columns: list[str] = []
    per_class: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        head, _, tail = key.rpartition("/")
        if classes:
            found = next((n for n in names if key.endswith(f"/{n}")), None)
            if found is not None:
                head, tail = key[: -len(found) - 1], found
        if head and "/" in head and (tail in names or not classes):
            if head not in columns:
                columns.append(head)
            per_class.setdefault(tail, {})[head] = value
        else:
            summary[key] = value
    return summary, columns, per_class


def format_table(metrics: Mapping, classes: Sequence[str] = ()) -> str:
    """Metrics as text: the summary values, then one row per class.

    Fractions are shown as percentages with one decimal, counts as integers, undefined
    values as ``-``.

    Args:
        metrics: the flat dict of ``summarize()`` / :func:`prm.evaluation.evaluate`.
        classes: class names; keys ending in ``/<class>`` go to the per-class table.

    Returns:
        The table, lines joined by newlines.
    """
    # With no class list only "background" rows are per class.
    summary, columns, per_class = split_metrics(metrics, list(classes) or ["background"])
    width = max([len(k) for k in summary] + [6])
    lines = [f"{'metric':<{width}}  value (%)"]
    lines += [f"{key:<{width}}  {format_cell(value):>9}" for key, value in summary.items()]
    if columns:
        # A class no metric says anything about (no ground truth, no prediction) is noise.
        rows = [
            c
            for c in ["background", *classes]
            if any(v is not None for v in per_class.get(c, {}).values())
        ]
        headers = [c.removeprefix("instance/") for c in columns]  # the main metric
        name_width = max(len(r) for r in [*rows, "class"])
        widths = [max(len(h), 5) for h in headers]
        lines += ["", "per class (%):"]
        header = "  ".join(f"{h:>{w}}" for h, w in zip(headers, widths, strict=True))
        lines.append(f"{'class':<{name_width}}  {header}")
        for row in rows:
            cells = "  ".join(
                f"{format_cell(per_class[row].get(c)):>{w}}"
                for c, w in zip(columns, widths, strict=True)
            )
            lines.append(f"{row:<{name_width}}  {cells}")
    return "\n".join(lines)


def plot_pr_curves(
    curves: Mapping[float, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    out_dir: str | os.PathLike,
    prefix: str = "pr_curve",
) -> list[Path]:
    """One PNG per IoU threshold with the precision-recall curve of every class.

    Args:
        curves: ``{threshold: {class: (precision, recall)}}`` as
            :meth:`InstanceSegmentationEvaluator.curves` returns.
        out_dir: folder for the PNGs (created).
        prefix: file names are ``<prefix>_iou<threshold>.png``.

    Returns:
        The paths written.
    """
    # The object API draws to files without pyplot: the user's backend stays as it was.
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for threshold, per_class in curves.items():
        fig = Figure(figsize=(8, 6))
        ax = fig.subplots()
        cmap = colormaps["tab20"]
        for k, (name, (precision, recall)) in enumerate(per_class.items()):
            # Draw the monotone envelope, the curve AP is the area under.
            envelope = np.maximum.accumulate(np.asarray(precision)[::-1])[::-1]
            ax.step(
                np.concatenate(([0.0], recall)),
                np.concatenate(([envelope[0] if len(envelope) else 0.0], envelope)),
                where="pre",
                color=cmap(k % 20),
                label=f"{name} ({100 * voc_ap(precision, recall):.1f})",
            )
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
        ax.set_title(f"mask IoU >= {threshold:g} (legend: class, AP %)")
        ax.grid(alpha=0.3)
        if per_class:
            ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{prefix}_iou{threshold:g}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


def write_report(
    out_dir: str | os.PathLike,
    metrics: Mapping,
    curves: Mapping | None = None,
) -> list[Path]:
    """Write ``metrics.json`` (and PR curve PNGs when ``curves`` is given) to ``out_dir``.

    Returns:
        The paths written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        write_text_atomic(out_dir / "metrics.json", json.dumps(dict(metrics), indent=2) + "\n")
    ]
    if curves:
        paths += plot_pr_curves(curves, out_dir)
    return paths
