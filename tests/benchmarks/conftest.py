"""Make the repository's ``benchmarks`` folder importable (it is not an installed package),
and run these tests on one thread."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models on a shared 2-core machine: a second thread only waits for the first
    # (measured: a 32 px training step took 1 s on 2 threads, 12 ms on one).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
