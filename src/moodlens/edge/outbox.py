"""The edge agent's durable outbox: every batch is on disk before it is sent.

One SQLite file (``outbox.db`` in ``--buffer``), written with ``synchronous=FULL`` so a
batch that ``put`` returned for survives a power cut. Batches leave only when the server
has acknowledged them (``ack``), oldest first; a restarted agent finds them and sends them
again. The server deduplicates by (device, session, stream, seq), so at-least-once here is
exactly-once there. When the outbox would pass ``max_bytes``, a new batch is not kept and
the loss is counted (persistently), never silently.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from moodlens.errors import MoodlensError

COUNTERS = ("dropped_batches", "dropped_frames", "dropped_faces", "sent_batches", "sent_bytes", "naive_bytes",
            "naive_frames", "frames", "faces")


class Outbox:
    """``put`` → ``peek`` → ``ack``: a FIFO of encoded batches that outlives the process."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder = Path(folder).expanduser()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.path = self.folder / "outbox.db"
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS batches (seq INTEGER PRIMARY KEY, session TEXT NOT NULL, "
                             "created REAL NOT NULL, frames INTEGER NOT NULL, faces INTEGER NOT NULL, "
                             "size INTEGER NOT NULL, body BLOB NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except (OSError, sqlite3.Error) as e:
            raise MoodlensError(f"{self.folder}: cannot open the edge buffer ({e})") from None
        self.max_bytes = max_bytes
        self._lock = threading.RLock()  # one connection, two threads (capture, sender)
        if self.get("stream") is None:
            self.set("stream", uuid.uuid4().hex[:16])

    # -- metadata (session, counters) ----------------------------------------------------
    def get(self, key: str, default=None):
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set(self, key: str, value) -> None:
        with self._lock:
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                             "value = excluded.value", (key, json.dumps(value)))

    def count(self, **increments: int) -> None:
        """Add to persistent counters (``dropped_frames=3``), in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for key, n in increments.items():
                    self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                                     "value = CAST(value AS INTEGER) + ?", (key, json.dumps(int(n)), int(n)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def counters(self) -> dict[str, int]:
        return {k: int(self.get(k, 0)) for k in COUNTERS}

    @property
    def stream(self) -> str:
        return self.get("stream")

    def next_seq(self) -> int:
        """A new sequence number (stored before use: never handed out twice)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
            seq = (json.loads(row[0]) if row else 0) + 1
            self._db.execute("INSERT INTO meta (key, value) VALUES ('seq', ?) ON CONFLICT(key) DO UPDATE SET "
                             "value = excluded.value", (json.dumps(seq),))
            self._db.execute("COMMIT")
        return seq

    # -- the queue -------------------------------------------------------------------------
    def put(self, seq: int, session: str, body: bytes, frames: int, faces: int, force: bool = False) -> bool:
        """Keep a batch; False (and counted as dropped) when the buffer is full.
        ``force`` keeps it regardless (a session's closing batch is tiny and must not be lost)."""
        with self._lock:
            used = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM batches").fetchone()[0]
            if not force and used + len(body) > self.max_bytes:
                dropped = True
            else:
                self._db.execute("INSERT INTO batches (seq, session, created, frames, faces, size, body) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)", (seq, session, time.time(), frames, faces,
                                                                  len(body), body))
                dropped = False
        if dropped:
            self.count(dropped_batches=1, dropped_frames=frames, dropped_faces=faces)
        return not dropped

    def peek(self) -> tuple[int, bytes] | None:
        """The oldest batch not yet acknowledged."""
        with self._lock:
            row = self._db.execute("SELECT seq, body FROM batches ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def ack(self, seq: int, sent_bytes: int) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            for key, n in (("sent_batches", 1), ("sent_bytes", sent_bytes)):
                self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                                 "value = CAST(value AS INTEGER) + ?", (key, json.dumps(n), n))
            self._db.execute("COMMIT")

    def backlog(self) -> tuple[int, int]:
        """(batches, bytes) waiting to be sent."""
        with self._lock:
            n, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM batches").fetchone()
        return int(n), int(size)

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["Outbox"]
