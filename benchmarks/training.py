"""Training throughput: the plain step against channels_last, bfloat16 autocast and
``torch.compile``.

Each setting (the ``TrainConfig`` field of the same name, changed alone from the plain
configuration: ``channels_last=False, amp=None, compile=False``) trains the same network
from the same initial weights on the same batches, with the step of ``prm.engine.train``:
forward (under autocast when ``amp="bf16"``), multi-label soft-margin loss on the class
scores, backward, and the preset's optimiser with the authors' two learning rates. Data
loading is left out (batches are made once from ShapeScenes), so the numbers are the
model's own throughput.

Setups: the paper's ResNet-50 at 448 x 448 (``voc`` preset: sub-pixel factor 8, random
weights instead of ImageNet's; a few steps of a small batch, as a CPU allows) and the
demo's small backbone at 128 x 128 (``shapes`` preset and its batch size).

Reported: images / s (batch / median step time), the first step's time (for
``torch.compile`` the compilation: its warm-up), peak memory of a step, and how far each
setting's first-step loss and gradient are from the same step computed in float64 (and
its losses over all steps from the plain setting's), to tell a faster setting that
changes results from one that does not. A setting that fails (e.g.
``torch.compile`` without a C++ compiler) is reported with its error.

Usage:
    python -m benchmarks.training               # ResNet-50 and small
    python -m benchmarks.training --quick       # small only
    python -m benchmarks.training --setups resnet50 --batch 8 --repeats 5
"""

from __future__ import annotations

import contextlib
import statistics
import time
import traceback
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    PeakMemory,
    base_parser,
    fmt_s,
    machine_line,
    save,
    setup,
    synchronize,
    table,
)
from prm.data import InferenceTransform, ShapeScenes
from prm.engine.config import PRESETS
from prm.engine.train import _optimizer, model_from_config

# name: (preset, image size, batch (None: the preset's), timed steps after the warm-up).
# ResNet-50 takes a batch of 4, not the authors' 16: a CPU step of 16 takes a minute.
SETUPS = {
    "resnet50": ("voc", 448, 4, 3),
    "small": ("shapes", 128, None, 10),
}
# Each setting changes one field of the plain configuration.
PLAIN = {"channels_last": False, "amp": None, "compile": False}
VARIANTS = {
    "plain": {},
    "channels_last": {"channels_last": True},
    "bf16 autocast": {"amp": "bf16"},
    "torch.compile": {"compile": True},
}


def make_batches(size: int, batch: int, count: int = 2) -> tuple[list, list[str]]:
    """``count`` batches ``(images (B, 3, size, size), image-level labels (B, 6))`` of
    ShapeScenes training images, and the class names."""
    data = ShapeScenes("train", batch * count, size=size, transform=InferenceTransform(size))
    items = [data[i] for i in range(len(data))]
    out = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = torch.stack([image for image, _ in chunk])
        labels = torch.stack([target["image_labels"] for _, target in chunk])
        out.append((images, labels))
    return out, data.classes


