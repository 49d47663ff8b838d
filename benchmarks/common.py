"""Shared pieces of the benchmarks: machine info, timing, peak memory, result files, and
the straightforward reference implementations that our fast versions are measured against.

Timing: every measurement is a warm-up call followed by ``repeats`` timed calls; the
median is reported (the minimum and every run are kept in the JSON). Wall time is what a
user waits for; the CPU time of this process is kept next to it because other jobs on a
shared machine inflate wall time but hardly CPU time (with one thread, CPU time ~ the
time the computation itself needs).

Peak memory: on a GPU, ``torch.cuda.max_memory_allocated`` above what was allocated
before the call. On a CPU, the peak resident set size above the RSS before the call:
Linux lets a process reset its own high-water mark (``echo 5 > /proc/self/clear_refs``),
so each call's peak is its own; where that is not possible the process-wide
``ru_maxrss`` is used, which only shows growth above every earlier peak (marked
``"rss_method": "ru_maxrss"``).

Reference implementations (the "straightforward way", as the authors' code does it):

- :func:`loop_prms`: one forward under the rule, then one ``.backward()`` per peak from a
  one-hot gradient, parameters still requiring gradients (the authors' loop);
- :func:`floor_prms`: one forward plus one input-only backward pass per peak, each timed
  alone (no bookkeeping at all: the least any one-peak-at-a-time method can cost);
- :func:`authors_retrieval`: the authors' per-peak, per-proposal retrieval loop (PIL
  resize, OpenCV morphological gradient and masked sums for every pair). The tests check
  ``prm.retrieve_instances`` against this copy too (tests/core/test_retrieval.py), so the
  loop the benchmark times is the loop the library is proven equal to.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from scipy.spatial import cKDTree
from torch import nn

from prm import backprop
from prm.backprop import normalize_prms, peak_backprop_rule
from prm.proposals import CompactProposals

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: Where ``--quick`` runs write: a git-ignored folder, so that trial numbers never
#: replace the published tables.
QUICK_RESULTS = ROOT / ".cache" / "benchmarks"

# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> float:
    """The machine's 1-minute load average (-1 where unknown)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def git_commit() -> str | None:
    """``HEAD`` of the repository, with ``+dirty`` when tracked files are modified."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return f"{head}+dirty" if head and dirty else head or None


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, threads, device, library versions, load."""
    import torchvision

    info = {
        "cpu": cpu_model(),
        "cores": cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "opencv_threads": cv2.getNumThreads(),
        "thread_variables": {name: os.environ.get(name) for name in THREAD_VARIABLES},
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "load_average_start": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line for a markdown table's caption."""
    where = info.get("gpu") or info["cpu"]
    pinned = set((info.get("thread_variables") or {}).values())
    threads = f"{info['torch_threads']} torch thread(s)"
    if (
        pinned == {str(info["torch_threads"])}
        and info.get("opencv_threads") == info["torch_threads"]
    ):
        threads = (
            f"every thread pool pinned to {info['torch_threads']} (torch, OpenCV, OpenMP/BLAS)"
        )
    return (
        f"{where}; {info['cores']} cores, {threads}, "
        f"device {info['device']}; torch {info['torch']}, Python {info['python']}; "
        f"load average {info['load_average_start']} at the start, "
        f"{info.get('load_average_end', '?')} at the end; {info['date_utc']} UTC, "
        f"commit {info['git_commit']}"
    )


# --------------------------------------------------------------------------- timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def _malloc_trim() -> None:
    # glibc keeps freed memory for reuse, which would count in the "before" RSS and hide
    # what the next call needs; hand it back to the OS first.
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Context manager: peak memory (MB) a block needed above what was in use before.

    ``with PeakMemory(device) as mem: ...`` then ``mem.mb`` and ``mem.method``
    (``"cuda_max_memory_allocated"``, ``"VmHWM"`` or ``"ru_maxrss"``, see the module
    docstring).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.mb = float("nan")
        self.method = ""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda_max_memory_allocated"
            return self
        _malloc_trim()
        if _reset_rss_peak():
            self._base = _rss_kb("VmRSS")
            self.method = "VmHWM"
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.method = "ru_maxrss"
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "cuda_max_memory_allocated":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._base
            self.mb = peak / 2**20
        elif self.method == "VmHWM":
            self.mb = (_rss_kb("VmHWM") - self._base) / 1024
        else:
            self.mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._base) / 1024


