"""The HTML report of a run: one ``index.html`` with its pictures beside it.

A *run folder* is what ``prm predict --evaluate`` or ``prm evaluate --out`` writes:

- ``metrics.json`` (required), ``pr_curve_iou*.png``;
- ``run.json``: what produced it (command, classes, category ids, results file, dataset
  flags), written by :func:`write_run_info`;
- ``gallery/``: the sampled images (:class:`prm.report.gallery.GallerySampler`).

:func:`build_report` writes ``OUT/index.html`` and ``OUT/images/*.png`` (default
``OUT = RUN/report``). The page needs no network and no script from elsewhere: styles and
the few lines of table-sorting JavaScript are inline, pictures are referenced by relative
paths, so the folder can be copied anywhere. Every text that comes from data (class
names, image ids, file names, run names) is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prm.evaluation.report import format_cell, split_metrics
from prm.files import write_text_atomic

from .gallery import GROUPS, INDEX_FILE, load_gallery, match_image
from .render import render_item, render_prediction

__all__ = [
    "RUN_INFO",
    "build_report",
    "dataset_flags",
    "load_run",
    "write_run_info",
    "write_run_report",
]

RUN_INFO = "run.json"
IMAGE_DIR = "images"


def esc(value: Any) -> str:
    """Text made safe for HTML content and quoted attributes."""
    return html.escape(str(value), quote=True)


def write_run_info(run_dir: str | os.PathLike, **info: Any) -> Path:
    """Write ``RUN/run.json``: what the report needs to know about the run.

    Keys used by the report: ``command``, ``name`` (a label), ``classes``,
    ``category_ids``, ``results`` (the results file; relative paths are relative to the
    run folder), ``dataset`` (``{"name", "root", "split"}``), ``checkpoint``. Paths are
    stored as strings; anything JSON can hold is kept.
    """
    text = json.dumps({"format": 1, **info}, indent=2, default=str) + "\n"
    return write_text_atomic(Path(run_dir) / RUN_INFO, text)


def dataset_flags(
    name: str,
    root: str | os.PathLike | None,
    split: str | None,
    annotations: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
) -> dict:
    """The dataset flags of a run as run.json keeps them (paths absolute)."""

    def absolute(path):
        return str(Path(path).resolve()) if path else None

    flags = {"name": name, "root": absolute(root), "split": split}
    if annotations or image_dir:  # COCO data laid out elsewhere
        flags.update(annotations=absolute(annotations), image_dir=absolute(image_dir))
    return flags


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run folder's ``metrics``, ``info`` (run.json, may be empty) and ``classes``.

    Raises:
        FileNotFoundError: the folder or its ``metrics.json`` is missing.
        ValueError: naming the file, when a JSON file is unreadable.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run folder not found")
    metrics = _read_json(run_dir / "metrics.json", required=True)
    info = _read_json(run_dir / RUN_INFO, required=False) or {}
    if not isinstance(metrics, dict) or not isinstance(info, dict):
        raise ValueError(f"{run_dir}: metrics.json and run.json must hold JSON objects")
    classes = info.get("classes")
    if not classes and (run_dir / "gallery" / INDEX_FILE).is_file():
        classes = _read_json(run_dir / "gallery" / INDEX_FILE, required=True).get("classes")
    return {"dir": run_dir, "metrics": metrics, "info": info, "classes": list(classes or [])}


def _read_json(path: Path, required: bool) -> Any:
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path}: not found (is this a run folder?)")
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def cell(value: Any) -> str:
    """A metric as the report shows it (:func:`~prm.evaluation.report.format_cell`)."""
    return format_cell(value, "–")


def _num(value: Any) -> str:
    """The sort key of a cell (``data-value``): the raw number, empty when undefined."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))
    return ""


def _td(value: Any, show=cell, extra: str = "") -> str:
    """A number's table cell: shown by ``show``, sorted by its raw value."""
    return f'<td class="num{extra}" data-value="{_num(value)}">{esc(show(value))}</td>'


