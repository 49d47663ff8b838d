"""Draw docs/images/demo.png from a finished `prm demo` run: a few test images with the
PRM instances, their peak response maps and the ground truth (the demo's overlays), and
the CAM baseline's instances beside them.

Run from the repository root after `prm demo --out prm-demo`:
    .venv/bin/python docs/images/make_demo_figure.py prm-demo
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).with_name("demo.png")


def main(demo: Path, count: int = 4, scale: int = 2) -> None:
    prm_dir = demo / "report" / "overlays" / "prm"
    cam_dir = demo / "report" / "overlays" / "cam"
    names = sorted(p.name for p in prm_dir.glob("*.png"))[:count]
    if not names:
        raise SystemExit(f"no overlays in {prm_dir}: run `prm demo --out {demo}` first")
    rows = []
    for name in names:
        prm = Image.open(prm_dir / name)
        cam = Image.open(cam_dir / name)
        side = cam.height  # each panel is square: instances | PRMs | ground truth
        cam_instances = cam.crop((0, 0, side, side))
        row = Image.new("RGB", (prm.width + side + 4, side), "white")
        row.paste(cam_instances, (0, 0))
        row.paste(prm, (side + 4, 0))
        rows.append(row)
    title = 14
    width, height = rows[0].width, sum(r.height + 4 for r in rows)
    out = Image.new("RGB", (width, height + title), "white")
    draw = ImageDraw.Draw(out)
    side = rows[0].height
    for i, text in enumerate(["CAM baseline", "PRM instances", "PRMs + peaks", "ground truth"]):
        draw.text((i * (side + 4) + 4, 1), text, fill=(0, 0, 0))
    y = title
    for row in rows:
        out.paste(row, (0, y))
        y += row.height + 4
    out = out.resize((out.width * scale, out.height * scale), Image.NEAREST)
    out.save(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "prm-demo"))
