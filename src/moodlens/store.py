"""Persistence: analyses and their observation rows, SQLite by default, any SQLAlchemy URL.

An analysis row is written first with status ``running``; observations are
appended in committed batches as the video streams by (memory stays bounded);
only the final step flips the status to ``complete``. Readers and exports only
trust complete analyses, so a killed run can never pass for a finished one,
and a rerun of the same video is a new analysis, never duplicated rows.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from sqlalchemy import (JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, create_engine, event, func,
                        select, text, update)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from moodlens import migrations
from moodlens.atomic import pid_alive
from moodlens.errors import MoodlensError, NotFoundError
from moodlens.types import EMOTIONS

DEFAULT_DB = "sqlite:///moodlens.db"
RUNNING, COMPLETE, FAILED, INTERRUPTED = "running", "complete", "failed", "interrupted"
LIVE = "live"  # an edge session's analysis, filling as batches arrive; complete when the session closes


def _password(url: object) -> str | None:
    """The password in a database URL (``user:pw@`` or ``?password=``), or None."""
    try:
        u = make_url(str(url))
    except Exception:  # noqa: BLE001 - unparsable: look for user:password@ by hand
        m = re.search(r"://[^:/@\s]*:([^@\s]+)@", str(url))
        return m.group(1) if m else None
    pw = u.password or u.query.get("password")
    if isinstance(pw, tuple):
        pw = pw[0] if pw else None
    return str(pw) if pw else None


def safe_url(url: object) -> str:
    """A database URL fit for messages and ``--json``: the password, if any, is ``***``.

    Never raises: a string SQLAlchemy cannot parse is masked by pattern (``user:***@``).
    """
    try:
        u = make_url(str(url))
    except Exception:  # noqa: BLE001
        return hide_password(str(url), url)
    if "password" in u.query:
        u = u.update_query_dict({"password": "***"})
    return u.render_as_string(hide_password=True).replace("password=%2A%2A%2A", "password=***")


def hide_password(message: str, url: object) -> str:
    """``message`` with ``url``'s password (as written or %-encoded) replaced by ``***``.

    A password of 4 characters or more is replaced wherever it appears; a shorter one only
    where it reads as a password (``:pw@``, ``password=pw``), not to garble the message.
    """
    pw = _password(url)
    if not pw or pw == "***":
        return message
    for form in {pw, quote_plus(pw), quote(pw, safe="")}:
        if len(form) >= 4:
            message = message.replace(form, "***")
        else:
            message = message.replace(f":{form}@", ":***@").replace(f"password={form}", "password=***")
    return message


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class AnalysisRow(Base):
    __tablename__ = "analyses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    video: Mapped[str] = mapped_column(Text)
    video_sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True, default=RUNNING)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    models: Mapped[dict[str, Any]] = mapped_column(default=dict)
    video_info: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    observations: Mapped[int] = mapped_column(Integer, default=0)
    # Stretches of the video that could not be decoded and were skipped (corrupt packets):
    # [{"start_s", "end_s", "packets"}, ...] (packets: those the decoder rejected; see
    # moodlens.media.DecodeStats); None or [] when everything decoded.
    decode_gaps: Mapped[list | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class ObservationRow(Base):
    """One face in one sampled frame. Emotion columns are percentages (0-100)."""

    __tablename__ = "observations"
    # iter_observations reads an analysis's rows in this order: walked, not sorted
    __table_args__ = (Index("ix_observations_analysis_time", "analysis_id", "time_s", "track"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), index=True)
    seq: Mapped[str] = mapped_column(String(512))
    person: Mapped[str] = mapped_column(String(255), index=True)
    frame: Mapped[int] = mapped_column(Integer)
    time_s: Mapped[float] = mapped_column(Float)
    track: Mapped[int] = mapped_column(Integer)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    w: Mapped[float] = mapped_column(Float)
    h: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    quality: Mapped[float] = mapped_column(Float)
    # NULL where the analysis's engine gives no score: the own model never fills confused and
    # unknown, Rekognition never contempt, and a face Rekognition did not find again has none
    neutral: Mapped[float | None] = mapped_column(Float)
    happiness: Mapped[float | None] = mapped_column(Float)
    surprise: Mapped[float | None] = mapped_column(Float)
    sadness: Mapped[float | None] = mapped_column(Float)
    anger: Mapped[float | None] = mapped_column(Float)
    disgust: Mapped[float | None] = mapped_column(Float)
    fear: Mapped[float | None] = mapped_column(Float)
    contempt: Mapped[float | None] = mapped_column(Float)
    confused: Mapped[float | None] = mapped_column(Float)
    unknown: Mapped[float | None] = mapped_column(Float)
    landmarks: Mapped[list | None] = mapped_column(JSON)
    # the shot (between cuts, from 0) of the sampled frame: tracks never cross a cut (moodlens.shots)
    shot: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


OBS_FIELDS = tuple(c.name for c in ObservationRow.__table__.columns if c.name not in ("id", "analysis_id"))
assert set(EMOTIONS) <= set(OBS_FIELDS)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")  # readers (dashboards) never block the writer
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class Store:
    """The database behind analyses (and later collections); one per process is plenty."""

    def __init__(self, url: str = DEFAULT_DB):
        self.url = url  # as given (with any password); messages use safe_url(self.url)
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine: Engine = create_engine(url, pool_pre_ping=True)  # a restarted server: reconnect
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
            # Brings the schema to the newest revision (Alembic, under a lock); one SELECT when current.
            self.schema = migrations.ensure_schema(self.engine, safe_url(url))
        except (SQLAlchemyError, ImportError, ValueError) as e:  # ValueError: a URL's port that is not a number
            first = hide_password((str(e).splitlines() or [""])[0], url)
            raise MoodlensError(f"{safe_url(url)}: cannot open database ({type(e).__name__}: {first})") from e

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- analyses -------------------------------------------------------------
    def create_analysis(self, video: str, params: dict, models: dict, video_info: dict,
                        video_sha256: str | None = None, status: str = RUNNING) -> int:
        with self.session() as s, s.begin():
            row = AnalysisRow(video=video, video_sha256=video_sha256, params=params, models=models,
                              video_info=video_info, status=status, host=socket.gethostname(), pid=os.getpid())
            s.add(row)
            s.flush()
            return row.id

    def add_observations(self, analysis_id: int, rows: Sequence[dict]) -> None:
        if not rows:
            return
        with self.session() as s, s.begin():
            s.execute(ObservationRow.__table__.insert(), [{"analysis_id": analysis_id, **r} for r in rows])

    def set_person(self, analysis_id: int, track_to_person: dict[int, str]) -> None:
        """Rename tracks' ids once identities are known (tracks start as anonymous)."""
        with self.session() as s, s.begin():
            for track, person in track_to_person.items():
                s.execute(update(ObservationRow).where(ObservationRow.analysis_id == analysis_id,
                                                       ObservationRow.track == track).values(person=person))

    def finish(self, analysis_id: int, frames: int, timings: dict, decode_gaps: list[dict] | None = None) -> None:
        with self.session() as s, s.begin():
            n = s.scalar(select(func.count()).where(ObservationRow.analysis_id == analysis_id))
            s.execute(update(AnalysisRow).where(AnalysisRow.id == analysis_id).values(
                status=COMPLETE, frames=frames, observations=n, timings=timings, decode_gaps=decode_gaps or [],
                finished_at=_now()))

    def fail(self, analysis_id: int, error: str, status: str = FAILED) -> None:
        with self.session() as s, s.begin():
            s.execute(update(AnalysisRow).where(AnalysisRow.id == analysis_id).values(
                status=status, error=error, finished_at=_now()))

    def analysis(self, analysis_id: int) -> AnalysisRow:
        with self.session() as s:
            row = s.get(AnalysisRow, analysis_id)
        if row is None:
            raise NotFoundError(f"analysis {analysis_id}: no such analysis in {safe_url(self.url)}")
        if row.status == RUNNING and not _alive(row.host, row.pid):
            self.fail(analysis_id, "the process running it stopped before it finished", INTERRUPTED)
            return self.analysis(analysis_id)
        return row

    def complete_analysis(self, analysis_id: int) -> AnalysisRow:
        row = self.analysis(analysis_id)
        if row.status != COMPLETE:
            raise NotFoundError(f"analysis {analysis_id}: status is {row.status}"
                                + (f" ({row.error})" if row.error else "") + "; only complete analyses can be exported")
        return row

    def analyses(self, limit: int = 50) -> list[AnalysisRow]:
        with self.session() as s:
            ids = s.scalars(select(AnalysisRow.id).order_by(AnalysisRow.id.desc()).limit(limit)).all()
        return [self.analysis(i) for i in ids]

    def observations(self, analysis_id: int) -> list[dict]:
        """Every row of an analysis in one list: memory grows with the rows (~3 KB each);
        exports and reports use :meth:`iter_observations` instead."""
        return list(self.iter_observations(analysis_id))

    def iter_observations(self, analysis_id: int, batch: int = 2000) -> Iterator[dict]:
        """An analysis's rows in time order (then track), streamed from the database in
        batches of ``batch``: memory stays flat however long the video was (a server-side
        cursor on PostgreSQL; SQLite's cursor steps through the result)."""
        cols = [getattr(ObservationRow, f) for f in OBS_FIELDS]
        stmt = (select(*cols).where(ObservationRow.analysis_id == analysis_id)
                .order_by(ObservationRow.time_s, ObservationRow.track, ObservationRow.id))
        with self.engine.connect() as c:
            result = c.execution_options(stream_results=True, yield_per=batch).execute(stmt)
            for r in result:
                yield dict(zip(OBS_FIELDS, r))

    def delete_analysis(self, analysis_id: int) -> None:
        """Erase an analysis and its rows (faces are biometric data: users must be able to)."""
        with self.session() as s, s.begin():
            s.execute(ObservationRow.__table__.delete().where(ObservationRow.analysis_id == analysis_id))
            s.execute(AnalysisRow.__table__.delete().where(AnalysisRow.id == analysis_id))

    def track_count(self, analysis_id: int) -> int:
        """Distinct tracks of an analysis, counted in the database."""
        with self.session() as s:
            return s.scalar(select(func.count(func.distinct(ObservationRow.track)))
                            .where(ObservationRow.analysis_id == analysis_id)) or 0

    def query(self, sql: str, params: dict | None = None) -> tuple[list[str], list[tuple]]:
        """Run SQL on the store's own read-write connection; returns column names and rows.
        Not read-only: ``moodlens query`` goes through :mod:`moodlens.query` instead."""
        with self.engine.connect() as c:
            result = c.execute(text(sql), params or {})
            return list(result.keys()), [tuple(r) for r in result]


def _alive(host: str | None, pid: int | None) -> bool:
    """Whether the recorded writer of a running analysis still exists (same host only)."""
    if host != socket.gethostname() or pid is None:
        return True  # cannot tell from here; trust it
    return pid_alive(pid)


def bulk(rows: Iterable[dict], size: int = 500) -> Iterable[list[dict]]:
    batch: list[dict] = []
    for r in rows:
        batch.append(r)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
