"""The ``prm`` command line: a thin layer over the library.

Each sub-command lives in its own module of this package and provides:

- ``HELP`` (the line in ``prm --help``), ``DESCRIPTION`` and ``EPILOG`` (examples);
- ``add_arguments(parser)``: adds the sub-command's own flags (``--quiet`` and
  ``--threads``, which every sub-command has, are added by :func:`build_parser`);
- ``run(args) -> int``: does the work by calling the library, returns the exit status.

Errors a user can cause (missing path, unreadable file, mismatched checkpoint) are
raised as ``ValueError`` / ``FileNotFoundError`` by the library and printed here as one
line, with exit status 2, instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command name -> module (relative to this package). Modules are imported lazily so
# that `prm --help` stays fast and one broken optional dependency cannot break the rest.
COMMANDS = {
    "demo": ".demo",
    "train": ".train",
    "predict": ".predict",
    "evaluate": ".evaluate",
    "tune": ".tune",
    "proposals": ".proposals",
    "report": ".report",
    "explain": ".explain",
    "pseudo-label": ".pseudo_label",
    "distill": ".distill",
}

#: torch's intra-op threads per process unless ``--threads`` says otherwise. Measured on a
#: 2-core machine (README, "Threads"): extra threads only paid off on an idle machine,
#: and cost several times their gain once other processes shared the cores.
DEFAULT_THREADS = 1

EPILOG = """examples:
  prm demo                       # synthetic data: train, predict, evaluate (CPU, minutes)
  prm explain photo.jpg          # your photos, an ImageNet classifier, no training
  prm train --dataset voc --root VOCdevkit/VOC2012 --out runs/voc
  prm predict --checkpoint runs/voc/last.pt --images photos/ --out predictions/
  prm evaluate --dataset voc --root VOCdevkit/VOC2012 --split val --predictions results.json
  prm proposals --dataset voc --root VOCdevkit/VOC2012 --split val --cache proposals/
  prm tune --checkpoint runs/voc/last.pt --dataset voc --root VOCdevkit/VOC2012 --split val
  prm report predictions/        # (re)build predictions/report/index.html

Run `prm COMMAND --help` for the flags and more examples of each command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prm",
        description="Weakly supervised instance segmentation with Peak Response Maps.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from prm import __version__

    parser.add_argument("--version", action="version", version=f"prm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name, __name__)
        sub = subparsers.add_parser(
            name,
            help=module.HELP,
            description=module.DESCRIPTION,
            epilog=module.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        sub.add_argument(
            "--threads",
            type=int,
            default=DEFAULT_THREADS,
            help=f"torch threads for this process (default {DEFAULT_THREADS}: on a 2-core "
            "machine one thread per process was fastest, see the README)",
        )
        sub.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"prm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
