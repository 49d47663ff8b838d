"""Resumable passes over a dataset, sharded across ``torchrun`` processes.

``prm pseudo-label`` and ``prm predict`` (under ``torchrun`` or with ``--resume``) share
this bookkeeping: each process (``rank`` of ``world_size``) takes the images
``index % world_size == rank`` and appends one JSON line per finished image to
``<out>/parts/part-<rank>.jsonl`` (flushed). A rerun reads every part, skips the images
already there (whatever world size wrote them), cuts a line left half-written by a kill,
and rank 0, after every rank is done, reads the records ordered by dataset index with
each image once, so the merged output depends neither on the number of processes nor
on interruptions. ``<out>/parts/settings.json`` records the run's settings: a rerun with
others is refused, since the parts would mix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prm.files import write_text_atomic

__all__ = ["PARTS_DIR", "read_records", "run_shard"]

PARTS_DIR = "parts"

#: ``work(index, image (3, H, W) float, target, proposals or None) -> fields of the line``.
ShardWork = Callable[[int, torch.Tensor, dict, "torch.Tensor | None"], dict[str, Any]]


def _read_part(path: Path) -> list[dict]:
    """The complete lines of a part file (a line cut by a kill is ignored)."""
    records = []
    with open(path) as handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # the last write was cut: that image is redone
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def _repair_part(path: Path) -> None:
    """Cut a part file after its last complete line, so that appending stays valid."""
    if not path.is_file():
        return
    data = path.read_bytes()
    good = 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            json.loads(line)
        except json.JSONDecodeError:
            break
        good += len(line)
    if good != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(good)


def read_records(out_dir: str | os.PathLike) -> dict[int, dict]:
    """Every finished image's line of ``<out_dir>/parts/``, by dataset index (each once)."""
    records: dict[int, dict] = {}
    for path in sorted((Path(out_dir) / PARTS_DIR).glob("part-*.jsonl")):
        for record in _read_part(path):
            records.setdefault(int(record["index"]), record)
    return dict(sorted(records.items()))


def _check_settings(parts: Path, settings: dict[str, Any], what: str) -> None:
    """A rerun must use the settings of the run it resumes (else the parts would mix)."""
    path = parts / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(
                f"{parts} holds a {what} run with other settings ({', '.join(changed)}); "
                "use another --out folder or delete it"
            )
        return
    write_text_atomic(path, json.dumps(settings, indent=2, sort_keys=True))


def run_shard(
    dataset,
    out_dir: str | os.PathLike,
    work: ShardWork,
    *,
    settings: dict[str, Any],
    proposals=None,
    max_size: int | None = None,
    limit: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    progress: bool = True,
    desc: str = "images",
) -> dict[int, dict] | None:
    """This rank's share of a resumable pass (see the module docstring).

    Args:
        dataset: a ``prm.data`` dataset without a transform; an unreadable item (``None``
            from ``on_error="skip"``) gets a ``{"index", "skipped": problem}`` line.
        out_dir: output folder; the parts go to ``<out_dir>/parts/``.
        work: computes the line of one image (``index`` is added).
        settings: what the run depends on (recorded; a rerun with others is refused);
            ``"images"`` (the number of images of the pass) is added.
        proposals: ``source(image_id, image_uint8) -> (P, H, W)`` or ``None``.
        max_size: proposals of larger images are computed at this size (the
            predictor's working size; see :func:`prm.engine.inference.dataset_images`).
        limit: only the first ``limit`` images.
        rank, world_size: this process's shard; one process by default.
        barrier: ``torch.distributed.barrier`` under ``torchrun``.
        progress, desc: progress bar.

    Returns:
        On rank 0, once every rank is done: every image's line by dataset index
        (:func:`read_records`); ``None`` on the other ranks.
    """
    parts = Path(out_dir) / PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    record = {"images": count, **settings}
    what = desc.split("[")[0]
    if rank == 0:
        _check_settings(parts, record, what)
    if barrier is not None:
        barrier()  # the settings check happens before anyone appends
    if rank != 0:
        _check_settings(parts, record, what)
    part = parts / f"part-{rank}.jsonl"
    _repair_part(part)
    done = set(read_records(out_dir))
    todo = [i for i in range(rank, count, world_size) if i not in done]
    from prm.engine.inference import _load_item

    with open(part, "a") as handle:
        for index in tqdm(todo, desc=f"{desc}[{rank}]", disable=not progress, dynamic_ncols=True):
            loaded = _load_item(dataset, index, proposals, max_size)
            entry: dict[str, Any] = {"index": index}
            if loaded is None:
                entry["skipped"] = str(dataset.skipped[-1][1]) if dataset.skipped else "unreadable"
            else:
                entry.update(work(index, *loaded))
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
    if barrier is not None:
        barrier()
    return read_records(out_dir) if rank == 0 else None
