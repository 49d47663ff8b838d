"""Writers of small, deliberately imperfect data files for the reader tests.

Everything here writes into ``tmp_path``; nothing depends on ``../shared/data``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] * 64  # any palette will do


def write_jpeg(path: Path, size=(24, 32), colour=(200, 40, 40), **save_kwargs) -> Path:
    """A (H, W) = size JPEG of one colour with a dark square in the top-left corner."""
    h, w = size
    array = np.zeros((h, w, 3), dtype=np.uint8)
    array[:] = colour
    array[:4, :4] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95, **save_kwargs)
    return path


def write_index_png(path: Path, array: np.ndarray) -> Path:
    """A palette PNG whose pixel values are the given indices (as VOC writes masks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8), mode="P")
    image.putpalette(VOC_PALETTE)
    image.save(path)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its bytes, as an interrupted download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def voc_xml(objects, size=(24, 32), float_boxes=False) -> str:
    """VOC annotation text; objects are names or (name, difficult) pairs."""
    h, w = size
    parts = [f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"]
    for obj in objects:
        name, difficult = (obj, None) if isinstance(obj, str) else obj
        tag = "<difficult/>" if difficult is None else f"<difficult>{int(difficult)}</difficult>"
        box = (1.5, 2.25, 10.75, 12.0) if float_boxes else (1, 2, 10, 12)
        parts.append(
            f"<object><name>{name}</name><pose/>{tag}<bndbox><xmin>{box[0]}</xmin>"
            f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


class VOCWriter:
    """Builds a VOC2012 folder one image at a time."""

    def __init__(self, root: Path):
        self.root = root
        for sub in ("JPEGImages", "Annotations", "ImageSets/Segmentation"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def add(self, image_id, objects=("cat",), size=(24, 32), instances=None, xml=None):
        """Add an image; ``instances``: VOC class values (1..20) of two-row stripes."""
        write_jpeg(self.root / "JPEGImages" / f"{image_id}.jpg", size)
        text = xml if xml is not None else voc_xml(objects, size)
        (self.root / "Annotations" / f"{image_id}.xml").write_text(text)
        if instances is not None:
            obj = np.zeros(size, dtype=np.uint8)
            cls = np.zeros(size, dtype=np.uint8)
            for k, value in enumerate(instances, start=1):
                rows = slice(3 * k, 3 * k + 2)
                obj[rows, 2:20] = k
                cls[rows, 2:20] = value
            cls[:, 22] = 255  # an ignore band, as VOC draws around objects
            write_index_png(self.root / "SegmentationObject" / f"{image_id}.png", obj)
            write_index_png(self.root / "SegmentationClass" / f"{image_id}.png", cls)
        return self

    def split(self, name, ids):
        path = self.root / "ImageSets" / "Segmentation" / f"{name}.txt"
        path.write_text("".join(f"{i}\n" for i in ids))
        return path


def coco_json(images, annotations, categories=None) -> dict:
    if categories is None:
        categories = [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def image_with_exif(path: Path, array: np.ndarray, orientation: int) -> Path:
    """Save pixels as stored, tagged with an EXIF orientation (as a phone camera does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95, exif=exif_bytes(orientation))
    path.write_bytes(buffer.getvalue())
    return path
