"""Synthetic run folders for the report tests: no network, no model, seconds to build."""

import json

import numpy as np
import pytest
import torch

from prm.evaluation import results_entries, run_evaluation
from prm.report import GallerySampler, write_run_info

# A name that would run a script, and one with characters HTML gives meaning to.
EVIL = "<script>window.pwned=1</script>"
CLASSES = ["cat", EVIL, 'a&b "c"']
SIZE = 48


def box(y, x, h, w):
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[y : y + h, x : x + w] = True
    return mask


def scene(k: int, shift: int):
    """Image k: ground truth boxes, predictions that find some and miss or misplace others.

    ``shift`` moves the second prediction (0: on its object; 20: a false positive); with
    a shift, every third image has no prediction at all.
    """
    rng = np.random.default_rng(k)
    image = torch.from_numpy(rng.integers(0, 255, (3, SIZE, SIZE), dtype=np.uint8))
    a, b = k % 3, (k + 1) % 3
    gt_masks = torch.stack([box(4, 4, 14, 14), box(26, 26, 14, 16), box(4, 30, 10, 10)])
    target = {
        "image_id": f"../img {k}<b>",  # hostile id: must not name a file or inject markup
        "masks": gt_masks,
        "labels": torch.tensor([a, b, a]),
        "size": (SIZE, SIZE),
    }
    n = 1 + k % 3  # 1..3 predictions: image scores differ
    if shift and k % 3 == 0:
        n = 0
    masks = torch.stack([box(4, 4, 14, 14), box(26 - shift, 26, 14, 16), box(30, 2, 8, 8)])[:n]
    labels = torch.tensor([a, b, b])[:n]
    scores = torch.tensor([0.9, 0.5 + 0.01 * k, 0.3])[:n]
    peaks = torch.tensor([[10.0, 10.0], [33.0, 32.0 - shift], [5.0, 33.0]])[:n]
    prms = masks.float() + 0.1
    crm = torch.rand(len(CLASSES), 12, 12)
    prediction = {
        "masks": masks,
        "labels": labels,
        "scores": scores,
        "peaks": peaks,
        "prms": prms,
        "crm": crm,
    }
    return image, target, prediction


def make_run(folder, shift: int, name: str, gallery: bool = True, images: int = 9):
    """A run folder as `prm predict --evaluate` leaves it, over synthetic scenes."""
    folder.mkdir(parents=True, exist_ok=True)
    sampler = GallerySampler(folder / "gallery", CLASSES, count=2) if gallery else None
    entries = []

    def pairs():
        for k in range(images):
            image, target, prediction = scene(k, shift)
            entries.extend(results_entries(prediction, target["image_id"], [1, 2, 3]))
            if sampler is not None:
                sampler.add(image, target, prediction)
            yield target, prediction

    run_evaluation(pairs(), CLASSES, [1, 2, 3], metrics=["instance"], out_dir=folder,
                   print_table=False)  # fmt: skip
    (folder / "results.json").write_text(json.dumps(entries))
    if sampler is not None:
        sampler.finish()
    write_run_info(
        folder, command="test", name=name, classes=CLASSES, category_ids=[1, 2, 3],
        results="results.json",
    )  # fmt: skip
    return folder


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """Two runs over the same images: ``good`` (with a gallery) and ``worse`` (without)."""
    root = tmp_path_factory.mktemp("runs")
    good = make_run(root / "good", shift=0, name="good <i>run</i>")
    worse = make_run(root / "worse", shift=20, name="worse", gallery=False)
    return good, worse