def measure(
    fn: Callable[[], Any],
    device: torch.device,
    repeats: int = 3,
    warmup: int = 1,
    memory: bool = True,
) -> dict[str, Any]:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Peak memory is taken on the first warm-up call (on the first timed call when
    ``warmup=0``), so that handing freed memory back to the OS before it does not
    disturb the timed calls.

    Returns:
        ``{"wall_s": median, "cpu_s": median, "min_s", "runs_s": [...], "peak_mb",
        "rss_method"}`` and ``"result"``: what the last call returned.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    peak_mb = method = result = None
    walls, cpus = [], []
    for i in range(warmup + repeats):
        timed = i >= warmup
        tracker = PeakMemory(device).__enter__() if (memory and i == 0) else None
        result = None  # free the previous result before the next call
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        synchronize(device)
        if timed:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        if tracker is not None:
            tracker.__exit__(None, None, None)
            peak_mb, method = round(tracker.mb, 1), tracker.method
    return {
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "min_s": min(walls),
        "runs_s": [round(w, 4) for w in walls],
        "peak_mb": peak_mb,
        "rss_method": method,
        "result": result,
    }


def measure_interleaved(
    fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int = 3
) -> dict[str, dict[str, Any]]:
    """Time several functions of the same work in rounds: one warm-up each (which also
    takes its peak memory), then ``repeats`` rounds in which each runs once, the order
    rotating by one every round.

    On a shared machine, timing one method's runs back to back and then the next's lets
    slow drifts of the machine land on one method; rounds spread them over all.

    Returns:
        One dict per name, as :func:`measure` returns.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    records: dict[str, dict[str, Any]] = {}
    for name, fn in fns.items():
        with PeakMemory(device) as tracker:
            fn()
            synchronize(device)
        records[name] = {"walls": [], "cpus": [], "mb": tracker.mb, "method": tracker.method}
    names = list(fns)
    results: dict[str, Any] = {}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            results[name] = None  # free the previous result before the next call
            wall, cpu = time.perf_counter(), time.process_time()
            results[name] = fns[name]()
            synchronize(device)
            records[name]["walls"].append(time.perf_counter() - wall)
            records[name]["cpus"].append(time.process_time() - cpu)
    return {
        name: {
            "wall_s": statistics.median(rec["walls"]),
            "cpu_s": statistics.median(rec["cpus"]),
            "min_s": min(rec["walls"]),
            "runs_s": [round(w, 4) for w in rec["walls"]],
            "peak_mb": round(rec["mb"], 1),
            "rss_method": rec["method"],
            "result": results[name],
        }
        for name, rec in records.items()
    }


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A :func:`measure` record without its ``result`` (for the JSON)."""
    out = {k: v for k, v in record.items() if k != "result"}
    for key in ("wall_s", "cpu_s", "min_s"):
        if key in out:
            out[key] = round(out[key], 4)
    return out


# --------------------------------------------------------------------------- CLI and files


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark shares."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smaller grid (minutes)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        help="threads of torch, OpenCV, OpenMP and BLAS (default: the libraries', all cores)",
    )
    parser.add_argument("--repeats", type=int, help="timed runs per measurement")
    parser.add_argument(
        "--out",
        type=Path,
        help="results folder (default benchmarks/results; with --quick .cache/benchmarks)",
    )
    parser.add_argument("--no-save", action="store_true", help="print only")
    return parser


#: The environment variables that size the thread pools torch's setting does not govern
#: (OpenMP, the BLAS libraries NumPy and SciPy load, MKL, numexpr). They are read when a
#: library loads, so they must be set before NumPy is imported.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def pin_threads(threads: int) -> None:
    """Every thread pool of this process to ``threads``: torch, OpenCV, and (through the
    environment, by restarting the process once with it set) OpenMP and BLAS.

    ``torch.set_num_threads`` alone leaves NumPy's OpenBLAS and OpenCV free to use every
    core, which makes a "one thread" CPU-time reading count a second core.
    """
    wanted = str(threads)
    if any(os.environ.get(name) != wanted for name in THREAD_VARIABLES):
        os.environ.update({name: wanted for name in THREAD_VARIABLES})
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def setup(args: argparse.Namespace) -> tuple[torch.device, dict[str, Any]]:
    """Apply ``--threads`` (:func:`pin_threads`) and ``--device``; return the device and
    the machine info."""
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        pin_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return device, machine_info(device)


def results_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return args.out
    return QUICK_RESULTS if args.quick else RESULTS


