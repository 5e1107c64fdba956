"""Atomic writes: the new content replaces the old at once, a failed write leaves the old file
and no temporary file behind."""

import pytest
from stpn_core.files import atomic_path, write_text_atomic


def test_write_replaces_the_file_and_creates_folders(tmp_path):
    path = tmp_path / "a" / "b" / "metrics.json"
    assert write_text_atomic(path, "old") == path
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(path) as temporary:
            temporary.write_text("half")
            assert temporary.parent == tmp_path and temporary != path
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]
