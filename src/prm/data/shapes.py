"""ShapeScenes: the embedded synthetic instance segmentation dataset.

Scenes of simple objects, generated deterministically from ``(seed, split, index)``: no
files, a few milliseconds an image at 128 px. They are made to separate instance from
semantic segmentation on a laptop:

- 6 classes of distinct **shape** (circle, square, triangle, star, ring, cross), each in
  its own family of hues (``class_colours``; off makes shape the only cue, much slower
  to learn from scratch) with varied saturation, brightness and texture (solid, stripes,
  checks, gradient, speckle), and varied scale, aspect and rotation;
- 1-6 instances from 1-3 classes, so one class is often repeated, and a repeated class's
  instances are often placed **next to each other** (touching or overlapping), where a
  class-level map (CAM) sees one blob and only instance-level responses see several;
- partial occlusion (each instance keeps at least ``min_visible`` of its area), clutter
  that belongs to no class (irregular blobs, specks, and scribbles that may cross
  objects), textured backgrounds and pixel noise;
- exact instance masks after occlusion: a pixel belongs to the top-most object drawn on
  it, or to none when clutter covers it;
- fixed, disjoint train / val / test splits (2000 / 300 / 300 images by default).

``sample_scene`` draws a scene's layers, ``render_scene`` paints them, and
:class:`ShapeScenes` wraps both as a dataset with the items of ``docs/conventions.md``.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from prm.files import write_atomic

from .common import ItemDataset, multi_hot

__all__ = [
    "SHAPE_CLASSES",
    "SceneConfig",
    "Layer",
    "Scene",
    "ShapeScenes",
    "sample_scene",
    "render_scene",
    "generate_scene",
]

SHAPE_CLASSES = ["circle", "square", "triangle", "star", "ring", "cross"]
# Hue (in turns) of each class when SceneConfig.class_colours is on: six families 60
# degrees apart, in the order of SHAPE_CLASSES (red, yellow, green, cyan, blue, magenta).
CLASS_HUES = [k / 6 for k in range(len(SHAPE_CLASSES))]
SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SPLIT_SIZES = {"train": 2000, "val": 300, "test": 300}
# Bump when a change alters the generated pixels, so that stale caches are not reused.
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the scene generator (defaults tuned for 128 px; all scale with ``size``).

    Attributes:
        size: image height and width in pixels.
        instances: (min, max) instances per image.
        classes_per_image: max distinct classes per image (fewer means more repeats).
        radius: (min, max) object circumradius as a fraction of ``size``.
        cluster_prob: chance that a repeated-class instance is put next to one of its class.
        cluster_gap: (min, max) centre distance of a cluster pair, in units of the sum of
            their radii (< 1 overlaps, about 1 touches).
        min_visible: fraction of each instance's area that must stay visible.
        distractors: (min, max) clutter objects under the instances.
        scribbles: (min, max) thin clutter lines drawn over everything.
        noise: standard deviation of the pixel noise (0..255 scale).
        class_colours: give each class its own hue family (``CLASS_HUES`` +-
            ``hue_jitter``; saturation, brightness and texture still vary). On by default:
            a small network learns it in minutes on a CPU, while shape alone (off) takes
            far longer to learn from scratch. Same-class neighbours share a hue either way,
            which is what makes instances hard for a class-level map.
        hue_jitter: half-width of a class's hue family, in turns (0.05 = 18 degrees).
    """

    size: int = 128
    instances: tuple[int, int] = (1, 6)
    classes_per_image: int = 3
    radius: tuple[float, float] = (0.07, 0.15)
    cluster_prob: float = 0.65
    cluster_gap: tuple[float, float] = (0.7, 1.15)
    min_visible: float = 0.55
    distractors: tuple[int, int] = (1, 4)
    scribbles: tuple[int, int] = (0, 2)
    noise: float = 4.0
    class_colours: bool = True
    hue_jitter: float = 0.05

    def __post_init__(self):
        check_scene_config(self, "ShapeScenes", len(SHAPE_CLASSES))


def check_scene_config(config, dataset: str, num_classes: int) -> None:
    """The checks every scene generator's config shares (size, instances, classes)."""
    if config.size < 32:
        raise ValueError(f"{dataset} size must be >= 32 px, got {config.size}")
    lo, hi = config.instances
    if not 1 <= lo <= hi:
        raise ValueError(f"instances must be (min, max) with 1 <= min <= max, got {lo, hi}")
    if not 1 <= config.classes_per_image <= num_classes:
        raise ValueError(f"classes_per_image must be in 1..{num_classes}")


