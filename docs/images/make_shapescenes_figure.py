"""Draw docs/images/shapescenes.png (or glyphscenes.png): 8 images and their instance masks.

Run from the repository root:  .venv/bin/python docs/images/make_shapescenes_figure.py
(add ``glyphs`` for the GlyphScenes figure).
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from prm.data import GlyphScenes, ShapeScenes

DATASETS = {"shapes": ("ShapeScenes", ShapeScenes), "glyphs": ("GlyphScenes", GlyphScenes)}
# Distinct instance colours (tab10 without grey), background black.
PALETTE = np.array(colormaps["tab10"].colors)[[0, 1, 2, 3, 4, 5, 6, 8, 9]]


def colour_instances(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool -> (H, W, 3) float image, one colour per instance."""
    out = np.zeros((*masks.shape[1:], 3))
    for k, mask in enumerate(masks):
        out[mask] = PALETTE[k % len(PALETTE)]
    return out


def main(count: int = 8, columns: int = 4, name: str = "shapes") -> None:
    title, reader = DATASETS[name]
    out = Path(__file__).with_name(f"{title.lower()}.png")
    dataset = reader("train", num_images=count)
    rows = 2 * ((count + columns - 1) // columns)
    # The object API: no pyplot state, no backend switched for whoever imports this.
    fig = Figure(figsize=(2.4 * columns, 2.55 * rows))
    axes = fig.subplots(rows, columns)
    for i in range(count):
        image, target = dataset[i]
        masks = target["masks"].numpy()
        names = Counter(dataset.classes[c] for c in target["labels"].tolist())
        top = axes[2 * (i // columns), i % columns]
        bottom = axes[2 * (i // columns) + 1, i % columns]
        top.imshow(image)
        top.set_title(", ".join(f"{n} {name}" for name, n in sorted(names.items())), fontsize=8)
        bottom.imshow(colour_instances(masks))
        for k, mask in enumerate(masks):
            ys, xs = np.nonzero(mask)
            bottom.text(xs.mean(), ys.mean(), str(k + 1), color="white", fontsize=7,
                        ha="center", va="center")  # fmt: skip
        bottom.set_title(f"{len(masks)} instance masks", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{title} (128 px): images and their exact instance masks", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100)
    # 256 colours are plenty for flat shapes and keep the README picture small.
    Image.open(buffer).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(name=sys.argv[1] if len(sys.argv) > 1 else "shapes")
