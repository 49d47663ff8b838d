"""Shared pytest fixtures."""

import os
import sys
from pathlib import Path

import pytest
import torch

# Real VOC / COCO fixture files are not part of the repository: PRM_TEST_DATA names their
# folder (default: shared/data next to the checkout); tests that need them skip without.
SHARED_DATA = Path(
    os.environ.get("PRM_TEST_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)

# The repository root on the path: the benchmarks folder (and the reference loops in
# benchmarks/common.py, which tests check the library against) is imported by name.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# The tests run small tensors, where OpenMP threads cost more than they bring, and a busy
# 2-core machine makes them wait on each other; one thread is faster and deterministic.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    """The real VOC / COCO fixtures in ``$PRM_TEST_DATA`` (skips when absent)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data fixtures not found at {SHARED_DATA} (set PRM_TEST_DATA)")
    return SHARED_DATA