@dataclass
class Layer:
    """One painted object: an instance (``label >= 0``) or clutter (``label == -1``).

    ``mask`` is the object's full silhouette inside ``box = (y0, y1, x0, x1)``, before
    anything drawn later covers it; ``texture`` holds the paint parameters.
    """

    label: int
    box: tuple[int, int, int, int]
    mask: np.ndarray
    texture: dict = field(repr=False)


@dataclass
class Scene:
    """A scene's background and its layers, bottom to top."""

    size: int
    background: dict
    layers: list[Layer]
    noise_seed: int

    @property
    def labels(self) -> list[int]:
        """Class index of each instance, in drawing order (= instance id order)."""
        return [layer.label for layer in self.layers if layer.label >= 0]


# --- shapes: silhouettes on a local grid --------------------------------------------


def _local_grid(cx, cy, r, angle, aspect, size):
    """Pixel box around a shape and its pixel centres in the shape's unit frame."""
    y0, y1 = max(0, math.floor(cy - r)), min(size, math.ceil(cy + r) + 1)
    x0, x1 = max(0, math.floor(cx - r)), min(size, math.ceil(cx + r) + 1)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
    c, s = math.cos(angle), math.sin(angle)
    u = (c * xs + s * ys) / (r * aspect)
    v = (-s * xs + c * ys) * aspect / r
    return (y0, y1, x0, x1), u, v


def _regular_polygon(u, v, sides):
    """Inside a regular polygon of circumradius 1 with a vertex pointing up (-v)."""
    apothem = math.cos(math.pi / sides)
    thetas = [math.pi / 2 + math.pi / sides + 2 * math.pi * k / sides for k in range(sides)]
    return np.logical_and.reduce([u * math.cos(t) - v * math.sin(t) <= apothem for t in thetas])


def _star(u, v, points=5, inner=0.45):
    """Inside a star polygon (outer radius 1, inner radius ``inner``), straight edges."""
    rho = np.hypot(u, v)
    sector = 2 * math.pi / points
    phi = np.abs(np.mod(np.arctan2(u, -v) + sector / 2, sector) - sector / 2)
    # Edge from the outer vertex (1, 0) to the inner vertex at angle sector/2, in polar
    # coordinates of the sector: inside when on the origin's side of that line.
    ix, iy = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    return (px - 1.0) * iy - py * (ix - 1.0) <= 0


def _blob(u, v, harmonics):
    """Irregular potato: radius 0.8 * (1 + sum a cos(k theta + p))."""
    theta = np.arctan2(v, u)
    radius = np.ones_like(theta)
    for k, a, p in harmonics:
        radius = radius + a * np.cos(k * theta + p)
    return np.hypot(u, v) <= 0.8 * radius


def _shape_mask(shape, u, v, params=None):
    if shape == "circle":
        return u * u + v * v <= 0.85**2
    if shape == "ring":
        d = u * u + v * v
        return (d <= 0.92**2) & (d >= 0.5**2)
    if shape == "square":
        return _regular_polygon(u, v, 4)
    if shape == "triangle":
        return _regular_polygon(u, v, 3)
    if shape == "star":
        return _star(u, v)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.92) & (av <= 0.3)) | ((av <= 0.92) & (au <= 0.3))
    if shape == "blob":
        return _blob(u, v, params)
    raise ValueError(f"unknown shape {shape!r}")


def _segments_mask(points, width, size):
    """Thick polyline: pixels within width/2 of any segment."""
    pts = np.asarray(points, dtype=np.float32)
    pad = width / 2 + 1
    y0 = max(0, math.floor(pts[:, 1].min() - pad))
    y1 = min(size, math.ceil(pts[:, 1].max() + pad) + 1)
    x0 = max(0, math.floor(pts[:, 0].min() - pad))
    x1 = min(size, math.ceil(pts[:, 0].max() + pad) + 1)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    inside = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:], strict=True):
        dx, dy = bx - ax, by - ay
        t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
        inside |= (xs - ax - t * dx) ** 2 + (ys - ay - t * dy) ** 2 <= (width / 2) ** 2
    return (y0, y1, x0, x1), inside


# --- colours and textures --------------------------------------------------------------