def save(
    name: str,
    report: dict[str, Any],
    markdown: Callable[[dict[str, Any]], str],
    args: argparse.Namespace,
) -> None:
    """Record the end load average, print the table and write ``<out>/<name>.json`` and
    ``<out>/<name>.md`` (unless ``--no-save``)."""
    report["machine"]["load_average_end"] = load_average()
    text = markdown(report)
    print(text)
    if args.no_save:
        return
    out = results_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(text)
    print(f"wrote {out / name}.json and .md")


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """Markdown table lines."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def fmt_s(seconds: float | None) -> str:
    """Seconds with a sensible number of digits."""
    if seconds is None:
        return "-"
    if seconds >= 100:
        return f"{seconds:.0f}"
    if seconds >= 1:
        return f"{seconds:.2f}"
    if seconds >= 0.01:
        return f"{seconds:.3f}"
    return f"{seconds * 1000:.2f} ms"


# --------------------------------------------------------------------------- peaks


class FixedPeaks(nn.Module):
    """A PRM network that reports exactly its ``k`` strongest peaks per image.

    Benchmarks need a known number of peaks; an untrained network has hundreds. This
    wrapper keeps the model's own peak finding and keeps the ``k`` highest-valued peaks
    of each image (all of them when there are fewer), so the cost of peak
    back-propagation can be measured at 1, 4, 16, ... peaks.

    Args:
        model: a :class:`prm.model.PeakResponseNet`.
        k: peaks per image.
    """

    def __init__(self, model: nn.Module, k: int):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.model = model
        self.k = k
        self.train(model.training)  # a new module starts in train mode; follow the model's

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def sub_pixel_factor(self) -> int:
        return self.model.sub_pixel_factor

    def class_response_maps(self, images: torch.Tensor) -> torch.Tensor:
        """CRMs ``(B, C, h, w)`` of the wrapped model."""
        return self.model.class_response_maps(images)

    def aggregate(self, crm: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, C)`` of the wrapped model."""
        return self.model.aggregate(crm)

    def find_peaks(self, crm: torch.Tensor) -> torch.Tensor:
        """The ``k`` strongest peaks of each image: ``(K, 4)`` rows ``(b, c, y, x)``."""
        peaks = self.model.find_peaks(crm)
        kept = []
        for b in range(crm.shape[0]):
            mine = peaks[peaks[:, 0] == b]
            values = crm[b, mine[:, 1], mine[:, 2], mine[:, 3]]
            order = torch.sort(values, descending=True, stable=True).indices[: self.k]
            kept.append(mine[order])
        return torch.cat(kept) if kept else peaks

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


# --------------------------------------------------------------------------- references


def _one_hot(crm: torch.Tensor, c: int, y: int, x: int) -> torch.Tensor:
    grad = torch.zeros_like(crm)
    grad[0, c, y, x] = 1
    return grad


@contextlib.contextmanager
def whole_maps():
    """Back-propagation through every cell of every map, as the authors' code does it
    (on a CPU ``prm`` computes each peak's backward on only the part of the maps its
    gradient reaches: the same maps to float rounding)."""
    saved = backprop._CROP
    backprop._CROP = False
    try:
        yield
    finally:
        backprop._CROP = saved


def loop_prms(model: nn.Module, image: torch.Tensor, peaks: torch.Tensor) -> torch.Tensor:
    """The authors' way: one forward, then one ``.backward()`` per peak.

    The forward runs under the PRM rule with the input requiring gradients and the
    parameters left as they are (requiring gradients, as in the authors' code); each
    peak's one-hot gradient is back-propagated with ``retain_graph=True``, the input
    gradient read and cleared; every backward pass runs on the whole maps
    (:func:`whole_maps`).

    Args:
        model: network in eval mode with ``class_response_maps``.
        image (Tensor[3, H, W]): one normalised image.
        peaks (Tensor[K, 3], int64): ``(c, y, x)`` CRM cells.

    Returns:
        Tensor[K, H, W]: normalised peak response maps (as :func:`normalize_prms`).
    """
    x = image[None].detach().clone().requires_grad_()
    with peak_backprop_rule():
        crm = model.class_response_maps(x)
    maps = []
    with whole_maps():
        for c, y, x0 in peaks.tolist():
            x.grad = None
            crm.backward(_one_hot(crm, c, y, x0), retain_graph=True)
            maps.append(normalize_prms(x.grad)[0])
    model.zero_grad(set_to_none=True)
    if not maps:
        return image.new_zeros((0, *image.shape[1:]))
    return torch.stack(maps)


