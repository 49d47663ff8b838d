"""Instance mask extraction by proposal retrieval (docs/method.md §5).

For each peak of class ``c`` with peak response map ``R``, every class-agnostic segment
proposal ``S`` (with contour ``S^``, the morphological gradient of ``S``) is scored::

    score(S) = alpha * sum(R * S)  +  sum(R * S^)  -  beta * sum(Q_c * S)
                 instance-aware       boundary-aware    class-aware background penalty

where ``Q_c`` is the background of class ``c``: its class response map min-max scaled to
0..255, resized bicubically to the image and set to 1 where it is ``< tau * its mean``.
The best proposal becomes the peak's mask; instances are then sorted by that score and
de-duplicated by greedy NMS on mask IoU, merging the suppressed instances' PRMs into the
survivor's.

Every sum is taken once for all peaks. Dense proposals are resized, and their contours
taken, over their bounding boxes only, and the sums of all maps over a mask or contour
are read from row-wise prefix sums at the ends of its runs (one sparse product for all
proposals). Compact proposals (unions of cells) are never drawn: a mask's sums are its
cells' sums, and its contour's sums come from the pixels whose window holds several
cells, grouped by that set of cells. The cost follows the masks' outlines or the cells'
boundaries rather than ``K x P x H x W``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import csr_matrix

from prm.backprop import normalize_prms
from prm.masks import mask_iou, masks_to_boxes
from prm.proposals.compact import CompactProposals, nearest_index
from prm.validation import check_number

__all__ = [
    "RetrievalConfig",
    "class_background",
    "proposal_contours",
    "resize_masks",
    "score_proposals",
    "mask_nms",
    "retrieve_instances",
    "RetrievalTerms",
    "retrieval_terms",
    "retrieval_terms_by_tau",
]

FloatOrPerClass = float | Sequence[float]


@dataclass
class RetrievalConfig:
    """Hyper-parameters of proposal retrieval; defaults are the authors' demo values.

    ``alpha``, ``beta`` and ``tau`` are either one number for all classes or a sequence
    with one value per class (the paper tunes them per class on validation data).

    Attributes:
        alpha: weight of the instance-aware term ``sum(R * S)`` (0.8).
        beta: weight of the class-aware background penalty ``sum(Q * S)`` (1e-5).
        tau: background threshold factor: ``Q = 1`` where the scaled CRM is ``< tau``
            times its mean (0.95).
        contour_width: side of the square structuring element of the contour (5, odd).
        proposal_size_limit: proposals whose area is ``< lo`` or ``>= hi`` times the image
            area are skipped ((2e-5, 0.85)).
        proposal_count: only the first ``proposal_count`` proposals are considered (100).
        nms_threshold: mask IoU at or above which a lower-scored instance is suppressed
            (0.3); ``None`` disables NMS.
        nms_class_agnostic: suppress across classes, as the authors (True), or only
            within a class (False).
        merge_peak_response: add suppressed instances' PRMs to the survivor's (True).
    """

    alpha: FloatOrPerClass = 0.8
    beta: FloatOrPerClass = 1e-5
    tau: FloatOrPerClass = 0.95
    contour_width: int = 5
    proposal_size_limit: tuple[float, float] = (2e-5, 0.85)
    proposal_count: int = 100
    nms_threshold: float | None = 0.3
    nms_class_agnostic: bool = True
    merge_peak_response: bool = True

    @classmethod
    def from_authors(cls, param: tuple | list, **kwargs) -> RetrievalConfig:
        """From the authors' ``param``: a tuple ``(tau, beta, alpha)`` shared by all
        classes, or a list of such tuples, one per class."""
        if isinstance(param, tuple) and len(param) == 3:
            tau, beta, alpha = param
            return cls(alpha=alpha, beta=beta, tau=tau, **kwargs)
        if isinstance(param, list) and all(len(p) == 3 for p in param):
            tau, beta, alpha = (list(v) for v in zip(*param))
            return cls(alpha=alpha, beta=beta, tau=tau, **kwargs)
        raise ValueError(f"param must be (tau, beta, alpha) or a list of them, got {param!r}")

    def __post_init__(self) -> None:
        self.validate()

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain YAML/JSON data (tuples become lists)."""
        data = asdict(self)
        for name, value in data.items():
            if isinstance(value, tuple):
                data[name] = list(value)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "retrieval settings", base=None):
        """Settings from a mapping of field names (as :meth:`to_dict` writes them).

        Args:
            data: field -> value; absent fields keep ``base``'s values.
            source: what to call the data in error messages (e.g. the file name).
            base: the :class:`RetrievalConfig` to start from (the defaults if ``None``).

        Raises:
            ValueError: ``data`` is not a mapping, names an unknown field, or the settings
                are inconsistent (see :meth:`validate`).
        """
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{source}: expected a mapping of retrieval settings, got {type(data).__name__}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown retrieval settings {unknown}")
        values = dict(data)
        if isinstance(values.get("proposal_size_limit"), list):
            values["proposal_size_limit"] = tuple(values["proposal_size_limit"])
        try:  # replace() validates (__post_init__)
            return replace(base if base is not None else cls(), **values)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, *, base=None) -> RetrievalConfig:
        """Settings from a YAML file: the fields at the top level, or under ``retrieval:``
        (as ``prm tune`` writes them); absent fields keep ``base``'s values."""
        from prm.files import read_yaml

        data = read_yaml(path, "retrieval configuration") or {}
        if isinstance(data, Mapping) and isinstance(data.get("retrieval"), Mapping):
            data = data["retrieval"]
        return cls.from_dict(data, source=str(path), base=base)

    def to_yaml(self, path: str | os.PathLike, **sections: Any) -> Path:
        """Write the settings as YAML under ``retrieval:`` (read back by :meth:`from_yaml`),
        atomically; ``sections`` are written after it (``prm tune`` adds ``predictor:``)."""
        import yaml

        from prm.files import write_text_atomic

        text = yaml.safe_dump({"retrieval": self.to_dict(), **sections}, sort_keys=False)
        return write_text_atomic(path, text)

    def validate(self, num_classes: int | None = None) -> None:
        """Raise ``ValueError`` (one line, naming the setting) on nonsense settings.

        ``alpha``, ``beta``, ``tau`` (each value) must be finite and >= 0;
        ``nms_threshold`` ``None`` or in [0, 1]; with ``num_classes``, per-class lists
        must have one value per class.
        """
        for name in ("alpha", "beta", "tau"):
            value = getattr(self, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                check_number(name, value, minimum=0)
                continue
            if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
                raise ValueError(f"{name} must be a number or one number per class, got {value!r}")
            for v in value:
                check_number(f"{name} (per class)", v, minimum=0)
            if num_classes is not None and len(value) != num_classes:
                raise ValueError(
                    f"{name} has {len(value)} per-class values for {num_classes} classes"
                )
        if (
            not isinstance(self.contour_width, int)
            or self.contour_width < 1
            or self.contour_width % 2 == 0
        ):
            raise ValueError(
                f"contour_width must be a positive odd integer, got {self.contour_width!r}"
            )
        lo, hi = self.proposal_size_limit
        check_number("proposal_size_limit[0]", lo, minimum=0)
        check_number("proposal_size_limit[1]", hi, minimum=0)
        if not 0 <= lo < hi:
            raise ValueError(
                f"proposal_size_limit must be (lo, hi) with 0 <= lo < hi, got {(lo, hi)}"
            )
        if not isinstance(self.proposal_count, int) or self.proposal_count < 1:
            raise ValueError(
                f"proposal_count must be a positive integer, got {self.proposal_count!r}"
            )
        if self.nms_threshold is not None:
            check_number("nms_threshold", self.nms_threshold, minimum=0, maximum=1)

    def per_peak(self, name: str, labels: torch.Tensor) -> torch.Tensor:
        """The value of ``alpha``/``beta``/``tau`` for each peak's class, ``(K,)``."""
        value = getattr(self, name)
        if isinstance(value, (int, float)):
            return torch.full(labels.shape, float(value), device=labels.device)
        return torch.as_tensor(value, dtype=torch.float32, device=labels.device)[labels]


def class_background(crm: torch.Tensor, size: tuple[int, int], tau: torch.Tensor) -> torch.Tensor:
    """Class-aware background maps ``Q`` as the authors compute them.

    Each class map is min-max scaled to 0..255 and rounded to bytes (what the authors'
    ``scipy.misc.imresize`` does implicitly), resized bicubically to ``size`` by PIL (as
    theirs), and ``Q = 1`` where it is ``< tau * mean``.

    Args:
        crm (Tensor[C, h, w]): class response maps of the classes needed.
        size: ``(H, W)`` output size.
        tau (Tensor[C]): threshold factor of each map.

    Returns:
        Tensor[C, H, W] (bool, on ``crm``'s device): background masks.
    """
    from PIL import Image

    flat = crm.detach().flatten(1).float().cpu()
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = torch.where(high > low, high - low, torch.ones_like(high))
    scaled = ((flat - low) * (255.0 / span)).clamp(0, 255)
    small = torch.floor(scaled + 0.5).to(torch.uint8).reshape(crm.shape).numpy()
    resized = np.empty((len(small), *size), np.uint8)
    for i, m in enumerate(small):
        resized[i] = np.asarray(Image.fromarray(m).resize(size[::-1], Image.BICUBIC))
    resized = torch.from_numpy(resized)
    mean = resized.flatten(1).double().mean(1)
    return (resized < tau.cpu().double()[:, None, None] * mean[:, None, None]).to(crm.device)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of binary masks with pixel-centre sampling (as PIL).

    Args:
        masks (Tensor[P, H, W]): binary masks.
        size: ``(h, w)``.

    Returns:
        Tensor[P, h, w] (bool).
    """
    if tuple(masks.shape[1:]) == tuple(size):
        return masks.bool()
    rows = nearest_index(masks.shape[1], size[0], masks.device)
    cols = nearest_index(masks.shape[2], size[1], masks.device)
    return masks.bool().index_select(1, rows).index_select(2, cols)


def proposal_contours(masks: torch.Tensor, width: int = 5) -> torch.Tensor:
    """Contours of masks: morphological gradient (dilation minus erosion) with a square.

    OpenCV's ``morphologyEx(MORPH_GRADIENT)``, as the authors take it: pixels outside the
    image are ignored by both operations, so a mask touching the border has no contour
    along it.

    Args:
        masks (Tensor[P, H, W]): binary masks.
        width: odd side of the square structuring element (5: a band about two pixels
            either side of the edge).

    Returns:
        Tensor[P, H, W] (bool).
    """
    array = masks.detach().cpu().bool().numpy().view(np.uint8)
    out = np.empty_like(array)
    for i in range(len(array)):
        out[i] = _gradient(array[i], width)
    return torch.from_numpy(out).view(torch.bool).to(masks.device)


def _gradient(mask: np.ndarray, width: int) -> np.ndarray:
    """The 0/1 morphological gradient of a 0/1 ``uint8`` mask (OpenCV)."""
    import cv2

    kernel = np.ones((width, width), np.uint8)
    return cv2.morphologyEx(np.ascontiguousarray(mask), cv2.MORPH_GRADIENT, kernel)


class _Crops:
    """Dense proposals at the PRMs' size, one bounding-box crop each, made when asked.

    A proposal's crop is its bounding box at the network size grown by the contour's
    radius (clipped to the image): every pixel of its contour lies inside, and the part
    of the image outside the crop is outside the mask, so the gradient computed on the
    crop alone equals the gradient on the whole image. Crops make retrieval cost what the
    masks cover, not P x H x W.
    """

    def __init__(self, proposals: torch.Tensor, size: tuple[int, int], radius: int):
        self.size, self.radius = size, radius
        self.masks = proposals.detach().cpu().bool().numpy().view(np.uint8)
        self.rows = nearest_index(proposals.shape[1], size[0]).numpy()
        self.cols = nearest_index(proposals.shape[2], size[1]).numpy()
        # Each proposal is resized once: the crops are kept for NMS.
        self.cache: dict[int, tuple[int, int, np.ndarray] | None] = {}

    def __len__(self) -> int:
        return len(self.masks)

    def crop(self, p: int) -> tuple[int, int, np.ndarray] | None:
        """``(y0, x0, mask)``: proposal ``p`` at the network size over its grown box
        (``uint8`` 0/1), or None when it is empty there."""
        if p not in self.cache:
            self.cache[p] = self._crop(p)
        return self.cache[p]

    def _crop(self, p: int) -> tuple[int, int, np.ndarray] | None:
        import cv2

        h, w, r = *self.size, self.radius
        x, y, bw, bh = cv2.boundingRect(self.masks[p])
        if bw == 0:
            return None
        # Output rows/columns whose source pixel lies in the box.
        y0, y1 = np.searchsorted(self.rows, [y, y + bh])
        x0, x1 = np.searchsorted(self.cols, [x, x + bw])
        if y1 <= y0 or x1 <= x0:
            return None
        top, left = max(y0 - r, 0), max(x0 - r, 0)
        rows = self.rows[top : min(y1 + r, h)]
        cols = self.cols[left : min(x1 + r, w)]
        return top, left, self.masks[p].take(rows, axis=0).take(cols, axis=1)

    def sums(self, maps: np.ndarray, k: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Sums of ``maps`` over every mask and of the first ``k`` maps over every contour.

        A mask's sum of a map is read from the map's row-wise prefix sums ``C`` (``C[y, x]``
        the sum over columns ``< x``): a run ``[a, b)`` of row ``y`` adds
        ``C[y, b] - C[y, a]``, so only the ends of the runs are visited. The mask and its
        contour share one array (bit 0 and bit 1), and the arrays of all proposals one
        line, so one pass finds every run end, and all sums are one sparse product (a
        row of +-1 at the run ends per mask and per contour).

        Args:
            maps: ``(M, h, w)`` maps (summed in float64).
            k: the contour sums are taken of maps ``0 .. k-1``.
            width: odd side of the contour's square.

        Returns:
            ``(P, M)`` mask sums and ``(P, k)`` contour sums (float64).
        """
        import cv2

        m, h, w = maps.shape
        prefix = np.zeros((m, h, w + 1))
        np.cumsum(maps, axis=2, dtype=np.float64, out=prefix[:, :, 1:])
        # One row of M sums per (y, x): the product reads whole rows.
        prefix = np.ascontiguousarray(prefix.reshape(m, -1).T)
        found, codes, corners = [], [], []
        for p in range(len(self)):
            crop = self.crop(p)
            if crop is None:
                continue
            top, left, mask = crop
            code = _gradient(mask, width)
            code <<= 1
            code |= mask
            # One zero column either side, so that every run starts and ends inside its
            # row and no run crosses into the next row or the next proposal's array.
            codes.append(cv2.copyMakeBorder(code, 0, 0, 1, 1, cv2.BORDER_CONSTANT).ravel())
            corners.append((top, left - 1, mask.shape[1] + 2))
            found.append(p)
        if not found:
            return np.zeros((len(self), m)), np.zeros((len(self), k))
        line = np.concatenate(codes)
        starts = np.cumsum([0] + [len(c) for c in codes])
        steps = np.flatnonzero(line[1:] != line[:-1]) + 1
        owner = np.searchsorted(starts, steps, side="right") - 1
        top, left, stride = np.array(corners).T
        ys, xs = np.divmod(steps - starts[owner], stride[owner])
        ends = (ys + top[owner]) * (w + 1) + xs + left[owner]
        now, before = line[steps].astype(np.int8), line[steps - 1].astype(np.int8)
        # A run starts at a step (-C) or ends there (+C), for each bit.
        signs = np.concatenate([(before & 1) - (now & 1), (before >> 1) - (now >> 1)])
        counts = np.zeros(len(self), np.int64)
        counts[found] = np.bincount(owner, minlength=len(found))
        pointers = np.cumsum(np.concatenate([[0], counts, counts]))
        index = np.arange(len(steps))
        pick = csr_matrix(
            (signs.astype(np.float64), np.concatenate([index, index]), pointers),
            shape=(2 * len(self), len(steps)),
        )
        both = pick @ prefix.take(ends, axis=0)
        return both[: len(self)], both[len(self) :, :k]

    def iou(self, index: Sequence[int]) -> torch.Tensor:
        """Mask IoU of proposals ``index`` at the network size, ``Tensor[N, N]``
        float64 (from exact pixel counts over the crops' overlaps)."""
        crops = [self.crop(p) for p in index]
        area = [0 if c is None else int(c[2].sum()) for c in crops]
        inter = np.diag(np.array(area, np.float64))
        for i, a in enumerate(crops):
            for j in range(i + 1, len(crops)):
                b = crops[j]
                if a is None or b is None:
                    continue
                top, left = max(a[0], b[0]), max(a[1], b[1])
                bottom = min(a[0] + a[2].shape[0], b[0] + b[2].shape[0])
                right = min(a[1] + a[2].shape[1], b[1] + b[2].shape[1])
                if bottom > top and right > left:
                    part_a = a[2][top - a[0] : bottom - a[0], left - a[1] : right - a[1]]
                    part_b = b[2][top - b[0] : bottom - b[0], left - b[1] : right - b[1]]
                    inter[i, j] = inter[j, i] = np.count_nonzero(part_a & part_b)
        return _iou_from_counts(inter)

    def all_iou(self) -> torch.Tensor:
        """:meth:`iou` of every proposal, ``Tensor[P, P]`` float64, equal to it to the
        bit: exact pixel counts from one product of the masks at the network size."""
        rows, cols = torch.from_numpy(self.rows), torch.from_numpy(self.cols)
        small = torch.from_numpy(self.masks)[:, rows][:, :, cols].bool()
        return mask_iou(small, small, exact=True)


def _iou_from_counts(inter: np.ndarray) -> torch.Tensor:
    """IoU from a matrix of intersections whose diagonal holds the areas (0 where both
    masks are empty)."""
    area = inter.diagonal()
    union = area[:, None] + area[None, :] - inter
    return torch.from_numpy(np.where(union > 0, inter / np.maximum(union, 1), 0.0))


class _Cells:
    """Compact proposals at the PRMs' size: every sum is a sum over cells.

    A mask's sum of a map is the sum of its cells' sums (one ``bincount`` per map). Its
    contour, the morphological gradient, is the set of pixels whose window (the
    ``width x width`` square, clipped to the image) holds a cell of the mask and a cell
    outside it. Pixels whose window holds one cell are in no contour; the others are
    grouped by the set of cells their window holds, so the contour sums of all proposals
    are one product ``mixed (P, G) @ group sums (G, K)`` with ``mixed[p, g]`` true when
    group ``g``'s set has cells both in and out of proposal ``p``. No mask is ever drawn.
    """

    def __init__(self, proposals: CompactProposals, size: tuple[int, int], radius: int):
        self.size, self.radius = size, radius
        small = proposals.resize(size)
        self.labels = small.superpixels.cpu().numpy()
        self.members = small.membership.cpu().numpy()

    def __len__(self) -> int:
        return len(self.members)

    def iou(self, index: Sequence[int]) -> torch.Tensor:
        """Mask IoU of proposals ``index`` at the network size, ``Tensor[N, N]``
        float64 (from cell areas)."""
        area = np.bincount(self.labels.ravel(), minlength=self.members.shape[1])
        members = self.members[list(index)].astype(np.float64)
        return _iou_from_counts((members * area) @ members.T)

    def all_iou(self) -> torch.Tensor:
        """:meth:`iou` of every proposal, ``Tensor[P, P]`` float64."""
        return self.iou(range(len(self)))

    def sums(self, maps: np.ndarray, k: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`_Crops.sums`: ``(P, M)`` mask sums and ``(P, k)`` contour sums."""
        cells = self.members.shape[1]
        flat = self.labels.ravel()
        values = maps.reshape(len(maps), -1)
        per_cell = np.stack([np.bincount(flat, v, cells) for v in values], 1)
        members = self.members.astype(np.float64)
        inside = members @ per_cell
        edge = np.zeros((len(self), k))
        # Contour pixels where every PRM is zero add nothing: only the others are grouped.
        support = (values[:k] != 0).any(0).reshape(self.labels.shape)
        pixels, groups, sets = _window_cell_sets(self.labels, width // 2, support)
        if len(pixels):
            group_sums = np.stack(
                [np.bincount(groups, v.take(pixels), len(sets)) for v in values[:k]], 1
            )
            # Cells of each set inside each proposal, as one sparse product (set-cell
            # incidence, about 3 cells a set) rather than a (P, G, D) gather: exact
            # small integers in float32.
            group, slot = np.nonzero(sets >= 0)
            incidence = csr_matrix(
                (np.ones(len(group), np.float32), (group, sets[group, slot])),
                shape=(len(sets), cells),
            )
            count = incidence @ self.members.T.astype(np.float32)  # (G, P)
            size = np.bincount(group, minlength=len(sets)).astype(np.float32)
            mixed = (count > 0) & (count < size[:, None])
            # (P, G) in C order: the BLAS product, and so the sums to the last bit, are
            # those of a mask counted per proposal (cached results stay byte-identical).
            edge = np.ascontiguousarray(mixed.T).astype(np.float64) @ group_sums
        return inside, edge


def _window_cell_sets(labels: np.ndarray, radius: int, support: np.ndarray | None = None):
    """The pixels (of ``support``, all by default) whose ``(2r+1)^2`` window (clipped to
    the image) holds more than one cell, grouped by the set of cells it holds.

    Returns:
        ``pixels`` (N,) flat indices, ``groups`` (N,) the group of each, and ``sets``
        ``(G, D)``: each group's cells in increasing order, padded with -1.
    """
    h, w = labels.shape
    none = np.zeros(0, np.int64)
    if radius == 0 or labels.size == 0:
        return none, none, np.zeros((0, 1), np.int64)
    side = 2 * radius + 1
    # Replicating the edge adds no cell a clipped window lacks: the copied pixel's source
    # lies in the same window.
    padded = np.pad(labels.astype(np.int32), radius, mode="edge")
    low = high = padded[:, :w]
    for dx in range(1, side):  # separable: along rows, then along columns
        low = np.minimum(low, padded[:, dx : dx + w])
        high = np.maximum(high, padded[:, dx : dx + w])
    low_w, high_w = low[:h], high[:h]
    for dy in range(1, side):
        low_w = np.minimum(low_w, low[dy : dy + h])
        high_w = np.maximum(high_w, high[dy : dy + h])
    mixed = low_w != high_w
    pixels = np.flatnonzero(mixed if support is None else mixed & support)
    if len(pixels) == 0:
        return none, none, np.zeros((0, 1), np.int64)
    ys, xs = np.divmod(pixels, w)
    corner = (ys * (w + 2 * radius) + xs).astype(np.int32)
    window = np.empty((side * side, len(pixels)), np.int32)
    flat = padded.ravel()
    for i, (dy, dx) in enumerate(np.ndindex(side, side)):
        np.take(flat, corner + (dy * (w + 2 * radius) + dx), out=window[i])
    low_p, top = low_w.ravel()[pixels], high_w.ravel()[pixels]
    columns = [low_p]
    # The next larger cell of each window, until its largest (every window here holds
    # at least two cells; few hold more than three).
    current = np.where(window > low_p, window, top).min(0)
    columns.append(current)
    active = np.flatnonzero(current < top)
    while len(active):
        sub = window[:, active]
        current = current.copy()
        current[active] = np.where(sub > current[active], sub, top[active]).min(0)
        column = np.full(len(pixels), -1, np.int32)
        column[active] = current[active]
        columns.append(column)
        active = active[current[active] < top[active]]
    # Group equal sets: the columns folded into one integer key (renumbered whenever the
    # next column could overflow it), which sorts far faster than rows.
    base = int(labels.max()) + 2
    key, span = np.zeros(len(pixels), np.int64), 1
    for column in columns:
        if span * base >= 2**62:
            key = np.unique(key, return_inverse=True)[1].ravel()
            span = int(key.max()) + 1
        key = key * base + (column + 1)
        span *= base
    _, first, groups = np.unique(key, return_index=True, return_inverse=True)
    sets = np.stack(columns, 1)[first].astype(np.int64)
    return pixels, groups.ravel(), sets


def _candidates(proposals, size: tuple[int, int], width: int) -> _Crops | _Cells:
    if isinstance(proposals, CompactProposals):
        return _Cells(proposals, size, width // 2)
    return _Crops(proposals, size, width // 2)


def _pair_sums(prms, background, candidates: _Crops | _Cells, width: int):
    """For every proposal: instance sums ``<R_k, S>`` (P, K), boundary sums
    ``<R_k, S^>`` (P, K), background sums ``<Q, S>`` (P, C') and areas (P,), float64."""
    k, h, w = prms.shape
    # float32 holds every input exactly; the sums accumulate in float64.
    maps = np.empty((k + len(background) + 1, h, w), np.float32)
    maps[:k] = prms.detach().float().cpu().numpy()
    maps[k:-1] = background.detach().cpu().numpy()
    maps[-1] = 1  # a map of ones: the area
    inside, edge = candidates.sums(maps, k, width)
    return inside[:, :k], edge, inside[:, k:-1], inside[:, -1]


def score_proposals(
    prms: torch.Tensor,
    proposals: torch.Tensor | CompactProposals,
    background: torch.Tensor,
    peak_background: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    contour_width: int = 5,
    size_limit: tuple[float, float] | None = None,
) -> torch.Tensor:
    """The retrieval score of every (peak, proposal) pair.

    ``score[k, p] = alpha_k * <R_k, S_p> + <R_k, S^_p> - beta_k * <Q_{c_k}, S_p>``

    with ``S_p`` the proposal resized (nearest, pixel centres) to the PRMs' size and
    ``S^_p`` its contour (:func:`proposal_contours`), all sums in float64. Dense proposals
    are handled over their bounding boxes, their sums read from row-wise prefix sums at
    the ends of their runs; compact ones as sums over cells and over groups of boundary
    pixels (see the module's docstring): the cost is not ``K x P x H x W``.

    Args:
        prms (Tensor[K, h, w]): peak response maps ``R``.
        proposals (Tensor[P, H, W] or CompactProposals): binary proposals, any size.
        background (Tensor[C', h, w]): background maps ``Q`` of the classes present.
        peak_background (Tensor[K], int64): row of ``background`` for each peak's class.
        alpha, beta (Tensor[K]): per-peak weights.
        contour_width: odd side of the contour's square.
        size_limit: ``(lo, hi)``: proposals whose area at the PRMs' size is ``< lo`` or
            ``>= hi`` times the map's area score ``-inf`` (None: no limit).

    Returns:
        Tensor[K, P] (float64, on ``prms``' device).
    """
    candidates = _candidates(proposals, tuple(prms.shape[1:]), contour_width)
    return _scores(
        prms, background, peak_background, alpha, beta, candidates, contour_width, size_limit
    )


def _scores(prms, background, peak_background, alpha, beta, crops, width, size_limit):
    sums = tuple(torch.from_numpy(v) for v in _pair_sums(prms, background, crops, width))
    scores = _combine(*sums, peak_background, alpha, beta, size_limit, tuple(prms.shape[1:]))
    return scores.to(prms.device)


def _combine(inside, edge, penalty, area, peak_background, alpha, beta, size_limit, size):
    """``(K, P)`` float64 scores from the pair sums of :func:`_pair_sums` (as tensors):
    the one place where alpha, beta and the size limit enter."""
    alpha, beta = alpha.cpu().double(), beta.cpu().double()
    scores = alpha[:, None] * inside.T + edge.T - beta[:, None] * penalty.T[peak_background.cpu()]
    if size_limit is not None:
        image_area = size[0] * size[1]
        lo, hi = size_limit
        valid = (area >= lo * image_area) & (area < hi * image_area)
        scores = scores.masked_fill(~valid[None, :], float("-inf"))
    return scores


@dataclass(frozen=True, eq=False)
class RetrievalTerms:
    """The parts of one image's retrieval scores that ``alpha``, ``beta``, the size
    limit and NMS do not change: the sums over every proposal of the peaks' PRMs, of the
    PRMs over the contours and of the classes' backgrounds.

    Tuning scores many settings on the same peaks and proposals; with the terms made
    once (:func:`retrieval_terms`), each setting costs a weighted sum, an arg-max and
    NMS instead of new sums. :func:`retrieve_instances` given the terms returns exactly
    what it returns without them (the same sums, combined by the same code).

    Attributes:
        inside (Tensor[P, K]): ``<R_k, S_p>``, float64 (P: the proposals read).
        edge (Tensor[P, K]): ``<R_k, S^_p>``.
        penalty (Tensor[P, C']): ``<Q_c, S_p>`` for the classes of the peaks.
        area (Tensor[P]): each proposal's area at the PRMs' size.
        peak_background (Tensor[K], int64): the column of ``penalty`` of each peak.
        candidates: the proposals at the PRMs' size (for NMS).
        key: ``(the peaks' classes, tau of each of those classes, contour_width,
            proposal_count)``: what the terms were made for.
        size (tuple): the PRMs' ``(h, w)``.
    """

    inside: torch.Tensor
    edge: torch.Tensor
    penalty: torch.Tensor
    area: torch.Tensor
    peak_background: torch.Tensor
    candidates: Any
    key: tuple
    size: tuple[int, int]


def _terms_key(config: RetrievalConfig, labels: torch.Tensor) -> tuple:
    labels = labels.cpu()
    tau = config.per_peak("tau", torch.unique(labels))
    return tuple(labels.tolist()), tuple(tau.tolist()), config.contour_width, config.proposal_count


def retrieval_terms(
    prms: torch.Tensor,
    labels: torch.Tensor,
    crm: torch.Tensor,
    proposals: torch.Tensor | CompactProposals,
    config: RetrievalConfig | None = None,
) -> RetrievalTerms:
    """The alpha- and beta-free sums of :func:`retrieve_instances` for these peaks and
    proposals (arguments as there), to pass to it as ``terms`` for many settings.

    Returns:
        :class:`RetrievalTerms`; valid for settings with the same ``tau``,
        ``contour_width`` and ``proposal_count`` (checked where they are used).
    """
    config = config or RetrievalConfig()
    _check_inputs(prms, labels, crm, proposals, config)
    return _make_terms(prms, labels, crm, _first_proposals(proposals, config), [config])[0]


def retrieval_terms_by_tau(
    prms: torch.Tensor,
    labels: torch.Tensor,
    crm: torch.Tensor,
    proposals: torch.Tensor | CompactProposals,
    configs: Sequence[RetrievalConfig],
) -> list[RetrievalTerms]:
    """:func:`retrieval_terms` for each of ``configs``, which differ in ``tau`` only.

    Only the background sums depend on ``tau``: one pass over the proposals takes the
    sums of every tau's backgrounds, the PRMs' and the contours' together (a tuning grid
    of T taus makes its terms in one pass, not T). Each result equals
    ``retrieval_terms(..., config)`` to the bit.

    Returns:
        One :class:`RetrievalTerms` per config, in order.
    """
    configs = list(configs)
    if not configs:
        return []
    first = configs[0]
    for config in configs:
        _check_inputs(prms, labels, crm, proposals, config)
        if (config.contour_width, config.proposal_count) != (
            first.contour_width,
            first.proposal_count,
        ):
            raise ValueError(
                "retrieval_terms_by_tau: the configs must share contour_width and "
                f"proposal_count, got ({first.contour_width}, {first.proposal_count}) and "
                f"({config.contour_width}, {config.proposal_count})"
            )
    return _make_terms(prms, labels, crm, _first_proposals(proposals, first), configs)


def _first_proposals(proposals, config: RetrievalConfig):
    """The first ``proposal_count`` proposals, compact ones kept compact."""
    count = min(config.proposal_count, len(proposals))
    if isinstance(proposals, CompactProposals):
        return proposals.select(slice(0, count))
    return proposals[:count]


def _make_terms(prms, labels, crm, candidates, configs) -> list[RetrievalTerms]:
    """The terms of each of ``configs`` (same contour width and proposal count), their
    background sums taken in the same pass as the rest."""
    net_size = tuple(prms.shape[1:])
    width = configs[0].contour_width
    crops = _candidates(candidates, net_size, width)
    classes, inverse = torch.unique(labels, return_inverse=True)
    keys = [_terms_key(config, labels) for config in configs]
    if len(prms) == 0 or len(crops) == 0:
        empty = torch.zeros((len(crops), len(prms)), dtype=torch.float64)
        none = torch.zeros((len(crops), 0), dtype=torch.float64)
        area = torch.zeros(len(crops), dtype=torch.float64)
        return [
            RetrievalTerms(empty, empty, none, area, inverse.cpu(), crops, key, net_size)
            for key in keys
        ]
    maps = crm[classes].to(prms.device)
    backgrounds = [
        class_background(maps, net_size, config.per_peak("tau", classes).to(prms.device))
        for config in configs
    ]  # (C', h, w) each
    sums = _pair_sums(prms, torch.cat(backgrounds), crops, width)
    inside, edge, penalty, area = (torch.from_numpy(v) for v in sums)
    penalties = penalty.split(len(classes), dim=1)
    return [
        RetrievalTerms(inside, edge, part, area, inverse.cpu(), crops, key, net_size)
        for part, key in zip(penalties, keys)
    ]


def mask_nms(
    masks: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    iou_threshold: float,
    class_agnostic: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy non-maximum suppression on mask IoU.

    Instances are visited by decreasing score (ties keep input order); each survivor
    suppresses every later instance whose IoU with it is ``>= iou_threshold`` (of any
    class, or of its own class when ``class_agnostic=False``).

    Args:
        masks (Tensor[N, H, W]): binary masks.
        scores (Tensor[N]): scores.
        labels (Tensor[N]): classes.
        iou_threshold: suppression threshold.
        class_agnostic: suppress across classes.

    Returns:
        ``keep`` (Tensor[M], int64): survivors, by decreasing score;
        ``owner`` (Tensor[N], int64): for each instance, the index of the survivor that
        suppressed it (itself for survivors).
    """
    return _greedy_nms(mask_iou(masks, masks), scores, labels, iou_threshold, class_agnostic)


def _greedy_nms(iou, scores, labels, iou_threshold, class_agnostic):
    """:func:`mask_nms` given the ``(N, N)`` IoU matrix."""
    order = torch.sort(scores, descending=True, stable=True).indices
    overlaps = (iou >= iou_threshold).cpu().numpy()
    if not class_agnostic:
        labels = labels.cpu().numpy()
        overlaps &= labels[:, None] == labels[None, :]
    # numpy, not torch: a tuner runs this loop for every setting of its grid, and on a
    # handful of instances each torch call costs more than the work it does.
    owner = np.full(len(overlaps), -1, dtype=np.int64)
    keep = []
    for i in order.tolist():
        if owner[i] >= 0:
            continue
        keep.append(i)
        owner[i] = i
        owner[(owner < 0) & overlaps[i]] = i
    return torch.tensor(keep, dtype=torch.long), torch.from_numpy(owner)


def retrieve_instances(
    prms: torch.Tensor,
    labels: torch.Tensor,
    crm: torch.Tensor,
    proposals: torch.Tensor | CompactProposals,
    config: RetrievalConfig | None = None,
    image_prms: torch.Tensor | None = None,
    terms: RetrievalTerms | None = None,
    with_prms: bool = True,
) -> dict[str, torch.Tensor]:
    """Pick one proposal per peak and de-duplicate the instances (docs/method.md §5).

    Scoring happens at the PRMs' resolution (the network input size): the first
    ``proposal_count`` proposals are resized there (nearest), as the authors do, once
    (:func:`score_proposals`); the chosen proposals are returned at their own (image)
    resolution, so masks are exact. Compact proposals stay compact: only the chosen
    ones are made dense.

    Args:
        prms (Tensor[K, h, w]): peak response maps (non-negative, summing to 1).
        labels (Tensor[K], int64): class of each peak.
        crm (Tensor[C, hc, wc]): class response maps of the image.
        proposals (Tensor[P, H, W] or CompactProposals): class-agnostic segment
            proposals at the image's resolution, ranked best first.
        config: :class:`RetrievalConfig` (the authors' demo values by default).
        image_prms (Tensor[K, H, W], optional): ``prms`` already resized to the
            proposals' size (the proposal-free fallback makes them): the output PRMs are
            taken from them instead of resizing ``prms`` a second time.
        terms: :func:`retrieval_terms` of these peaks and proposals, made with this
            ``config``'s ``tau``, ``contour_width`` and ``proposal_count`` (else
            ``ValueError``): the sums are then not taken again. The result is the same.
        with_prms: return the instances' PRMs (``False``: no ``"prms"`` entry, and the
            maps are not resized: tuning scores masks only).

    Returns:
        A dict of instances, sorted by decreasing ``retrieval_scores``:

        - ``"masks"`` (Tensor[N, H, W], bool): chosen proposals;
        - ``"labels"`` (Tensor[N], int64);
        - ``"retrieval_scores"`` (Tensor[N]): the proposal score above (the authors'
          ranking within an image);
        - ``"prms"`` (Tensor[N, H, W]): the instance's PRM (merged with the PRMs it
          suppressed when ``merge_peak_response``), resized to ``(H, W)``, summing to 1;
        - ``"peak_index"`` (Tensor[N], int64): which input peak made the instance;
        - ``"proposal_index"`` (Tensor[N], int64): which proposal was chosen;
        - ``"boxes"`` (Tensor[N, 4]): ``(x1, y1, x2, y2)`` of the masks.

        A peak for which no proposal passes the size limits yields no instance; no peaks
        or no proposals give ``N = 0``.
    """
    config = config or RetrievalConfig()
    _check_inputs(prms, labels, crm, proposals, config)
    device = prms.device
    compact = isinstance(proposals, CompactProposals)
    height, width = proposals.size if compact else tuple(proposals.shape[1:])
    candidates = _first_proposals(proposals, config)
    if terms is None:
        terms = _make_terms(prms, labels, crm, candidates, [config])[0]
    else:
        _check_terms(terms, prms, labels, candidates, config)
    kept = choose_instances(terms, labels, config)
    if kept is None:
        empty = _empty_instances(height, width, device)
        return empty if with_prms else {k: v for k, v in empty.items() if k != "prms"}
    found, best_score, order, owner, chosen = kept
    if compact:
        masks = candidates.select(chosen).masks()
    else:
        masks = candidates[chosen.to(candidates.device)].bool()
    instances = {
        "masks": masks.to(device),
        "labels": labels[found].cpu()[order].long().to(device),
        "retrieval_scores": best_score[order].float().to(device),
        "peak_index": found.nonzero()[:, 0][order].to(device),
        "proposal_index": chosen.to(device),
        "boxes": _boxes(masks).to(device),
    }
    if with_prms:
        maps, size = (
            (prms, (height, width)) if image_prms is None else (image_prms.to(device), None)
        )
        owner = owner if config.merge_peak_response else None
        instances["prms"] = _instance_prms(maps[found.to(device)].float(), order, owner, size)
    return instances


def choose_instances(
    terms: RetrievalTerms,
    labels: torch.Tensor,
    config: RetrievalConfig,
    best: tuple[torch.Tensor, torch.Tensor] | None = None,
    pair_iou: Callable[[Any, list[int]], torch.Tensor] | None = None,
):
    """What :func:`retrieve_instances` keeps, as indices: the choice and the NMS.

    Args:
        terms: the image's :class:`RetrievalTerms` for ``config``.
        labels (Tensor[K], int64): class of each peak.
        config: the retrieval settings.
        best: ``_best_proposals(terms, labels, config)`` when already made.
        pair_iou: ``pair_iou(terms.candidates, index)`` -> the ``(N, N)`` IoUs of
            proposals ``index`` at the network size, as ``terms.candidates.iou(index)``
            returns them (a tuner keeps them across settings); None computes them.

    Returns:
        None when no peak finds a proposal, else ``(found (K,) bool: the peaks that
        found one, their best scores (N,) float64, order (M,): the survivors by
        decreasing score, owner (N,) or None: the survivor that suppressed each,
        chosen (M,) int64: the survivors' proposals)``.
    """
    best_score, best = best if best is not None else _best_proposals(terms, labels, config)
    found = torch.isfinite(best_score)
    if not found.any():
        return None
    best, best_score = best[found], best_score[found]  # float64 until the output
    iou = None if pair_iou is None else (lambda index: pair_iou(terms.candidates, index))
    order, owner = _deduplicate(
        terms.candidates, best, best_score, labels[found].cpu(), config, iou
    )
    return found, best_score, order, owner, best[order]


def _best_proposals(terms: RetrievalTerms, labels, config: RetrievalConfig):
    """The best proposal of each peak, ``(K,)`` float64 scores (``-inf`` where none
    passes the size limits) and ``(K,)`` int64 indices (ties: the first wins)."""
    if len(labels) == 0 or len(terms.candidates) == 0:
        return torch.full((len(labels),), float("-inf"), dtype=torch.float64), labels.cpu()
    alpha, beta = config.per_peak("alpha", labels), config.per_peak("beta", labels)
    scores = _combine(
        terms.inside,
        terms.edge,
        terms.penalty,
        terms.area,
        terms.peak_background,
        alpha,
        beta,
        config.proposal_size_limit,
        terms.size,
    )
    return scores.max(1)


def _check_terms(terms: RetrievalTerms, prms, labels, candidates, config) -> None:
    """Terms made for other peaks, proposals or settings would score silently wrong."""
    if not isinstance(terms, RetrievalTerms):
        raise TypeError(f"terms must be RetrievalTerms, got {type(terms).__name__}")
    if terms.inside.shape[1] != len(prms) or terms.size != tuple(prms.shape[1:]):
        raise ValueError(
            f"terms were made for {terms.inside.shape[1]} peaks at {terms.size}, "
            f"got {len(prms)} at {tuple(prms.shape[1:])}"
        )
    if len(terms.candidates) != len(candidates):
        raise ValueError(
            f"terms were made for {len(terms.candidates)} proposals, got {len(candidates)}"
        )
    key = _terms_key(config, labels)
    if key != terms.key:
        names = ("peak classes", "tau", "contour_width", "proposal_count")
        differ = [n for n, a, b in zip(names, terms.key, key) if a != b]
        raise ValueError(
            f"terms were made for other {', '.join(differ)} ({terms.key} against {key}): "
            "make them again with retrieval_terms"
        )


def _deduplicate(
    crops: _Crops | _Cells, best, best_score, labels, config: RetrievalConfig, pair_iou=None
):
    """The instances' output order ``(M,)`` and the survivor that suppressed each
    ``(N,)`` (None without NMS); ``pair_iou(index)`` replaces ``crops.iou(index)``."""
    if config.nms_threshold is None:
        return torch.sort(best_score, descending=True, stable=True).indices, None
    # Peaks often choose the same proposal: IoUs among the distinct ones only.
    distinct, inverse = torch.unique(best, return_inverse=True)
    iou = (pair_iou or crops.iou)(distinct.tolist())[inverse][:, inverse]
    return _greedy_nms(iou, best_score, labels, config.nms_threshold, config.nms_class_agnostic)


def _instance_prms(maps: torch.Tensor, order, owner, size: tuple[int, int] | None):
    """The instances' PRMs ``(M, 1, H, W)`` summing to 1, from the found peaks' ``maps``
    ``(N, h, w)``: each added to its survivor's (when ``owner`` is given), in ``order``,
    resized to ``size`` (None: at the image size already; resizing is linear, so merging
    before or after it is the same)."""
    if owner is not None:
        maps = torch.zeros_like(maps).index_add_(0, owner.to(maps.device), maps)
    maps = maps[order.to(maps.device)][None]
    if size is not None:
        maps = F.interpolate(maps, size, mode="bilinear")
    return normalize_prms(maps.transpose(0, 1))  # one "channel" per instance


def _boxes(masks: torch.Tensor) -> torch.Tensor:
    """:func:`prm.masks.masks_to_boxes`, by OpenCV on the CPU (20x faster there)."""
    if masks.device.type != "cpu":
        return masks_to_boxes(masks)
    import cv2

    array = np.ascontiguousarray(masks.numpy()).view(np.uint8)
    boxes = torch.tensor([cv2.boundingRect(m) for m in array], dtype=torch.float32)
    boxes = boxes.reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # (x, y, width, height) -> (x1, y1, x2, y2)
    return boxes


def _check_inputs(prms, labels, crm, proposals, config: RetrievalConfig) -> None:
    """The checks of :func:`retrieve_instances`' arguments (``ValueError`` naming each)."""
    num_classes = crm.shape[0] if crm.dim() == 3 else None
    config.validate(num_classes)
    if prms.dim() != 3:
        raise ValueError(f"prms must be (K, h, w), got shape {tuple(prms.shape)}")
    if labels.dim() != 1 or len(labels) != len(prms):
        raise ValueError(f"labels must be ({len(prms)},), got shape {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be integer class indices, got {labels.dtype}")
    if crm.dim() != 3:
        raise ValueError(f"crm must be (C, h, w), got shape {tuple(crm.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= crm.shape[0]):
        raise ValueError(f"labels must lie in [0, {crm.shape[0]}), got {labels.tolist()}")
    if isinstance(proposals, CompactProposals):
        pass  # checked when it was made
    elif not isinstance(proposals, torch.Tensor) or proposals.dim() != 3:
        shape = tuple(getattr(proposals, "shape", ()))
        raise ValueError(f"proposals must be (P, H, W) or CompactProposals, got shape {shape}")
    elif proposals.dtype != torch.bool and proposals.numel():
        if proposals.is_floating_point() and torch.isnan(proposals).any():
            raise ValueError("proposals contain NaN")
        if ((proposals != 0) & (proposals != 1)).any():
            raise ValueError("proposals must be binary masks (bool or 0/1)")
    # A NaN anywhere makes the sum NaN: one reduction instead of a mask of the maps.
    if prms.numel() and (torch.isnan(prms.sum()) or torch.isnan(crm.sum())):
        raise ValueError("prms or crm contain NaN")


def _empty_instances(height: int, width: int, device: torch.device) -> dict[str, torch.Tensor]:
    return {
        "masks": torch.zeros((0, height, width), dtype=torch.bool, device=device),
        "labels": torch.zeros((0,), dtype=torch.long, device=device),
        "retrieval_scores": torch.zeros((0,), device=device),
        "prms": torch.zeros((0, height, width), device=device),
        "peak_index": torch.zeros((0,), dtype=torch.long, device=device),
        "proposal_index": torch.zeros((0,), dtype=torch.long, device=device),
        "boxes": torch.zeros((0, 4), device=device),
    }