def _hsv_colour(rng, s=(0.35, 1.0), v=(0.3, 1.0), hue=None, hue_jitter=0.0):
    """An RGB colour (float32, 0..255): random hue, or ``hue`` +- ``hue_jitter`` (turns)."""
    h = rng.random() if hue is None else (hue + rng.uniform(-hue_jitter, hue_jitter)) % 1.0
    rgb = colorsys.hsv_to_rgb(h, rng.uniform(*s), rng.uniform(*v))
    return np.array(rgb, dtype=np.float32) * 255


def _sample_texture(rng, base):
    """Paint parameters: a main colour ``base`` and a pattern drawn independently of class."""
    kind = rng.choice(
        ["solid", "stripes", "checks", "gradient", "speckle"], p=[0.3, 0.2, 0.15, 0.2, 0.15]
    )
    second = np.clip(base * rng.uniform(0.45, 0.8) + rng.uniform(-30, 30, 3), 0, 255)
    return {
        "kind": str(kind),
        "c1": base,
        "c2": second.astype(np.float32),
        "angle": float(rng.uniform(0, math.pi)),
        "period": float(rng.uniform(3.0, 7.0)),
        "speckle": float(rng.uniform(12, 30)),
        "seed": int(rng.integers(2**31)),
    }


def _paint(texture, box):
    """(h, w, 3) float32 colours of a texture over a pixel box."""
    y0, y1, x0, x1 = box
    h, w = y1 - y0, x1 - x0
    c1, c2, kind = texture["c1"], texture["c2"], texture["kind"]
    if kind == "solid":
        return np.broadcast_to(c1, (h, w, 3))
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    if kind == "speckle":
        noise = np.random.default_rng(texture["seed"]).normal(0, texture["speckle"], (h, w, 1))
        return c1 + noise.astype(np.float32)
    c, s = math.cos(texture["angle"]), math.sin(texture["angle"])
    along = c * xs + s * ys
    if kind == "stripes":
        t = (np.floor(along / texture["period"]) % 2).astype(np.float32)
    elif kind == "waves":
        t = 0.5 + 0.5 * np.sin(along * (2 * math.pi / texture["period"]))
    elif kind == "checks":
        across = -s * xs + c * ys
        t = (np.floor(along / texture["period"]) + np.floor(across / texture["period"])) % 2
        t = t.astype(np.float32)
    else:  # gradient across the box
        t = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
    return c1 + t[..., None] * (c2 - c1)


def _sample_background(rng, size):
    # No check pattern here: a background of squares would mimic the "square" class.
    kind = rng.choice(["clouds", "stripes", "waves", "gradient"], p=[0.4, 0.15, 0.2, 0.25])
    base = _hsv_colour(rng, s=(0.0, 0.35), v=(0.25, 0.95))
    return {
        "kind": str(kind),
        "c1": base,
        "c2": np.clip(base + rng.uniform(-45, 45, 3), 0, 255).astype(np.float32),
        "angle": float(rng.uniform(0, math.pi)),
        "period": float(rng.uniform(6, 20)) * size / 128,
        "cells": int(rng.integers(3, 8)),
        "seed": int(rng.integers(2**31)),
    }


def _paint_background(bg, size):
    if bg["kind"] == "clouds":
        # A few random colours per axis, smoothly interpolated: blotchy low-frequency texture.
        cells = bg["cells"]
        rng = np.random.default_rng(bg["seed"])
        t = rng.random((cells, cells)).astype(np.float32)
        small = Image.fromarray(t).resize((size, size), Image.BICUBIC)
        t = np.clip(np.asarray(small), 0, 1)
        return bg["c1"] + t[..., None] * (bg["c2"] - bg["c1"])
    return np.array(_paint(bg, (0, size, 0, size)), dtype=np.float32)


# --- scenes ----------------------------------------------------------------------------


def _distinct_colour(rng, background_colour, min_distance=70.0, **hsv):
    """An object colour that stands out from the background (the best of a few draws)."""
    best, best_distance = None, -1.0
    for _ in range(20):
        colour = _hsv_colour(rng, **hsv)
        distance = float(np.linalg.norm(colour - background_colour))
        if distance >= min_distance:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def sample_labels(rng: np.random.Generator, config, num_classes: int) -> list[int]:
    """The classes of a scene's instances: a few distinct ones, so repeats are common."""
    n = int(rng.integers(config.instances[0], config.instances[1] + 1))
    k = int(rng.integers(1, min(n, config.classes_per_image) + 1))
    present = rng.choice(num_classes, size=k, replace=False)
    labels = list(present) + list(rng.choice(present, size=n - k))
    return [int(c) for c in rng.permutation(labels)]


