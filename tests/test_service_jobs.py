"""The job system's reliability bar, against real servers (issue 17, "Reliability, the bar").

- kill -9 of the server while a job runs: its workers die by themselves (PR_SET_PDEATHSIG),
  a restart re-queues the job, which then completes once (attempts 2, the killed attempt's
  analysis interrupted), and every upload answered 201 completes;
- SIGTERM: with --grace 0 the running job goes back to the queue (analysis interrupted),
  with a long grace it finishes before the server exits; the exit code is 0;
- claims never hand one job to two workers (threads on SQLite and PostgreSQL, processes on
  SQLite); a full service run on PostgreSQL;
- cancel (queued: at once; running: within ~2 s) and retry;
- a worker process killed mid-attempt: the attempt is re-queued, and after MAX_ATTEMPTS
  deaths the job fails with a clear error; the executor replaces the broken pool;
- requeue_orphans, the attempt guard, and the worker's tolerance of a database away for a moment.

Measured figures are printed (run with -s to see them).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from conftest import shared
from moodlens.service.dispatch import MAX_ATTEMPTS
from moodlens.service.jobs import JobQueue, JobStateError, server_alive
from moodlens.service.tables import JobRow
from moodlens.store import Store
from service_util import running_server, start_server, stop_server

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; workers die with the "
                                                                          "server through Linux's PR_SET_PDEATHSIG")
LONG = ("video", "pyfeat", "WolfgangLanger_Pexels.mp4")  # 20 s, one face
SHORT = ("video", "pyfeat", "single_face.mp4")  # 2.4 s


# -- helpers -------------------------------------------------------------------------------
def _proc_state(pid: int) -> str | None:
    """The state letter of a process (None when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    return _proc_state(pid) not in (None, "Z")  # a zombie has died (its new parent may not reap it)


def children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid`` (read from /proc), with their command lines."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
    return out


def _cleanup(server) -> None:
    """After a test: nothing of the server's may be left (the test itself never kills the group)."""
    stop_server(server, signal.SIGKILL)
    try:
        os.killpg(server.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def workers_of(server) -> list[int]:
    """The server's worker processes (not multiprocessing's resource tracker)."""
    return [p for p, cmd in children(server.proc.pid).items() if "spawn_main" in cmd and _alive(p)]


def upload(c, parts, **fields) -> int:
    path = shared(*parts)
    with open(path, "rb") as f:
        r = c.post("/api/videos", files={"file": (path.name, f, "video/mp4")},
                   data={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()})
    assert r.status_code == 201, r.text
    return r.json()["job_id"]


def wait_for(c, job_id: int, pred, timeout: float = 120.0, what: str = "") -> dict:
    t0 = time.monotonic()
    while True:
        job = c.get(f"/api/jobs/{job_id}").json()
        if pred(job):
            return job
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"job {job_id}: {what or 'condition'} not met in {timeout} s: {job}")
        time.sleep(0.1)


def running_with_progress(job: dict) -> bool:
    return job["status"] == "running" and job["progress"] > 0 and job["analysis_id"] is not None


def raw(db: str, sql: str, **params) -> list[tuple]:
    """Rows straight from the database (no lazy fix-ups of the store)."""
    engine = create_engine(db)
    try:
        with engine.connect() as c:
            return [tuple(r) for r in c.execute(text(sql), params)]
    finally:
        engine.dispose()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _queue(url: str, n: int = 0, video: str = "/nonexistent/v.mp4") -> tuple[JobQueue, list[int]]:
    q = JobQueue(Store(url))
    return q, [q.enqueue(filename=f"v{i}.mp4", video=video, options={}) for i in range(n)]


# -- claims: never the same job twice -------------------------------------------------------
def _claim_race(url: str, threads: int = 8, jobs: int = 50) -> None:
    _, ids = _queue(url, jobs)
    queues = [JobQueue(Store(url)) for _ in range(threads)]  # each its own engine, as separate servers
    got: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    go = threading.Barrier(threads)

    def work(i: int) -> None:
        try:
            go.wait()
            while (c := queues[i].claim(f"test:{i}")) is not None:
                got[i].append(c.id)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not errors, errors
    claimed = [j for g in got for j in g]
    assert sorted(claimed) == sorted(ids), "every job claimed exactly once"
    assert sum(1 for g in got if g) > 1, "the claims were spread over several workers"
    rows = raw(url, "SELECT status, attempts, worker FROM jobs")
    assert {(r[0], r[1]) for r in rows} == {("running", 1)}
    owner = {j: f"test:{i}" for i, g in enumerate(got) for j in g}
    assert dict(raw(url, "SELECT id, worker FROM jobs")) == owner


def test_claim_race_threads_sqlite(db_url):
    _claim_race(db_url)


def test_claim_race_threads_postgresql(pg_url):
    _claim_race(pg_url)


CLAIMER = """
import json, sys, time
from moodlens.service.jobs import JobQueue
from moodlens.store import Store
q = JobQueue(Store(sys.argv[1]))
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
got = []
while (c := q.claim(sys.argv[3])) is not None:
    got.append(c.id)
print(json.dumps(got))
"""


def test_claim_race_processes_sqlite(db_url):
    _, ids = _queue(db_url, 60)
    start = time.time() + 4.0  # every process has imported and opened the database by then
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, db_url, str(start), f"proc:{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    got = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        got.append(json.loads(out.strip().splitlines()[-1]))
    claimed = [j for g in got for j in g]
    assert sorted(claimed) == sorted(ids), "every job claimed exactly once across processes"
    assert {(r[0], r[1]) for r in raw(db_url, "SELECT status, attempts FROM jobs")} == {("running", 1)}


# -- the queue's rules ----------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, db_url) -> str:
    """The test runs on SQLite and on a real PostgreSQL (skipped where none can start)."""
    return db_url if request.param == "sqlite" else request.getfixturevalue("pg_url")


def _analysis(q: JobQueue, status: str = "running") -> int:
    aid = q.store.create_analysis("/x/v.mp4", {}, {}, {})
    if status == "complete":
        q.store.finish(aid, 1, {})
    return aid


def test_attempt_guard(any_db):
    q, (j,) = _queue(any_db, 1)
    c1 = q.claim("h:1")
    assert q.progress(j, c1.attempt, "analyze", 0.5)
    assert q.requeue(j, c1.attempt, "test")
    c2 = q.claim("h:2")
    assert c2.attempt == c1.attempt + 1
    # the first attempt's late writes change nothing
    assert not q.progress(j, c1.attempt, "analyze", 0.9)
    assert not q.set_analysis(j, c1.attempt, 5)
    assert not q.finish(j, c1.attempt, 5)
    assert not q.fail(j, c1.attempt, "late")
    assert not q.requeue(j, c1.attempt, "late")
    assert q.get(j).status == "running" and q.get(j).worker == "h:2"
    aid = _analysis(q)
    assert q.set_analysis(j, c2.attempt, aid) and q.finish(j, c2.attempt, aid)
    assert not q.finish(j, c2.attempt, aid), "a job completes once"
    with pytest.raises(JobStateError):
        q.cancel(j)
    with pytest.raises(JobStateError):
        q.retry(j)


def test_requeue_interrupts_the_attempts_analysis_even_when_it_had_finished(any_db):
    q, (j,) = _queue(any_db, 1)
    c = q.claim("h:1")
    aid = _analysis(q, "complete")  # the analysis finished; the emoji video had not
    q.set_analysis(j, c.attempt, aid)
    assert q.requeue(j, c.attempt, "the server was stopped")
    a = q.store.analysis(aid)
    assert a.status == "interrupted" and "the server was stopped" in a.error
    job = q.get(j)
    assert job.status == "queued" and "queued again" in job.error


def test_cancel_and_retry_rules(any_db):
    q, (a, b) = _queue(any_db, 2)
    assert q.cancel(a).status == "cancelled"  # queued: at once
    assert q.claim("h:1").id == b, "a cancelled job is never claimed"
    assert q.cancel(b).status == "running" and q.cancel_requested(b)  # running: its worker stops it
    with pytest.raises(JobStateError):
        q.retry(b)
    assert q.retry(a).status == "queued" and not q.get(a).cancel_requested
    # a job whose cancel was asked for and whose server then stopped is cancelled, not re-run
    assert q.requeue(b, 1, "the server was stopped")
    assert q.get(b).status == "cancelled"
    assert q.retry(b).status == "queued"
    assert q.claim("h:1").id == a and q.claim("h:1").id == b and q.get(b).attempts == 2


def test_requeue_orphans(any_db):
    q, (dead, fresh, stale, mine, unknown) = _queue(any_db, 5)
    host = socket.gethostname()
    for j, w in ((dead, f"{host}:{_dead_pid()}"), (fresh, "elsewhere:1"), (stale, "elsewhere:2"),
                 (mine, f"{host}:{os.getpid()}"), (unknown, "elsewhere:3")):
        assert q.claim(w).id == j
    aid = _analysis(q)
    q.set_analysis(dead, 1, aid)
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=120)
    with q.store.session() as s, s.begin():
        s.get(JobRow, stale).heartbeat_at = old
        s.get(JobRow, unknown).heartbeat_at = None
    assert sorted(q.requeue_orphans(server_alive, 60)) == sorted([dead, stale, unknown])
    status = {j: q.get(j).status for j in (dead, fresh, stale, mine, unknown)}
    assert status == {dead: "queued", fresh: "running", stale: "queued", mine: "running", unknown: "queued"}
    assert q.store.analysis(aid).status == "interrupted"
    assert "stopped before it finished" in q.get(dead).error and "no heartbeat" in q.get(stale).error
    # a heartbeat that lands between the look and the update wins: the job stays with its server
    q.claim("elsewhere:4")
    with q.store.session() as s, s.begin():
        s.get(JobRow, dead).heartbeat_at = old
    assert not q.requeue(dead, 2, "stale", stale_before=old - dt.timedelta(seconds=1))
    assert q.requeue(dead, 2, "stale", stale_before=old + dt.timedelta(seconds=1))


