"""Readers and writers of precomputed proposals: every format round-trips, bad files fail
with a message naming the file."""

import base64
import json
import struct

import numpy as np
import pytest
import scipy.io
import torch

from prm.proposals import (
    FORMATS,
    CompactProposals,
    decode_base64_rle,
    encode_base64_rle,
    load_proposals,
    save_proposals,
)

SUFFIX = {"coco-rle": "json", "base64-rle": "json", "npz": "npz", "mcg-mat": "mat"}


@pytest.fixture
def masks():
    m = torch.rand(6, 9, 11) > 0.6
    m[2] = False  # an empty proposal survives every format
    m[4] = True  # so does a full one
    return m


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(tmp_path, masks, fmt):
    path = save_proposals(tmp_path / f"p.{SUFFIX[fmt]}", masks, format=fmt)
    loaded = load_proposals(path, image_size=(9, 11))
    assert loaded.dtype == torch.bool
    assert torch.equal(loaded, masks)


@pytest.mark.parametrize("fmt", ["coco-rle", "npz", "mcg-mat"])
def test_scores_put_proposals_in_ranked_order(tmp_path, masks, fmt):
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.0, 0.3])
    path = save_proposals(tmp_path / f"p.{SUFFIX[fmt]}", masks, scores=scores)
    # Descending score; the tie (0.9, 0.9) keeps the file's order.
    assert torch.equal(load_proposals(path), masks[[1, 3, 2, 5, 0, 4]])


def test_compact_round_trip_through_npz(tmp_path, masks):
    compact = CompactProposals.from_masks(masks)
    path = save_proposals(tmp_path / "p.npz", compact)
    loaded = load_proposals(path, compact=True)
    assert isinstance(loaded, CompactProposals)
    assert torch.equal(loaded.masks(), masks)


