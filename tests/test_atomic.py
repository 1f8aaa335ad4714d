"""atomic_write: a failed write (a full disk, an exception, a kill) never replaces the previous file."""

from __future__ import annotations

import pytest

from moodlens.atomic import atomic_write


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "records.csv"
    atomic_write(target, lambda f: f.write("seq,id\n1,a\n"))

    def fails_halfway(f):
        f.write("seq,id\n")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, fails_halfway)
    assert target.read_text() == "seq,id\n1,a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["records.csv"]


def test_binary_writes_and_new_folders(tmp_path):
    target = tmp_path / "run" / "checkpoint.pt"
    assert atomic_write(target, lambda f: f.write(b"\x00\x01"), binary=True) == target
    assert target.read_bytes() == b"\x00\x01"
