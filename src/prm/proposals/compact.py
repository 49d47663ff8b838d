"""Proposals stored as unions of cells of one label map.

A set of ``P`` binary masks over an ``H x W`` image always has a compact exact form: label
every pixel by the set of masks it belongs to (pixels with the same set form one *cell*),
then each mask is a set of cells. MCG writes its proposals this way (a superpixel map and
a list of superpixels per proposal), selective search produces them this way (a region
is a set of superpixels), and the on-disk cache stores them this way, so that a thousand
proposals of a 640 px image take kilobytes instead of 300 MB of dense masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CompactProposals", "nearest_index"]


def nearest_index(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """The source index of each of ``n_out`` samples in a nearest-neighbour resize from
    ``n_in`` with pixel-centre sampling (PIL's and ``nearest-exact``'s rule), ``(n_out,)``
    int64."""
    ramp = torch.arange(n_in, dtype=torch.float64, device=device)[None, None]
    return F.interpolate(ramp, size=n_out, mode="nearest-exact")[0, 0].long()


@dataclass
class CompactProposals:
    """``P`` proposals of one image as unions of the cells of a label map.

    Attributes:
        superpixels (Tensor[H, W], int64): the cell ``0 .. L-1`` of every pixel.
        membership (Tensor[P, L], bool): ``membership[p, l]`` is True when cell ``l`` is
            part of proposal ``p``. Rows are in ranked order (best first).
    """

    superpixels: torch.Tensor
    membership: torch.Tensor

    def __post_init__(self) -> None:
        self.superpixels = torch.as_tensor(self.superpixels)
        self.membership = torch.as_tensor(self.membership)
        if self.superpixels.dim() != 2:
            raise ValueError(
                f"superpixels must be (H, W), got shape {tuple(self.superpixels.shape)}"
            )
        if self.superpixels.dtype.is_floating_point or self.superpixels.dtype == torch.bool:
            raise ValueError(f"superpixels must be an integer tensor, got {self.superpixels.dtype}")
        if self.membership.dim() != 2:
            raise ValueError(f"membership must be (P, L), got shape {tuple(self.membership.shape)}")
        self.superpixels = self.superpixels.long()
        self.membership = self.membership.bool()
        if self.superpixels.numel():
            low, high = int(self.superpixels.min()), int(self.superpixels.max())
            if low < 0 or high >= self.membership.shape[1]:
                raise ValueError(
                    f"superpixels take values {low}..{high} but membership has "
                    f"{self.membership.shape[1]} cells"
                )

    def __len__(self) -> int:
        return self.membership.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return (self.superpixels.shape[0], self.superpixels.shape[1])

    def select(self, index) -> CompactProposals:
        """The proposals ``index`` (a slice or index tensor) over the same label map."""
        return CompactProposals(self.superpixels, self.membership[index])

    def resize(self, size: tuple[int, int]) -> CompactProposals:
        """Nearest-neighbour resize: the label map is resized, membership kept.

        Resizing the label map and taking the union is exactly resizing each mask, so
        ``self.resize(size).masks()`` equals :func:`prm.retrieval.resize_masks` of
        :meth:`masks` (pixel-centre sampling, as PIL). Cells that no pixel samples any
        more keep their place in ``membership`` with zero area.
        """
        if tuple(size) == self.size:
            return self
        rows = nearest_index(self.size[0], size[0], self.superpixels.device)
        cols = nearest_index(self.size[1], size[1], self.superpixels.device)
        labels = self.superpixels.index_select(0, rows).index_select(1, cols)
        return CompactProposals(labels, self.membership)

    def masks(self) -> torch.Tensor:
        """Dense masks.

        Returns:
            Tensor[P, H, W] (bool), in ranked order.
        """
        h, w = self.size
        # Whole rows of the transposed membership, one per pixel, then one transposing
        # copy: the same masks as ``membership[:, superpixels]`` (a test compares them),
        # whose gather along the second dimension is ~3x slower (the demo's 128 px
        # GlyphScenes test images, 155 proposals on average, 1 thread: 12.5-13.8 ms a
        # set against 3.8-4.4 ms).
        by_pixel = self.membership.T.contiguous()[self.superpixels.reshape(-1)]
        return by_pixel.T.contiguous().reshape(len(self), h, w)

    def iou(self) -> torch.Tensor:
        """Mask IoU of every pair of proposals, computed on cell areas (exact, cheap).

        Returns:
            Tensor[P, P] (float64); 0 where both masks are empty.
        """
        area = torch.bincount(self.superpixels.flatten(), minlength=self.membership.shape[1])
        members = self.membership.double()
        inter = (members * area.double()) @ members.T
        size = inter.diagonal()
        union = size[:, None] + size[None, :] - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))

    @classmethod
    def from_masks(cls, masks: torch.Tensor) -> CompactProposals:
        """The exact compact form of dense masks (cells = pixels sharing the same masks).

        Args:
            masks (Tensor[P, H, W]): binary masks (nonzero is foreground).

        Returns:
            CompactProposals whose :meth:`masks` equals ``masks.bool()``.
        """
        if masks.dim() != 3:
            raise ValueError(f"masks must be (P, H, W), got shape {tuple(masks.shape)}")
        p, h, w = masks.shape
        if p == 0:
            return cls(torch.zeros((h, w), dtype=torch.long), torch.zeros((0, 1), dtype=bool))
        flat = masks.detach().cpu().reshape(p, h * w).numpy().astype(bool, copy=False)
        # One row of bits per pixel; identical rows are one cell. Viewing a row as a single
        # np.void scalar lets np.unique sort them as byte strings.
        rows = np.ascontiguousarray(np.packbits(flat, axis=0).T)  # (H*W, ceil(P/8))
        keys = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()
        unique, inverse = np.unique(keys, return_inverse=True)
        cells = unique.view(np.uint8).reshape(len(unique), rows.shape[1])
        membership = np.unpackbits(cells, axis=1, count=p).T.astype(bool)  # (P, L)
        labels = inverse.reshape(h, w).astype(np.int64)
        return cls(torch.from_numpy(labels), torch.from_numpy(np.ascontiguousarray(membership)))
