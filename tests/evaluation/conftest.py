"""Helpers for the evaluation tests: masks drawn as rectangles on a small grid."""

import pytest
import torch


def rectangles(size: tuple[int, int], *boxes: tuple[int, int, int, int]) -> torch.Tensor:
    """Bool masks (N, H, W), one per ``(row0, row1, col0, col1)`` box (ends exclusive)."""
    masks = torch.zeros((len(boxes), *size), dtype=torch.bool)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        masks[i, r0:r1, c0:c1] = True
    return masks


@pytest.fixture
def rects():
    """``rects(size, *boxes)``: see :func:`rectangles`."""
    return rectangles


@pytest.fixture(autouse=True)
def _one_thread():
    # The machine has 2 cores shared with other test runs; evaluation is not parallel.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
