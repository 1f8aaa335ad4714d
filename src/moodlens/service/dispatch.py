"""The server's dispatcher: claims queued jobs while the executor has a free slot.

One thread per server. At start it re-queues the jobs of servers that died (their
``host:pid`` is gone, or their heartbeat is older than ``STALE_S``); then it loops: claim,
submit, every ``HEARTBEAT_S`` a heartbeat for the attempts it runs, and every ``SWEEP_S`` the
same orphan check (a server on another host that died). An attempt whose worker
process died (killed, out of memory) is queued again until ``max_attempts``. On shutdown
it stops claiming, gives running attempts ``grace_s`` seconds to finish, and puts the rest
back in the queue, their analyses marked interrupted.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future

from moodlens.executors import Attempt, Executor
from moodlens.service.jobs import JobQueue, server_alive, worker_id

log = logging.getLogger("moodlens.service")

MAX_ATTEMPTS = 3
HEARTBEAT_S = 5.0  # how often a server marks its running jobs alive
STALE_S = 60.0  # a running job without a heartbeat for this long is an orphan (12 missed beats)
SWEEP_S = 30.0  # how often a running server looks for orphans (servers on other hosts that died)


class Dispatcher:
    def __init__(self, queue: JobQueue, executor: Executor, db: str, data_dir: str, poll_s: float = 0.5,
                 on_done=None):
        self.q, self.executor, self.db, self.data_dir = queue, executor, db, data_dir
        self.poll_s = poll_s
        self.worker = worker_id()
        self.running: dict[int, tuple[int, Future]] = {}  # job id -> (attempt, future)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_done = on_done  # callback(job_id) when an attempt ends (metrics)
        self._trouble_since: float | None = None  # since when the loop's database calls fail
        self._trouble_logged = 0.0

    def start(self) -> None:
        # Jobs recorded as this very host:pid are orphans too (a container restarted with the same pid).
        for job_id in self.q.requeue_orphans(lambda w: w != self.worker and server_alive(w), STALE_S):
            log.warning("job %d: its server stopped before it finished; queued again", job_id)
        self._thread = threading.Thread(target=self._loop, name="moodlens-dispatch", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A job was queued: look now rather than at the next poll."""
        self._wake.set()

    def _trouble(self, what: str) -> None:
        """Log a failure of the loop: in full the first time, then one line a minute until it recovers."""
        now = time.monotonic()
        if self._trouble_since is None:
            self._trouble_since = self._trouble_logged = now
            log.exception("dispatcher: %s; will retry every %.1f s", what, self.poll_s)
        elif now - self._trouble_logged >= 60.0:
            self._trouble_logged = now
            log.warning("dispatcher: %s for %.0f s now", what, now - self._trouble_since)

    def _loop(self) -> None:
        last_beat = last_sweep = time.monotonic()
        while not self._stop.is_set():
            ok = True
            try:
                while len(self.running) < self.executor.slots and not self._stop.is_set():
                    claimed = self.q.claim(self.worker)
                    if claimed is None:
                        break
                    self._submit(claimed.id, claimed.attempt)
            except Exception:  # noqa: BLE001 - the database may be briefly away; try again
                ok = False
                self._trouble("cannot claim a job (is the database reachable?)")
            try:  # apart from claiming, so that a failing claim never starves the heartbeat
                if time.monotonic() - last_beat >= HEARTBEAT_S:
                    with self._lock:
                        ids = list(self.running)
                    self.q.heartbeat(ids, self.worker)
                    last_beat = time.monotonic()
                    if last_beat - last_sweep >= SWEEP_S:  # after our own heartbeat: ours are never stale
                        for job_id in self.q.requeue_orphans(server_alive, STALE_S):
                            log.warning("job %d: its server stopped answering; queued again", job_id)
                        last_sweep = last_beat
            except Exception:  # noqa: BLE001
                ok = False
                self._trouble("cannot record the heartbeat (is the database reachable?)")
            if ok and self._trouble_since is not None:
                log.info("dispatcher: the database answers again after %.0f s", time.monotonic() - self._trouble_since)
                self._trouble_since = None
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _submit(self, job_id: int, attempt: int) -> None:
        log.info("job %d: attempt %d started", job_id, attempt)
        try:
            fut = self.executor.submit(Attempt(self.db, job_id, attempt, self.data_dir))
        except Exception as e:  # noqa: BLE001 - no worker could start: give the job back at once
            log.exception("job %d: could not start attempt %d", job_id, attempt)
            self.q.requeue(job_id, attempt, f"no worker could start ({type(e).__name__})")
            raise
        with self._lock:
            self.running[job_id] = (attempt, fut)
        fut.add_done_callback(lambda f, j=job_id, a=attempt: self._finished(j, a, f))

    def _finished(self, job_id: int, attempt: int, fut: Future) -> None:
        """An attempt ended. run_job records its own outcome; an exception here means its
        worker process died (or could not reach the database at the end)."""
        with self._lock:
            if self.running.get(job_id, (None,))[0] == attempt:  # not a newer attempt of the same job
                del self.running[job_id]
        stopping = self._stop.is_set()
        error = None
        if fut.cancelled():
            error = "it was cancelled before it started"
        elif fut.exception() is not None:
            e = fut.exception()
            error = f"its worker process stopped ({type(e).__name__})"
        if error is not None:
            try:
                if stopping:  # killed by stop(): not the attempt's fault
                    if self.q.requeue(job_id, attempt, "the server was stopped"):
                        log.warning("job %d: the server stopped; queued again", job_id)
                elif attempt >= MAX_ATTEMPTS:
                    if self.q.fail(job_id, attempt, f"{error} in each of its {attempt} attempts (killed, or "
                                                    "out of memory?); giving up"):
                        job = self.q.get(job_id)
                        if job.analysis_id is not None:
                            self.q.interrupt_analysis(job.analysis_id, f"job {job_id} attempt {attempt}: {error}")
                        log.error("job %d: failed after %d attempts: %s", job_id, attempt, error)
                elif self.q.requeue(job_id, attempt, error):
                    log.warning("job %d: attempt %d: %s; queued again", job_id, attempt, error)
            except Exception:  # noqa: BLE001 - the orphan sweep re-queues it once its heartbeat is stale
                log.exception("job %d: could not record the end of attempt %d", job_id, attempt)
        log.info("job %d: attempt %d ended", job_id, attempt)
        if self.on_done and not stopping:
            self.on_done(job_id)
        self._wake.set()

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming; let running attempts finish within ``grace_s``; re-queue the rest."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10.0)  # a claim in flight; one later than this is given back
        with self._lock:
            pending = dict(self.running)
        if pending:
            log.info("stopping: %d running job(s) may take %.0f s to finish", len(pending), grace_s)
        deadline = time.monotonic() + grace_s
        for _, fut in pending.values():
            try:
                fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - timed out or failed: handled below
                pass
        self.executor.shutdown(0.0)
        for job_id, (attempt, fut) in pending.items():  # _finished re-queues the killed ones too; once wins
            if not fut.done() or fut.cancelled() or fut.exception() is not None:
                if self.q.requeue(job_id, attempt, "the server was stopped"):
                    log.warning("job %d: the server stopped; queued again", job_id)


__all__ = ["Dispatcher", "HEARTBEAT_S", "MAX_ATTEMPTS", "STALE_S"]
