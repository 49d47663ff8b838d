"""Run every benchmark, each in a fresh process, and collect their tables.

    python -m benchmarks.run --quick          # a few minutes: small grids
    python -m benchmarks.run                  # the full suite (tens of minutes on a CPU)
    python -m benchmarks.run --only backprop retrieval --device cuda

Benchmarks (each also runs alone, ``python -m benchmarks.<name> --help``):

- ``backprop``: peak back-propagation, ours vs the authors' loop vs the floor;
- ``retrieval``: proposal retrieval, ours vs the authors' per-peak, per-proposal loop;
- ``training``: training throughput, default vs channels_last / bf16 / torch.compile;
- ``prediction``: end-to-end images / s on a folder, by image size and peaks;
- ``proposals``: ``benchmarks/proposals.py`` (segment proposals: speed and quality);
- ``evaluation``: ``benchmarks/evaluation.py`` (all metrics in one pass).

Each writes ``<name>.json`` (machine info and every number) and ``<name>.md`` (the
table) under ``benchmarks/results/``; with ``--quick`` under ``.cache/benchmarks/``
(git-ignored: trial numbers never replace the published tables), where ``proposals``
and ``evaluation``, which have no output folder option, only print.
At the end ``summary.md`` in the same folder gathers every table found there (this run's
and earlier ones': each table names its machine and date) and ``run.json`` records this
run's exit codes and durations.

The machine's load average is printed before each benchmark and recorded in every
result; ``--wait-load 1.0`` waits (up to ``--wait-max`` seconds) for a quiet machine
before each one, since other jobs inflate wall times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import QUICK_RESULTS, RESULTS, ROOT, load_average

OURS = ("backprop", "retrieval", "training", "prediction")
THEIRS = {
    # Other scripts' own options: a small run in quick mode, their full tables otherwise.
    "proposals": {
        "quick": ["--settings", "single", "--shapes", "30", "--no-save"],
        "full": [
            "--settings",
            *("single", "fast", "fast-500", "fast-320", "quality-320"),
            "--speed-settings",
            *("single", "fast", "fast-320", "quality-320", "quality"),
        ],
    },
    "evaluation": {"quick": ["--sizes", "50", "--no-save"], "full": []},
}
ALL = (*OURS, *THEIRS)


def command(name: str, args: argparse.Namespace, out: Path) -> list[str]:
    """The command line that runs benchmark ``name``."""
    if name in THEIRS:
        script = ROOT / "benchmarks" / f"{name}.py"
        return [sys.executable, str(script), *THEIRS[name]["quick" if args.quick else "full"]]
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--device", args.device, "--out", str(out)]
    if args.quick:
        cmd.append("--quick")
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    return cmd


def wait_for_quiet(threshold: float | None, longest: float) -> None:
    if threshold is None:
        return
    deadline = time.monotonic() + longest
    while load_average() > threshold and time.monotonic() < deadline:
        print(f"load average {load_average()} > {threshold}: waiting", flush=True)
        time.sleep(30)


def write_summary(out: Path) -> None:
    """``<out>/summary.md``: every benchmark table found in ``out``, in a fixed order."""
    out.mkdir(parents=True, exist_ok=True)
    tables = [(out / f"{n}.md").read_text().strip() for n in ALL if (out / f"{n}.md").is_file()]
    (out / "summary.md").write_text("\n\n".join(tables) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small grids (a few minutes)")
    parser.add_argument("--only", nargs="+", choices=ALL, help="run only these benchmarks")
    parser.add_argument("--skip", nargs="+", default=[], choices=ALL, help="leave these out")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--out", type=Path, help="results folder")
    parser.add_argument("--wait-load", type=float, help="wait for a load average below this")
    parser.add_argument("--wait-max", type=float, default=600, help="longest wait, seconds")
    parser.add_argument(
        "--summary-only", action="store_true", help="only rewrite summary.md from the tables"
    )
    args = parser.parse_args()

    out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    if args.summary_only:
        write_summary(out)
        return 0
    names = [n for n in (args.only or ALL) if n not in args.skip]
    if args.device != "cpu":
        names = [n for n in names if n in OURS]  # the others run on the CPU only
    status = {}
    for name in names:
        wait_for_quiet(args.wait_load, args.wait_max)
        print(f"\n=== {name} (load average {load_average()}) ===", flush=True)
        start = time.perf_counter()
        code = subprocess.run(command(name, args, out), cwd=ROOT).returncode
        status[name] = {"returncode": code, "seconds": round(time.perf_counter() - start, 1)}
        print(f"=== {name}: exit {code} after {status[name]['seconds']} s ===", flush=True)

    write_summary(out)
    (out / "run.json").write_text(json.dumps(status, indent=2) + "\n")  # this run only
    print(f"\n{json.dumps(status)}\nwrote {out / 'summary.md'}")
    return 1 if any(s["returncode"] for s in status.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
