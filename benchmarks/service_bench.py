"""``moodlens serve`` against real uploads: throughput, API latency, upload speed and memory.

Three tables, each against a real ``moodlens serve`` subprocess on 127.0.0.1 (started
with tests/service_util.py, a fresh data folder and SQLite each time):

1. throughput: N uploads (default 20) of pyfeat/WolfgangLanger_Pexels.mp4 through
   ``POST /api/videos`` (default options: report yes, emoji video no), wall time from the
   first upload until the last job's ``finished_at``, against N sequential
   ``moodlens analyze VIDEO --report --db … --out …`` subprocesses in the same run (each
   pays its start-up, as by hand). With ``--workers 2`` (the target: at most 1.1x the
   sequential time) and ``--workers 1`` for reference; per-job mean stage times from the
   jobs' ``stages`` and the real-time factors.
2. latency: ``GET /api/jobs`` from 50 concurrent clients (threads, one keep-alive
   ``httpx.Client`` each; at most 2,000 requests or 20 s) while 2 jobs run, and with no job
   running. The clients run on the same CPUs as the server.
3. upload: a ~1 GB *valid* video (the sample clip's packets remuxed end to end, no
   re-encode) uploaded on loopback to a server started with ``--max-upload-mb 2048``: it is
   received, hashed, written, probed and queued (201), then the job is cancelled. For
   context, the same client into a socket that discards the bytes, and SHA-256 alone.
   Then the server's own RSS (VmRSS; VmHWM is its peak) at start, after one warm-up job and
   after 100 more jobs (uploads of pyfeat/single_face.mp4, ``--workers 2``), and its
   worker processes' RSS.

Every temporary file and server is removed at the end, also on errors.

    python benchmarks/service_bench.py [--only throughput|latency|upload] [--quick] [-n 20]

Before a full run the script waits (up to --max-wait s) until the 1-minute load average is
below --max-load; the load at start and end is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from _util import DATA, need

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from service_util import Server, start_server, stop_server  # noqa: E402

TERMINAL = ("complete", "failed", "cancelled")
console = Console(width=200)
SERVERS: list[Server] = []


# -- helpers -----------------------------------------------------------------------------------
def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def wait_for_quiet(max_load: float, max_wait: float, every: float = 30.0) -> None:
    t0 = time.monotonic()
    while (one := os.getloadavg()[0]) >= max_load:
        if time.monotonic() - t0 >= max_wait:
            console.print(f"[yellow]load still {one:.2f} after {max_wait:.0f} s; measuring anyway[/]")
            return
        console.print(f"load {one:.2f} >= {max_load}; waiting {every:.0f} s", highlight=False)
        time.sleep(every)
    console.print(f"load {os.getloadavg()[0]:.2f} < {max_load} after {time.monotonic() - t0:.0f} s of waiting",
                  highlight=False)


def serve(data_dir: Path, *args: str) -> Server:
    s = start_server(data_dir, *args, timeout=120)
    SERVERS.append(s)
    return s


def shutdown(s: Server) -> None:
    with contextlib.suppress(Exception):
        stop_server(s, timeout=60)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(s.proc.pid, signal.SIGKILL)  # any worker left behind
    if s in SERVERS:
        SERVERS.remove(s)


def proc_mem(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, MB (2**20 bytes)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024
    return out


def children(pid: int) -> list[tuple[int, str]]:
    """Direct children of ``pid`` with a short label (worker, resource tracker, …)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            kids += [int(x) for x in (task / "children").read_text().split()]
    out = []
    for k in sorted(set(kids)):
        try:
            cmd = Path(f"/proc/{k}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        label = ("worker" if "spawn_main" in cmd else "resource tracker" if "resource_tracker" in cmd
                 else cmd[:40])
        out.append((k, label))
    return out


def ts(s: str | None) -> float | None:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() if s else None


def upload(c: httpx.Client, path: Path, **fields: str) -> int:
    with open(path, "rb") as fh:
        r = c.post("/api/videos", files={"file": (path.name, fh, "video/mp4")}, data=fields)
    if r.status_code != 201:
        raise RuntimeError(f"upload of {path.name}: {r.status_code} {r.text[:300]}")
    return r.json()["job_id"]


def jobs_by_id(c: httpx.Client) -> dict[int, dict]:
    return {j["id"]: j for j in c.get("/api/jobs", params={"limit": 1000}).json()}


