"""One attempt of one job, in a worker process: the same pipeline and outputs as ``analyze``.

:func:`run_job` is what every executor runs (a local process now, a Ray task later). It
reads the job's options, runs :func:`moodlens.pipeline.analyze` against the server's
database, writes the job's files into ``DATA_DIR/analyses/<analysis id>/`` and records each
stage's progress and time on the job row. Cancellation is cooperative: the progress
callback checks the job's flag at most once a second and stops the analysis, which is then
marked interrupted. Every update names the attempt, so a worker whose job was taken from
it (its server died and a new one re-queued the job) changes nothing.

A job's analysis is complete only when the job is: an attempt cancelled or failed after the
analysis itself finished (while writing the emoji video, say) marks the analysis too. The
database may be away for a moment: progress that cannot be written is skipped, the attempt's
last writes are retried for about 20 s, and an attempt that a database error stopped goes back
to the queue (up to ``MAX_ATTEMPTS``) rather than failing the job.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from moodlens.errors import Cancelled, MoodlensError
from moodlens.service.jobs import CANCELLED, JobQueue
from moodlens.store import FAILED, INTERRUPTED, Store

log = logging.getLogger("moodlens.service")

STAGES = ("analyze", "tables", "report", "emoji video")
_stores: dict[str, Store] = {}  # one per database in a worker process (its engine, its pool)


def analysis_dir(data_dir: str | Path, analysis_id: int) -> Path:
    """Where a service analysis's files live (ids are integers from the database, never client text)."""
    return Path(data_dir) / "analyses" / str(int(analysis_id))


def _store(db: str) -> Store:
    if db not in _stores:
        _stores[db] = Store(db)
    return _stores[db]


def _retry(fn, *args, tries: int = 8, **kw):
    """A write that must land (an attempt's end): the database may be away for a moment."""
    for i in range(tries):
        try:
            return fn(*args, **kw)
        except SQLAlchemyError:
            if i == tries - 1:
                raise
            log.warning("database unavailable; retrying in %.1f s", min(8.0, 0.25 * 2**i))
            time.sleep(min(8.0, 0.25 * 2**i))


class _Tracker:
    """Stage timings and throttled progress for one attempt."""

    def __init__(self, queue: JobQueue, job_id: int, attempt: int, stages: list[str]):
        self.q, self.job_id, self.attempt = queue, job_id, attempt
        self.plan = stages
        self.done: list[dict] = []
        self.stage, self.t_stage, self.t_write, self.t_cancel = None, 0.0, 0.0, 0.0
        self.db_down = False

    def start(self, stage: str) -> None:
        now = time.perf_counter()
        if self.stage is not None:
            self.done.append({"name": self.stage, "seconds": round(now - self.t_stage, 3)})
        self.stage, self.t_stage = stage, now
        try:
            self.q.set_stages(self.job_id, self.attempt, self.done + [{"name": stage, "seconds": None}])
        except SQLAlchemyError:  # shown stages only; the final write retries
            log.warning("job %d: cannot record stage %s; going on", self.job_id, stage)
        self.t_cancel = 0.0  # a cancel asked for during the last stage is honoured here
        self.report(0.0, force=True)

    def report(self, fraction_of_stage: float, force: bool = False) -> None:
        """Progress over the whole plan; written at most twice a second, cancel checked once a second.
        Raises Cancelled when the job was cancelled or the attempt is no longer the job's."""
        now = time.perf_counter()
        if force or now - self.t_write >= 0.5:
            i = self.plan.index(self.stage)
            weight = 0.85 if self.stage == "analyze" else 0.15 / max(1, len(self.plan) - 1)
            before = 0.0 if i == 0 else 0.85 + 0.15 * (i - 1) / max(1, len(self.plan) - 1)
            self.t_write = now
            try:
                ours = self.q.progress(self.job_id, self.attempt, self.stage,
                                       before + weight * max(0.0, min(1.0, fraction_of_stage)))
            except SQLAlchemyError as e:  # the database is away for a moment: progress can wait
                if not self.db_down:
                    log.warning("job %d: cannot record progress (%s); going on", self.job_id,
                                " ".join(str(getattr(e, "orig", None) or e).split())[:200])
                self.db_down, ours = True, True
            else:
                if self.db_down:
                    log.info("job %d: the database answers again", self.job_id)
                self.db_down = False
            if not ours:
                raise Cancelled(f"job {self.job_id}: attempt {self.attempt} is no longer the job's")
        if now - self.t_cancel >= 1.0:
            self.t_cancel = now
            try:
                cancelled = self.q.cancel_requested(self.job_id)
            except SQLAlchemyError:
                cancelled = False
            if cancelled:
                raise Cancelled(f"job {self.job_id} was cancelled")

    def close(self) -> list[dict]:
        if self.stage is not None:
            self.done.append({"name": self.stage, "seconds": round(time.perf_counter() - self.t_stage, 3)})
            self.stage = None
        return self.done


