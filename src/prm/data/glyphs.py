"""GlyphScenes: an embedded dataset where colour is no cue and shape is the only one.

Grey letters rendered from TrueType fonts on grey, textured, cluttered backgrounds,
generated deterministically from ``(seed, split, index)`` like
:class:`~prm.data.ShapeScenes` (same API, same item format, ``--dataset glyphs``):

- 6 classes of letters (``GLYPH_CLASSES``), each drawn in one of several fonts that ship
  with matplotlib (DejaVu Sans / Serif / Mono and STIX, bold and oblique faces), so a
  class is a family of shapes, never one template;
- every pixel is grey (R = G = B): an instance's grey level, its texture (solid,
  stripes, gradient, speckle) and whether it is darker or lighter than the background
  are drawn independently of its class, so only the letter's shape tells the class;
- scale (``height``), rotation (``rotation`` degrees either way) and mild shear vary;
- 1-5 instances from 1-3 classes; a repeated class's instances are often placed next to
  each other (touching or overlapping), where a class-level map sees one blob;
- distractor glyphs of no class (other letters, digits and signs in the same fonts and
  greys) under the instances, scribbles over them, textured backgrounds, pixel noise;
- exact instance masks after occlusion: glyphs are painted with a binary (not
  anti-aliased) silhouette, and a pixel belongs to the top-most instance on it, or to none
  when a distractor or scribble covers it;
- fixed, disjoint train / val / test splits (2000 / 300 / 300 images by default).

No file is downloaded: the fonts are the ones matplotlib (a dependency) installs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .shapes import (
    SPLITS,
    Layer,
    Placement,
    Scene,
    ShapeScenes,
    check_scene_config,
    render_scene,
    sample_labels,
)

__all__ = [
    "GLYPH_CLASSES",
    "DISTRACTOR_GLYPHS",
    "GLYPH_FONTS",
    "GlyphConfig",
    "GlyphScenes",
    "font_paths",
    "glyph_mask",
    "sample_glyph_scene",
    "generate_glyph_scene",
]

#: The classes: letters whose silhouettes differ in topology and strokes.
GLYPH_CLASSES = ["A", "E", "G", "K", "M", "S"]
#: Glyphs of no class, drawn as clutter in the same fonts and greys.
DISTRACTOR_GLYPHS = ["T", "L", "V", "N", "4", "7", "#", "%", "?", "&"]
#: Font files (in matplotlib's ``mpl-data/fonts/ttf``) the glyphs are drawn with.
GLYPH_FONTS = [
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono-Bold.ttf",
    "STIXGeneralBol.ttf",
]
# Bump when a change alters the generated pixels, so that stale caches are not reused.
GENERATOR_VERSION = 1
# Mixed into every scene's seed so that GlyphScenes and ShapeScenes streams differ.
_STREAM = 0x61F


@dataclass(frozen=True)
class GlyphConfig:
    """Knobs of the glyph scene generator (defaults for 128 px; all scale with ``size``).

    ``size``, ``instances``, ``classes_per_image``, ``cluster_prob``, ``min_visible``,
    ``scribbles`` (grey lines here) and ``noise`` mean what they mean in
    :class:`~prm.data.shapes.SceneConfig`; the others:

    Attributes:
        height: (min, max) glyph cap height as a fraction of ``size``.
        rotation: glyphs are rotated by up to this many degrees either way.
        cluster_gap: (min, max) centre distance of a cluster pair in units of their mean
            width (< 1 overlaps, about 1 touches).
        distractors: (min, max) glyphs of no class, drawn under the instances.
        contrast: minimum grey-level difference between a glyph and the background mean.
    """

    size: int = 128
    instances: tuple[int, int] = (1, 5)
    classes_per_image: int = 3
    height: tuple[float, float] = (0.22, 0.36)
    rotation: float = 25.0
    cluster_prob: float = 0.6
    cluster_gap: tuple[float, float] = (0.75, 1.1)
    min_visible: float = 0.6
    distractors: tuple[int, int] = (1, 3)
    scribbles: tuple[int, int] = (0, 2)
    contrast: float = 60.0
    noise: float = 5.0

    def __post_init__(self):
        check_scene_config(self, "GlyphScenes", len(GLYPH_CLASSES))
        if not 0 < self.height[0] <= self.height[1] <= 0.8:
            raise ValueError(f"height must be (min, max) fractions in (0, 0.8], got {self.height}")


def font_paths() -> list[Path]:
    """The font files of :data:`GLYPH_FONTS` (matplotlib's copies).

    Raises:
        FileNotFoundError: naming the folder searched and the missing file.
    """
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [folder / name for name in GLYPH_FONTS]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"GlyphScenes needs the font {path.name}, which matplotlib installs in "
                f"{folder}; it is missing (reinstall matplotlib)"
            )
    return paths


@functools.lru_cache(maxsize=512)
def _big_glyph(char: str, font: int) -> tuple[Image.Image, int]:
    """A glyph drawn large (96 pt) once, and the height of its ink in pixels."""
    big = ImageFont.truetype(str(font_paths()[font]), 96)
    left, top, right, bottom = big.getbbox(char)
    canvas = Image.new("L", (right - left + 8, bottom - top + 8), 0)
    ImageDraw.Draw(canvas).text((4 - left, 4 - top), char, font=big, fill=255)
    return canvas, bottom - top


def glyph_mask(char: str, font: int, height: float, angle: float, shear: float = 0.0) -> np.ndarray:
    """The binary silhouette of a glyph, cropped to its bounding box.

    Args:
        char: the character.
        font: index into :data:`GLYPH_FONTS`.
        height: height of the upright glyph in pixels (its ink, not the font size).
        angle: rotation in degrees (counter-clockwise).
        shear: horizontal shear factor applied before rotation.

    Returns:
        ndarray (h, w) bool, True on the glyph, cropped to its ink.
    """
    # Render large once, then scale the ink to the wanted height: glyph heights differ
    # between fonts and characters, and the classes should not differ in size.
    canvas, ink_height = _big_glyph(char, font)
    scale = height / max(ink_height, 1)
    width = max(1, round(canvas.width * scale))
    tall = max(1, round(canvas.height * scale))
    small = canvas.resize((width, tall), Image.BILINEAR)
    if shear:
        pad = int(abs(shear) * tall) + 2
        small = small.transform(
            (width + 2 * pad, tall),
            Image.AFFINE,
            (1, shear, -pad - shear * tall / 2, 0, 1, 0),
            Image.BILINEAR,
        )
    small = small.rotate(angle, Image.BILINEAR, expand=True)
    mask = np.asarray(small) >= 128
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.ones((1, 1), dtype=bool)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _grey(value: float) -> np.ndarray:
    return np.full(3, float(np.clip(value, 0, 255)), dtype=np.float32)


def _sample_background(rng: np.random.Generator, size: int) -> dict:
    kind = rng.choice(["clouds", "stripes", "waves", "gradient"], p=[0.4, 0.15, 0.2, 0.25])
    base = float(rng.uniform(40, 215))
    return {
        "kind": str(kind),
        "c1": _grey(base),
        "c2": _grey(base + rng.uniform(-40, 40)),
        "angle": float(rng.uniform(0, math.pi)),
        "period": float(rng.uniform(6, 20)) * size / 128,
        "cells": int(rng.integers(3, 8)),
        "seed": int(rng.integers(2**31)),
    }


def _sample_grey_texture(rng: np.random.Generator, background: float, contrast: float) -> dict:
    """Paint of a glyph: a grey at least ``contrast`` from the background, any texture."""
    darker = rng.random() < 0.5
    if darker and background - contrast < 0:
        darker = False
    if not darker and background + contrast > 255:
        darker = True
    if darker:
        level = rng.uniform(0, max(background - contrast, 0))
    else:
        level = rng.uniform(min(background + contrast, 255), 255)
    kind = rng.choice(["solid", "stripes", "gradient", "speckle"], p=[0.4, 0.2, 0.25, 0.15])
    # The second tone stays on the same side of the background so the glyph stays visible.
    second = level + (rng.uniform(-30, 0) if not darker else rng.uniform(0, 30))
    return {
        "kind": str(kind),
        "c1": _grey(level),
        "c2": _grey(second),
        "angle": float(rng.uniform(0, math.pi)),
        "period": float(rng.uniform(2.5, 5.0)),
        "speckle": float(rng.uniform(8, 20)),
        "seed": int(rng.integers(2**31)),
    }


def _place(mask: np.ndarray, cx: float, cy: float, size: int):
    """Clip a glyph mask centred at (cx, cy) to the canvas: (box, mask inside it)."""
    h, w = mask.shape
    y0, x0 = round(cy - h / 2), round(cx - w / 2)
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = max(0, y0 + h - size), max(0, x0 + w - size)
    clipped = mask[top : h - bottom, left : w - right]
    box = (y0 + top, y0 + h - bottom, x0 + left, x0 + w - right)
    return box, clipped


def sample_glyph_scene(rng: np.random.Generator, config: GlyphConfig = GlyphConfig()) -> Scene:
    """Draw a random glyph scene: background, distractor glyphs, instances and scribbles.

    Instances are placed one by one, bottom to top, entirely inside the image; a
    placement is rejected (and re-drawn) when it would leave an earlier instance less
    than ``min_visible`` of its area, and an instance that cannot be placed in 30 tries is
    dropped (never the first).

    Returns:
        a :class:`~prm.data.shapes.Scene` (render it with
        :func:`prm.data.shapes.render_scene`); instances are the layers with ``label >= 0``.
    """
    size = config.size
    background = _sample_background(rng, size)
    bg_level = float((background["c1"][0] + background["c2"][0]) / 2)
    layers: list[Layer] = []
    lo, hi = config.height

    def draw_glyph(char: str):
        height = size * rng.uniform(lo, hi)
        angle = rng.uniform(-config.rotation, config.rotation)
        shear = rng.uniform(-0.15, 0.15)
        return glyph_mask(char, int(rng.integers(len(GLYPH_FONTS))), height, angle, shear)

    for _ in range(rng.integers(config.distractors[0], config.distractors[1] + 1)):
        char = DISTRACTOR_GLYPHS[int(rng.integers(len(DISTRACTOR_GLYPHS)))]
        mask = draw_glyph(char)
        box, mask = _place(mask, *rng.uniform(0, size, 2), size)
        if mask.any():
            texture = _sample_grey_texture(rng, bg_level, config.contrast * 0.7)
            layers.append(Layer(-1, box, mask, texture))

    labels = sample_labels(rng, config, len(GLYPH_CLASSES))
    canvas = Placement(size, config.min_visible)
    for label in labels:
        for _ in range(30):
            mask = draw_glyph(GLYPH_CLASSES[label])
            h, w = mask.shape
            if h >= size or w >= size:
                continue

            def anywhere(h=h, w=w):
                return rng.uniform(w / 2, size - w / 2), rng.uniform(h / 2, size - h / 2)

            half = max(h, w) / 2
            centre = canvas.centre(rng, label, half, (w / 2, h / 2), config, anywhere)
            if centre is None:
                continue
            box, mask = _place(mask, *centre, size)
            if not canvas.keeps_visible(box, mask):
                continue
            canvas.add(box, mask, (label, *centre, half))
            texture = _sample_grey_texture(rng, bg_level, config.contrast)
            layers.append(Layer(label, box, mask, texture))
            break

    paint = lambda: _sample_grey_texture(rng, bg_level, config.contrast * 0.5)  # noqa: E731
    layers += canvas.scribbles(rng, config, 2.0, paint)

    return Scene(size, background, layers, int(rng.integers(2**31)))


def generate_glyph_scene(
    seed: int, split: str, index: int, config: GlyphConfig = GlyphConfig()
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The glyph scene ``index`` of ``split``: a pure function of its arguments.

    Returns:
        image (H, W, 3) uint8 (grey: the three channels are equal), instance_map (H, W)
        uint8 (0 = no instance, k = instance k), labels: class index of instance k at
        position k - 1.
    """
    if split not in SPLITS:
        raise ValueError(f"GlyphScenes split must be one of {list(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([int(seed), SPLITS[split], int(index), GENERATOR_VERSION, _STREAM])
    scene = sample_glyph_scene(rng, config)
    image, instance_map = render_scene(scene, 0.0)
    if config.noise > 0:
        # One noise value per pixel for all channels: the image stays grey.
        noise = np.random.default_rng(scene.noise_seed).normal(0.0, config.noise, image.shape[:2])
        image = np.clip(image + noise[..., None] + 0.5, 0, 255).astype(np.uint8)
    return image, instance_map, scene.labels


class GlyphScenes(ShapeScenes):
    """The embedded grey-glyph dataset (see the module docstring).

    Same constructor and items as :class:`~prm.data.ShapeScenes` (``split``,
    ``num_images``, ``size``, ``seed``, ``transform``, ``cache_dir``, ``config`` (a
    :class:`GlyphConfig`), ``on_error``): ``image_id`` ``"<split>_<index:05d>"``,
    ``image_labels`` float32 (6,), ``masks`` bool (N, H, W), ``labels`` int64 (N,).
    The cache file is ``<cache_dir>/glyphscenes-<split>-<hash>.npz``.
    """

    # A mirrored letter is not that letter (a mirrored E, K or S is no letter at all):
    # random flips would have the network learn 12 shapes for 6 classes.
    MIRROR_INVARIANT = False
    _config_class = GlyphConfig
    _class_names = GLYPH_CLASSES
    _cache_prefix = "glyphscenes"
    _version = GENERATOR_VERSION

    def _generate(self, index: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        return generate_glyph_scene(self.seed, self.split, index, self.config)
