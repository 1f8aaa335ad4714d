"""Helpers for benchmarks: shared data location, child-process runs with peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


def need(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"needs shared data at {path} (../shared/data beside the repo)")
    return path


def run_child(code: str) -> dict:
    """Run Python code in a fresh process; it prints one JSON line. Adds its peak RSS (MB)."""
    wrapped = code + "\nimport resource, json as _j\nprint(_j.dumps({**RESULT, 'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    out = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