def wait_all(c: httpx.Client, ids: list[int], timeout: float, every: float = 0.5) -> list[dict]:
    t0 = time.monotonic()
    while True:
        jobs = jobs_by_id(c)
        if all(jobs.get(i, {}).get("status") in TERMINAL for i in ids):
            return [jobs[i] for i in ids]
        if time.monotonic() - t0 > timeout:
            left = sum(jobs.get(i, {}).get("status") not in TERMINAL for i in ids)
            raise RuntimeError(f"{left} of {len(ids)} jobs not finished after {timeout:.0f} s")
        time.sleep(every)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def rng(xs: list[float], fmt: str = "{:.1f}") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{fmt.format(statistics.mean(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


# -- 1. throughput -----------------------------------------------------------------------------
def sequential(video: Path, n: int, work: Path) -> dict:
    from moodlens.store import Store

    db = f"sqlite:///{work / 'seq.db'}"
    walls = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "moodlens.cli", "analyze", str(video), "--report", "--db", db,
                        "--out", str(work / f"out{i}")], check=True, capture_output=True, timeout=600)
        walls.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    rows = Store(db).analyses(limit=n)
    return {"wall": wall, "runs": walls, "rtf": [(a.timings or {}).get("realtime_factor") for a in rows],
            "analyze": [(a.timings or {}).get("total") for a in rows], "ok": sum(a.status == "complete" for a in rows)}


def service(video: Path, n: int, workers: int, work: Path, duration_s: float) -> dict:
    s = serve(work, "--workers", str(workers), "--grace", "2")
    try:
        with s.client() as c:
            t0 = time.time()
            ids = [upload(c, video) for _ in range(n)]
            t_up = time.time() - t0
            jobs = wait_all(c, ids, timeout=60 + 60 * n)
            t_seen = time.time() - t0
            analyses = [c.get(f"/api/analyses/{j['analysis_id']}").json() for j in jobs if j["analysis_id"]]
    finally:
        shutdown(s)
    done = [j for j in jobs if j["status"] == "complete"]
    stages: dict[str, list[float]] = {}
    for j in done:
        for st in j["stages"]:
            if st.get("seconds") is not None:
                stages.setdefault(st["name"], []).append(st["seconds"])
    return {"wall": max(ts(j["finished_at"]) for j in jobs) - t0, "seen": t_seen, "uploads": t_up,
            "ok": len(done), "stages": {k: statistics.mean(v) for k, v in stages.items()},
            "wait": [ts(j["started_at"]) - ts(j["created_at"]) for j in done],
            "run": [ts(j["finished_at"]) - ts(j["started_at"]) for j in done],
            "rtf": [(a.get("timings") or {}).get("realtime_factor") for a in analyses],
            "analyze": [(a.get("timings") or {}).get("total") for a in analyses],
            "job_rtf": [duration_s / (ts(j["finished_at"]) - ts(j["started_at"])) for j in done]}


def bench_throughput(n: int, tmp: Path) -> None:
    from moodlens.media import probe

    video = need(DATA / "video" / "pyfeat" / "WolfgangLanger_Pexels.mp4")
    dur = probe(video).duration_s
    l0 = load()
    seq = sequential(video, n, tmp / "seq")
    w2 = service(video, n, 2, tmp / "w2", dur)
    w1 = service(video, n, 1, tmp / "w1", dur)
    l1 = load()
    t = Table(title=f"throughput: {n} x {video.name} ({dur:.1f} s of video), report on, no emoji video; "
                    f"load {l0} -> {l1}")
    for col in ("how", "complete", "wall s", "s per video", "x sequential", "uploads s", "queue wait s",
                "job run s", "analyze s", "analyze x real time", "job x real time"):
        t.add_column(col, justify="left" if col == "how" else "right")
    t.add_row(f"{n} sequential `moodlens analyze --report` processes", f"{seq['ok']}/{n}", f"{seq['wall']:.1f}",
              f"{seq['wall'] / n:.2f}", "1.00", "-", "-", rng(seq["runs"], "{:.2f}"), rng(seq["analyze"], "{:.2f}"),
              rng(seq["rtf"]), f"{dur * n / seq['wall']:.1f} (with start-up)")
    for name, r in (("serve --workers 2", w2), ("serve --workers 1", w1)):
        t.add_row(name, f"{r['ok']}/{n}", f"{r['wall']:.1f}", f"{r['wall'] / n:.2f}", f"{r['wall'] / seq['wall']:.2f}",
                  f"{r['uploads']:.1f}", rng(r["wait"]), rng(r["run"], "{:.2f}"), rng(r["analyze"], "{:.2f}"),
                  rng(r["rtf"]), rng(r["job_rtf"]))
    console.print(t)
    names = list(dict.fromkeys([*w2["stages"], *w1["stages"]]))
    st = Table(title="per-job mean stage seconds (the jobs' `stages`)")
    st.add_column("how")
    for nm in names:
        st.add_column(nm, justify="right")
    st.add_column("sum", justify="right")
    for name, r in (("serve --workers 2", w2), ("serve --workers 1", w1)):
        st.add_row(name, *[f"{r['stages'].get(nm, 0):.2f}" for nm in names], f"{sum(r['stages'].values()):.2f}")
    console.print(st)
    ratio = w2["wall"] / seq["wall"]
    console.print(f"serve --workers 2 / sequential = {ratio:.2f} (target <= 1.1: {'met' if ratio <= 1.1 else 'NOT met'});"
                  f" wall = first upload sent -> last job's finished_at (polled every 0.5 s: last seen at "
                  f"{w2['seen']:.1f} s)", highlight=False)


# -- 2. latency --------------------------------------------------------------------------------
def hammer(url: str, clients: int, max_requests: int, max_s: float) -> dict:
    lock = threading.Lock()
    state = {"left": max_requests}
    lat: list[float] = []
    codes: dict[str, int] = {}
    deadline = time.perf_counter() + max_s
    start = threading.Barrier(clients + 1)

    def run() -> None:
        mine, mycodes = [], {}
        with httpx.Client(base_url=url, timeout=30) as c:
            start.wait()
            while time.perf_counter() < deadline:
                with lock:
                    if state["left"] <= 0:
                        break
                    state["left"] -= 1
                t = time.perf_counter()
                try:
                    code = str(c.get("/api/jobs").status_code)
                except httpx.HTTPError as e:
                    code = type(e).__name__
                mine.append(time.perf_counter() - t)
                mycodes[code] = mycodes.get(code, 0) + 1
        with lock:
            lat.extend(mine)
            for k, v in mycodes.items():
                codes[k] = codes.get(k, 0) + v

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    start.wait()
    t0, w0 = time.perf_counter(), time.time()
    for th in threads:
        th.join(max_s + 60)
    el = time.perf_counter() - t0
    return {"lat": lat, "codes": codes, "s": el, "window": (w0, w0 + el)}


def mean_running(jobs: list[dict], window: tuple[float, float]) -> float:
    a, b = window
    busy = 0.0
    for j in jobs:
        s0 = ts(j["started_at"])
        if s0 is None:
            continue
        s1 = ts(j["finished_at"]) or b
        busy += max(0.0, min(b, s1) - max(a, s0))
    return busy / (b - a) if b > a else 0.0


def bench_latency(tmp: Path, clients: int, max_requests: int, max_s: float, n_jobs: int) -> None:
    video = need(DATA / "video" / "pyfeat" / "WolfgangLanger_Pexels.mp4")
    l0 = load()
    s = serve(tmp / "lat", "--workers", "2", "--grace", "1")
    try:
        with s.client() as c:
            ids = [upload(c, video) for _ in range(n_jobs)]
            t0 = time.monotonic()
            while sum(j["status"] == "running" for j in jobs_by_id(c).values()) < 2:
                if time.monotonic() - t0 > 120:
                    raise RuntimeError("2 jobs were not running after 120 s")
                time.sleep(0.2)
            busy = hammer(s.url, clients, max_requests, max_s)
            jobs = list(jobs_by_id(c).values())
            busy["running"] = mean_running(jobs, busy["window"])
            for i in ids:  # stop the rest: the idle measurement needs no job running
                with contextlib.suppress(httpx.HTTPError):
                    c.post(f"/api/jobs/{i}/cancel")
            wait_all(c, ids, timeout=120)
            idle = hammer(s.url, clients, max_requests, max_s)
            idle["running"] = mean_running(list(jobs_by_id(c).values()), idle["window"])
            listed = len(c.get("/api/jobs").json())
    finally:
        shutdown(s)
    l1 = load()
    t = Table(title=f"GET /api/jobs ({listed} jobs listed), {clients} concurrent clients (threads, keep-alive), "
                    f"at most {max_requests} requests or {max_s:g} s; load {l0} -> {l1}")
    for col in ("while", "mean jobs running", "requests", "answers", "seconds", "requests/s", "p50 ms", "p90 ms",
                "p99 ms", "max ms"):
        t.add_column(col, justify="left" if col in ("while", "answers") else "right")
    for name, r in (("2 jobs running (workers 2)", busy), ("no job running", idle)):
        lat = [x * 1000 for x in r["lat"]]
        t.add_row(name, f"{r['running']:.2f}", str(len(lat)), ", ".join(f"{k}: {v}" for k, v in sorted(r["codes"].items())),
                  f"{r['s']:.1f}", f"{len(lat) / r['s']:.0f}", f"{pct(lat, 50):.0f}", f"{pct(lat, 90):.0f}",
                  f"{pct(lat, 99):.0f}", f"{max(lat):.0f}")
    console.print(t)


# -- 3. upload and memory ----------------------------------------------------------------------
class Sink:
    """A loopback HTTP 'server' that reads one request's body and throws it away."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(120)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = next(int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:"))
            got = len(rest)
            while got < length:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    return
                got += len(chunk)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


def timed_upload(url: str, path: Path, fields: dict) -> tuple[float, httpx.Response]:
    with httpx.Client(base_url=url, timeout=httpx.Timeout(60, read=600)) as c, open(path, "rb") as fh:
        t = time.perf_counter()
        r = c.post("/api/videos", files={"file": (path.name, fh, "video/mp4")}, data=fields)
        return time.perf_counter() - t, r


def bench_upload(tmp: Path, target_mb: int, n_jobs: int) -> None:
    import av
    from pipeline_speed import concat

    from moodlens.media import probe

    src = need(DATA / "video" / "pyfeat" / "WolfgangLanger_Pexels.mp4")
    small = need(DATA / "video" / "pyfeat" / "single_face.mp4")
    l0 = load()
    big = tmp / "big.mp4"
    t = time.perf_counter()
    with av.open(str(src)) as inp:  # the remux keeps the video packets only (no audio): size by their bytes
        video_bytes = sum(p.size for p in inp.demux(inp.streams.video[0]) if p.dts is not None)
    concat(src, big, probe(src).duration_s * target_mb * 1e6 / video_bytes)
    made = time.perf_counter() - t
    size = big.stat().st_size
    big_dur = probe(big).duration_s

    t = time.perf_counter()
    h = hashlib.sha256()
    with open(big, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    sha_s = time.perf_counter() - t

    sink = Sink()
    try:
        sink_s, _ = timed_upload(sink.url, big, {})
    finally:
        sink.close()

    s = serve(tmp / "up", "--workers", "1", "--max-upload-mb", "2048", "--grace", "1")
    try:
        before = proc_mem(s.proc.pid)
        up_s, r = timed_upload(s.url, big, {})
        after = proc_mem(s.proc.pid)
        status = r.status_code
        if status == 201:
            with s.client() as c:
                c.post(f"/api/jobs/{r.json()['job_id']}/cancel")
    finally:
        shutdown(s)
        big.unlink(missing_ok=True)
        shutil.rmtree(tmp / "up", ignore_errors=True)  # the server's copy of the 1 GB file
    l1 = load()
    u = Table(title=f"upload on loopback: a {size / 1e6:.0f} MB valid mp4 ({big_dur / 3600:.1f} h of the sample clip's "
                    f"packets remuxed, made in {made:.1f} s), one httpx client streaming multipart; load {l0} -> {l1}")
    for col in ("into", "answer", "seconds", "MB/s", "server RSS MB before -> after", "server peak (VmHWM) MB"):
        u.add_column(col, justify="left" if col in ("into", "answer") else "right")
    u.add_row("moodlens serve: receive + SHA-256 + write + probe + queue", str(status), f"{up_s:.1f}",
              f"{size / 1e6 / up_s:.0f}", f"{before['VmRSS']:.0f} -> {after['VmRSS']:.0f}",
              f"{before['VmHWM']:.0f} -> {after['VmHWM']:.0f}")
    u.add_row("a socket that discards the body (client + loopback alone)", "200", f"{sink_s:.1f}",
              f"{size / 1e6 / sink_s:.0f}", "-", "-")
    u.add_row("SHA-256 of the file alone (no network, this process)", "-", f"{sha_s:.1f}", f"{size / 1e6 / sha_s:.0f}",
              "-", "-")
    console.print(u)
    console.print("MB = 10^6 bytes in MB/s; RSS in MiB. The upload's time runs from the request's first byte to the "
                  "201; the job it made was cancelled at once.", highlight=False)

    # memory across jobs
    l0 = load()
    s = serve(tmp / "rss", "--workers", "2", "--grace", "2")
    rows = []
    try:
        with s.client() as c:
            rows.append(("at start (healthz answered)", proc_mem(s.proc.pid), []))
            wait_all(c, [upload(c, small)], timeout=300)
            rows.append(("after 1 warm-up job", proc_mem(s.proc.pid),
                         [(k, lab, proc_mem(k)) for k, lab in children(s.proc.pid)]))
            t0 = time.perf_counter()
            ids = [upload(c, small) for _ in range(n_jobs)]
            jobs = wait_all(c, ids, timeout=60 + 10 * n_jobs, every=1.0)
            el = time.perf_counter() - t0
            ok = sum(j["status"] == "complete" for j in jobs)
            rows.append((f"after {n_jobs} more jobs ({ok} complete, {el:.0f} s)", proc_mem(s.proc.pid),
                         [(k, lab, proc_mem(k)) for k, lab in children(s.proc.pid)]))
    finally:
        shutdown(s)
    l1 = load()
    m = Table(title=f"memory: moodlens serve --workers 2, {n_jobs} uploads of {small.name}; load {l0} -> {l1}")
    for col in ("when", "server RSS MB", "server peak (VmHWM) MB", "children: RSS MB (peak MB)"):
        m.add_column(col, justify="left" if col in ("when", "children: RSS MB (peak MB)") else "right")
    for when, mem, kids in rows:
        m.add_row(when, f"{mem['VmRSS']:.0f}", f"{mem['VmHWM']:.0f}",
                  "; ".join(f"{lab} {k}: {km['VmRSS']:.0f} ({km['VmHWM']:.0f})" for k, lab, km in kids) or "none yet")
    console.print(m)
    start, end = rows[1][1]["VmRSS"], rows[-1][1]["VmRSS"]
    console.print(f"server RSS growth over {n_jobs} jobs (after warm-up -> end): {end - start:+.0f} MiB "
                  f"({end / start:.2f}x)", highlight=False)


# -- main --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("throughput", "latency", "upload"), action="append",
                    help="run only this table (repeatable)")
    ap.add_argument("--quick", action="store_true", help="a small smoke run: 3 videos, 300 requests / 5 s, "
                                                          "a 100 MB upload, 10 jobs; no waiting for a quiet machine")
    ap.add_argument("-n", type=int, default=None, help="videos in the throughput test [20; 3 with --quick]")
    ap.add_argument("--max-load", type=float, default=1.5, help="wait until the 1-minute load is below this")
    ap.add_argument("--max-wait", type=float, default=1200, help="seconds to wait for that at most")
    args = ap.parse_args()
    which = args.only or ["throughput", "latency", "upload"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below still cleans up
    if not args.quick:
        wait_for_quiet(args.max_load, args.max_wait)
    console.print(f"load average (1/5/15 min) at start: {load()}; {os.cpu_count()} CPUs", highlight=False)
    tmp = Path(tempfile.mkdtemp(prefix="moodlens-service-bench-"))
    t0 = time.perf_counter()
    try:
        if "throughput" in which:
            bench_throughput(args.n or (3 if args.quick else 20), tmp)
        if "latency" in which:
            bench_latency(tmp, 50, 300 if args.quick else 2000, 5 if args.quick else 20, 4 if args.quick else 10)
        if "upload" in which:
            bench_upload(tmp, 100 if args.quick else 1000, 10 if args.quick else 100)
    finally:
        for s in list(SERVERS):
            shutdown(s)
        shutil.rmtree(tmp, ignore_errors=True)
        console.print(f"load average at end: {load()}; {time.perf_counter() - t0:.0f} s in all", highlight=False)


if __name__ == "__main__":
    main()