def _main_column(columns: Sequence[str]) -> str | None:
    for preferred in ("instance/AP_r@0.5", "coco/AP", "semantic/IoU"):
        if preferred in columns:
            return preferred
    ap = [c for c in columns if "AP" in c]
    return (ap or list(columns) or [None])[0]


def build_report(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    compare: str | os.PathLike | None = None,
    title: str | None = None,
) -> Path:
    """Write the HTML report of a run (and, optionally, its comparison with another run).

    Args:
        run_dir: the run folder (``metrics.json``, ``run.json``, ``gallery/``).
        out_dir: where ``index.html`` and ``images/`` go (default ``RUN/report``); its
            ``images/`` folder is emptied of earlier PNGs first.
        compare: another run folder over the same images: the page adds metric
            differences (overall and per class) and the other run's predictions on this
            run's gallery images, read from its gallery or its results file.
        title: page title (default: the run's ``name`` or folder name).

    Returns:
        The path of ``index.html``.
    """
    run = load_run(run_dir)
    other = load_run(compare) if compare is not None else None
    out_dir = Path(out_dir) if out_dir is not None else run["dir"] / "report"
    images = out_dir / IMAGE_DIR
    images.mkdir(parents=True, exist_ok=True)
    for old in images.glob("*.png"):
        old.unlink()
    name = title or run["info"].get("name") or run["dir"].resolve().name
    classes = run["classes"]
    summary, columns, per_class = split_metrics(run["metrics"], classes)

    body = [_header(name, run, other is not None)]
    body.append(_summary_section(summary))
    if per_class:
        body.append(_class_section(classes, columns, per_class))
    body.append(_curves_section(run["dir"], images))
    gallery_items: list[dict] = []
    gallery_dir = run["dir"] / "gallery"
    if (gallery_dir / INDEX_FILE).is_file():
        index, gallery_items = load_gallery(gallery_dir)
        classes = classes or list(index.get("classes", []))
        body.append(_gallery_section(index, gallery_items, classes, images))
    else:
        body.append(
            '<section id="gallery"><h2>Gallery</h2><p class="note">This run has no saved '
            "gallery (it is written by <code>prm predict --evaluate</code> and "
            "<code>prm evaluate --out</code>; <code>prm report RUN --dataset ...</code> "
            "samples one from the results file).</p></section>"
        )
    if other is not None:
        body.append(_compare_section(run, other, name, gallery_items, classes, images))
    page = _PAGE.format(
        title=esc(f"prm report: {name}"), csp=_CSP, css=_CSS, js=_JS, body="\n".join(body)
    )
    return write_text_atomic(out_dir / "index.html", page)


def _header(name: str, run: Mapping, compare: bool) -> str:
    info = run["info"]
    keys = [key for key in ("command", "checkpoint", "results") if info.get(key)]
    facts = [f"<dt>{esc(key)}</dt><dd><code>{esc(info[key])}</code></dd>" for key in keys]
    dataset = info.get("dataset")
    if isinstance(dataset, Mapping):
        text = ", ".join(f"{k}={v}" for k, v in dataset.items() if v is not None)
        facts.append(f"<dt>dataset</dt><dd><code>{esc(text)}</code></dd>")
    links = [("summary", "Metrics"), ("per-class", "Per class"), ("pr-curves", "PR curves")]
    links += [("gallery", "Gallery")] + ([("compare", "Comparison")] if compare else [])
    nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in links)
    return (
        f"<header><h1>{esc(name)}</h1><dl class='facts'>{''.join(facts)}</dl>"
        f"<nav>{nav}</nav></header>"
    )