def floor_prms(
    model: nn.Module, image: torch.Tensor, peaks: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, float, list[float]]:
    """The floor: one forward plus one input-only backward per peak, each timed alone.

    Args:
        model: network in eval mode with ``class_response_maps``.
        image (Tensor[3, H, W]): one normalised image.
        peaks (Tensor[K, 3], int64): ``(c, y, x)`` CRM cells.
        device: for synchronisation before reading the clock.

    Returns:
        ``(maps, forward_s, backward_s)``: the normalised maps ``Tensor[K, H, W]`` (not
        timed), the forward's wall time and each backward pass's wall time.
    """
    x = image[None].detach().clone().requires_grad_()
    synchronize(device)
    start = time.perf_counter()
    with peak_backprop_rule():
        crm = model.class_response_maps(x)
    synchronize(device)
    forward_s = time.perf_counter() - start
    backward_s, grads = [], []
    for c, y, x0 in peaks.tolist():
        grad_out = _one_hot(crm, c, y, x0)  # built outside the timed region
        synchronize(device)
        start = time.perf_counter()
        (grad,) = torch.autograd.grad(crm, x, grad_out, retain_graph=True)
        synchronize(device)
        backward_s.append(time.perf_counter() - start)
        grads.append(grad)
    maps = normalize_prms(torch.cat(grads)) if grads else image.new_zeros((0, *image.shape[1:]))
    return maps, forward_s, backward_s


def relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """``max |ours - reference| / max |reference|`` (0 for two empty tensors)."""
    if reference.numel() == 0:
        return 0.0
    scale = reference.abs().max().clamp(min=torch.finfo(torch.float32).tiny)
    return float((ours.float() - reference.float()).abs().max() / scale)


