"""Fixtures of the data tests (the file writers live in ``data_writers.py``)."""

import pytest
from data_writers import VOCWriter


@pytest.fixture
def voc_writer(tmp_path) -> VOCWriter:
    """An empty VOC2012 folder in tmp_path to add images, annotations and splits to."""
    return VOCWriter(tmp_path / "VOC2012")