class Placement:
    """The instances placed so far, and who is on top where, while a scene is drawn.

    ``owner`` (size, size) holds the 1-based id of the top instance of each pixel, so a
    new layer can be refused when it would leave an earlier instance less than
    ``min_visible`` of its full area (``areas``). ``placed`` holds ``(label, cx, cy,
    reach)`` of each instance, for clusters.
    """

    def __init__(self, size: int, min_visible: float):
        self.size, self.min_visible = size, min_visible
        self.owner = np.zeros((size, size), dtype=np.int16)
        self.areas: list[int] = []
        self.placed: list[tuple[int, float, float, float]] = []

    def keeps_visible(self, box, mask) -> bool:
        """Whether every placed instance stays ``min_visible`` visible under ``mask``."""
        y0, y1, x0, x1 = box
        covered = np.bincount(self.owner[y0:y1, x0:x1][mask], minlength=len(self.areas) + 1)
        visible = np.bincount(self.owner.ravel(), minlength=len(self.areas) + 1)
        return all(
            visible[i + 1] - covered[i + 1] >= self.min_visible * self.areas[i]
            for i in range(len(self.areas))
        )

    def add(self, box, mask, placed: tuple[int, float, float, float] | None = None) -> None:
        """Put an instance (``placed`` given) or an occluder (``None``) on top."""
        y0, y1, x0, x1 = box
        self.owner[y0:y1, x0:x1][mask] = 0 if placed is None else len(self.areas) + 1
        if placed is not None:
            self.areas.append(int(mask.sum()))
            self.placed.append(placed)

    def scribbles(self, rng, config, max_width: float, paint) -> list[Layer]:
        """``config.scribbles`` thin lines over everything, each dropped when it would hide
        too much of anyone; ``paint()`` samples each one's texture."""
        layers = []
        for _ in range(rng.integers(config.scribbles[0], config.scribbles[1] + 1)):
            points = rng.uniform(0, self.size, (int(rng.integers(2, 5)), 2))
            width = rng.uniform(1.0, max_width) * self.size / 128
            box, mask = _segments_mask(points, width, self.size)
            if self.keeps_visible(box, mask):
                self.add(box, mask)
                layers.append(Layer(-1, box, mask, paint()))
        return layers

    def centre(self, rng, label, reach, half_size, config, anywhere):
        """A centre for an instance of ``label`` reaching ``reach`` from it: next to one of
        its class (a cluster, with ``config.cluster_prob``), else ``anywhere()``; ``None``
        when the cluster spot would put the ``half_size = (half w, half h)`` box off the
        canvas."""
        mates = [p for p in self.placed if p[0] == label]
        if not (mates and rng.random() < config.cluster_prob):
            return anywhere()
        _, mx, my, mreach = mates[rng.integers(len(mates))]
        gap = (reach + mreach) * rng.uniform(*config.cluster_gap)
        direction = rng.uniform(0, 2 * math.pi)
        cx, cy = mx + gap * math.cos(direction), my + gap * math.sin(direction)
        (hw, hh), size = half_size, self.size
        return (cx, cy) if hw <= cx <= size - hw and hh <= cy <= size - hh else None