def imresize(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """``scipy.misc.imresize`` (removed from SciPy in 1.3), as the authors call it:
    ``bytescale`` to 0..255 (a 0/1 mask becomes 0/255; a constant array becomes 0), then
    a PIL resize of the 8-bit image to ``(h, w)``."""
    array = np.asarray(array, dtype=np.float64)
    low, high = array.min(), array.max()
    scale = 255.0 / (high - low) if high > low else 255.0
    data = (((array - low) * scale).clip(0, 255) + 0.5).astype(np.uint8)
    return np.array(Image.fromarray(data).resize((size[1], size[0]), resample))


def morphological_gradient(mask: np.ndarray, width: int) -> np.ndarray:
    """The authors' contour: ``cv2.morphologyEx(MORPH_GRADIENT)`` with a ``width x width``
    square of ones, on the 8-bit mask, as bool (pixels outside the image are ignored)."""
    kernel = np.ones((width, width), np.uint8)
    return cv2.morphologyEx(np.asarray(mask, np.uint8), cv2.MORPH_GRADIENT, kernel).astype(bool)


def authors_retrieval(prms, labels, crm, proposals, cfg, profile=None) -> list[list]:
    """The authors' retrieval loop (``PeakResponseMapping.instance_seg`` and
    ``instance_nms`` of ZhouYanzhao/PRM), step for step in NumPy, PIL and OpenCV.

    For every peak: the class response map is resized bicubically (``imresize``) and
    thresholded into the background; then for every proposal: the proposal is resized to
    the PRM size (``imresize``, nearest: bytescale + PIL), its contour taken with
    OpenCV's morphological gradient on the 8-bit mask, its area checked against the size
    limits (after the contour, as theirs), and the score summed with boolean indexing in
    float32. Instances are sorted by score and de-duplicated by greedy NMS on mask IoU,
    adding the suppressed PRMs to the survivor's. The only change from their code is
    ``scipy.misc.imresize``, gone from SciPy, replaced by :func:`imresize` (the same
    byte scaling and PIL call).

    Args:
        prms (Tensor[K, h, w]): peak response maps at the network size.
        labels (Tensor[K]): class of each peak.
        crm (Tensor[C, hc, wc]): class response maps.
        proposals (Tensor[P, H, W], bool): proposals at the image size.
        cfg: :class:`prm.retrieval.RetrievalConfig` with one ``alpha``/``beta``/``tau``.
        profile: optional dict; when given, the seconds spent in ``"resize"``,
            ``"contour"`` and ``"sums"`` (the per-pair steps) are added to it, and
            ``"pairs"`` counts the pairs.

    Returns:
        The kept instances by decreasing score, each ``[score, class, mask (h, w),
        merged prm, proposal index, peak index]``.
    """
    prms, crm, proposals = prms.numpy(), crm.numpy(), proposals.numpy()
    height, width = prms.shape[1:]
    area = height * width
    low, high = cfg.proposal_size_limit
    clock = time.perf_counter
    steps = {"resize": 0.0, "contour": 0.0, "sums": 0.0, "pairs": 0}
    instances = []
    for i, prm in enumerate(prms):
        c = int(labels[i])
        class_response = imresize(crm[c], (height, width), Image.BICUBIC)
        background = (class_response < cfg.tau * class_response.mean()).astype(np.float32)
        best, best_j, best_mask = -np.inf, None, None
        for j in range(min(cfg.proposal_count, len(proposals))):
            t0 = clock()
            raw_mask = imresize(proposals[j].astype(int), (height, width), Image.NEAREST)
            t1 = clock()
            kernel = np.ones((cfg.contour_width, cfg.contour_width), np.uint8)
            contour = cv2.morphologyEx(raw_mask, cv2.MORPH_GRADIENT, kernel).astype(bool)
            mask = raw_mask.astype(bool)
            t2 = clock()
            steps["resize"] += t1 - t0
            steps["contour"] += t2 - t1
            steps["pairs"] += 1
            mask_area = mask.sum()
            if mask_area >= high * area or mask_area < low * area:
                steps["sums"] += clock() - t2
                continue
            value = (
                cfg.alpha * prm[mask].sum() + prm[contour].sum() - cfg.beta * background[mask].sum()
            )
            if value > best:
                best, best_j, best_mask = value, j, mask
            steps["sums"] += clock() - t2
        if best_mask is not None:
            instances.append([best, c, best_mask, prm.copy(), best_j, i])
    if profile is not None:
        for key, value in steps.items():
            profile[key] = profile.get(key, 0) + value
    instances.sort(key=lambda v: v[0], reverse=True)
    kept = []
    while instances:
        top = instances.pop(0)
        kept.append(top)
        rest = []
        for other in instances:
            inter = np.logical_and(top[2], other[2]).sum()
            union = np.logical_or(top[2], other[2]).sum()
            if inter / (union + 1e-10) < cfg.nms_threshold:
                rest.append(other)
            else:
                top[3] += other[3]
        instances = rest
    return kept


def random_blobs(generator: torch.Generator, count: int, size: tuple[int, int]) -> torch.Tensor:
    """``count`` random axis-aligned ellipses, ``Tensor[count, H, W]`` bool."""
    h, w = size
    yy = torch.arange(h, dtype=torch.float32)[:, None]
    xx = torch.arange(w, dtype=torch.float32)[None, :]
    cy = torch.rand(count, generator=generator) * h
    cx = torch.rand(count, generator=generator) * w
    ry = 2 + torch.rand(count, generator=generator) * h / 3
    rx = 2 + torch.rand(count, generator=generator) * w / 3
    out = torch.empty((count, h, w), dtype=torch.bool)
    for i in range(count):  # one at a time: 1000 float maps at once would be gigabytes
        out[i] = ((yy - cy[i]) / ry[i]) ** 2 + ((xx - cx[i]) / rx[i]) ** 2 <= 1
    return out


def random_regions(
    generator: torch.Generator, count: int, size: tuple[int, int], cells: int = 600
) -> CompactProposals:
    """``count`` proposals shaped like a generator's: unions of the cells of one random
    over-segmentation (a Voronoi map of ``cells`` random seeds), each the cells whose
    seed lies in a random ellipse (non-empty: the cell nearest its centre is always in).

    Returns:
        :class:`prm.proposals.CompactProposals` over an ``(H, W)`` label map.
    """
    h, w = size
    seeds = torch.rand(cells, 2, generator=generator) * torch.tensor([h, w])
    tree = cKDTree(seeds.numpy())
    yy, xx = np.mgrid[:h, :w]
    _, labels = tree.query(np.stack([yy.ravel() + 0.5, xx.ravel() + 0.5], 1))
    centre = torch.rand(count, 2, generator=generator) * torch.tensor([h, w])
    radius = 2 + torch.rand(count, 2, generator=generator) * torch.tensor([h, w]) / 3
    inside = (((seeds[None] - centre[:, None]) / radius[:, None]) ** 2).sum(2) <= 1
    _, nearest = tree.query(centre.numpy())
    inside[torch.arange(count), torch.from_numpy(nearest)] = True
    present = torch.zeros(cells, dtype=torch.bool)
    present[torch.from_numpy(np.unique(labels))] = True
    # Keep only cells that own pixels, numbered densely.
    renumber = torch.cumsum(present.long(), 0) - 1
    superpixels = renumber[torch.from_numpy(labels.reshape(h, w))]
    return CompactProposals(superpixels, inside[:, present])