def test_progress_survives_a_database_away_for_a_moment(db_url, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from moodlens.service import worker

    q, (j,) = _queue(db_url, 1)
    c = q.claim("h:1")
    tr = worker._Tracker(q, j, c.attempt, ["analyze", "tables"])
    tr.start("analyze")

    def down(*a, **k):
        raise OperationalError("SELECT 1", {}, Exception("could not connect to server"))
    for name in ("progress", "cancel_requested", "set_stages"):
        monkeypatch.setattr(q, name, down)
    tr.report(0.5, force=True)  # no exception: progress can wait
    tr.t_cancel = 0.0
    tr.report(0.6, force=True)
    tr.start("tables")
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            down()
        return "ok"
    monkeypatch.setattr(time, "sleep", lambda s: None)
    assert worker._retry(flaky) == "ok" and len(calls) == 3


class _NoSlots:
    slots = 0  # the dispatcher never claims: what it re-queues stays queued to be looked at

    def submit(self, attempt):
        raise AssertionError("nothing to run")

    def shutdown(self, grace_s):
        pass


def test_dispatcher_requeues_orphans_at_start_and_while_it_runs(db_url, monkeypatch):
    from moodlens.service import dispatch
    from moodlens.service.jobs import worker_id

    monkeypatch.setattr(dispatch, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(dispatch, "SWEEP_S", 0.1)
    q, (mine, other) = _queue(db_url, 2)
    q.claim(worker_id())  # this very host:pid (a container restarted with the same pid): an orphan
    q.claim("elsewhere:9")  # another server, alive for now
    d = dispatch.Dispatcher(q, _NoSlots(), db_url, "/nonexistent", poll_s=0.05)
    d.start()
    try:
        assert q.get(mine).status == "queued" and q.get(other).status == "running"
        with q.store.session() as s, s.begin():  # the other server stops beating
            s.get(JobRow, other).heartbeat_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=600)
        t0 = time.monotonic()
        while q.get(other).status == "running" and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert q.get(other).status == "queued" and "no heartbeat" in q.get(other).error
    finally:
        d.stop(0)


# -- the local executor ---------------------------------------------------------------------
def _job(url: str, parts=SHORT, **opts) -> tuple[JobQueue, int]:
    q = JobQueue(Store(url))
    return q, q.enqueue(filename="v.mp4", video=str(shared(*parts)), options={"report": False, **opts})


@linux
def test_workers_outlive_the_thread_that_submitted(tmp_path, db_url):
    """PR_SET_PDEATHSIG fires when the *thread* that started a worker ends: the dispatcher's
    thread ends as soon as the server stops, which must not kill the attempts it started."""
    from moodlens.executors import Attempt
    from moodlens.executors.local import LocalExecutor

    q, j = _job(db_url, LONG, fps=20)  # still running when the submitting thread ends
    c = q.claim("h:1")
    ex = LocalExecutor(1)
    try:
        futs = []
        t = threading.Thread(target=lambda: (futs.append(ex.submit(Attempt(db_url, j, c.attempt, str(tmp_path)))),
                                             time.sleep(4.0)))  # the worker has started when the thread ends
        t.start()
        t.join()
        assert futs[0].result(timeout=180) is not None
        assert q.get(j).status == "complete"
    finally:
        ex.shutdown(5)


@linux
def test_executor_replaces_a_broken_pool_and_spares_the_other_slot(tmp_path, db_url):
    from concurrent.futures.process import BrokenProcessPool

    from moodlens.executors import Attempt
    from moodlens.executors.local import LocalExecutor

    q, a = _job(db_url, LONG, fps=20)
    _, b = _job(db_url, LONG, fps=4)
    ex = LocalExecutor(2)
    try:
        ca, cb = q.claim("h:1"), q.claim("h:1")
        fa = ex.submit(Attempt(db_url, a, ca.attempt, str(tmp_path)))
        fb = ex.submit(Attempt(db_url, b, cb.attempt, str(tmp_path)))
        t0 = time.monotonic()
        while q.get(a).progress <= 0 and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        assert len(ex.pids()) == 2
        aid = q.get(a).analysis_id  # its analysis row names the worker that makes it
        victim = raw(db_url, "SELECT pid FROM analyses WHERE id = :i", i=aid)[0][0]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            fa.result(timeout=60)
        assert fb.result(timeout=180) is not None, "the other slot's attempt went on"
        assert q.get(b).status == "complete"
        # the broken slot gets a new worker
        assert q.requeue(a, ca.attempt, "its worker died")
        ca2 = q.claim("h:1")
        assert ex.submit(Attempt(db_url, a, ca2.attempt, str(tmp_path))).result(timeout=180) is not None
        assert q.get(a).status == "complete" and q.get(a).attempts == 2
        assert victim not in ex.pids()
    finally:
        ex.shutdown(5)


# -- real servers ---------------------------------------------------------------------------
@linux
@pytest.mark.slow
def test_kill9_server_requeues_the_job_and_completes_it_once(tmp_path):
    data = tmp_path / "data"
    server = start_server(data, "--workers", "1")
    db = server.db
    try:
        with server.client() as c:
            long_job = upload(c, LONG, emoji_video=True, fps=8)
            queued = [upload(c, SHORT), upload(c, SHORT, emoji_video=True)]
            job = wait_for(c, long_job, running_with_progress, what="running with progress")
            killed_aid = job["analysis_id"]
            uploads = {j: raw(db, "SELECT video FROM jobs WHERE id = :j", j=j)[0][0] for j in [long_job, *queued]}
        kids = children(server.proc.pid)
        assert any("spawn_main" in cmd for cmd in kids.values()), kids
        os.kill(server.proc.pid, signal.SIGKILL)  # the server only, as a crash would: not its group
        server.proc.wait(10)
        t0 = time.monotonic()
        while any(_alive(p) for p in kids) and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        survivors = {p: kids[p] for p in kids if _alive(p)}
        assert not survivors, f"processes of the killed server still run: {survivors}"
        died_s = time.monotonic() - t0
        # in the database: still running, as the crash left it
        assert raw(db, "SELECT status, attempts FROM jobs WHERE id = :j", j=long_job) == [("running", 1)]
    finally:
        _cleanup(server)

    t_restart = time.monotonic()
    with running_server(data, "--workers", "1") as again:
        up_s = time.monotonic() - t_restart
        with again.client() as c:
            job = wait_for(c, long_job, lambda j: j["status"] in ("complete", "failed", "cancelled"), 180)
            requeued_s = time.monotonic() - t_restart
            assert job["status"] == "complete", job
            assert job["attempts"] == 2
            assert job["analysis_id"] != killed_aid
            assert c.get(f"/api/analyses/{job['analysis_id']}").json()["status"] == "complete"
            old = c.get(f"/api/analyses/{killed_aid}").json()
            assert old["status"] == "interrupted", old
            assert c.get(f"/api/analyses/{killed_aid}/records.csv").status_code == 404
            for j in queued:  # answered 201 before the kill, still queued then: none lost
                done = again.wait_job(j)
                assert done["status"] == "complete" and done["attempts"] == 1, done
            assert c.get(f"/api/analyses/{job['analysis_id']}/emoji.mp4").status_code == 200
    for path in uploads.values():
        assert Path(path).is_file()
    # complete exactly once: one complete analysis of the upload, one complete job
    (video,) = raw(db, "SELECT video FROM analyses WHERE id = :a", a=job["analysis_id"])[0]
    assert raw(db, "SELECT status FROM analyses WHERE video = :v ORDER BY id", v=video) == [
        ("interrupted",), ("complete",)]
    log = "".join(p.read_text() for p in data.glob("server-*.log"))
    assert log.count(f"job {long_job}: its server stopped before it finished; queued again") == 1
    print(f"\nkill -9: workers gone {died_s:.2f} s after the server; restart -> re-queued job complete in "
          f"{requeued_s:.1f} s (the server answered after {up_s:.1f} s)")


@linux
@pytest.mark.slow
def test_sigterm_requeues_with_no_grace_and_finishes_with_a_long_one(tmp_path):
    data = tmp_path / "data"
    server = start_server(data, "--grace", "0")
    try:
        with server.client() as c:
            j = upload(c, LONG, emoji_video=True, fps=8)
            running = wait_for(c, j, running_with_progress, what="running with progress")
        kids = [p for p, cmd in children(server.proc.pid).items() if "spawn_main" in cmd]
        t0 = time.monotonic()
        codes = [stop_server(server, signal.SIGTERM, timeout=30)]
        stop_s = time.monotonic() - t0
    finally:
        _cleanup(server)
    assert not any(_alive(p) for p in kids)
    (status, attempts, error), = raw(server.db, "SELECT status, attempts, error FROM jobs WHERE id = :j", j=j)
    assert (status, attempts) == ("queued", 1) and "the server was stopped" in error
    # marked by the server itself (raw row), not guessed later from a dead pid
    assert raw(server.db, "SELECT status FROM analyses WHERE id = :a", a=running["analysis_id"]) == [("interrupted",)]

    server = start_server(data, "--grace", "60")
    try:
        with server.client() as c:
            wait_for(c, j, lambda job: job["attempts"] == 2 and running_with_progress(job), what="attempt 2 running")
        t0 = time.monotonic()
        codes.append(stop_server(server, signal.SIGTERM, timeout=120))
        grace_stop_s = time.monotonic() - t0
        (status, attempts, aid), = raw(server.db, "SELECT status, attempts, analysis_id FROM jobs WHERE id = :j", j=j)
        assert (status, attempts) == ("complete", 2), "the running job finished before the server exited"
        assert raw(server.db, "SELECT status FROM analyses WHERE id = :a", a=aid) == [("complete",)]
        assert (data / "analyses" / str(aid) / "emoji.mp4").is_file()
    finally:
        _cleanup(server)
    print(f"\nSIGTERM --grace 0: exited in {stop_s:.2f} s; --grace 60: the running job finished, exit after "
          f"{grace_stop_s:.1f} s")
    assert codes == [0, 0], f"a clean shutdown on SIGTERM exits 0 (got {codes}):\n{server.log.read_text()[-1500:]}"


@pytest.mark.slow
def test_cancel_queued_at_once_running_within_two_seconds_then_retry(tmp_path):
    with running_server(tmp_path / "data", "--workers", "1") as server, server.client() as c:
        running = upload(c, LONG, fps=30)  # ~600 frames: a while in the analyze stage
        queued = upload(c, SHORT)
        t0 = time.monotonic()
        r = c.post(f"/api/jobs/{queued}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        queued_ms = (time.monotonic() - t0) * 1000
        job = wait_for(c, running, lambda j: running_with_progress(j) and j["stage"] == "analyze")
        aid = job["analysis_id"]
        t0 = time.monotonic()
        assert c.post(f"/api/jobs/{running}/cancel").json()["status"] == "running"  # asked; its worker stops it
        job = wait_for(c, running, lambda j: j["status"] != "running", 10)
        latency = time.monotonic() - t0
        assert job["status"] == "cancelled", job
        assert latency < 2.5, f"a running job stopped {latency:.2f} s after cancel"
        assert c.get(f"/api/analyses/{aid}").json()["status"] == "interrupted"
        assert c.post(f"/api/jobs/{running}/cancel").status_code == 409
        # retry: a new attempt that completes; the cancelled queued one runs for the first time
        assert c.post(f"/api/jobs/{running}/retry").json()["status"] == "queued"
        assert c.post(f"/api/jobs/{queued}/retry").json()["status"] == "queued"
        done = server.wait_job(running)
        assert done["status"] == "complete" and done["attempts"] == 2 and done["analysis_id"] != aid
        done = server.wait_job(queued)
        assert done["status"] == "complete" and done["attempts"] == 1
        assert c.post(f"/api/jobs/{running}/retry").status_code == 409
        # cancelled while it renders the emoji video: its (finished) analysis is interrupted too
        late = upload(c, LONG, emoji_video=True)
        job = wait_for(c, late, lambda j: j["stage"] == "emoji video" and j["progress"] > 0.95, what="rendering")
        t0 = time.monotonic()
        c.post(f"/api/jobs/{late}/cancel")
        job = wait_for(c, late, lambda j: j["status"] != "running", 10)
        emoji_latency = time.monotonic() - t0
        assert job["status"] == "cancelled" and emoji_latency < 2.5, (job, emoji_latency)
        assert c.get(f"/api/analyses/{job['analysis_id']}").json()["status"] == "interrupted"
        assert c.get(f"/api/analyses/{job['analysis_id']}/emoji.mp4").status_code == 404
    print(f"\ncancel: queued job cancelled in {queued_ms:.0f} ms; running job stopped {latency:.2f} s after cancel "
          f"(analyze stage), {emoji_latency:.2f} s (emoji video stage)")


@linux
@pytest.mark.slow
def test_worker_killed_mid_attempt_requeues_then_fails_after_max_attempts(tmp_path):
    with running_server(tmp_path / "data", "--workers", "1") as server, server.client() as c:
        j = upload(c, LONG, fps=10)
        job = wait_for(c, j, running_with_progress)
        (pid,) = workers_of(server)
        os.kill(pid, signal.SIGKILL)  # the worker only
        job = wait_for(c, j, lambda x: x["status"] in ("complete", "failed"), 180)
        assert job["status"] == "complete" and job["attempts"] == 2, job
        assert pid not in workers_of(server)

        k = upload(c, LONG, fps=10)
        for n in range(1, MAX_ATTEMPTS + 1):
            wait_for(c, k, lambda x, n=n: x["attempts"] == n and running_with_progress(x), what=f"attempt {n}")
            (pid,) = workers_of(server)
            os.kill(pid, signal.SIGKILL)
        job = wait_for(c, k, lambda x: x["status"] in ("complete", "failed"), 60)
        assert job["status"] == "failed", job
        assert f"in each of its {MAX_ATTEMPTS} attempts" in job["error"] and "worker process stopped" in job["error"]
        assert c.get(f"/api/analyses/{job['analysis_id']}").json()["status"] == "interrupted"
        # the executor recovered: the next job runs on a fresh worker
        last = server.wait_job(upload(c, SHORT))
        assert last["status"] == "complete" and last["attempts"] == 1


@pytest.mark.slow
def test_full_service_on_postgresql(tmp_path, pg_url):
    videos = [SHORT, LONG, ("video", "fer", "woman2.mp4")]
    with running_server(tmp_path / "data", "--workers", "2", db=pg_url) as server, server.client() as c:
        ids = [upload(c, v) for v in videos]
        jobs = [server.wait_job(j) for j in ids]
        assert [j["status"] for j in jobs] == ["complete"] * 3, jobs
        aids = [j["analysis_id"] for j in jobs]
        assert len(set(aids)) == 3
        for aid in aids:
            assert c.get(f"/api/analyses/{aid}/records.csv").status_code == 200
    rows = raw(pg_url, "SELECT j.id, j.status, a.status, a.observations FROM jobs j JOIN analyses a "
                       "ON a.id = j.analysis_id ORDER BY j.id")
    assert [(r[0], r[1], r[2]) for r in rows] == [(j, "complete", "complete") for j in ids]
    assert all(r[3] > 0 for r in rows)
    assert raw(pg_url, "SELECT count(*) FROM observations")[0][0] == sum(r[3] for r in rows)
    workers = {r[0] for r in raw(pg_url, "SELECT DISTINCT pid FROM analyses")}
    assert len(workers) == 2, "two worker processes shared the jobs"


def _pg_ctl(url: str, action: str) -> None:
    """Stop or start the test's own PostgreSQL cluster (tests/conftest.py: data under the socket dir)."""
    from sqlalchemy.engine import make_url

    from conftest import _pg_bin

    q = make_url(url).query
    sock, port = q["host"], q["port"]
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    cmd = as_pg + [_pg_bin("pg_ctl"), "-D", os.path.join(sock, "data"), "-w", "-t", "60"]
    if action == "stop":
        cmd += ["-m", "fast", "stop"]
    else:
        cmd += ["-l", os.path.join(sock, "log"), "-o", f"-k {sock} -p {port} -c listen_addresses='' -c fsync=off",
                "start"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


@pytest.mark.slow
def test_postgresql_away_for_a_moment_mid_job(tmp_path, pg_url):
    """The database stops for a few seconds while a job runs: the server carries on, the
    attempt goes back to the queue (not failed: not the video's fault) and the job completes."""
    if os.environ.get("MOODLENS_TEST_PG_URL"):
        pytest.skip("needs the throwaway cluster of tests/conftest.py (it is stopped and started)")
    with running_server(tmp_path / "data", db=pg_url) as server, server.client() as c:
        j = upload(c, LONG, fps=15)
        job = wait_for(c, j, running_with_progress)
        first_aid = job["analysis_id"]
        _pg_ctl(pg_url, "stop")
        try:
            time.sleep(4)
        finally:
            _pg_ctl(pg_url, "start")
        t0 = time.monotonic()
        while True:  # the first requests after the outage may meet a dropped connection
            try:
                r = c.get(f"/api/jobs/{j}")
                if r.status_code == 200 and r.json()["status"] in ("complete", "failed", "cancelled"):
                    job = r.json()
                    break
            except Exception:  # noqa: BLE001
                pass
            assert time.monotonic() - t0 < 180, server.log.read_text()[-3000:]
            time.sleep(0.2)
        assert job["status"] == "complete", (job, server.log.read_text()[-3000:])
        assert c.get(f"/api/analyses/{job['analysis_id']}").json()["status"] == "complete"
        if job["attempts"] > 1:
            assert job["analysis_id"] != first_aid
            assert c.get(f"/api/analyses/{first_aid}").json()["status"] in ("interrupted", "failed")
        assert c.get("/healthz").status_code == 200
        after = server.wait_job(upload(c, SHORT))
        assert after["status"] == "complete"
    print(f"\nPostgreSQL away 4 s mid-job: complete after {job['attempts']} attempt(s)")


def test_a_database_error_mid_attempt_requeues_it_until_the_last_attempt(db_url, tmp_path, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from moodlens import pipeline
    from moodlens.errors import MoodlensError
    from moodlens.service import worker

    q, (j,) = _queue(db_url, 1)
    made = []

    def analyze(path, *, store, on_start, **kw):  # as pipeline.analyze fails when the database drops
        aid = store.create_analysis(str(path), {}, {}, {})
        made.append(aid)
        on_start(aid)
        try:
            raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
        except OperationalError:
            raise MoodlensError(f"the database failed during analysis {aid}") from None
    monkeypatch.setattr(pipeline, "analyze", analyze)
    for n in range(1, MAX_ATTEMPTS + 1):
        c = q.claim("h:1")
        assert c.attempt == n
        assert worker.run_job(db_url, j, c.attempt, str(tmp_path)) is None
        job = q.get(j)
        assert q.store.analysis(made[-1]).status in ("interrupted", "failed")
        if n < MAX_ATTEMPTS:
            assert job.status == "queued" and "the database failed (OperationalError)" in job.error, job.error
    assert job.status == "failed" and "the database failed" in job.error
