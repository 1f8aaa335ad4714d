"""The job queue, kept in the database: enqueue, claim, report progress, finish, cancel, retry.

Every change is one short transaction, so any process may die between two of them and the
rows still tell the truth. A job is claimed atomically: on PostgreSQL the candidate row is
locked with ``FOR UPDATE SKIP LOCKED`` (workers never wait on each other); everywhere the
claim is a conditional ``UPDATE … WHERE status = 'queued'`` whose row count says who won,
which on SQLite (one writer at a time) is atomic by itself. Each claim is an *attempt*
(``attempts`` counts them); a worker's updates name their attempt and are ignored once the
job has moved on (cancelled, re-queued after its server died), so a late writer can never
mark a job complete twice.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update

from moodlens.atomic import pid_alive
from moodlens.errors import MoodlensError, NotFoundError
from moodlens.service.tables import CANCELLED, COMPLETE, FAILED, JOB_STATUSES, QUEUED, RUNNING, JobRow
from moodlens.store import INTERRUPTED, Store


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def worker_id() -> str:
    """``host:pid`` of this server process: what a running job records as its owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


class JobStateError(MoodlensError):
    """The job is not in a state that allows what was asked (retry a running job, …)."""


@dataclass(frozen=True)
class Claimed:
    """What a worker needs to run one attempt of a job."""

    id: int
    attempt: int
    video: str
    options: dict