def test_base64_rle_by_hand():
    # 2 x 3 image, row-major pixels 1..6 (1-based): runs (2, 2) and (6, 1) cover pixels
    # 2, 3 and 6, i.e. [[0, 1, 1], [0, 0, 1]].
    entry = {"data": base64.b64encode(struct.pack("<4I", 2, 2, 6, 1)).decode(), "shape": [2, 3]}
    expected = torch.tensor([[0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    assert torch.equal(decode_base64_rle(entry), expected)
    assert encode_base64_rle(expected) == entry


def test_base64_rle_rejects_runs_outside_the_image():
    entry = {"data": base64.b64encode(struct.pack("<2I", 5, 3)).decode(), "shape": [2, 3]}
    with pytest.raises(ValueError, match="outside"):
        decode_base64_rle(entry)


def test_reads_the_authors_file_layout(tmp_path, masks):
    # The demo's data/sample*.json: a bare list of {"data", "shape"}.
    path = tmp_path / "sample0.json"
    path.write_text(json.dumps([encode_base64_rle(m) for m in masks]))
    assert torch.equal(load_proposals(path), masks)


def test_reads_coco_results_style_lists(tmp_path, masks):
    from prm.masks import encode_rle

    entries = [
        {"segmentation": rle, "score": float(s)}
        for rle, s in zip(encode_rle(masks), [0.2, 0.1, 0.0, 0.4, 0.3, 0.5])
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(entries))
    assert torch.equal(load_proposals(path), masks[[5, 3, 4, 0, 1, 2]])


def test_reads_mcg_output(tmp_path):
    # MCG: superpixel map labelled from 1, one vector of superpixel ids per candidate,
    # scores; here 3 superpixels as vertical stripes of a 2 x 3 image.
    superpixels = np.array([[1, 2, 3], [1, 2, 3]], dtype=np.uint32)
    labels = np.empty((2, 1), dtype=object)
    labels[0, 0] = np.array([[1.0, 2.0]])
    labels[1, 0] = np.array([[3.0]])
    scores = np.array([[0.2], [0.7]])
    expected = torch.tensor(
        [[[0, 0, 1], [0, 0, 1]], [[1, 1, 0], [1, 1, 0]]], dtype=torch.bool
    )  # by score: candidate 2 first
    flat = tmp_path / "flat.mat"
    scipy.io.savemat(flat, {"superpixels": superpixels, "labels": labels, "scores": scores})
    assert torch.equal(load_proposals(flat), expected)
    # save('file.mat', 'candidates'): the same fields inside one struct variable
    nested = tmp_path / "nested.mat"
    candidates = {"superpixels": superpixels, "labels": labels, "scores": scores}
    scipy.io.savemat(nested, {"candidates": candidates})
    assert torch.equal(load_proposals(nested), expected)


def test_reads_plain_mask_arrays(tmp_path, masks):
    np.savez(tmp_path / "m.npz", masks=masks.numpy())
    assert torch.equal(load_proposals(tmp_path / "m.npz"), masks)
    scipy.io.savemat(tmp_path / "m.mat", {"masks": masks.numpy().transpose(1, 2, 0)})
    assert torch.equal(load_proposals(tmp_path / "m.mat"), masks)


@pytest.mark.parametrize("fmt", ["coco-rle", "npz", "mcg-mat"])
def test_wrong_size_names_the_file(tmp_path, masks, fmt):
    path = save_proposals(tmp_path / f"p.{SUFFIX[fmt]}", masks)
    with pytest.raises(ValueError, match=rf"{path.name}.*9x11 but the image is 10x11"):
        load_proposals(path, image_size=(10, 11))


@pytest.mark.parametrize("fmt", ["coco-rle", "npz", "mcg-mat"])
def test_empty_sets_fail_unless_allowed(tmp_path, fmt):
    empty = torch.zeros(0, 4, 5, dtype=torch.bool)
    path = save_proposals(tmp_path / f"p.{SUFFIX[fmt]}", empty)
    with pytest.raises(ValueError, match=rf"{path.name}: contains no proposals"):
        load_proposals(path)
    assert load_proposals(path, allow_empty=True).shape == (0, 4, 5)


def test_empty_list_without_size(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("[]")
    with pytest.raises(ValueError, match="no proposals"):
        load_proposals(path)
    assert load_proposals(path, (3, 4), allow_empty=True).shape == (0, 3, 4)
    with pytest.raises(ValueError, match="needs image_size"):
        load_proposals(path, allow_empty=True)


def test_base64_format_cannot_store_an_empty_set(tmp_path):
    with pytest.raises(ValueError, match="empty set"):
        save_proposals(tmp_path / "p.json", torch.zeros(0, 2, 2, dtype=bool), format="base64-rle")


@pytest.mark.parametrize("name", ["p.json", "p.npz", "p.mat"])
def test_corrupt_files_name_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00\x01 definitely not proposals \xff" * 10)
    with pytest.raises(ValueError, match=rf"{name}: not (valid|a readable)"):
        load_proposals(path)


def test_truncated_npz(tmp_path, masks):
    path = save_proposals(tmp_path / "p.npz", masks)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="p.npz: not a readable .npz"):
        load_proposals(path)


def test_npz_with_unknown_arrays(tmp_path):
    np.savez(tmp_path / "p.npz", boxes=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"p.npz: expected 'masks'.*\['boxes'\]"):
        load_proposals(tmp_path / "p.npz")


def test_mcg_labels_out_of_range(tmp_path):
    labels = np.empty((1, 1), dtype=object)
    labels[0, 0] = np.array([[1.0, 7.0]])
    scipy.io.savemat(tmp_path / "p.mat", {"superpixels": np.ones((2, 2)), "labels": labels})
    with pytest.raises(ValueError, match=r"p.mat: proposal 1 names superpixels outside 1..1"):
        load_proposals(tmp_path / "p.mat")


def test_matlab_v73_gets_a_clear_message(tmp_path):
    # A v7.3 file is HDF5 behind a MATLAB header whose version field is 0x0200.
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\x00" * 8 + b"\x00\x02IM"
    path = tmp_path / "p.mat"
    path.write_bytes(header + b"\x00" * 512)
    with pytest.raises(ValueError, match=r"p.mat: MATLAB v7.3 .*-v7"):
        load_proposals(path)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_proposals(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match=r"p.txt: cannot tell the proposal format"):
        load_proposals(tmp_path / "p.txt")


def test_writes_are_atomic(tmp_path, masks, monkeypatch):
    path = save_proposals(tmp_path / "p.npz", masks)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        save_proposals(path, masks[:2])
    # The old file is intact and no temporary file is left behind.
    assert torch.equal(load_proposals(path), masks)
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]
