"""An output folder changes as a whole set or not at all.

``analyze`` and ``export`` write several files (records.csv, records.jsonl,
summary.csv, report.html, emoji.mp4) that only make sense together. They are
written into a hidden staging folder inside the target folder, and moved into
place (one rename each, on the same file system) only once every one of them is
whole. A failure part-way (a full disk, a database that stops answering) leaves
the folder exactly as it was, and the staging folder is removed; one left by a
killed process is removed by the next run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from moodlens.atomic import pid_alive
from moodlens.errors import MoodlensError

OUTPUT_NAMES = ("records.csv", "records.jsonl", "summary.csv", "report.html", "emoji.mp4")
"""Every file name moodlens writes into an output folder."""

_STAGE_PREFIX = ".moodlens-stage."


def _remove_dead_stages(out: Path) -> None:
    """Staging folders of processes that no longer exist (killed mid-write)."""
    with contextlib.suppress(OSError):
        for p in out.glob(f"{_STAGE_PREFIX}*.tmp"):
            pid = p.name.removeprefix(_STAGE_PREFIX).removesuffix(".tmp")
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


def check_out_folder(out: Path) -> None:
    """Refuse, before any work, an output folder that cannot be written.

    ``out`` may not exist yet; then its nearest existing parent must be a writable
    folder. A probe file is created and removed, since permission bits do not tell
    the whole truth (read-only mounts, root, ACLs).
    """
    if out.exists() and not out.is_dir():
        raise MoodlensError(f"{out}: exists and is not a folder; --out needs a folder for the output files")
    probe_dir = out
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise MoodlensError(f"{out}: cannot be created, {probe_dir} is not a folder")
    try:
        with open(probe_dir / f".moodlens-probe.{os.getpid()}.tmp", "wb") as f:
            os.unlink(f.name)
    except OSError as e:
        raise MoodlensError(f"{out}: cannot write there ({e.strerror or e})") from None


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A folder to write a set of outputs into; on success they are moved into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    _remove_dead_stages(out)
    stage = out / f"{_STAGE_PREFIX}{os.getpid()}.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        for p in sorted(stage.iterdir()):
            if p.is_file():
                os.replace(p, out / p.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def final_paths(paths: dict[str, Path], out: Path) -> dict[str, Path]:
    """Where files written into a staging folder end up."""
    return {name: out / p.name for name, p in paths.items()}


def stale_outputs(out: Path, written: dict[str, Path]) -> list[Path]:
    """Output files in ``out`` from an earlier run that this run did not rewrite."""
    names = {p.name for p in written.values()}
    return [out / n for n in OUTPUT_NAMES if n not in names and (out / n).is_file()]


def tables_into(folder: Path, analysis) -> dict[str, Path]:
    """records.csv, records.jsonl and summary.csv for an analysis, streamed from its store."""
    from moodlens.reports.tables import export_tables

    return export_tables(folder, analysis.iter_observations(), analysis.models, analysis.params.get("fps"))


def write_tables(analysis, out: Path) -> dict[str, Path]:
    """The three tables into ``out``, replacing earlier ones together or not at all."""
    with staged(out) as stage:
        paths = tables_into(stage, analysis)
    return final_paths(paths, out)


__all__ = ["OUTPUT_NAMES", "check_out_folder", "final_paths", "stale_outputs", "staged", "tables_into", "write_tables"]
