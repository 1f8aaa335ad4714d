"""Live audiences (``moodlens edge`` -> ``moodlens serve``): bandwidth, latency, load and edge CPU.

Every table runs real processes on 127.0.0.1: a ``moodlens serve`` subprocess (started with
tests/service_util.py, a fresh data folder and SQLite each time) and ``moodlens edge ... --json``
subprocesses, 2 sampled frames per second throughout.

1. bandwidth: the 1080p crowd clip (facenet_pytorch/video.mp4) and the 640x360 demo clip
   (pyfeat/WolfgangLanger_Pexels.mp4), each sent once in crops mode (JPEG and WebP crops) and
   once with --scores-only. Bytes/s = the bytes the agent had acknowledged (its ``sent_bytes``:
   batch bodies and HTTP request headers) / the clip's duration. The naive design (every sampled
   frame uploaded whole as a JPEG, quality 90) is computed exactly here, by decoding the clip
   with ``moodlens.media.iter_frames`` at the same fps (the frames the agent samples) and
   ``cv2.imencode``; the agent's own estimate (every 5th frame) is shown beside it, and the
   source file's bitrate (size / duration). Target: naive / crops (JPEG) >= 20x on the crowd clip.
2. latency: one agent with --realtime on the demo clip against a server warmed up by a short
   run (its emotion model loaded). The benchmark reads the session's SSE stream
   (``/api/live/sessions/{id}/events``) as the dashboard does; each state names the frames of
   the batch just stored (``last_batch``: time and capture time), so every frame's latency is
   the event's arrival here - its captured_at (both ``time.time()`` on this machine).
   Target: p95 < 1 s.
3. load: N simulated cameras, each a ``moodlens edge --realtime`` process with its own
   --device-id and --buffer, against one server, for N in --cameras up to --max-cameras,
   stopping at the first N that does not keep up (unless --keep-going). The sample clips are
   short (4.5 s and 20 s), so each camera reads a long copy made here by repeating the clip's
   video packets (a remux, no re-encode, as benchmarks/pipeline_speed.py does): one process and
   one session per camera for the whole run, with no agent restarts (a restart re-pays the model
   load and re-opens the session, which is not what a camera does). Cameras alternate between the
   crowd clip (1080p, ~6 faces) and the demo clip (640x360, 1 face) (--clips to choose). Each N
   gets a fresh server, warmed up first. The window starts once every camera's session has
   stored a batch (+5 s) and lasts --load-seconds; every 0.5 s GET /api/live/sessions gives each
   session's ``ingest_lag_s`` (newest frame's capture -> its batch stored) and ``frames``/``faces``.
   "keeps up" = the worst camera's lag is flat (median of the last third - median of the first
   third <= 0.5 s) and every camera's frames are stored at >= 90% of the sampling rate (an agent
   starved of CPU samples late, which the lag alone would not show). The server's CPU (its
   process and children), the agents' CPU (all together; psutil, else /proc) and the server's RSS
   are over the window; the agents run on the same CPUs, so on a small machine they, not the
   server, may be what breaks first: the table shows both shares.
4. cpu: the agent's CPU time per sampled frame (its ``cpu_s``, from the capture loop's start,
   model loading excluded; decoding, detection, alignment, encoding and sending included) / frames,
   at 640x360 and 1080p, crops and scores-only, on --cpu-seconds of each clip (repeated as above)
   read as fast as possible; wall time per frame is ``wall_s`` / frames and includes the agent's
   start-up and the final flush (an upper bound). "cores at 2 fps" = 2 x CPU s per frame.

A final table puts the targets beside what was measured.

    python benchmarks/live_bench.py [--only bandwidth,latency,load,cpu] [--quick]

Before a full run the script waits (up to --max-wait s) until the 1-minute load average is below
--max-load; the load at each table's start and end is printed. Every server, agent and temporary
file is removed at the end, also on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from _util import DATA, need

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from service_util import Server, start_server, stop_server  # noqa: E402

FPS = 2.0
SETTLE_S = 5.0
SECTIONS = ("bandwidth", "latency", "load", "cpu")
console = Console(width=200)
SERVERS: list[Server] = []
EDGES: list[subprocess.Popen] = []
RESULTS: dict[str, dict] = {}


def crowd_clip() -> Path:
    return need(DATA / "video" / "facenet_pytorch" / "video.mp4")


def demo_clip() -> Path:
    return need(DATA / "video" / "pyfeat" / "WolfgangLanger_Pexels.mp4")


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


def serve(data_dir: Path) -> Server:
    s = start_server(data_dir, "--workers", "1", timeout=120)
    SERVERS.append(s)
    return s


def shutdown(s: Server) -> None:
    with contextlib.suppress(Exception):
        stop_server(s, timeout=60)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(s.proc.pid, signal.SIGKILL)  # any worker left behind
    if s in SERVERS:
        SERVERS.remove(s)


def edge_cmd(server: Server, clip: Path, device: str, work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "moodlens.cli", "edge", str(clip), "--server", server.url, "--device-id", device,
            "--session", device, "--buffer", str(work / "buf" / device), "--fps", f"{FPS:g}", "--json", *extra]


def summary_of(out: str, err: str, rc: int, device: str) -> dict:
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"edge {device} exited with {rc} and no summary:\n{err[-2000:]}")


def run_edge(server: Server, clip: Path, device: str, work: Path, *extra: str, timeout: float = 600) -> dict:
    """One agent run to the end of the clip; its --json summary."""
    p = subprocess.run(edge_cmd(server, clip, device, work, *extra), capture_output=True, text=True, timeout=timeout)
    return summary_of(p.stdout, p.stderr, p.returncode, device)


def start_edge(server: Server, clip: Path, device: str, work: Path, *extra: str) -> subprocess.Popen:
    (work / "logs").mkdir(parents=True, exist_ok=True)
    with open(work / "logs" / f"{device}.err", "w") as err:
        p = subprocess.Popen(edge_cmd(server, clip, device, work, *extra), stdout=subprocess.PIPE, stderr=err,
                             text=True, start_new_session=True)
    EDGES.append(p)
    return p


def finish_edge(p: subprocess.Popen, device: str, work: Path, stop: bool, timeout: float = 120) -> dict:
    """SIGTERM (the agent closes its session and flushes) when ``stop``; wait; its summary."""
    if stop and p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_edge(p)
        out, _ = p.communicate(timeout=10)
    if p in EDGES:
        EDGES.remove(p)
    return summary_of(out or "", (work / "logs" / f"{device}.err").read_text(), p.returncode, device)


def kill_edge(p: subprocess.Popen) -> None:
    if p.poll() is None:  # never signal a group whose leader is gone (its id may be reused)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
    if p in EDGES:
        EDGES.remove(p)


def warm_up(server: Server, work: Path) -> None:
    """A short crowd-clip run, so the server's emotion model is loaded before anything is timed."""
    run_edge(server, crowd_clip(), "warm-up", work)


