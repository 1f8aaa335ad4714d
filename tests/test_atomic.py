"""atomic_write: a failed write (a full disk, an exception, a kill) never replaces the previous file."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

import moodlens.atomic as atomic_mod
from moodlens.atomic import atomic_write, clean_stale_temps, temp_path


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


# -- cleanup never hides the first error; temporary files of dead processes go (issue 22) ------
def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_failed_write_whose_cleanup_fails_too_raises_the_first_error(tmp_path, monkeypatch):
    target = tmp_path / "records.csv"
    target.write_text("old\n")

    def fails(f):
        f.write("seq,id\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    def unlink_fails(path, *a, **k):  # the folder turned read-only, or the disk went away
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(atomic_mod.os, "unlink", unlink_fails)
    with pytest.raises(OSError) as e:
        atomic_write(target, fails)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert target.read_text() == "old\n"


def test_stale_temporaries_of_dead_processes_go_at_the_next_write(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    stale = tmp_path / f".x.csv.{dead}.tmp"
    stale_emoji = tmp_path / f".emoji.mp4.{dead}.tmp"
    busy = tmp_path / f".x.csv.{live}.tmp"
    keep = [tmp_path / ".x.csv.abc.tmp", tmp_path / f"x.csv.{dead}.tmp", tmp_path / "notes.tmp"]
    stage = tmp_path / f".moodlens-stage.{dead}.tmp"  # folders are outputs.py's business
    stage.mkdir()
    for p in [stale, stale_emoji, busy, *keep]:
        p.write_text("partial")
    atomic_write(tmp_path / "records.csv", lambda f: f.write("seq,id\n"))
    assert not stale.exists() and not stale_emoji.exists()
    assert busy.exists() and stage.is_dir() and all(p.exists() for p in keep)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == sorted(
        [busy.name, stage.name] + [p.name for p in keep])


def test_a_locked_temporary_is_kept_whatever_its_pid(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    # a writer whose pid this process cannot see (another container or host on a shared folder)
    held = tmp_path / f".x.csv.{_dead_pid()}.tmp"
    with open(held, "wb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert clean_stale_temps(tmp_path) == [] and held.exists()
    assert clean_stale_temps(tmp_path) == [held] and not held.exists()


def test_clean_stale_temps_never_raises(tmp_path):
    assert clean_stale_temps(tmp_path / "missing") == []
    assert temp_path(tmp_path / "a.csv").name == f".a.csv.{os.getpid()}.tmp"


def test_emoji_render_removes_a_killed_renders_temporary(tmp_path):
    av = pytest.importorskip("av")
    import numpy as np

    from moodlens.reports.emoji import render_emoji_video

    video = tmp_path / "in.mp4"
    with av.open(str(video), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 90, np.uint8), format="bgr24")
            f.pts = i
            out.mux(s.encode(f))
        out.mux(s.encode())
    leftover = tmp_path / "out" / f".emoji.mp4.{_dead_pid()}.tmp"  # kill -9 during an earlier render
    leftover.parent.mkdir()
    leftover.write_bytes(b"\x00" * 100)
    render_emoji_video(video, [], tmp_path / "out" / "emoji.mp4")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["emoji.mp4"]