def sample_scene(rng: np.random.Generator, config: SceneConfig = SceneConfig()) -> Scene:
    """Draw a random scene: background, clutter, instances and scribbles.

    Instances are placed one by one, bottom to top; a placement is rejected (and
    re-drawn) when it would leave an earlier instance less than ``min_visible`` of its
    area, and an instance that cannot be placed in 30 tries is dropped (never the first).

    Args:
        rng: numpy random generator (the only source of randomness).
        config: generator knobs.

    Returns:
        :class:`Scene`; its instances are the layers with ``label >= 0``.
    """
    size = config.size
    background = _sample_background(rng, size)
    bg_colour = (background["c1"] + background["c2"]) / 2
    layers: list[Layer] = []

    # Clutter under the instances: irregular blobs and specks of no class.
    for _ in range(rng.integers(config.distractors[0], config.distractors[1] + 1)):
        speck = rng.random() < 0.35
        r = size * (rng.uniform(0.02, 0.04) if speck else rng.uniform(0.05, 0.12))
        cx, cy = rng.uniform(0, size, 2)
        # Strong low harmonics: lumpy, never round enough to pass for a circle.
        harmonics = [(k, rng.uniform(0.22, 0.38), rng.uniform(0, 2 * math.pi)) for k in (2, 3)]
        box, u, v = _local_grid(cx, cy, r, rng.uniform(0, 2 * math.pi), 1.0, size)
        mask = _shape_mask("blob", u, v, harmonics)
        # Half the clutter is greyish, half of any hue (so colour alone cannot be trusted).
        grey = {"s": (0.0, 0.3)} if rng.random() < 0.5 else {}
        texture = _sample_texture(rng, _distinct_colour(rng, bg_colour, 40, **grey))
        if mask.any():
            layers.append(Layer(-1, box, mask, texture))

    # Instances: classes first, then places.
    labels = sample_labels(rng, config, len(SHAPE_CLASSES))
    canvas = Placement(size, config.min_visible)
    lo, hi = config.radius
    for label in labels:
        for _ in range(30):
            r = size * rng.uniform(lo, hi)
            anywhere = lambda r=r: rng.uniform(r, size - r, 2)  # noqa: E731
            centre = canvas.centre(rng, label, r, (r, r), config, anywhere)
            if centre is None:
                continue
            cx, cy = centre
            aspect = math.exp(rng.uniform(-0.12, 0.12))  # mild: a circle stays a circle
            box, u, v = _local_grid(cx, cy, r, rng.uniform(0, 2 * math.pi), aspect, size)
            mask = _shape_mask(SHAPE_CLASSES[label], u, v)
            if not canvas.keeps_visible(box, mask):
                continue
            canvas.add(box, mask, (label, cx, cy, r))
            hue = {}
            if config.class_colours:
                hue = {"hue": CLASS_HUES[label], "hue_jitter": config.hue_jitter, "s": (0.5, 1.0)}
            colour = _distinct_colour(rng, bg_colour, **hue)
            layers.append(Layer(label, box, mask, _sample_texture(rng, colour)))
            break

    layers += canvas.scribbles(rng, config, 2.5, lambda: _sample_texture(rng, _hsv_colour(rng)))

    return Scene(size, background, layers, int(rng.integers(2**31)))