def _summary_section(summary: Mapping[str, Any]) -> str:
    families: dict[str, list[str]] = {}
    for key, value in summary.items():
        family, _, rest = key.partition("/")
        families.setdefault(family if rest else "", []).append(
            f'<tr data-key="{esc(key)}"><th scope="row">{esc(rest or key)}</th>{_td(value)}</tr>'
        )
    tables = "".join(
        f'<table class="metrics"><caption>{esc(family or "other")}</caption>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        for family, rows in families.items()
    )
    return (
        '<section id="summary"><h2>Metrics</h2><p class="note">Fractions in percent; '
        "counts as numbers; – where undefined. mAP_r: mean over classes of mask AP at "
        "an IoU threshold; ABO: average best overlap; pointwise: peak localisation mAP; "
        "classification: image-level mAP (the project's docs/evaluation.md defines "
        f'each).</p><div class="metric-grid">{tables}</div></section>'
    )


def _class_section(
    classes: Sequence[str], columns: Sequence[str], per_class: Mapping[str, Mapping]
) -> str:
    order = [c for c in ["background", *classes] if c in per_class]
    order += [c for c in per_class if c not in order]
    rows = [c for c in order if any(v is not None for v in per_class[c].values())]
    head = '<th data-type="text" scope="col"><button>class</button></th>' + "".join(
        f'<th data-type="num" scope="col"><button>{esc(c)}</button></th>' for c in columns
    )
    body = []
    for row in rows:
        cells = "".join(_td(per_class[row].get(c)) for c in columns)
        body.append(f'<tr><th scope="row" data-value="{esc(row)}">{esc(row)}</th>{cells}</tr>')
    main = _main_column(columns)
    values = [(row, per_class[row].get(main)) for row in rows] if main is not None else []
    bars = [
        f'<div class="bar-row"><span class="bar-label">{esc(row)}</span>'
        f'<span class="bar"><span style="width:{max(0.0, min(100.0, 100 * float(v))):.1f}%">'
        f'</span></span><span class="bar-value">{esc(cell(v))}</span></div>'
        for row, v in values
        if isinstance(v, (int, float))
    ]
    chart = (
        f"<h3>{esc(main)} per class (%)</h3><div class='bars' id='class-bars'>{''.join(bars)}</div>"
        if bars
        else ""
    )
    return (
        '<section id="per-class"><h2>Per class</h2><p class="note">Click a column header '
        "to sort (again to reverse). Percent.</p>"
        '<div class="scroll"><table class="sortable" id="class-table"><thead><tr>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{chart}</section>"
    )


def _curves_section(run_dir: Path, images: Path) -> str:
    figures = []
    for k, path in enumerate(sorted(run_dir.glob("pr_curve_iou*.png"))):
        name = f"pr-{k}.png"  # our own name: the run's file names are not trusted
        shutil.copyfile(path, images / name)
        threshold = path.stem.removeprefix("pr_curve_iou")
        figures.append(
            f'<figure class="curve"><img src="{IMAGE_DIR}/{name}" alt="precision-recall '
            f'curves at mask IoU {esc(threshold)}"><figcaption>mask IoU &ge; {esc(threshold)}'
            "</figcaption></figure>"
        )
    if not figures:
        return '<section id="pr-curves"><h2>PR curves</h2><p class="note">none saved</p></section>'
    return (
        '<section id="pr-curves"><h2>Precision-recall curves per class</h2>'
        f'<div class="curves">{"".join(figures)}</div></section>'
    )


