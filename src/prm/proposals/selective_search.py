"""Selective search segment proposals from PyPI packages only.

Uijlings, van de Sande, Gevers, Smeulders. *Selective Search for Object Recognition*.
IJCV 2013. The paper's algorithm, kept as segments rather than boxes:

1. Over-segment the image with Felzenszwalb-Huttenlocher graph segmentation
   (scikit-image) in several colour spaces and at several scales ``k``.
2. Describe every superpixel by its size, bounding box, a colour histogram (25 bins per
   channel) and a texture histogram (Gaussian derivatives, sigma = 1, in 8 orientations,
   10 bins per orientation and channel), each histogram L1-normalised.
3. Hierarchical grouping: repeatedly merge the most similar pair of *adjacent* regions
   until one region is left. Similarity is a sum of the chosen measures (all in 0..1):

       s_colour(i, j)  = sum_k min(c_i^k, c_j^k)           histogram intersection
       s_texture(i, j) = sum_k min(t_i^k, t_j^k)
       s_size(i, j)    = 1 - (size_i + size_j) / size(image)
       s_fill(i, j)    = 1 - (size(BB_ij) - size_i - size_j) / size(image)

   A merged region's histograms are the size-weighted mean of its parts, so nothing is
   recomputed from pixels. Every region formed (the superpixels included) is a proposal.
4. Rank as the paper does: within one hierarchy the region formed last gets position 1,
   the one before it 2, ...; each position is multiplied by a uniform random number
   (seeded) and all hierarchies are sorted together by that value, ascending
   (``ranking="round-robin"``: by position alone, hierarchies taking turns).
5. Remove exact and near duplicates (mask IoU >= ``duplicate_iou``) greedily in ranked
   order and keep the first ``max_proposals``.

A region is a set of superpixels throughout: statistics are per-superpixel sums merged
in O(1), and the IoUs of step 5 are exact, computed on area vectors over the cells of
the common refinement of all superpixel maps. Dense ``H x W`` masks are made only at the
end. No Python loop runs over pixels; the only Python loop is over merges.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from skimage import color
from skimage.segmentation import felzenszwalb

from prm.data.images import to_uint8_image

from .compact import CompactProposals

__all__ = ["SelectiveSearch", "as_rgb_array"]

COLOR_SPACES = ("rgb", "hsv", "lab", "rgi", "h", "i")
COLOUR_BINS = 25
TEXTURE_BINS = 10
TEXTURE_ORIENTATIONS = 8


@dataclass(frozen=True)
class SelectiveSearch:
    """Class-agnostic segment proposals by selective search (hierarchical grouping).

    Call it on an image to get ``Tensor[P, H, W]`` bool masks at the image's own
    resolution, best first (docs/conventions.md "Proposals")::

        proposals = SelectiveSearch()(image)            # default ("fast") settings
        proposals = SelectiveSearch.quality()(image)    # more strategies, slower

    Attributes:
        color_spaces: colour spaces to segment and describe the image in, any of
            ``"rgb"``, ``"hsv"``, ``"lab"``, ``"rgi"`` (normalised r, g and intensity),
            ``"h"`` (hue), ``"i"`` (intensity).
        scales: Felzenszwalb's ``k`` (scikit-image's ``scale``; also its ``min_size``).
            Larger gives fewer, larger superpixels.
        similarities: grouping strategies, each a string of the measures it sums:
            ``c`` colour, ``t`` texture, ``s`` size, ``f`` fill, ``e`` edge (1 minus
            the mean colour distance across the shared boundary, scaled to 0..1: weak
            boundaries merge first, as in MCG).
        sigma: Gaussian smoothing before the Felzenszwalb segmentation.
        segmenter: the Felzenszwalb-Huttenlocher implementation: ``"skimage"``
            (scikit-image's ``felzenszwalb``) or ``"opencv"`` (OpenCV contrib's
            ``ximgproc.segmentation`` graph segmentation on the channels as bytes, about
            4x faster; docs/proposals.md compares their proposals).
        max_side: when the image's longer side exceeds this, segment a resized copy with
            this longer side and scale the superpixel maps back up (nearest), so masks
            still come back at the original size. ``None``: the original resolution.
        max_proposals: keep at most this many proposals (``None``: all of them).
        duplicate_iou: a proposal whose mask IoU with a better-ranked kept one is at
            least this is dropped (1.0: exact duplicates only).
        seed: seed of the random factor of the ranking (same image, same seed, same
            proposals).
        ranking: ``"random"`` (the paper's: position times a random number) or
            ``"round-robin"`` (position alone: the hierarchies take turns, each giving
            its next region; docs/proposals.md measures both).

    One hierarchy runs per (colour space, scale, similarity), ``len(color_spaces) *
    len(scales) * len(similarities)`` in all.
    """

    color_spaces: tuple[str, ...] = ("hsv", "lab")
    scales: tuple[float, ...] = (50.0, 100.0)
    similarities: tuple[str, ...] = ("ctsf", "tsf")
    sigma: float = 0.8
    segmenter: str = "skimage"
    max_side: int | None = None
    max_proposals: int | None = 1000
    duplicate_iou: float = 0.9
    seed: int = 0
    ranking: str = "random"

    def __post_init__(self) -> None:
        # Accept lists (from YAML/JSON) but store tuples so that the settings hash is stable.
        for name in ("color_spaces", "scales", "similarities"):
            value = getattr(self, name)
            if isinstance(value, str) or not len(value):
                raise ValueError(f"{name} must be a non-empty sequence, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "scales", tuple(float(k) for k in self.scales))
        bad = [c for c in self.color_spaces if c not in COLOR_SPACES]
        if bad:
            raise ValueError(f"unknown colour space(s) {bad}; choose from {COLOR_SPACES}")
        for sim in self.similarities:
            if not sim or set(sim) - set("ctsfe") or len(set(sim)) != len(sim):
                raise ValueError(
                    f"similarity {sim!r} must be letters from 'ctsfe' (colour, texture, "
                    "size, fill, edge), each at most once"
                )
        if any(k <= 0 for k in self.scales):
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        if self.segmenter not in ("skimage", "opencv"):
            raise ValueError(f"segmenter must be 'skimage' or 'opencv', got {self.segmenter!r}")
        if self.max_side is not None and self.max_side < 8:
            raise ValueError(f"max_side must be >= 8 or None, got {self.max_side}")
        if self.max_proposals is not None and self.max_proposals < 1:
            raise ValueError(f"max_proposals must be >= 1 or None, got {self.max_proposals}")
        if self.ranking not in ("random", "round-robin"):
            raise ValueError(f"ranking must be 'random' or 'round-robin', got {self.ranking!r}")
        if not 0.0 < self.duplicate_iou <= 1.0:
            raise ValueError(f"duplicate_iou must be in (0, 1], got {self.duplicate_iou}")

    # Presets after the paper's "single", "fast" and "quality" strategies.
    @classmethod
    def single(cls, **overrides) -> SelectiveSearch:
        """One hierarchy: HSV, k = 100, colour + texture + size + fill."""
        return cls(
            **{"color_spaces": ("hsv",), "scales": (100.0,), "similarities": ("ctsf",)} | overrides
        )

    @classmethod
    def fast(cls, **overrides) -> SelectiveSearch:
        """The default: HSV and Lab, k = 50 and 100, ctsf and tsf (8 hierarchies)."""
        return cls(**overrides)

    @classmethod
    def quality(cls, **overrides) -> SelectiveSearch:
        """HSV, Lab, rgI, H, I; k = 50, 100, 150, 300; ctsf, tsf, f, s (80 hierarchies)."""
        settings = {
            "color_spaces": ("hsv", "lab", "rgi", "h", "i"),
            "scales": (50.0, 100.0, 150.0, 300.0),
            "similarities": ("ctsf", "tsf", "f", "s"),
            "max_proposals": 2000,
        }
        return cls(**(settings | overrides))

    def settings(self) -> dict:
        """The settings as a JSON-serialisable dict (what the cache key is made from)."""
        settings = asdict(self)
        # The original values of later fields: caches made before keep their key.
        for name, original in (("segmenter", "skimage"), ("ranking", "random")):
            if settings[name] == original:
                del settings[name]
        return {"generator": "selective_search", **settings}

    def settings_hash(self) -> str:
        """A short, stable hash of :meth:`settings` (12 hex digits)."""
        text = json.dumps(self.settings(), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def __call__(self, image) -> torch.Tensor:
        """Proposals of one image.

        Args:
            image: a ``PIL.Image``, a ``Tensor[3, H, W]`` (uint8, or float in 0..1) or an
                ``ndarray[H, W, 3]`` uint8.

        Returns:
            Tensor[P, H, W] (bool), best first, at the image's own resolution.
        """
        return self.propose(image).masks()

    def propose(self, image) -> CompactProposals:
        """Like calling the generator, but returns the compact (superpixel) form."""
        rgb = as_rgb_array(image)
        height, width = rgb.shape[:2]
        if self.max_side is not None and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))

        segmentations = []  # superpixel label maps, one per (colour space, scale)
        hierarchies = []  # (segmentation index, membership over its superpixels)
        for space in self.color_spaces:
            channels = _convert(rgb, space)
            colour_bins = _colour_bins(channels)
            texture_bins = _texture_bins(channels)
            for k in self.scales:
                superpixels = _felzenszwalb(channels, k, self.sigma, self.segmenter)
                edges = channels if any("e" in sim for sim in self.similarities) else None
                stats = _region_stats(superpixels, colour_bins, texture_bins, edges)
                segmentations.append(superpixels)
                for sim in self.similarities:
                    members = _hierarchical_grouping(stats, sim, superpixels.size)
                    hierarchies.append((len(segmentations) - 1, members))

        cells, cell_to_superpixel = _common_refinement(segmentations)
        order = self._rank([len(m) for _, m in hierarchies])
        membership = _select(
            hierarchies, cells, cell_to_superpixel, order, self.duplicate_iou, self.max_proposals
        )
        if cells.shape != (height, width):  # back to the original size, nearest neighbour
            rows = (np.arange(height) * cells.shape[0]) // height
            cols = (np.arange(width) * cells.shape[1]) // width
            cells = cells[rows[:, None], cols[None, :]]
        return CompactProposals(torch.from_numpy(cells), torch.from_numpy(membership))

    def _rank(self, counts: list[int]) -> np.ndarray:
        """Global ranked order of all regions, as (hierarchy, region) pairs ``(R, 2)``.

        Selective search's rule: position within a hierarchy (the last region formed is 1)
        times a uniform random number, ascending; round-robin: position alone (ties in
        hierarchy order).
        """
        which = np.concatenate([np.full(n, h) for h, n in enumerate(counts)])
        index = np.concatenate([np.arange(n) for n in counts])
        position = np.concatenate([np.arange(n, 0, -1) for n in counts]).astype(np.float64)
        priority = position
        if self.ranking == "random":
            priority = position * np.random.default_rng(self.seed).random(len(position))
        order = np.argsort(priority, kind="stable")
        return np.stack([which[order], index[order]], 1)


def as_rgb_array(image) -> np.ndarray:
    """An RGB image as ``ndarray[H, W, 3]`` uint8 (see :func:`prm.data.images.to_uint8_image`).

    Args:
        image: ``PIL.Image`` (any mode), ``Tensor[3, H, W]`` uint8 or float in 0..1, or
            ``ndarray[H, W, 3]`` uint8.
    """
    return np.ascontiguousarray(to_uint8_image(image).cpu().permute(1, 2, 0).numpy())


def _convert(rgb: np.ndarray, space: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(H, W, C)`` float32 channels, each scaled to about 0..1."""
    x = rgb.astype(np.float32) / 255.0
    if space == "rgb":
        out = x
    elif space == "hsv":
        out = color.rgb2hsv(x)
    elif space == "lab":
        lab = color.rgb2lab(x)
        out = np.stack(
            [lab[..., 0] / 100.0, (lab[..., 1] + 128) / 255.0, (lab[..., 2] + 128) / 255.0], -1
        )
    elif space == "rgi":
        total = x.sum(-1, keepdims=True)
        rg = np.where(total > 0, x[..., :2] / np.maximum(total, 1e-12), 1.0 / 3.0)
        out = np.concatenate([rg, total / 3.0], -1)
    elif space == "h":
        out = color.rgb2hsv(x)[..., :1]
    else:  # "i"
        out = color.rgb2gray(x)[..., None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _felzenszwalb(channels: np.ndarray, k: float, sigma: float, segmenter: str) -> np.ndarray:
    """Superpixels ``(H, W)`` int64 labelled ``0 .. n-1``."""
    image = channels if channels.shape[2] > 1 else channels[..., 0]
    if segmenter == "opencv":
        import cv2

        # OpenCV's edge weights are in grey levels, scikit-image's in 0..1 with its k
        # divided by 255: the same k on bytes is the same threshold.
        segment = cv2.ximgproc.segmentation.createGraphSegmentation(sigma, k, int(k))
        labels = segment.processImage(np.round(image * 255).astype(np.uint8))
    else:
        axis = -1 if channels.shape[2] > 1 else None
        labels = felzenszwalb(image, scale=k, sigma=sigma, min_size=int(k), channel_axis=axis)
    labels = labels.astype(np.int64, copy=False)
    if np.bincount(labels.ravel()).all():  # already 0..n-1 without gaps (scikit-image does)
        return labels
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape)


def _colour_bins(channels: np.ndarray) -> np.ndarray:
    """Per-pixel colour bins ``(C, H * W)`` uint8 in ``0 .. 24``."""
    bins = np.minimum(channels * COLOUR_BINS, COLOUR_BINS - 1).astype(np.uint8)
    return np.ascontiguousarray(bins.reshape(-1, channels.shape[2]).T)


def _texture_bins(channels: np.ndarray) -> np.ndarray:
    """Per-pixel texture bins ``(C * 8, H * W)`` uint8 in ``0 .. 9``.

    Gaussian derivatives (sigma = 1) of each channel, steered to 8 orientations (every
    45 degrees) and rectified, so that opposite orientations are separate features; each
    channel's responses are scaled by its largest gradient magnitude before binning.
    """
    out = []
    angles = np.arange(TEXTURE_ORIENTATIONS) * (2 * np.pi / TEXTURE_ORIENTATIONS)
    for c in range(channels.shape[2]):
        ch = channels[..., c]
        dy = ndimage.gaussian_filter(ch, 1.0, order=(1, 0)).ravel()
        dx = ndimage.gaussian_filter(ch, 1.0, order=(0, 1)).ravel()
        top = float(np.sqrt(dx * dx + dy * dy).max())
        scale = TEXTURE_BINS / top if top > 0 else 0.0
        for angle in angles:
            response = np.float32(np.cos(angle) * scale) * dx
            response += np.float32(np.sin(angle) * scale) * dy
            np.clip(response, 0, TEXTURE_BINS - 1, out=response)
            out.append(response.astype(np.uint8))
    return np.stack(out)


@dataclass
class _Stats:
    """Per-superpixel statistics of one superpixel map (n superpixels)."""

    size: np.ndarray  # (n,) float64 pixels
    box: np.ndarray  # (n, 4) float64 (y0, x0, y1, x1), y1/x1 exclusive
    colour: np.ndarray  # (n, C * 25) float64, rows sum to 1
    texture: np.ndarray  # (n, C * 80) float64, rows sum to 1
    adjacency: np.ndarray  # (n, n) bool, symmetric, False on the diagonal
    # (n, n) float64, symmetric: summed edge strength along the shared boundary, and its
    # length (pixel pairs); None when the channels were not given.
    edge: np.ndarray | None = None
    border: np.ndarray | None = None


def _histograms(flat_labels: np.ndarray, bins: np.ndarray, nbins: int, n: int) -> np.ndarray:
    """Per-superpixel histograms of per-pixel features.

    Args:
        flat_labels: ndarray[H*W] superpixel of each pixel (0 .. n-1).
        bins: ndarray[F, H*W] bin of each pixel for each of F features (0 .. nbins-1).

    Returns:
        ndarray[n, F * nbins] float64, each row L1-normalised over all features together.
    """
    offset = flat_labels * nbins
    hists = [np.bincount(offset + b, minlength=n * nbins).reshape(n, nbins) for b in bins]
    h = np.concatenate(hists, 1).astype(np.float64)
    return h / np.maximum(h.sum(1, keepdims=True), 1)


def _boxes(labels: np.ndarray) -> np.ndarray:
    """Bounding boxes ``(n, 4)`` float64 ``(y0, x0, y1, x1)`` (ends exclusive) of labels 0..n-1."""
    slices = ndimage.find_objects(labels + 1)
    return np.array([(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in slices], float)


def _region_stats(superpixels, colour_bins, texture_bins, channels=None) -> _Stats:
    """:class:`_Stats` of a superpixel map; the boundary edge strengths (the colour
    distance of the two pixels of every 4-neighbour pair across it) from ``channels``
    ``(H, W, C)`` when given."""
    n = int(superpixels.max()) + 1
    flat = superpixels.ravel()
    size = np.bincount(flat, minlength=n).astype(np.float64)
    colour = _histograms(flat, colour_bins, COLOUR_BINS, n)
    texture = _histograms(flat, texture_bins, TEXTURE_BINS, n)
    # 4-connected neighbours with different labels are adjacent superpixels.
    a = np.concatenate([superpixels[:, :-1].ravel(), superpixels[:-1, :].ravel()])
    b = np.concatenate([superpixels[:, 1:].ravel(), superpixels[1:, :].ravel()])
    differ = a != b
    adjacency = np.zeros((n, n), dtype=bool)
    adjacency[a[differ], b[differ]] = True
    adjacency |= adjacency.T
    stats = _Stats(size, _boxes(superpixels), colour, texture, adjacency)
    if channels is not None:
        step = [np.diff(channels, axis=1), np.diff(channels, axis=0)]
        strength = np.concatenate([np.sqrt((d**2).sum(-1)).ravel() for d in step])[differ]
        pair = a[differ] * n + b[differ]
        stats.edge, stats.border = (
            np.bincount(pair, weights, n * n).reshape(n, n) for weights in (strength, None)
        )
        stats.edge, stats.border = stats.edge + stats.edge.T, stats.border + stats.border.T
    return stats


class _Grouping:
    """One hierarchical grouping in progress: the statistics of the region in each slot
    (a merge puts the new region in the first slot and empties the second), their
    similarities, and each slot's most similar neighbour."""

    def __init__(self, stats: _Stats, measures: str, image_area: int):
        n = len(stats.size)
        self.measures, self.image_area, self.count = measures, image_area, n
        self.size, self.box = stats.size.copy(), stats.box.copy()
        self.colour, self.texture = stats.colour.copy(), stats.texture.copy()
        self.adjacency = stats.adjacency.copy()
        if "e" in measures:
            if stats.edge is None:
                raise ValueError("the edge measure needs _region_stats(..., channels)")
            self.edge, self.border = stats.edge.copy(), stats.border.copy()
            means = self.edge[self.adjacency] / self.border[self.adjacency]
            # Merged boundaries average their parts: the largest mean bounds them all.
            self.edge_scale = float(means.max()) if len(means) and means.max() > 0 else 1.0
        self.members = np.zeros((max(2 * n - 1, 1), n), dtype=bool)
        self.members[np.arange(n), np.arange(n)] = True
        self.region_of_slot = np.arange(n)
        self.sim = np.full((n, n), -np.inf)
        i, j = np.nonzero(np.triu(self.adjacency, 1))
        self.sim[i, j] = self.sim[j, i] = self.similarity(i, j)
        # Row maxima, kept up to date, so that finding the best pair costs O(n), not O(n^2).
        self.best_col = self.sim.argmax(1)
        self.best = self.sim[np.arange(n), self.best_col]

    def similarity(self, i, j: np.ndarray) -> np.ndarray:
        """Similarities of region(s) i with regions j (an index array)."""
        s = np.zeros(len(j))
        if "c" in self.measures:
            s += np.minimum(self.colour[i], self.colour[j]).sum(-1)
        if "t" in self.measures:
            s += np.minimum(self.texture[i], self.texture[j]).sum(-1)
        if "s" in self.measures:
            s += 1.0 - (self.size[i] + self.size[j]) / self.image_area
        if "f" in self.measures:
            lo = np.minimum(self.box[i, :2], self.box[j, :2])
            hi = np.maximum(self.box[i, 2:], self.box[j, 2:])
            bbox = (hi - lo).prod(-1)
            s += 1.0 - (bbox - self.size[i] - self.size[j]) / self.image_area
        if "e" in self.measures:  # weak boundaries first, as MCG's merging
            mean = self.edge[i, j] / np.maximum(self.border[i, j], 1)
            s += 1.0 - mean / self.edge_scale
        return s

    def merge(self, i: int, j: int) -> np.ndarray:
        """Merge slot j into slot i (O(1) updates of the statistics); returns the new
        region's neighbours."""
        total = self.size[i] + self.size[j]
        self.colour[i] = (self.size[i] * self.colour[i] + self.size[j] * self.colour[j]) / total
        self.texture[i] = (self.size[i] * self.texture[i] + self.size[j] * self.texture[j]) / total
        self.size[i] = total
        self.box[i, :2] = np.minimum(self.box[i, :2], self.box[j, :2])
        self.box[i, 2:] = np.maximum(self.box[i, 2:], self.box[j, 2:])
        regions = self.region_of_slot
        np.logical_or(
            self.members[regions[i]], self.members[regions[j]], out=self.members[self.count]
        )
        regions[i], self.count = self.count, self.count + 1
        pairs = [self.adjacency] + ([self.edge, self.border] if "e" in self.measures else [])
        for matrix in pairs:  # boundaries with a third region add up
            matrix[i] = matrix[i] | matrix[j] if matrix.dtype == bool else matrix[i] + matrix[j]
            matrix[i, [i, j]] = 0
            matrix[:, i], matrix[j], matrix[:, j] = matrix[i], 0, 0
        for matrix in (self.sim, self.sim.T):
            matrix[[i, j]] = -np.inf
        self.best[j] = -np.inf
        return np.flatnonzero(self.adjacency[i])

    def rescore(self, i: int, j: int, neighbours: np.ndarray) -> None:
        """The similarities of the new region in slot i, and the best partners that
        changed with them."""
        if len(neighbours) == 0:
            self.best[i] = -np.inf
            return
        s = self.similarity(i, neighbours)
        self.sim[i, neighbours] = self.sim[neighbours, i] = s
        top = int(s.argmax())
        self.best_col[i], self.best[i] = neighbours[top], s[top]
        # A neighbour whose best partner was i or j must rescan its row; any other
        # neighbour only needs to compare with its new similarity to i.
        partner = self.best_col[neighbours]
        stale = (partner == i) | (partner == j)
        if stale.any():
            rescan = neighbours[stale]
            cols = self.sim[rescan].argmax(1)
            self.best_col[rescan], self.best[rescan] = cols, self.sim[rescan, cols]
        better = ~stale & (s > self.best[neighbours])
        self.best_col[neighbours[better]], self.best[neighbours[better]] = i, s[better]


def _hierarchical_grouping(stats: _Stats, measures: str, image_area: int) -> np.ndarray:
    """Greedy grouping of adjacent regions; returns every region formed.

    Returns:
        ndarray[R, n] bool: superpixel membership of each region in creation order, the
        n superpixels first; ``R = 2n - 1`` when the superpixels form one connected
        graph (always, for a Felzenszwalb map of one image).
    """
    grouping = _Grouping(stats, measures, image_area)
    while True:
        i = int(grouping.best.argmax())
        if grouping.best[i] == -np.inf:
            break  # one region left (per connected component)
        j = int(grouping.best_col[i])
        grouping.rescore(i, j, grouping.merge(i, j))
    return grouping.members[: grouping.count]


def _common_refinement(segmentations: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Cells where every superpixel map is constant.

    Returns:
        cells: ndarray[H, W] int64, the cell ``0 .. L-1`` of each pixel;
        cell_to_superpixel: ndarray[G, L] int64, the superpixel of map g that cell l lies in.
    """
    # A mixed-radix number is unique per tuple of labels; renumber it densely whenever
    # the next digit could overflow int64 (with many maps).
    key, radix = np.zeros(segmentations[0].size, dtype=np.int64), 1
    for seg in segmentations:
        n = int(seg.max()) + 1
        if radix * n >= 2**62:
            _, key = np.unique(key, return_inverse=True)
            radix = int(key.max()) + 1
        key = key * n + seg.ravel()
        radix *= n
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    cell_to_superpixel = np.stack([seg.ravel()[first] for seg in segmentations])
    return inverse.reshape(segmentations[0].shape).astype(np.int64), cell_to_superpixel


def _select(hierarchies, cells, cell_to_superpixel, order, duplicate_iou, max_proposals):
    """Greedy removal of duplicates in ranked order.

    Args:
        hierarchies: list of ``(superpixel map index g, members ndarray[R_h, n_g] bool)``.
        cells: ndarray[H, W], cell_to_superpixel: ndarray[G, L], see _common_refinement.
        order: ndarray[R, 2] of ``(hierarchy, region)`` in ranked order.

    Returns:
        ndarray[P, L] bool: cell membership of the kept proposals, best first.
    """
    limit = len(order) if max_proposals is None else max_proposals
    n_cells = cell_to_superpixel.shape[1]
    # Integer pixel counts: float32 sums of them stay exact below 2**24 pixels.
    cell_area = np.bincount(cells.ravel(), minlength=n_cells).astype(np.float32)
    cell_box = _boxes(cells)

    # Exact duplicates first, cheaply, in superpixel space: every hierarchy built on one
    # superpixel map starts from the same superpixels and often forms the same regions.
    map_of = np.array([g for g, _ in hierarchies])[order[:, 0]]
    unique = np.zeros(len(order), dtype=bool)
    for g in np.unique(map_of):
        at = np.flatnonzero(map_of == g)
        rows = np.stack([hierarchies[h][1][r] for h, r in order[at]])
        packed = np.packbits(rows, axis=1)
        keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
        _, first = np.unique(keys, return_index=True)  # first occurrence = best ranked
        unique[at[first]] = True
    candidates = order[unique]

    def cell_membership(rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), n_cells), dtype=bool)
        for h in np.unique(rows[:, 0]):
            pick = rows[:, 0] == h
            g, members = hierarchies[h]
            out[pick] = members[rows[pick, 1]][:, cell_to_superpixel[g]]
        return out

    kept = np.zeros((0, n_cells), dtype=bool)
    kept_area = np.zeros(0, dtype=np.float32)
    kept_box = np.zeros((0, 4))
    chunk = 256
    for start in range(0, len(candidates), chunk):
        block = cell_membership(candidates[start : start + chunk])
        area = block @ cell_area
        box = np.concatenate(
            [
                np.where(block, cell_box[:, 0], np.inf).min(1, keepdims=True),
                np.where(block, cell_box[:, 1], np.inf).min(1, keepdims=True),
                np.where(block, cell_box[:, 2], -np.inf).max(1, keepdims=True),
                np.where(block, cell_box[:, 3], -np.inf).max(1, keepdims=True),
            ],
            1,
        )
        if duplicate_iou >= 1.0:
            near_kept = np.zeros((len(block), len(kept)), dtype=bool)
            near_self = np.zeros((len(block), len(block)), dtype=bool)
        else:
            near_kept = _duplicates(
                block, area, box, kept, kept_area, kept_box, cell_area, duplicate_iou
            )
            near_self = _duplicates(block, area, box, block, area, box, cell_area, duplicate_iou)
        chosen: list[int] = []
        for b in np.flatnonzero(~near_kept.any(1)):
            if chosen and near_self[b, chosen].any():
                continue
            chosen.append(int(b))
            if len(kept) + len(chosen) >= limit:
                break
        kept = np.concatenate([kept, block[chosen]])
        kept_area = np.concatenate([kept_area, area[chosen]])
        kept_box = np.concatenate([kept_box, box[chosen]])
        if len(kept) >= limit:
            break
    return kept


def _duplicates(a, a_area, a_box, b, b_area, b_box, cell_area, threshold) -> np.ndarray:
    """``(A, B)`` bool: mask IoU >= threshold, for cell-membership rows a and b.

    IoU <= min(|a|, |b|) / max(|a|, |b|) and IoU <= |box_a & box_b| / max(|a|, |b|), so
    only pairs passing both bounds need their exact intersection, a sum over cells.
    """
    out = np.zeros((len(a), len(b)), dtype=bool)
    if len(a) == 0 or len(b) == 0:
        return out
    larger = np.maximum(a_area[:, None], b_area[None, :])
    smaller = np.minimum(a_area[:, None], b_area[None, :])
    lo = np.maximum(a_box[:, None, :2], b_box[None, :, :2])
    hi = np.minimum(a_box[:, None, 2:], b_box[None, :, 2:])
    box_inter = np.clip(hi - lo, 0, None).prod(-1)
    threshold = np.float32(threshold)
    i, j = np.nonzero((smaller >= threshold * larger) & (box_inter >= threshold * larger))
    for start in range(0, len(i), 1024):  # bounded memory: 1024 x L at a time
        ii, jj = i[start : start + 1024], j[start : start + 1024]
        inter = (a[ii] & b[jj]) @ cell_area
        union = a_area[ii] + b_area[jj] - inter
        out[ii, jj] = inter >= threshold * union
    return out
