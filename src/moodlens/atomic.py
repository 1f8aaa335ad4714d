"""Write a file whole or not at all.

Every file moodlens writes that a later step reads back (exports, checkpoints,
model files, cached teacher predictions) goes to a temporary name beside the
target, is flushed to disk, and is renamed over the target: a killed run or a
full disk leaves the previous file whole, never a half-written one.

Temporary files are named ``.<name>.<pid>.tmp`` (:func:`temp_path`). One left by a
process that was killed (``kill -9``, a power cut) is removed by the next write into
the same folder (:func:`clean_stale_temps`). While a writer is at work it holds an
advisory lock on its temporary file (``flock``, where the platform has it), so a
writer whose pid is not visible from here (another container or host sharing the
folder) keeps its file too.

Cleaning up never raises: when the folder turned read-only or the disk went away,
the error that the caller sees is the one that stopped the write, not a second one
from removing the temporary file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: the pid alone decides
    fcntl = None  # type: ignore[assignment]

_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp$")


def temp_path(path: Path) -> Path:
    """The temporary name beside ``path`` for this process: ``.<name>.<pid>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove_quietly(path: Path) -> None:
    """Remove a file if it is there; never raises (cleanup must not hide the real error)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def lock_temp(f) -> None:
    """Mark an open temporary file as in use (advisory ``flock``; best effort, never raises)."""
    if fcntl is not None:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (OSError, ValueError):
            pass


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (True when it cannot be told)."""
    if pid <= 0:
        return True  # not a process id: leave the file alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists (another user's), or cannot tell: keep
    return True


def _in_use(path: Path) -> bool:
    """Whether a writer holds the temporary file's lock (False where there are no locks)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return True  # cannot open it to check: keep it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False  # nobody holds it (the lock goes with the close below)
    except BlockingIOError:
        return True
    except OSError:
        return False  # the file system has no locks: the pid decides
    finally:
        os.close(fd)


def clean_stale_temps(folder: Path) -> list[Path]:
    """Remove temporary files (``.<name>.<pid>.tmp``) that processes no longer running left in ``folder``.

    Only regular files are touched (not folders or links); a pid that is alive, or a
    file a writer holds locked, is kept. Never raises; returns what it removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if not m:
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or pid_alive(int(m.group(1))):
                continue
        except OSError:
            continue
        path = Path(entry.path)
        if _in_use(path):
            continue
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def atomic_write(path: Path, write, binary: bool = False) -> Path:
    """``write(f)`` into a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    tmp = temp_path(path)
    try:
        with (open(tmp, "wb") if binary else open(tmp, "w", newline="", encoding="utf-8")) as f:
            lock_temp(f)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        remove_quietly(tmp)  # gone already after the rename; after a failure, never a second error
    return path