def _figure(name: str, caption: str, extra: str = "") -> str:
    return (
        f'<figure class="panel{extra}"><img src="{IMAGE_DIR}/{esc(name)}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def _counts(item: Mapping) -> str:
    matches = np.asarray(item["matches"])
    tp, fp = int((matches == 1).sum()), int((matches == 0).sum())
    missed = int(np.asarray(item["missed"]).sum())
    return f"{tp} correct, {fp} false positive{'s' * (fp != 1)}, {missed} missed"


def _score_text(score: Any) -> str:
    return "no ground truth or prediction" if score is None else f"image AP {100 * score:.1f}"


def _gallery_section(
    index: Mapping, items: Sequence[dict], classes: Sequence[str], images: Path
) -> str:
    threshold = index.get("iou_threshold", 0.5)
    mean = index.get("mean_image_ap")
    parts = [
        '<section id="gallery"><h2>Gallery</h2><p class="note">'
        f"{esc(index.get('images', '?'))} images; best, worst and random by per-image AP "
        f"(mask IoU &ge; {esc(threshold)}: this image's predictions ranked by score and "
        "matched as for mAP^r; AP per class present in its ground truth or predictions, "
        "0 for a predicted class that is absent; the mean over those classes"
        + (f"; mean over the run {100 * mean:.1f}" if mean is not None else "")
        + "). Red boxes: false positives (FP) on the prediction, missed objects on the "
        "ground truth. Crosses: peaks.</p>"
    ]
    for group in GROUPS:
        cards = []
        for k, item in enumerate(items):
            if item.get("group") != group:
                continue
            panels = render_item(item, classes, images, f"g{k:03d}")
            main = [_figure(n, c) for key in ("prediction", "truth") for n, c in panels[key]]
            maps = [_figure(n, c, " small") for key in ("prms", "crms") for n, c in panels[key]]
            detail = (
                f"<details open><summary>peak response maps and class response maps "
                f"({len(maps)})</summary><div class='panels'>{''.join(maps)}</div></details>"
                if maps
                else "<p class='note'>no PRMs saved (a results file holds masks only)</p>"
            )
            cards.append(
                f'<article class="card" data-group="{esc(group)}"><h4>image '
                f"<code>{esc(item['image_id'])}</code> &middot; {esc(_score_text(item['score']))}"
                f" &middot; {esc(_counts(item))}</h4><div class='panels'>{''.join(main)}</div>"
                f"{detail}</article>"
            )
        if cards:
            parts.append(f"<h3>{esc(group)}</h3>{''.join(cards)}")
    parts.append("</section>")
    return "".join(parts)


def _other_predictions(other: Mapping, items: Sequence[dict]) -> dict[str, dict]:
    """The other run's predictions on the given gallery images, by image id.

    From its gallery when it saved the same image, else decoded from its results file.
    """
    gallery = other["dir"] / "gallery"
    found = (
        {str(i["image_id"]): i for i in load_gallery(gallery)[1]}
        if (gallery / INDEX_FILE).is_file()
        else {}
    )
    wanted = {str(item["image_id"]) for item in items} - set(found)
    results = other["info"].get("results")
    category_ids = other["info"].get("category_ids")
    if not wanted or not results or not category_ids:
        return found
    path = other["dir"] / results  # relative to the run folder, unless absolute
    if not path.is_file():
        return found
    from prm.masks import decode_rle

    entries = _read_json(path, required=True)
    label_of = {int(c): k for k, c in enumerate(category_ids)}
    grouped: dict[str, list] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and str(entry.get("image_id")) in wanted:
            grouped.setdefault(str(entry["image_id"]), []).append(entry)
    for image_id in wanted:
        chosen = grouped.get(image_id, [])
        try:
            labels = [label_of[int(e["category_id"])] for e in chosen]
            masks = decode_rle([e["segmentation"] for e in chosen]) if chosen else None
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable entry for image {image_id!r} ({exc})") from exc
        found[image_id] = {
            "masks": masks.numpy() if masks is not None else None,
            "labels": np.asarray(labels, dtype=np.int64),
            "scores": np.asarray([float(e["score"]) for e in chosen], dtype=np.float32),
        }
    return found


def _compare_section(
    run: Mapping,
    other: Mapping,
    name: str,
    items: Sequence[dict],
    classes: Sequence[str],
    images: Path,
) -> str:
    other_name = other["info"].get("name") or other["dir"].resolve().name
    mine, my_columns, my_class = split_metrics(run["metrics"], classes)
    theirs, _, their_class = split_metrics(other["metrics"], classes)
    a, b = esc(name), esc(other_name)
    rows = [
        _diff_row(f'<tr data-key="{esc(k)}"><th scope="row">{esc(k)}</th>', mine[k], theirs[k])
        for k in mine
        if k in theirs
    ]
    parts = [
        f'<section id="compare"><h2>Comparison: {a} vs {b}</h2>'
        f'<p class="note">Differences are {a} minus {b}, in percentage points.</p>'
        '<div class="scroll"><table id="compare-table"><thead><tr><th>metric</th>'
        f"<th>{a}</th><th>{b}</th><th>difference</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    ]
    main = _main_column(my_columns)
    if main is not None:
        shared = [c for c in classes if c in my_class and c in their_class]
        pairs = [(c, my_class[c].get(main), their_class[c].get(main)) for c in shared]
        body = [
            _diff_row(f'<tr><th scope="row" data-value="{esc(c)}">{esc(c)}</th>', x, y, False)
            for c, x, y in pairs
            if x is not None or y is not None
        ]
        parts.append(
            f"<h3>{esc(main)} per class</h3><div class='scroll'><table class='sortable' "
            'id="compare-class-table"><thead><tr>'
            '<th data-type="text"><button>class</button></th>'
            f'<th data-type="num"><button>{a}</button></th>'
            f'<th data-type="num"><button>{b}</button></th>'
            '<th data-type="num"><button>difference</button></th></tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )
    cards = _compare_cards(other, (name, other_name), items, classes, images)
    if cards:
        parts.append(f"<h3>The same images</h3>{''.join(cards)}")
    parts.append("</section>")
    return "".join(parts)


def _diff_row(head: str, x: Any, y: Any, coloured: bool = True) -> str:
    """A comparison row: ``head`` (``<tr><th>``), both values and their difference."""
    numbers = isinstance(x, (int, float)) and isinstance(y, (int, float))
    d = x - y if numbers and not isinstance(x, bool) else None
    sign = "" if d is None or not coloured else (" up" if d > 0 else " down" if d < 0 else "")
    return f"{head}{_td(x)}{_td(y)}{_td(d, _signed, sign)}</tr>"


def _compare_cards(other, names, items, classes, images: Path) -> list[str]:
    """The other run's predictions drawn beside this run's on the gallery's images."""
    (name, other_name), (a, b) = names, map(esc, names)
    predictions = _other_predictions(other, items)
    cards = []
    for k, item in enumerate(items):
        theirs = predictions.get(str(item["image_id"]))
        if theirs is None:
            continue
        masks = theirs.get("masks")
        if masks is None:
            masks = np.zeros((0, *item["image"].shape[:2]), dtype=bool)
        if masks.shape[1:] != item["image"].shape[:2]:
            continue  # not the same picture
        target = {
            "masks": item["gt_masks"],
            "labels": item["gt_labels"],
            "iscrowd": item["gt_crowd"],
        }
        prediction = {"masks": masks, "labels": theirs["labels"], "scores": theirs["scores"]}
        result = match_image(target, prediction, len(classes))
        drawn = {**theirs, "image": item["image"], "masks": masks, "matches": result["matches"]}
        render_prediction(drawn, classes).save(images / f"c{k:03d}-other.png")
        cards.append(
            f'<article class="card"><h4>image <code>{esc(item["image_id"])}</code> &middot; '
            f"{a}: {esc(_score_text(item['score']))} &middot; {b}: "
            f"{esc(_score_text(result['score']))}</h4><div class='panels'>"
            + _figure(f"g{k:03d}-pred.png", f"{name}: {_counts(item)}")
            + _figure(f"c{k:03d}-other.png", f"{other_name}: {_counts(result)}")
            + _figure(f"g{k:03d}-gt.png", "ground truth")
            + "</div></article>"
        )
    return cards


def _signed(value: Any) -> str:
    """A difference: counts as counts, fractions in percentage points."""
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:+d}"
    return f"{100 * value:+.1f}"


def _script_hash(script: str) -> str:
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
{body}
<footer>Written by <code>prm report</code>. Self-contained: pictures in images/, no network.
</footer>
<script>{js}</script>
</body>
</html>
"""

_CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #d9dce0; --accent: #1f77b4; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); margin: 0 auto; padding: 0 16px 32px; max-width: 1240px; }
header { border-bottom: 1px solid var(--line); margin-bottom: 8px; }
h1 { font-size: 1.5em; margin: 16px 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 1.25em; margin: 28px 0 8px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05em; margin: 18px 0 6px; }
h4 { font-size: 0.95em; font-weight: 600; margin: 0 0 6px; overflow-wrap: anywhere; }
nav a { margin-right: 12px; color: var(--accent); }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 6px 0; }
.facts dt { color: var(--muted); } .facts dd { margin: 0; overflow-wrap: anywhere; }
.note { color: var(--muted); font-size: 0.9em; margin: 4px 0 8px; }
.scroll { overflow-x: auto; max-width: 100%; }
.metric-grid { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
table.metrics caption { text-align: left; font-weight: 600; padding: 2px 0; }
table.metrics th { font-weight: normal; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 10px; border-bottom: 1px solid var(--line); text-align: left; }
td.num { text-align: right; }
td.up { color: #1a7f37; } td.down { color: #c62828; }
th button { font: inherit; font-weight: 600; background: none; border: 0; padding: 0;
  cursor: pointer; color: var(--accent); }
th[aria-sort="ascending"] button::after { content: " \\25B2"; }
th[aria-sort="descending"] button::after { content: " \\25BC"; }
.bars { max-width: 720px; }
.bar-row { display: grid; grid-template-columns: minmax(80px, 180px) 1fr 52px; gap: 8px;
  align-items: center; margin: 2px 0; }
.bar-label { overflow-wrap: anywhere; } .bar-value { text-align: right; }
.bar { background: #eef1f4; height: 14px; display: block; }
.bar span { background: var(--accent); height: 100%; display: block; }
.curves { display: flex; flex-wrap: wrap; gap: 12px; }
.curve { margin: 0; flex: 1 1 480px; max-width: 620px; }
img { max-width: 100%; height: auto; display: block; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px; margin: 10px 0; }
.panels { display: flex; flex-wrap: wrap; gap: 8px; }
.panel { margin: 0; flex: 0 1 300px; min-width: 0; }
.panel.small { flex-basis: 150px; }
figcaption { font-size: 0.85em; color: var(--muted); overflow-wrap: anywhere; }
details summary { cursor: pointer; margin: 6px 0; color: var(--accent); }
footer { margin-top: 32px; color: var(--muted); font-size: 0.85em; }
@media (max-width: 600px) {
  body { padding: 0 8px 24px; font-size: 14px; }
  .panel { flex-basis: 100%; } .panel.small { flex-basis: calc(50% - 4px); }
  .bar-row { grid-template-columns: 90px 1fr 44px; }
  th, td { padding: 3px 6px; }
}
"""

# Sorting: a click on a header orders the rows by that column's data-value (numbers
# numerically, undefined last), a second click reverses.
_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var down = th.getAttribute("aria-sort") === "ascending";
      table.querySelectorAll("thead th").forEach(function (o) { o.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", down ? "descending" : "ascending");
      var numeric = th.dataset.type === "num";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
        if (numeric) {
          if (x === "" || y === "") { return (x === "") - (y === ""); }
          x = parseFloat(x); y = parseFloat(y);
        }
        var order = x < y ? -1 : x > y ? 1 : 0;
        return down ? -order : order;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

# Nothing from the network, and only our own script runs: a second line of defence should
# a name ever slip through unescaped.
_CSP = (
    "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{_script_hash(_JS)}'"
)


def write_run_report(
    run_dir: str | os.PathLike,
    sampler=None,
    compare: str | os.PathLike | None = None,
    **info: Any,
) -> Path:
    """What the commands call at the end of a run: save the gallery, run.json, the page.

    Args:
        run_dir: the run folder (``metrics.json`` already written).
        sampler: the :class:`~prm.report.gallery.GallerySampler` that saw the images.
        compare: another run folder to compare with.
        **info: for :func:`write_run_info`.

    Returns:
        The path of ``RUN/report/index.html``.
    """
    if sampler is not None:
        sampler.finish()
    write_run_info(run_dir, **info)
    return build_report(run_dir, compare=compare)