class JobQueue:
    """The jobs table, through one :class:`~moodlens.store.Store`."""

    def __init__(self, store: Store):
        self.store = store

    # -- reading --------------------------------------------------------------------------
    def get(self, job_id: int) -> JobRow:
        with self.store.session() as s:
            row = s.get(JobRow, job_id)
        if row is None:
            raise NotFoundError(f"job {job_id}: no such job")
        return row

    def list(self, limit: int = 100, status: str | None = None, offset: int = 0) -> list[JobRow]:
        stmt = select(JobRow).order_by(JobRow.id.desc()).limit(limit).offset(offset)
        if status:
            stmt = stmt.where(JobRow.status == status)
        with self.store.session() as s:
            return list(s.scalars(stmt))

    def counts(self) -> dict[str, int]:
        """Jobs by status (every status present, zero when none)."""
        with self.store.session() as s:
            rows = s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all()
        return {st: 0 for st in JOB_STATUSES} | {st: n for st, n in rows}

    def by_analysis(self, analysis_id: int) -> JobRow | None:
        with self.store.session() as s:
            return s.scalars(select(JobRow).where(JobRow.analysis_id == analysis_id)).first()

    # -- writing --------------------------------------------------------------------------
    def enqueue(self, *, filename: str, video: str, options: dict, source: str = "upload",
                sha256: str | None = None, size_bytes: int | None = None, token_name: str | None = None) -> int:
        with self.store.session() as s, s.begin():
            row = JobRow(filename=filename, video=video, options=dict(options), source=source, sha256=sha256,
                         size_bytes=size_bytes, token_name=token_name, status=QUEUED, progress=0.0, attempts=0,
                         cancel_requested=False, stages=[])
            s.add(row)
            s.flush()
            return row.id

    def claim(self, worker: str) -> Claimed | None:
        """Take the oldest queued job for ``worker``, or None; never the same job twice."""
        for _ in range(20):  # a lost race (SQLite: another worker updated the row first) tries the next job
            with self.store.session() as s, s.begin():
                stmt = select(JobRow.id).where(JobRow.status == QUEUED).order_by(JobRow.id).limit(1)
                if self.store.engine.dialect.name == "postgresql":
                    stmt = stmt.with_for_update(skip_locked=True)
                job_id = s.scalar(stmt)
                if job_id is None:
                    return None
                now = _now()
                won = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == QUEUED).values(
                    status=RUNNING, worker=worker, attempts=JobRow.attempts + 1, started_at=now, heartbeat_at=now,
                    stage="starting", progress=0.0, error=None, finished_at=None, stages=[])).rowcount
                if won == 1:
                    row = s.get(JobRow, job_id)
                    return Claimed(id=row.id, attempt=row.attempts, video=row.video,
                                   options=dict(row.options or {}))
        return None

    def _update(self, job_id: int, attempt: int, **values) -> bool:
        """Change a running job's attempt; False when that attempt is no longer the job's."""
        with self.store.session() as s, s.begin():
            return s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.attempts == attempt,
                                                  JobRow.status == RUNNING).values(**values)).rowcount == 1

    def progress(self, job_id: int, attempt: int, stage: str, fraction: float) -> bool:
        return self._update(job_id, attempt, stage=stage, progress=max(0.0, min(1.0, float(fraction))),
                            heartbeat_at=_now())

    def set_stages(self, job_id: int, attempt: int, stages: Sequence[dict]) -> bool:
        return self._update(job_id, attempt, stages=list(stages), heartbeat_at=_now())

    def set_analysis(self, job_id: int, attempt: int, analysis_id: int) -> bool:
        return self._update(job_id, attempt, analysis_id=analysis_id)

    def cancel_requested(self, job_id: int) -> bool:
        with self.store.session() as s:
            return bool(s.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id)))

    def heartbeat(self, job_ids: Sequence[int], worker: str) -> None:
        if not job_ids:
            return
        with self.store.session() as s, s.begin():
            s.execute(update(JobRow).where(JobRow.id.in_(list(job_ids)), JobRow.worker == worker,
                                           JobRow.status == RUNNING).values(heartbeat_at=_now()))

    def finish(self, job_id: int, attempt: int, analysis_id: int) -> bool:
        return self._update(job_id, attempt, status=COMPLETE, stage="done", progress=1.0, analysis_id=analysis_id,
                            finished_at=_now())

    def fail(self, job_id: int, attempt: int, error: str, status: str = FAILED) -> bool:
        return self._update(job_id, attempt, status=status, error=error, finished_at=_now())

    def cancel(self, job_id: int) -> JobRow:
        """A queued job is cancelled at once; a running one when its worker next looks (within a second)."""
        with self.store.session() as s, s.begin():  # conditional updates: a claim may come in between
            n = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == QUEUED).values(
                status=CANCELLED, finished_at=_now())).rowcount
            if n == 0:
                n = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == RUNNING).values(
                    cancel_requested=True)).rowcount
        if n == 0:
            row = self.get(job_id)  # 404 when unknown
            raise JobStateError(f"job {job_id} is {row.status}; only queued or running jobs can be cancelled")
        return self.get(job_id)

    def retry(self, job_id: int) -> JobRow:
        """Queue a failed or cancelled job again (a new attempt)."""
        with self.store.session() as s, s.begin():
            n = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status.in_([FAILED, CANCELLED])).values(
                status=QUEUED, stage=None, progress=0.0, error=None, cancel_requested=False, worker=None,
                finished_at=None)).rowcount
        if n != 1:
            row = self.get(job_id)
            raise JobStateError(f"job {job_id} is {row.status}; only failed or cancelled jobs can be retried")
        return self.get(job_id)

    def requeue(self, job_id: int, attempt: int, reason: str, stale_before: dt.datetime | None = None) -> bool:
        """Put a running attempt back in the queue (its server is stopping or died); False when
        that attempt is no longer the job's (or, with ``stale_before``, it sent a heartbeat since).
        A job whose cancel was asked for is cancelled instead. The attempt's analysis, if any, is
        marked interrupted, even when the analysis itself had finished (the job's outputs had not):
        only a complete job's analysis is ever complete."""
        cond = [JobRow.id == job_id, JobRow.attempts == attempt, JobRow.status == RUNNING]
        if stale_before is not None:
            cond.append(JobRow.heartbeat_at < stale_before)
        with self.store.session() as s, s.begin():
            n = s.execute(update(JobRow).where(*cond, JobRow.cancel_requested.is_(True)).values(
                status=CANCELLED, worker=None, finished_at=_now(),
                error=f"cancelled; attempt {attempt} stopped ({reason})")).rowcount
            if n == 0:
                n = s.execute(update(JobRow).where(*cond).values(
                    status=QUEUED, stage=None, progress=0.0, worker=None,
                    error=f"attempt {attempt}: {reason}; queued again")).rowcount
            analysis_id = s.scalar(select(JobRow.analysis_id).where(JobRow.id == job_id)) if n == 1 else None
        if analysis_id is not None:  # read after the update: the attempt can no longer change it
            self.interrupt_analysis(analysis_id, f"job {job_id} attempt {attempt}: {reason}")
        return n == 1

    def interrupt_analysis(self, analysis_id: int, reason: str) -> None:
        """Mark an attempt's analysis interrupted (unless it already failed or is gone)."""
        try:
            a = self.store.analysis(analysis_id)
        except NotFoundError:
            return
        if a.status not in ("failed", INTERRUPTED):
            self.store.fail(analysis_id, reason, INTERRUPTED)

    def requeue_orphans(self, alive: Callable[[str], bool], stale_s: float) -> list[int]:
        """Running jobs whose server is gone: its ``host:pid`` is not alive (same host), or it
        has sent no heartbeat for ``stale_s`` seconds (another host, or a reused pid). They go
        back to the queue."""
        cutoff = _now() - dt.timedelta(seconds=stale_s)
        with self.store.session() as s:
            rows = list(s.scalars(select(JobRow).where(JobRow.status == RUNNING)))
        out = []
        for r in rows:
            beat = r.heartbeat_at
            if beat is not None and beat.tzinfo is None:  # SQLite returns naive UTC
                beat = beat.replace(tzinfo=dt.timezone.utc)
            if not alive(r.worker or ""):
                ok = self.requeue(r.id, r.attempts, f"its server ({r.worker}) stopped before it finished")
            elif beat is None or beat < cutoff:  # checked again in the update: a late heartbeat wins
                ok = self.requeue(r.id, r.attempts, f"its server ({r.worker}) sent no heartbeat for {stale_s:.0f} s",
                                  stale_before=None if beat is None else cutoff)
            else:
                continue
            if ok:
                out.append(r.id)
        return out

    def delete(self, job_id: int) -> None:
        with self.store.session() as s, s.begin():
            row = s.get(JobRow, job_id)
            if row is not None:
                s.delete(row)


def server_alive(worker: str) -> bool:
    """Whether the server that owns a job (``host:pid``) still runs; a server on another host
    cannot be checked from here and counts as alive (its heartbeat decides)."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return host != socket.gethostname()
    return pid_alive(int(pid))


__all__ = ["CANCELLED", "COMPLETE", "Claimed", "FAILED", "JobQueue", "JobStateError", "QUEUED", "RUNNING",
           "server_alive", "worker_id"]