def render_scene(scene: Scene, noise: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Paint a scene.

    Args:
        scene: from :func:`sample_scene` (layers may be removed to study one object).
        noise: standard deviation of the Gaussian pixel noise (0..255 scale).

    Returns:
        image: ndarray (H, W, 3) uint8.
        instance_map: ndarray (H, W) uint8: ``k`` where instance ``k`` (1-based, in the
        order of ``scene.labels``) is the top-most object, 0 elsewhere.
    """
    size = scene.size
    image = _paint_background(scene.background, size)
    instance_map = np.zeros((size, size), dtype=np.uint8)
    k = 0
    for layer in scene.layers:
        y0, y1, x0, x1 = layer.box
        window = image[y0:y1, x0:x1]
        window[layer.mask] = _paint(layer.texture, layer.box)[layer.mask]
        k += layer.label >= 0  # clutter (label -1) hides the instances under it
        instance_map[y0:y1, x0:x1][layer.mask] = k if layer.label >= 0 else 0
    if noise > 0:
        rng = np.random.default_rng(scene.noise_seed)
        image = image + rng.normal(0.0, noise, image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), instance_map


def generate_scene(
    seed: int, split: str, index: int, config: SceneConfig = SceneConfig()
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The scene ``index`` of ``split``: a pure function of its arguments.

    Returns:
        image (H, W, 3) uint8, instance_map (H, W) uint8 (0 = no instance, k = instance
        k), labels: class index of instance k at position k - 1.
    """
    if split not in SPLITS:
        raise ValueError(f"ShapeScenes split must be one of {list(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([int(seed), SPLITS[split], int(index), GENERATOR_VERSION])
    scene = sample_scene(rng, config)
    image, instance_map = render_scene(scene, config.noise)
    return image, instance_map, scene.labels


class ShapeScenes(ItemDataset):
    """The embedded synthetic dataset (see the module docstring).

    Items follow ``docs/conventions.md``: ``image_id`` ``"<split>_<index:05d>"``,
    ``image_labels`` float32 (6,), ``size`` (H, W), ``masks`` bool (N, H, W) (exact,
    after occlusion), ``labels`` int64 (N,), ``iscrowd`` (all False), ``ignore_mask``
    (all False).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint random streams).
        num_images: images in the split (default 2000 / 300 / 300).
        size: image size in pixels (128 default; 448 for benchmarks).
        seed: dataset seed; the same seed gives the same images on every machine
            with the same numpy bit generator (PCG64).
        transform: callable applied to the PIL image.
        cache_dir: if given, the split is generated once and kept in
            ``<cache_dir>/shapescenes-<hash>.npz`` (the hash covers every parameter and
            the generator version); otherwise each item is generated when read.
        config: further generator knobs (:class:`SceneConfig`); ``size`` overrides its size.
    """

    DEFAULT_SPLITS = {"train": "train", "val": "val", "eval": "val"}
    # Hooks for generated datasets that share this machinery (``prm.data.glyphs``).
    _config_class: type = SceneConfig
    _class_names: list[str] = SHAPE_CLASSES
    _cache_prefix = "shapescenes"
    _version = GENERATOR_VERSION

    def __init__(
        self,
        split: str = "train",
        num_images: int | None = None,
        *,
        size: int = 128,
        seed: int = 0,
        transform: Callable | None = None,
        cache_dir: str | os.PathLike | None = None,
        config: SceneConfig | None = None,
        on_error: str = "raise",
    ):
        super().__init__(transform, on_error)
        if split not in SPLITS:
            raise ValueError(
                f"{type(self).__name__} split must be one of {list(SPLITS)}, got {split!r}"
            )
        config = config or self._config_class()
        if config.size != size:
            config = self._config_class(**{**asdict(config), "size": size})
        self.split = split
        self.num_images = DEFAULT_SPLIT_SIZES[split] if num_images is None else int(num_images)
        if self.num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        self.seed = int(seed)
        self.config = config
        self.classes = list(self._class_names)
        self.category_ids = list(range(1, len(self.classes) + 1))
        self._cache: dict[str, np.ndarray] | None = None
        self.cache_file: Path | None = None
        if cache_dir is not None:
            name = f"{self._cache_prefix}-{self._cache_key()}.npz"
            self.cache_file = Path(cache_dir) / name
            self._cache = self._load_or_build_cache(self.cache_file)

    def _cache_key(self) -> str:
        params = {
            "version": self._version,
            "split": self.split,
            "n": self.num_images,
            "seed": self.seed,
            "config": asdict(self.config),
        }
        text = json.dumps(params, sort_keys=True, default=list)
        return f"{self.split}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"

    def _load_or_build_cache(self, path: Path) -> dict[str, np.ndarray]:
        if path.is_file():
            with np.load(path) as data:
                return {key: data[key] for key in data.files}
        size, n = self.config.size, self.num_images
        images = np.zeros((n, size, size, 3), dtype=np.uint8)
        maps = np.zeros((n, size, size), dtype=np.uint8)
        labels = np.full((n, self.config.instances[1]), -1, dtype=np.int8)
        for i in range(n):
            images[i], maps[i], lab = self._generate(i)
            labels[i, : len(lab)] = lab
        # Atomic: a concurrent reader never sees half a file.
        arrays = {"images": images, "maps": maps, "labels": labels}
        write_atomic(path, lambda f: np.savez_compressed(f, **arrays))
        return arrays

    def __len__(self) -> int:
        return self.num_images

    def image_id(self, index: int) -> str:
        return f"{self.split}_{index:05d}"

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Raw ``(image (H, W, 3) uint8, instance_map (H, W) uint8, labels)`` of an item."""
        if self._cache is not None:
            labels = [int(c) for c in self._cache["labels"][index] if c >= 0]
            return self._cache["images"][index], self._cache["maps"][index], labels
        return self._generate(index)

    def _generate(self, index: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        return generate_scene(self.seed, self.split, index, self.config)

    def _load(self, index: int) -> tuple:
        image, instance_map, labels = self.scene(index)
        n, size = len(labels), self.config.size
        ids = torch.from_numpy(instance_map.astype(np.int64))
        masks = ids[None] == torch.arange(1, n + 1)[:, None, None]
        target = {
            "image_id": self.image_id(index),
            "image_labels": multi_hot(labels, len(self.classes)),
            "size": (size, size),
            "masks": masks,
            "labels": torch.tensor(labels, dtype=torch.int64),
            "iscrowd": torch.zeros(n, dtype=torch.bool),
            "ignore_mask": torch.zeros(size, size, dtype=torch.bool),
        }
        return Image.fromarray(np.ascontiguousarray(image), "RGB"), target
