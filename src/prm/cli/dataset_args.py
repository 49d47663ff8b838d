"""The flags that name a dataset, shared by the commands that read one.

``add_dataset_arguments`` adds ``--dataset``, ``--root``,
``--split`` and, for COCO data that is not laid out as
``root/annotations/instances_<split>.json`` + ``root/<split>/`` (a user's own COCO export
rarely is), ``--annotations FILE`` and ``--image-dir DIR``;
``dataset_from_args`` builds the dataset they describe, and ``write_report`` records
them in the run's HTML report.
"""

from __future__ import annotations

import argparse

__all__ = ["add_dataset_arguments", "dataset_from_args", "write_report"]


def add_dataset_arguments(
    parser: argparse.ArgumentParser, required: bool = True, default_split: str = "the reader's"
) -> None:
    """Add ``--dataset/--root/--split/--annotations/--image-dir`` to a parser.

    Args:
        parser: the sub-command's parser.
        required: ``--dataset`` is required (else it may be in a mutually exclusive
            group the caller makes; then add ``--dataset`` there and pass False).
        default_split: how the help describes the default split.
    """
    if required:
        parser.add_argument(
            "--dataset", required=True, help="dataset reader: voc, coco, folder, shapes, glyphs"
        )
    parser.add_argument("--root", help="dataset folder (see `prm.data.build_dataset`)")
    parser.add_argument("--split", help=f"dataset split (default: {default_split})")
    parser.add_argument(
        "--annotations",
        metavar="FILE",
        help="coco: the instances json, anywhere (instead of root/annotations/"
        "instances_<split>.json)",
    )
    parser.add_argument(
        "--image-dir",
        metavar="DIR",
        help="coco: the folder of the images the json names (instead of root/<split>/)",
    )


def dataset_from_args(args: argparse.Namespace, split: str | None = None, **kwargs):
    """The dataset the flags of :func:`add_dataset_arguments` describe.

    Args:
        args: parsed flags.
        split: the split to use when ``--split`` is not given (``None``: the reader's).
        **kwargs: passed to :func:`prm.data.build_dataset`.

    Raises:
        ValueError: ``--annotations``/``--image-dir`` with a dataset other than coco, or
            ``--annotations`` without a way to find the images.
    """
    from pathlib import Path

    from prm.data import build_dataset

    name = args.dataset.lower()
    annotations = getattr(args, "annotations", None)
    image_dir = getattr(args, "image_dir", None)
    root = args.root
    if annotations or image_dir:
        if name != "coco":
            raise ValueError("--annotations and --image-dir are for --dataset coco")
        if annotations:
            kwargs["annotation_file"] = Path(annotations)
        if image_dir:
            kwargs["image_dir"] = Path(image_dir)
        if root is None and not image_dir:
            raise ValueError("--annotations needs --image-dir (or --root with <split>/)")
        if root is None and not annotations:
            raise ValueError("--image-dir needs --annotations (or --root with annotations/)")
    chosen = args.split if args.split is not None else split
    return build_dataset(name, root, chosen, **kwargs)


def write_report(args: argparse.Namespace, sampler, dataset, results: str, split, checkpoint=None):
    """The HTML report of a ``--out`` run (``prm report`` rebuilds it): the gallery of
    ``sampler``, ``run.json`` (with the dataset flags) and ``OUT/report/index.html``."""
    from pathlib import Path

    from prm.report import dataset_flags, write_run_report

    flags = dataset_flags(args.dataset, args.root, split, args.annotations, args.image_dir)
    info = {"dataset": flags} | ({} if checkpoint is None else {"checkpoint": checkpoint})
    return write_run_report(
        args.out,
        sampler,
        command=f"prm {args.command}",
        name=Path(args.out).resolve().name,
        classes=list(dataset.classes),
        category_ids=list(dataset.category_ids),
        results=results,
        **info,
    )
