"""Write a file whole or not at all.

Every file moodlens writes that a later step reads back (exports, checkpoints,
model files, cached teacher predictions) goes to a temporary name beside the
target, is flushed to disk, and is renamed over the target: a killed run or a
full disk leaves the previous file whole, never a half-written one.
"""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, write, binary: bool = False) -> Path:
    """``write(f)`` into a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with (open(tmp, "wb") if binary else open(tmp, "w", newline="", encoding="utf-8")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