def looped(src: Path, seconds: float, work: Path) -> Path:
    """``src``'s video packets repeated until ``seconds`` long (cached in ``work``)."""
    from pipeline_speed import concat

    dst = work / f"{src.stem}-{seconds:.0f}s.mp4"
    return dst if dst.exists() else concat(src, dst, seconds)


def live_sessions(c: httpx.Client) -> list[dict]:
    return c.get("/api/live/sessions", params={"all": "true", "limit": 1000}).json()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


CLK = os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the server's job workers, if any)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo += [int(x) for x in (task / "children").read_text().split()]
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its living descendants."""
    try:
        import psutil
    except ImportError:
        total = 0.0
        for p in _tree(pid):
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / CLK  # utime, stime
        return total
    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM = peak) of one process, MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024
    return out.get("VmRSS", 0.0), out.get("VmHWM", 0.0)


# -- 1. bandwidth ------------------------------------------------------------------------------
def naive_exact(clip: Path) -> tuple[int, int]:
    """(frames, bytes) of every frame sampled at FPS encoded whole as a JPEG at quality 90."""
    import cv2

    from moodlens.media import iter_frames

    n = size = 0
    for frame in iter_frames(clip, fps=FPS):
        size += len(cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1])
        n += 1
    return n, size


def bench_bandwidth(tmp: Path) -> None:
    from moodlens.media import probe

    l0 = load()
    s = serve(tmp / "bw")
    out = {}
    try:
        for clip in (crowd_clip(), demo_clip()):
            info = probe(clip)
            dur = info.duration_s
            n_naive, naive = naive_exact(clip)
            runs = {}
            for label, dev, extra in (("crops, JPEG q90", "jpeg", ("--crop-format", "jpeg")),
                                      ("crops, WebP q90", "webp", ("--crop-format", "webp")),
                                      ("scores only", "scores", ("--scores-only",))):
                runs[label] = run_edge(s, clip, f"bw-{clip.stem}-{dev}", tmp / "bw", *extra)
            out[clip] = {"info": info, "dur": dur, "naive": naive, "n_naive": n_naive, "runs": runs}
    finally:
        shutdown(s)
    l1 = load()
    t = Table(title=f"bandwidth at {FPS:g} fps: bytes sent per second of video (batch bodies the server acknowledged)"
                    f"; load {l0} -> {l1}")
    for col in ("clip", "what is sent", "frames", "faces", "bytes", "bytes/s", "kbit/s", "bytes/face",
                "naive / this"):
        t.add_column(col, justify="left" if col in ("clip", "what is sent") else "right")
    for clip, r in out.items():
        info, dur, naive = r["info"], r["dur"], r["naive"]
        name = f"{clip.parent.name}/{clip.name} ({info.width}x{info.height}, {dur:.1f} s)"
        for label, sm in r["runs"].items():
            b = sm["sent_bytes"]
            t.add_row(name, label, str(sm["frames"]), str(sm["faces"]), f"{b:,}", f"{b / dur:,.0f}",
                      f"{b * 8 / dur / 1e3:,.1f}", f"{b / max(sm['faces'], 1):,.0f}", f"{naive / b:.1f}x" if b else "-")
            name = ""
        t.add_row("", "naive: every sampled frame as JPEG q90 (exact)", str(r["n_naive"]),
                  "-", f"{naive:,}", f"{naive / dur:,.0f}", f"{naive * 8 / dur / 1e3:,.1f}", "-", "1.0x")
        est = r["runs"]["crops, JPEG q90"]["naive_bytes"]
        t.add_row("", "  the agent's estimate of it (every 5th frame)", "-", "-", f"{est:,}", f"{est / dur:,.0f}",
                  f"{est * 8 / dur / 1e3:,.1f}", "-", f"{naive / est:.2f}x" if est else "-")
        br = r["runs"]["crops, JPEG q90"]["source_bitrate"] or 0
        t.add_row("", "the source file itself (size / duration, audio included)", "-", "-", f"{br * dur / 8:,.0f}",
                  f"{br / 8:,.0f}", f"{br / 1e3:,.1f}", "-", f"{naive * 8 / dur / br:.2f}x" if br else "-")
        t.add_section()
    console.print(t)
    for clip, r in out.items():
        frames = {lab: sm["frames"] for lab, sm in r["runs"].items()}
        if any(f != r["n_naive"] for f in frames.values()):
            console.print(f"[yellow]{clip.name}: the agent sampled {frames} frames, iter_frames {r['n_naive']}[/]")
    crowd = out[crowd_clip()]
    RESULTS["bandwidth"] = {clip.name: {lab: r["naive"] / sm["sent_bytes"] for lab, sm in r["runs"].items()
                                        if sm["sent_bytes"]} for clip, r in out.items()}
    RESULTS["bandwidth"]["_crowd_crops"] = crowd["naive"] / crowd["runs"]["crops, JPEG q90"]["sent_bytes"]


# -- 2. latency --------------------------------------------------------------------------------
def wait_session(c: httpx.Client, device: str, timeout: float, p: subprocess.Popen | None = None) -> dict:
    t0 = time.monotonic()
    while True:
        for row in live_sessions(c):
            if row["device"] == device:
                return row
        if p is not None and p.poll() is not None:
            raise RuntimeError(f"edge {device} exited with {p.returncode} before its session appeared")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"no session from {device} after {timeout:.0f} s")
        time.sleep(0.1)


def read_events(server: Server, session_id: int, timeout: float) -> list[tuple[float, dict]]:
    """(arrival time, state) of each SSE event until the stream ends (the session closed)."""
    events = []
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(10, read=30)) as c, \
            c.stream("GET", f"/api/live/sessions/{session_id}/events") as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append((time.time(), json.loads(line[5:])))
            if time.monotonic() > deadline:
                break
    return events


def bench_latency(tmp: Path, clip_s: float | None) -> None:
    from moodlens.media import probe

    work = tmp / "lat"
    clip = demo_clip() if clip_s is None else looped(demo_clip(), clip_s, tmp)
    dur = probe(clip).duration_s
    l0 = load()
    s = serve(work)
    try:
        warm_up(s, work)
        p = start_edge(s, clip, "latency", work, "--realtime")
        with s.client() as c:
            sid = wait_session(c, "latency", 120, p)["id"]
        events = read_events(s, sid, dur + 120)
        summary = finish_edge(p, "latency", work, stop=False)
    finally:
        shutdown(s)
    l1 = load()
    best, oldest, seen, with_faces = [], [], set(), 0
    for arrived, st in events:
        batch = [f for f in st.get("last_batch") or [] if f.get("captured_at")]
        if not batch or batch[-1]["captured_at"] in seen:
            continue
        with_faces += bool((st.get("now") or {}).get("faces"))
        for f in batch:  # every frame of the batch just stored, each with its own capture time
            if f["captured_at"] not in seen:
                seen.add(f["captured_at"])
                best.append(arrived - f["captured_at"])
        oldest.append(arrived - batch[0]["captured_at"])
    if not best:
        raise RuntimeError(f"no frame reached the dashboard in {len(events)} events")
    t = Table(title=f"latency on loopback at {FPS:g} fps: a frame's capture on the edge -> its state in the "
                    f"dashboard's SSE stream ({clip.name}, --realtime, {summary['frames']} frames sampled, "
                    f"{len(events)} events); load {l0} -> {l1}")
    for col in ("frame", "n", "p50 s", "p95 s", "max s", "mean s"):
        t.add_column(col, justify="left" if col == "frame" else "right")
    for label, xs in ((f"every frame (the state's last_batch; {with_faces} batches with faces)", best),
                      ("the oldest frame of each batch", oldest)):
        if xs:
            t.add_row(label, str(len(xs)), f"{pct(xs, 50):.3f}", f"{pct(xs, 95):.3f}", f"{max(xs):.3f}",
                      f"{statistics.mean(xs):.3f}")
    console.print(t)
    RESULTS["latency"] = {"p95": pct(best, 95), "p95_oldest": pct(oldest, 95) if oldest else None, "n": len(best)}


# -- 3. load -----------------------------------------------------------------------------------
def one_load(tmp: Path, n: int, clips: list[Path], window_s: float) -> dict:
    work = tmp / f"load{n}"
    s = serve(work)
    procs: dict[str, subprocess.Popen] = {}
    samples: list[tuple[float, list[float]]] = []
    try:
        warm_up(s, work)
        for i in range(n):
            dev = f"cam{i + 1}"
            procs[dev] = start_edge(s, clips[i % len(clips)], dev, work, "--realtime", "--flush-timeout", "30")
        with s.client() as c:
            t0 = time.monotonic()
            while True:  # every camera has stored a batch
                rows = {r["device"]: r for r in live_sessions(c) if r["device"] in procs}
                if len(rows) == n and all(r["frames"] for r in rows.values()):
                    break
                dead = [d for d, p in procs.items() if p.poll() is not None]
                if dead:
                    err = (work / "logs" / f"{dead[0]}.err").read_text()[-2000:]
                    raise RuntimeError(f"edge {dead[0]} exited early:\n{err}")
                if time.monotonic() - t0 > 60 + 15 * n:
                    raise RuntimeError(f"only {len(rows)} of {n} cameras stored a batch after {60 + 15 * n} s")
                time.sleep(0.5)
            time.sleep(SETTLE_S)  # the last agent's start-up backlog drains
            start = {r["device"]: r for r in live_sessions(c) if r["device"] in procs}
            cpu0, w0, load0 = cpu_seconds(s.proc.pid), time.monotonic(), os.getloadavg()[0]
            ecpu0 = sum(cpu_seconds(p.pid) for p in procs.values())
            rss = []
            while (el := time.monotonic() - w0) < window_s:
                rows = [r for r in live_sessions(c) if r["device"] in procs]
                lags = [r["ingest_lag_s"] for r in rows if r["ingest_lag_s"] is not None]
                samples.append((el, lags))
                rss.append(rss_mb(s.proc.pid)[0])
                time.sleep(max(0.0, 0.5 - (time.monotonic() - w0 - el)))
            end = {r["device"]: r for r in live_sessions(c) if r["device"] in procs}
            el = time.monotonic() - w0
            cpu = cpu_seconds(s.proc.pid) - cpu0
            ecpu = sum(cpu_seconds(p.pid) for p in procs.values()) - ecpu0
            rss_end, hwm = rss_mb(s.proc.pid)
            load1 = os.getloadavg()[0]
        edges = {d: finish_edge(p, d, work, stop=True) for d, p in procs.items()}
    finally:
        for p in procs.values():
            kill_edge(p)
        shutdown(s)
    worst = [max(lags) for _, lags in samples if lags]
    third = max(1, len(worst) // 3)
    first, last = statistics.median(worst[:third]), statistics.median(worst[-third:])
    faces = sum(end[d]["faces"] - start[d]["faces"] for d in procs)
    fps_cam = {d: (end[d]["frames"] - start[d]["frames"]) / el for d in procs}
    flat = last - first <= 0.5
    paced = min(fps_cam.values()) >= 0.9 * FPS
    return {"n": n, "first": first, "last": last, "max": max(worst), "flat": flat, "paced": paced,
            "ok": flat and paced, "faces_s": faces / el, "fps_min": min(fps_cam.values()),
            "fps_mean": statistics.mean(fps_cam.values()), "cpu": cpu / el, "edge_cpu": ecpu / el,
            "rss": rss_end, "rss_max": max(rss + [rss_end]), "hwm": hwm, "load": (load0, load1), "window": el,
            "samples": len(samples), "backlog": sum(e["backlog_batches"] for e in edges.values()),
            "dropped": sum(e["dropped_frames"] for e in edges.values())}


def bench_load(tmp: Path, counts: list[int], max_cameras: int, window_s: float, which: str, keep_going: bool) -> None:
    clip_s = window_s + 90 + 15 * max(counts)  # start-up, the wait for all cameras (<= 60 + 15 N s), settling
    crowd, demo = looped(crowd_clip(), clip_s, tmp), looped(demo_clip(), clip_s, tmp)
    clips = {"crowd": [crowd], "demo": [demo], "mixed": [crowd, demo]}[which]
    rows = []
    for n in [n for n in counts if n <= max_cameras]:
        console.print(f"load: {n} camera(s) ...", highlight=False)
        r = one_load(tmp, n, clips, window_s)
        rows.append(r)
        if not r["ok"] and not keep_going:
            break
    t = Table(title=f"load: N `moodlens edge --realtime` cameras at {FPS:g} fps against one server, all on this "
                    f"{os.cpu_count()}-CPU machine ({which} clips: " + ", ".join(c.name for c in clips)
                    + f"); {window_s:g} s windows, ingest lag sampled every 0.5 s")
    for col in ("cameras", "lag s: 1st third -> last", "lag max s", "frames/s/cam min, mean", "faces/s stored",
                "server CPU %", "agents CPU %", "server RSS MiB (max)", "server peak MiB", "load 1 min", "keeps up"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["n"]), f"{r['first']:.2f} -> {r['last']:.2f} " + ("flat" if r["flat"] else "GROWING"),
                  f"{r['max']:.2f}", f"{r['fps_min']:.2f}, {r['fps_mean']:.2f}", f"{r['faces_s']:.1f}",
                  f"{100 * r['cpu']:.0f}", f"{100 * r['edge_cpu']:.0f}", f"{r['rss']:.0f} ({r['rss_max']:.0f})",
                  f"{r['hwm']:.0f}", f"{r['load'][0]:.1f} -> {r['load'][1]:.1f}",
                  "yes" if r["ok"] else "NO" + ("" if r["paced"] else " (frames late)"))
    console.print(t)
    console.print("lag = the worst camera's ingest_lag_s (its newest frame's capture -> its batch stored; includes "
                  "the agent's detection and up to a second of batching); lag is GROWING when its median over the "
                  "window's last third exceeds the first third's by > 0.5 s. CPU % of one core: the server's over "
                  "the window, and the agents' all together over the same window.", highlight=False)
    good = [r["n"] for r in rows if r["ok"]]
    RESULTS["load"] = {"largest": max(good) if good else 0, "tried": [r["n"] for r in rows],
                       "broke": next((r["n"] for r in rows if not r["ok"]), None),
                       "server_cpu_per_camera": rows[0]["cpu"] / rows[0]["n"] if rows else None}


# -- 4. cpu ------------------------------------------------------------------------------------
def bench_cpu(tmp: Path, seconds: float) -> None:
    from moodlens.media import probe

    work = tmp / "cpu"
    l0 = load()
    s = serve(work)
    rows = []
    try:
        warm_up(s, work)
        for src in (demo_clip(), crowd_clip()):
            clip = looped(src, seconds, tmp)
            info = probe(clip)
            for mode, extra in (("crops (JPEG)", ()), ("scores only", ("--scores-only",))):
                dev = f"cpu-{src.stem}-{'scores' if extra else 'crops'}"
                sm = run_edge(s, clip, dev, work, *extra)
                rows.append((f"{src.parent.name}/{src.name} ({info.width}x{info.height})", mode, sm))
    finally:
        shutdown(s)
    l1 = load()
    t = Table(title=f"edge agent CPU per sampled frame (--fps {FPS:g}, {seconds:g} s of each clip read as fast as "
                    f"possible); load {l0} -> {l1}")
    for col in ("clip", "mode", "frames", "faces/frame", "CPU ms/frame", "wall ms/frame (with start-up)",
                "cores at 2 fps", "max fps on one core"):
        t.add_column(col, justify="left" if col in ("clip", "mode") else "right")
    out = {}
    for clip, mode, sm in rows:
        f = max(sm["frames"], 1)
        cpu = sm["cpu_s"] / f
        t.add_row(clip, mode, str(sm["frames"]), f"{sm['faces'] / f:.1f}", f"{1000 * cpu:.0f}",
                  f"{1000 * sm['wall_s'] / f:.0f}", f"{FPS * cpu:.2f}", f"{1 / cpu:.1f}" if cpu else "-")
        out[f"{clip.split(' ')[-1].strip('()')} {mode}"] = cpu
    console.print(t)
    RESULTS["cpu"] = out


# -- summary -----------------------------------------------------------------------------------
def print_summary() -> None:
    t = Table(title="summary: targets and what was measured")
    for col in ("what", "target", "measured", "met"):
        t.add_column(col)
    if "bandwidth" in RESULTS:
        b = RESULTS["bandwidth"]
        x = b["_crowd_crops"]
        t.add_row("bandwidth saving, naive / crops (JPEG), 1080p crowd clip", ">= 20x", f"{x:.1f}x",
                  "yes" if x >= 20 else "NO")
        for clip, d in b.items():
            if not clip.startswith("_"):
                t.add_row(f"  naive / sent, {clip}", "-", ", ".join(f"{k}: {v:.1f}x" for k, v in d.items()), "")
    if "latency" in RESULTS:
        r = RESULTS["latency"]
        t.add_row("latency capture -> dashboard, p95 (every frame)", "< 1 s", f"{r['p95']:.3f} s "
                  f"(n={r['n']})", "yes" if r["p95"] < 1 else "NO")
        if r["p95_oldest"] is not None:
            t.add_row("  p95 for the oldest frame of each batch", "-", f"{r['p95_oldest']:.3f} s", "")
    if "load" in RESULTS:
        r = RESULTS["load"]
        t.add_row("cameras one server keeps up with (flat lag, frames at pace)", "report",
                  f"{r['largest']} (tried {r['tried']}; "
                  + (f"{r['broke']} did not keep up)" if r["broke"] else "none broke)"), "")
        if r["server_cpu_per_camera"] is not None:
            t.add_row("  server CPU per camera at the smallest N", "-",
                      f"{100 * r['server_cpu_per_camera']:.0f}% of a core", "")
    if "cpu" in RESULTS:
        for k, v in RESULTS["cpu"].items():
            t.add_row(f"edge CPU per frame, {k}", "report", f"{1000 * v:.0f} ms ({FPS * v:.2f} cores at {FPS:g} fps)",
                      "")
    console.print(t)


# -- main --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run [{','.join(SECTIONS)}]")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: load with 1 and 2 cameras for 12 s, 8 s clips for cpu; no waiting for a "
                         "quiet machine")
    ap.add_argument("--cameras", default="1,2,4,6,8", help="camera counts for the load table [1,2,4,6,8; 1,2 quick]")
    ap.add_argument("--max-cameras", type=int, default=8, help="never more cameras than this")
    ap.add_argument("--load-seconds", type=float, default=None, help="measuring window per camera count [60; 12 quick]")
    ap.add_argument("--clips", choices=("mixed", "crowd", "demo"), default="mixed",
                    help="the cameras' clips: alternate crowd/demo, or all one")
    ap.add_argument("--keep-going", action="store_true", help="load: try every count even after one breaks")
    ap.add_argument("--latency-seconds", type=float, default=None,
                    help="latency: repeat the demo clip to this length [the clip as it is, 20 s]")
    ap.add_argument("--cpu-seconds", type=float, default=None,
                    help="seconds of each clip for the cpu table [30; 8 quick]")
    ap.add_argument("--max-load", type=float, default=1.5, help="wait until the 1-minute load is below this")
    ap.add_argument("--max-wait", type=float, default=1200, help="seconds to wait for that at most")
    args = ap.parse_args()
    which = [w.strip() for w in args.only.split(",") if w.strip()]
    if bad := [w for w in which if w not in SECTIONS]:
        ap.error(f"--only: unknown section(s) {bad}; choose from {','.join(SECTIONS)}")
    counts = [int(x) for x in ("1,2" if args.quick and args.cameras == "1,2,4,6,8" else args.cameras).split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below still cleans up
    if not args.quick:
        wait_for_quiet(args.max_load, args.max_wait)
    console.print(f"load average (1/5/15 min) at start: {load()}; {os.cpu_count()} CPUs", highlight=False)
    tmp = Path(tempfile.mkdtemp(prefix="moodlens-live-bench-"))
    t0 = time.perf_counter()
    try:
        if "bandwidth" in which:
            bench_bandwidth(tmp)
        if "latency" in which:
            bench_latency(tmp, args.latency_seconds)
        if "load" in which:
            bench_load(tmp, counts, args.max_cameras, args.load_seconds or (12 if args.quick else 60), args.clips,
                       args.keep_going)
        if "cpu" in which:
            bench_cpu(tmp, args.cpu_seconds or (8 if args.quick else 30))
        print_summary()
    finally:
        for p in list(EDGES):
            kill_edge(p)
        for s in list(SERVERS):
            shutdown(s)
        shutil.rmtree(tmp, ignore_errors=True)
        console.print(f"load average at end: {load()}; {time.perf_counter() - t0:.0f} s in all", highlight=False)


if __name__ == "__main__":
    main()
