"""prm.files: the one atomic writer."""

import pytest

from prm.files import AtomicFile, write_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_content_and_leaves_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "a.txt", "old")  # parents are created

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomic(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_an_atomic_file_is_invisible_until_committed_and_can_go_elsewhere(tmp_path):
    file = AtomicFile(tmp_path / "results.json", "x")
    file.handle.write("[1]")
    file.handle.flush()
    assert not (tmp_path / "results.json").exists()
    assert file.commit(tmp_path / "results.partial.json").read_text() == "[1]"
    assert [p.name for p in tmp_path.iterdir()] == ["results.partial.json"]
    other = AtomicFile(tmp_path / "b.json")
    other.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.partial.json"]