def train_steps(config, classes, batches, steps, device) -> dict[str, Any]:
    """First step (warm-up) and ``steps`` timed steps of one setting."""
    torch.manual_seed(0)
    model = model_from_config(config, classes).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, config)  # the training loop's own (two learning rates)
    net: nn.Module = torch.compile(model) if config.compile else model
    net.train()
    loss_fn = nn.MultiLabelSoftMarginLoss()
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if config.amp == "bf16"
        else contextlib.nullcontext()
    )
    losses, times, first_grad = [], [], []

    def step(index: int) -> None:
        images, labels = batches[index % len(batches)]
        images, labels = images.to(device), labels.to(device)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        synchronize(device)
        start = time.perf_counter()
        with autocast:
            scores = net(images)
        loss = loss_fn(scores.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if index == 0:  # the first gradient, from the shared initial weights
            first_grad.append(torch.cat([p.grad.reshape(-1).float() for p in model.parameters()]))
        optimizer.step()
        losses.append(loss.item())  # .item() waits for the device
        times.append(time.perf_counter() - start)

    step(0)  # warm-up (and compilation)
    # A second, untimed step measures memory: handing freed memory back to the OS first
    # (see benchmarks.common.PeakMemory) makes that step slower.
    with PeakMemory(device) as memory:
        step(1)
    for i in range(2, steps + 2):
        step(i)
    return {
        "first_step_s": round(times[0], 3),
        "wall_s": round(statistics.median(times[2:]), 4),
        "runs_s": [round(t, 4) for t in times[2:]],
        "peak_mb": round(memory.mb, 1),
        "losses": losses,
        "first_grad": first_grad[0],
    }


def reference_gradient(config, classes, batch, device) -> tuple[float, torch.Tensor]:
    """Loss and gradient of the first step in float64 (eager, plain), from the same
    initial weights: what the float32 settings approximate."""
    torch.manual_seed(0)
    model = model_from_config(config, classes).to(device, torch.float64).train()
    images, labels = (t.to(device, torch.float64) for t in batch)
    loss = nn.MultiLabelSoftMarginLoss()(model(images), labels)
    loss.backward()
    return loss.item(), torch.cat([p.grad.reshape(-1).float() for p in model.parameters()])


def run(args) -> dict[str, Any]:
    device, info = setup(args)
    names = args.setups or (["small"] if args.quick else list(SETUPS))
    results = []
    for name in names:
        preset, size, batch, steps = SETUPS[name]
        batch = args.batch or batch or PRESETS[preset].batch_size
        steps = max(args.repeats or steps, 2)
        batches, classes = make_batches(size, batch)
        preset_config = PRESETS[preset]
        base = preset_config.replace(weights=None, batch_size=batch, image_size=size, **PLAIN)
        record: dict[str, Any] = {
            "setup": name,
            "preset": preset,
            "preset_uses": {k: getattr(preset_config, k) for k in PLAIN},
            "optimizer": base.optimizer,
            "backbone": base.backbone,
            "image_size": size,
            "batch": batch,
            "timed_steps": steps,
            "variants": {},
        }
        for label, change in VARIANTS.items():
            if label in args.skip:
                continue
            try:
                m = train_steps(base.replace(**change), classes, batches, steps, device)
            except Exception as exc:  # report, do not hide, a setting this machine cannot run
                record["variants"][label] = {
                    "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                    "traceback": traceback.format_exc()[-2000:],
                }
                print(name, label, "failed:", record["variants"][label]["error"])
                continue
            m["images_per_s"] = round(batch / m["wall_s"], 2)
            record["variants"][label] = m
            print(name, label, {k: v for k, v in m.items() if k not in ("losses", "runs_s")})
        loss64, grad64 = reference_gradient(base, classes, batches[0], device)
        record["float64_first_loss"] = loss64
        plain = record["variants"].get("plain")
        for m in record["variants"].values():
            if "first_grad" in m:
                m["first_loss_err_vs_fp64"] = abs(m["losses"][0] - loss64) / abs(loss64)
                m["first_grad_err_vs_fp64"] = float(
                    (m["first_grad"] - grad64).norm() / grad64.norm()
                )
        for m in record["variants"].values():
            if plain is None or "losses" not in m:
                continue
            ref = torch.tensor(plain["losses"])
            change = (torch.tensor(m["losses"]) - ref).abs() / ref.abs()
            # Step 1 is the same computation from the same weights: any difference is the
            # setting's own numerics. Later steps also carry the drift of the weights.
            m["first_loss_rel_diff"] = float(change[0])
            m["loss_rel_diff_max"] = float(change.max())
            m["first_grad_rel_diff"] = float(
                (m["first_grad"] - plain["first_grad"]).norm() / plain["first_grad"].norm()
            )
            m["speedup"] = round(plain["wall_s"] / m["wall_s"], 3)
        for m in record["variants"].values():
            m.pop("first_grad", None)
        results.append(record)
    return {
        "benchmark": "training throughput",
        "machine": info,
        "settings": {
            "data": "ShapeScenes train batches made once (data loading not timed)",
            "weights": "random initialisation, the same for every setting",
        },
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Training throughput benchmark",
        "",
        "One optimiser step of `prm.engine.train` (forward, loss, backward, optimiser) on "
        "batches made once; the first step is the warm-up (compilation for torch.compile), "
        "a second one measures memory, then the median of the timed steps. Produced by "
        "`python -m benchmarks.training`.",
        "",
        f"Machine: {machine_line(report['machine'])}.",
        "",
    ]
    rows = []
    for r in report["results"]:
        setup_text = f"{r['backbone']} @ {r['image_size']}, batch {r['batch']}, {r['optimizer']}"
        for label, m in r["variants"].items():
            if "error" in m:
                rows.append([setup_text, label, "failed", *["-"] * 6, m["error"]])
                continue
            rows.append(
                [
                    setup_text,
                    label,
                    f"{m['images_per_s']:.2f}",
                    f"{m.get('speedup', 1.0):.2f}x",
                    fmt_s(m["first_step_s"]),
                    f"{m['peak_mb']:.0f}",
                    f"{m['first_loss_err_vs_fp64']:.1e}",
                    f"{m['first_grad_err_vs_fp64']:.1e}",
                    f"{m.get('loss_rel_diff_max', 0.0):.1e}",
                    "",
                ]
            )
    lines += table(
        [
            "setup",
            "setting",
            "images / s",
            "vs plain",
            "first step s",
            "step peak MB",
            "step-1 loss error vs float64",
            "step-1 gradient error vs float64",
            "largest loss change vs plain",
            "error",
        ],
        rows,
    )
    lines += [
        "",
        "Step 1 runs from the same weights on the same batch, so its loss and gradient (all",
        "parameters, |g - g64| / |g64|) differ from the float64 computation only by the",
        "setting's numerics: a setting is as exact as the plain one when its errors are of",
        "the same size as the plain row's. The largest loss change (relative, against the",
        "plain setting, over all steps) also carries the drift of the weights.",
        "",
    ]
    for r in report["results"]:
        uses = ", ".join(f"{k}={v}" for k, v in r["preset_uses"].items())
        lines.append(f"- {r['backbone']}: preset `{r['preset']}` ({r['optimizer']}) uses {uses}.")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), help="what to train")
    parser.add_argument("--batch", type=int, help="batch size (default 4 / the preset's)")
    parser.add_argument(
        "--skip", nargs="+", default=[], choices=list(VARIANTS), help="settings to leave out"
    )
    args = parser.parse_args()
    report = run(args)
    save("training", report, markdown, args)


if __name__ == "__main__":
    main()
