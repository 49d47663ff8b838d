"""Fixtures of the data tests; the file writers live in ``data_writers.py`` beside this file."""

import sys
from pathlib import Path

import pytest

# pytest runs in importlib mode (pyproject), which does not put test folders on sys.path:
# add this one so the test files can `from data_writers import ...`.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_writers import VOCWriter  # noqa: E402


@pytest.fixture
def voc_writer(tmp_path) -> VOCWriter:
    """An empty VOC2012 folder in tmp_path to add images, annotations and splits to."""
    return VOCWriter(tmp_path / "VOC2012")
