"""The watch folder: a video that lands in it is queued once, after it has finished arriving.

A file counts as complete when its size and modification time have not changed for
``settle_s`` seconds (a copy or an upload in progress keeps changing them). It is queued
once: the database remembers every watched file by path and SHA-256, so neither a restart
nor a rescan queues it again, while a new file under an old name (other content) is a new
job. Hidden files and names without a video suffix are ignored.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from sqlalchemy import select

from moodlens.models import sha256_file
from moodlens.service.tables import JobRow

log = logging.getLogger("moodlens.service")

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv",
                  ".gif", ".3gp"}


class Watcher:
    def __init__(self, folder: Path, queue, on_queued=None, poll_s: float = 1.0, settle_s: float = 2.0,
                 options: dict | None = None):
        self.folder, self.queue, self.on_queued = Path(folder).resolve(), queue, on_queued
        self.poll_s, self.settle_s = poll_s, settle_s
        self.options = options or {"fps": 2.0, "collection": None, "report": True, "emoji_video": False,
                                   "blur_unknown": False}
        self._seen: dict[Path, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, unchanged since)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="moodlens-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.scan()
            except Exception:  # noqa: BLE001 - a vanished file or a database hiccup: next scan
                log.exception("watch folder %s", self.folder)
            self._stop.wait(self.poll_s)

    def _known(self, path: Path, sha: str) -> bool:
        with self.queue.store.session() as s:
            return s.scalar(select(JobRow.id).where(JobRow.source == "watch", JobRow.video == str(path),
                                                    JobRow.sha256 == sha).limit(1)) is not None

    def scan(self, now: float | None = None) -> list[int]:
        """One look at the folder; returns the ids of jobs queued by it."""
        now = time.monotonic() if now is None else now
        queued = []
        present = set()
        for p in sorted(self.folder.iterdir()):
            if p.name.startswith(".") or p.suffix.lower() not in VIDEO_SUFFIXES or not p.is_file():
                continue
            present.add(p)
            st = p.stat()
            key = (st.st_size, st.st_mtime_ns)
            prev = self._seen.get(p)
            if prev is None or prev[:2] != key:
                self._seen[p] = (*key, now)
                continue
            if prev[2] is None or now - prev[2] < self.settle_s or st.st_size == 0:
                continue
            self._seen[p] = (*key, None)  # decided: do not look at it again until it changes
            sha = sha256_file(p)
            if self._known(p, sha):
                continue
            job_id = self.queue.enqueue(filename=p.name, video=str(p), options=self.options,  # as _known looks
                                        source="watch", sha256=sha, size_bytes=st.st_size)
            log.info("job %d: %s found in the watch folder", job_id, p.name)
            queued.append(job_id)
        for gone in set(self._seen) - present:
            del self._seen[gone]
        if queued and self.on_queued:
            self.on_queued()
        return queued


__all__ = ["VIDEO_SUFFIXES", "Watcher"]