def _emoji_video(result, out: Path, blur_unknown: bool, tr: _Tracker) -> None:
    """emoji.mp4 into ``out``, reporting progress (and so noticing a cancel) as it renders."""
    from moodlens.cli_reports import render_analysis
    from moodlens.outputs import staged

    with staged(out) as stage:
        render_analysis(result, stage / "emoji.mp4", blur_unknown,
                        progress=lambda done, total: tr.report(done / total if total else 0.0))


def run_job(db: str, job_id: int, attempt: int, data_dir: str, executor: str = "local",
            ray_address: str | None = None, segment_s: float = 60.0, abort=None, ship_video: bool = False
            ) -> int | None:
    """Run one attempt; returns the analysis id, or None when it failed or was cancelled
    (recorded on the job row either way). A job's analysis is complete only when the job
    is: when a later stage fails or is cancelled, the analysis is marked so too.

    ``executor="ray"``: this process drives the analysis and its segments run on the Ray
    cluster; ``abort`` (an event) stops it at the next frame when the server stops."""
    from moodlens.cli_reports import report_analysis, write_outputs
    from moodlens.pipeline import analyze

    store = _store(db)
    q = JobQueue(store)
    job = q.get(job_id)
    opts = dict(job.options or {})
    plan = ["analyze", "tables"] + (["report"] if opts.get("report", True) else []) + (
        ["emoji video"] if opts.get("emoji_video") else [])
    tr = _Tracker(q, job_id, attempt, plan)
    aid: int | None = None
    started: list[int] = []  # the attempt's analysis, known even when analyze() fails

    def on_start(analysis_id: int) -> None:
        started.append(analysis_id)
        q.set_analysis(job_id, attempt, analysis_id)

    def end(error: str, status: str) -> None:
        for server_path in {job.video, str(Path(job.video).resolve())}:  # viewers see the client's name only
            error = error.replace(server_path, job.filename)
        _retry(q.set_stages, job_id, attempt, tr.close())
        _retry(q.fail, job_id, attempt, error, status=status)
        if aid is not None and status != CANCELLED:  # the analysis was complete; the job's outputs were not
            _retry(store.fail, aid, f"job {job_id}: {error}", FAILED)
        for a in started:  # unless analyze() recorded its failure (the database may have been away)
            _retry(q.interrupt_analysis, a, f"job {job_id}: {error}")

    try:
        tr.start("analyze")
        def progress(done: float, total: float) -> None:
            if abort is not None and abort.is_set():
                raise Cancelled(f"job {job_id}: the server is stopping")
            tr.report(done / total if total else 0.0)

        engine = None
        if opts.get("engine", "own") != "own":  # the server's credentials, the usual boto3 chain
            from moodlens.engines import make_engine
            engine = make_engine(opts["engine"])
        try:
            result = analyze(job.video, fps=float(opts.get("fps") or 2.0), store=store, engine=engine,
                             collection=opts.get("collection") or None, name=job.filename, progress=progress,
                             on_start=on_start, executor=executor, ray_address=ray_address, segment_s=segment_s,
                             ship_video=ship_video)
        finally:
            if engine is not None and hasattr(engine, "close"):
                engine.close()  # its call threads
        aid = result.id
        out = analysis_dir(data_dir, aid)
        tr.start("tables")
        write_outputs(result, out)
        if opts.get("report", True):
            tr.start("report")
            report_analysis(result, out / "report.html")
        if opts.get("emoji_video"):
            tr.start("emoji video")
            _emoji_video(result, out, bool(opts.get("blur_unknown")), tr)
        if q.cancel_requested(job_id):  # asked for during the last stage: cancelled, not complete
            raise Cancelled(f"job {job_id} was cancelled")
        _retry(q.set_stages, job_id, attempt, tr.close())
        if not _retry(q.finish, job_id, attempt, aid):  # the job moved on (re-queued elsewhere) meanwhile
            _retry(q.interrupt_analysis, aid, f"job {job_id}: attempt {attempt} is no longer the job's")
            return None
        return aid
    except Cancelled as e:
        end(str(e), CANCELLED)
    except Exception as e:  # noqa: BLE001 - recorded on the job; the worker process goes on
        from moodlens.service.dispatch import MAX_ATTEMPTS

        if _database_failed(e) and attempt < MAX_ATTEMPTS:
            # the database went away for a moment: not the video's fault; another attempt will do
            reason = f"the database failed ({type(_database_failed(e)).__name__})"
            log.warning("job %d: attempt %d: %s; queueing it again", job_id, attempt, reason)
            _retry(q.requeue, job_id, attempt, reason)
            for a in started:  # its analysis may not have been marked (the database was away)
                _retry(q.interrupt_analysis, a, f"job {job_id} attempt {attempt}: {reason}")
        elif isinstance(e, MoodlensError):
            end(str(e), FAILED)
        else:
            log.exception("job %d: attempt %d failed", job_id, attempt)
            end(f"{type(e).__name__}: {e}", FAILED)
    return None


def _database_failed(e: BaseException) -> SQLAlchemyError | None:
    """The database error behind ``e`` (the pipeline wraps them in a one-line MoodlensError)."""
    seen = 0
    while e is not None and seen < 5:
        if isinstance(e, SQLAlchemyError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


__all__ = ["Cancelled", "INTERRUPTED", "STAGES", "analysis_dir", "run_job"]
