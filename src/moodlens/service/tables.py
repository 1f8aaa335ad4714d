"""The service's tables: jobs (the queue and its history), API tokens, and live sessions.

Both live on the store's ``Base``, beside analyses, and are created by the migrations
(revisions 0003 and 0005). A job's ``analysis_id`` points at the analysis its last attempt made.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import Mapped, mapped_column

from moodlens.store import Base

QUEUED, RUNNING, COMPLETE, FAILED, CANCELLED = "queued", "running", "complete", "failed", "cancelled"
JOB_STATUSES = (QUEUED, RUNNING, COMPLETE, FAILED, CANCELLED)
ROLES = ("admin", "upload", "viewer", "ingest")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class JobRow(Base):
    """One video to analyse: where it came from, its options, and every attempt's state."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=QUEUED)
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    source: Mapped[str] = mapped_column(String(16), default="upload")  # upload | watch | submit
    filename: Mapped[str] = mapped_column(Text)  # as the client named it: shown, never a path
    video: Mapped[str] = mapped_column(Text)  # the server's own copy (uploads) or the watched file
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    analysis_id: Mapped[int | None] = mapped_column(ForeignKey("analyses.id", ondelete="SET NULL"), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))  # host:pid of the server running it
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    stages: Mapped[list | None] = mapped_column(JSON, default=list)  # [{"name", "seconds"}], in order
    token_name: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class TokenRow(Base):
    """An API token: only its SHA-256 is stored; the token itself is shown once."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


LIVE, CLOSED = "live", "closed"


class LiveSessionRow(Base):
    """One (device, session) stream of an edge camera and the live analysis it fills.

    ``tracker`` is the server-side tracker's state after the last batch (``np.savez``
    bytes), written in the batch's own transaction: a server killed at any moment resumes
    the session exactly where its last committed batch left it.
    """

    __tablename__ = "live_sessions"
    __table_args__ = (UniqueConstraint("device", "name", name="uq_live_sessions_device_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), index=True, default=LIVE)  # live | closed
    analysis_id: Mapped[int | None] = mapped_column(ForeignKey("analyses.id", ondelete="SET NULL"), index=True)
    part: Mapped[int] = mapped_column(Integer, default=1)  # analyses made by this session (a late batch reopens it)
    mode: Mapped[str] = mapped_column(String(16))  # crops | scores
    collection: Mapped[str | None] = mapped_column(String(255))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)  # source, fps, frame size, crop format, models
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the agent's counters from its latest batch
    batches: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    frames: Mapped[int] = mapped_column(Integer, default=0)  # of the current analysis
    faces: Mapped[int] = mapped_column(Integer, default=0)
    shot: Mapped[int | None] = mapped_column(Integer)  # the last frame's shot (a change ends every track)
    tracker: Mapped[bytes | None] = mapped_column(LargeBinary)
    token_name: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    last_batch_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_captured_at: Mapped[float | None] = mapped_column(Float)  # epoch s of the newest frame on the device
    closed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class LiveBatchRow(Base):
    """A batch taken: its key makes a resent batch a duplicate (exactly-once effect)."""

    __tablename__ = "live_batches"
    session_id: Mapped[int] = mapped_column(ForeignKey("live_sessions.id", ondelete="CASCADE"), primary_key=True)
    stream: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    frames: Mapped[int] = mapped_column(Integer)
    faces: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class LiveEmbeddingRow(Base):
    """An SFace embedding of one live face (never the face): what names the tracks at the close."""

    __tablename__ = "live_embeddings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), index=True)
    frame: Mapped[int] = mapped_column(Integer)
    track: Mapped[int] = mapped_column(Integer)
    quality: Mapped[float] = mapped_column(Float)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # 128 float32
