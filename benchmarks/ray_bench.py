"""Ray scale-out (issue 19): what ``--executor ray`` costs on one machine, and what it would gain on many.

Every analysis runs in a fresh process (its imports, ``ray.init`` and model loading are its own,
as in a user's run). Each Ray instance this script starts lives under a temporary ``RAY_TMPDIR``
of its own, so it can neither join nor be joined by another Ray on the machine (``ray.init()``
without an address joins the last ``ray start`` cluster it finds in the default temp folder),
and authenticates with a token of this run's own (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``:
Ray 2.60's ``ray start`` turns token auth on when ``~/.ray/auth_token`` exists, and a driver
joining by address then fails unless told so). Every process started here runs in a session
of its own, and whatever is left of one at the end (or on Ctrl-C / SIGTERM) is killed by pid;
never ``ray stop``, which stops every Ray of the user on the machine, other people's included.
"s" below is the analysis' own clock, ``timings['total']`` (the driver's models are loaded
before it starts; a Ray worker loads its models inside it, on its first task); "wall" is the
whole process, start to exit, as the parent sees it.

1. long: a long 1080p video (the crowd clip, ~6 faces a frame, its packets repeated: a remux,
   no re-encode; 10 minutes, 2 with --quick; cached in --work when given) analysed four ways:
   local; local pinned to one core (``taskset -c 0``, ``MOODLENS_ORT_THREADS=1``: one Ray
   worker's share of the machine, so Ray-1's overhead can be judged like for like); Ray with
   one worker (``ray.init(num_cpus=1)``) and with two (``num_cpus=2``), in ``--segment-s``
   segments. Targets: Ray-1 within 15 % of local, Ray-2 >= 1.7x Ray-1. Then the per-segment
   costs from the Ray runs' timings: worker busy s per segment (decode, shot signature,
   detect/align/quality, emotion: what ``analyze_segment`` times), the driver's ms per frame
   (track, store, identity; and all it did but wait, (total - wait) / frames), SQLite's
   insert rate (observations / timings['store']).
2. many: twelve short clips (four with --quick) as one ``moodlens analyze A B ... --json``
   process, ``--executor local`` against ``--executor ray`` (a local Ray instance of all CPUs,
   one video per CPU at a time).
3. model: the speed-up to expect with 1-64 workers for the long video and a 3-hour one, from
   the Ray-1 run's costs and a fresh worker's start-up (imports and models, timed in three
   fresh processes), and where the driver or the database becomes the limit; the formula is
   :func:`predict`'s docstring.
4. cluster (only with --only cluster): a simulated cluster on this machine, ``ray start --head
   --num-cpus 1`` and ``--cluster-nodes - 1`` ``ray start --address HEAD --num-cpus 1`` nodes,
   each with ports of its own; the long video with ``--ray-address HEAD:PORT``, against the
   model's prediction for that many workers. Needs the Ray-1 run (made here if long was not).
   The nodes are stopped with SIGTERM (``ray start --block`` then stops its node's processes).

``--reid`` runs the long video with identity on (``analyze(reid=True)``): the workers align the
ArcFace crops, the driver embeds them, which the model then shows. ``--save`` writes every run's
figures and timings as JSON.

    python benchmarks/ray_bench.py [--only long,many,model,cluster] [--quick] [--segment-s 60] [--reid]
                                   [--minutes 10] [--work DIR] [--cluster-nodes 2] [--save FILE.json]

Figures depend on the machine's load: the load average is printed at the start and end of
each section and before each run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from _util import DATA, need

SECTIONS = ("long", "many", "model", "cluster")
DEFAULT = ("long", "many", "model")
FPS = 2.0
TARGET_OVERHEAD = 0.15  # Ray-1 over local
TARGET_SPEEDUP = 1.7  # Ray-2 over Ray-1
MANY = ["pyfeat/WolfgangLanger_Pexels.mp4", "pyfeat/single_face.mp4", "facenet_pytorch/video.mp4", "fer/woman2.mp4",
        "liveportrait_driving/d0.mp4", "liveportrait_driving/d10.mp4", "liveportrait_driving/d11.mp4",
        "liveportrait_driving/d12.mp4", "liveportrait_driving/d13.mp4", "liveportrait_driving/s18.mp4",
        "liveportrait_driving/s32.mp4", "grid/bbaf2n.mpg"]
MANY_QUICK = ["pyfeat/single_face.mp4", "liveportrait_driving/d0.mp4", "grid/bbaf2n.mpg", "liveportrait_driving/s32.mp4"]
console = Console(width=260)
SESSIONS: set[int] = set()  # session ids of every process started here (each its own session)
RESULTS: dict[str, Any] = {}  # every run's figures (--save)
OPTIONS: dict = {}  # extra analyze() options for the long video's runs (--reid)
TOKEN = secrets.token_hex(32)  # this run's Ray clusters' auth token (Ray >= 2.5x authenticates; not ~/.ray's)

# One analysis in a fresh process; argv[1] is a JSON dict of its arguments, the last line out its result.
RUN = r"""
import json, resource, sys
a = json.loads(sys.argv[1])
import moodlens
if a["executor"] == "ray" and a.get("num_cpus"):
    import ray
    ray.init(num_cpus=a["num_cpus"], include_dashboard=False, configure_logging=False, log_to_driver=False,
             runtime_env={"env_vars": {"MOODLENS_ORT_THREADS": "1"}})  # what moodlens.executors.ray.connect passes
r = moodlens.analyze(a["video"], fps=a["fps"], db=a["db"], executor=a["executor"], ray_address=a.get("address"),
                     segment_s=a["segment_s"], **a["options"])
print(json.dumps(dict(total_s=r.timings["total"], frames=r.frames, obs=r.n_observations, tracks=r.n_tracks,
                      duration=r.info["duration_s"], timings=r.timings,
                      rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""

# A Ray worker's one-time cost on its first task: importing what analyze_segment needs and loading its models.
COLD = r"""
import time
t = time.perf_counter()
from moodlens.segments import analyze_segment, classifier_for
import moodlens.faces.identity, moodlens.faces.track, moodlens.pipeline, moodlens.shots
from moodlens.models import yunet_session
classifier_for(); yunet_session()
print(time.perf_counter() - t)
"""

# Waits until a cluster has ``n`` CPUs (its worker nodes registered), then leaves it.
READY = r"""
import sys, time, ray
ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False)
t = time.monotonic()
while ray.cluster_resources().get("CPU", 0) < float(sys.argv[2]):
    if time.monotonic() - t > 120:
        sys.exit(f"only {ray.cluster_resources().get('CPU', 0)} CPUs after 120 s")
    time.sleep(0.5)
print(ray.cluster_resources().get("CPU"))
"""


# -- processes --------------------------------------------------------------------------------------
def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def child_env(ray_tmp: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MOODLENS_ORT_THREADS")}
    env.update(RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN,
               **extra)
    return env


def spawn(cmd: list[str], env: dict, **kw) -> subprocess.Popen:
    p = subprocess.Popen(cmd, env=env, start_new_session=True, **kw)
    SESSIONS.add(p.pid)
    return p


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[3])  # after comm: state ppid pgrp session
    except (OSError, ValueError, IndexError):
        return None


def leftovers(sessions: set[int]) -> list[int]:
    """Processes still alive in sessions started here (Ray's raylet, GCS, workers, reaper...)."""
    me = os.getpid()
    return [int(d.name) for d in Path("/proc").iterdir()
            if d.name.isdigit() and int(d.name) != me and _session_of(int(d.name)) in sessions]


def reap(sessions: set[int], what: str) -> int:
    """SIGKILL, by pid, what is left of ``sessions``; how many there were (0 when all exited cleanly)."""
    pids = leftovers(sessions)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if pids:
        console.print(f"[yellow]{what}: {len(pids)} process(es) left behind, killed[/]")
    SESSIONS.difference_update(sessions)
    return len(pids)


def run_cmd(cmd: list[str], env: dict, what: str, timeout: float = 3600) -> tuple[str, float, int]:
    """Run ``cmd`` to its end in a session of its own: its stdout, wall seconds, processes it left."""
    t = time.perf_counter()
    p = spawn(cmd, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException:
        p.kill()
        p.communicate()
        raise
    finally:
        wall = time.perf_counter() - t
        time.sleep(0.5)  # Ray's reaper acts when its parent is gone
        left = reap({p.pid}, what)
    if p.returncode:
        raise SystemExit(f"{what} exited with {p.returncode}:\n{err[-3000:]}")
    return out, wall, left


def analysis(video: Path, tmp: Path, name: str, executor: str = "local", num_cpus: int | None = None,
             address: str | None = None, segment_s: float = 60.0, prefix: tuple[str, ...] = (),
             **env: str) -> dict:
    """One ``moodlens.analyze`` in a fresh process (its own SQLite file); its figures."""
    db = tmp / f"{name}.db"
    args = dict(video=str(video), fps=FPS, db=f"sqlite:///{db}", executor=executor, num_cpus=num_cpus,
                address=address, segment_s=segment_s, options=OPTIONS)
    console.print(f"  {name}: load {load()} ...", highlight=False)
    out, wall, left = run_cmd([*prefix, sys.executable, "-c", RUN, json.dumps(args)], child_env(tmp / "ray", **env),
                              name)
    db.unlink(missing_ok=True)
    r = json.loads(out.strip().splitlines()[-1])
    return {**r, "wall_s": wall, "left": left, "name": name}


# -- 1. long ----------------------------------------------------------------------------------------
def long_video(minutes: float, folder: Path) -> Path:
    """The crowd clip's packets repeated to ``minutes`` (kept in ``folder``; written to a .part first)."""
    from pipeline_speed import concat

    src = need(DATA / "video" / "facenet_pytorch" / "video.mp4")
    dst = folder / f"crowd-{minutes:g}min.mp4"
    if not dst.exists():
        part = dst.with_name(dst.stem + ".part.mp4")
        concat(src, part, minutes * 60)
        part.replace(dst)
    return dst


def busy(t: dict) -> float:
    return sum(t.get(f"workers_{k}", 0.0) for k in ("decode", "shots", "detect", "emotion"))


def driver_s(t: dict) -> float:
    return t.get("track", 0.0) + t.get("store", 0.0) + t.get("identity", 0.0)


def ray1(video: Path, tmp: Path, segment_s: float) -> dict:
    if "ray1" not in RESULTS:
        RESULTS["ray1"] = analysis(video, tmp, "ray-1", "ray", num_cpus=1, segment_s=segment_s)
    return RESULTS["ray1"]


def cold_start(tmp: Path) -> float:
    """Seconds a fresh worker spends before its first frame (imports, models), median of 3 processes."""
    if "cold" not in RESULTS:
        runs = sorted(float(run_cmd([sys.executable, "-c", COLD], child_env(tmp / "ray", MOODLENS_ORT_THREADS="1"),
                                    "cold start")[0].strip().splitlines()[-1]) for _ in range(3))
        RESULTS["cold"] = runs[1]
    return RESULTS["cold"]


def bench_long(video: Path, tmp: Path, segment_s: float) -> None:
    console.print(f"[bold]long[/]: {video.name}, segments of {segment_s:g} s; load at start {load()}", highlight=False)
    runs = {"local": analysis(video, tmp, "local"),
            "local-1core": analysis(video, tmp, "local-1core", prefix=("taskset", "-c", "0"), MOODLENS_ORT_THREADS="1"),
            "ray1": ray1(video, tmp, segment_s),
            "ray2": analysis(video, tmp, "ray-2", "ray", num_cpus=2, segment_s=segment_s)}
    RESULTS.update(runs)
    local = runs["local"]
    t = Table(title=f"{video.name}: {local['duration'] / 60:.1f} min of 1080p, {local['frames']} frames sampled at "
                    f"{FPS:g} fps, {local['obs']} faces", box=box.MARKDOWN)
    for c in ("run", "CPUs", "s", "x real time", "wall s", "vs local", "wait s", "segments", "worker procs",
              "faces", "tracks", "driver RSS MB", "left over"):
        t.add_column(c, justify="left" if c == "run" else "right")
    cpus = {"local": f"all {os.cpu_count()}", "local-1core": "1 (taskset)", "ray1": "1 + driver",
            "ray2": "2 + driver"}
    for k, r in runs.items():
        tm = r["timings"]
        t.add_row(r["name"], cpus[k], f"{r['total_s']:.1f}", f"{r['duration'] / r['total_s']:.2f}",
                  f"{r['wall_s']:.1f}", f"{r['total_s'] / local['total_s']:.2f}x", f"{tm.get('wait', 0):.1f}",
                  str(tm.get("segments", "-")), str(tm.get("workers", "-")), str(r["obs"]), str(r["tracks"]),
                  f"{r['rss_mb']:.0f}", str(r["left"]))
    console.print(t)
    for k in ("ray1", "ray2"):
        if (runs[k]["obs"], runs[k]["tracks"]) != (local["obs"], local["tracks"]):
            console.print(f"[red]{k}: {runs[k]['obs']} faces / {runs[k]['tracks']} tracks, local "
                          f"{local['obs']} / {local['tracks']}: not the same rows[/]")
    r1, r2, one = runs["ray1"]["total_s"], runs["ray2"]["total_s"], runs["local-1core"]["total_s"]
    g = Table(title="targets", box=box.MARKDOWN)
    for c in ("measure", "value", "target", "met"):
        g.add_column(c)
    over, over1, speed = r1 / local["total_s"] - 1, r1 / one - 1, r1 / r2
    g.add_row(f"Ray-1 over local ({os.cpu_count()} cores)", f"{over:+.1%}", f"<= {TARGET_OVERHEAD:.0%}", str(over <= TARGET_OVERHEAD))
    g.add_row("Ray-1 over local pinned to 1 core (like for like)", f"{over1:+.1%}", f"<= {TARGET_OVERHEAD:.0%}",
              str(over1 <= TARGET_OVERHEAD))
    g.add_row("Ray-2 speed-up over Ray-1", f"{speed:.2f}x", f">= {TARGET_SPEEDUP}x", str(speed >= TARGET_SPEEDUP))
    g.add_row(f"Ray-2 speed-up over local ({os.cpu_count()} cores)", f"{local['total_s'] / r2:.2f}x", "-", "-")
    console.print(g)
    print_segment_costs([runs["ray1"], runs["ray2"]], segment_s, local)
    console.print(f"load at end {load()}", highlight=False)


def print_segment_costs(runs: list[dict], segment_s: float, local: dict | None = None) -> None:
    """Ray runs: their tasks' busy seconds per segment, the driver's ms per frame. ``local``: its own
    stages' seconds scaled to a segment's length, for comparison."""
    t = Table(title=f"per-segment costs: worker busy s per segment of {segment_s:g} s or less (summed over tasks; "
                    "local: its own stages' clocks, which overlap in its threads, scaled to a segment), driver ms per "
                    "sampled frame", box=box.MARKDOWN)
    for c in ("run", "segments", "decode", "shots", "detect", "emotion", "busy", "busy s / video s",
              "wall-busy s/seg", "track ms", "store ms", "identity ms", "t+s+i ms", "total-wait ms", "wait s",
              "SQLite rows/s"):
        t.add_column(c, justify="left" if c == "run" else "right")
    for r in runs + ([local] if local else []):
        tm, f = r["timings"], max(r["frames"], 1)
        n = tm.get("segments") or 0
        ms = lambda s: f"{1000 * s / f:.2f}"  # noqa: E731
        if n:
            stage = {k: tm.get(f"workers_{k}", 0.0) / n for k in ("decode", "shots", "detect", "emotion")}
        else:  # local: the same stages, per segment's worth of video
            stage = {k: tm.get(k, 0.0) * segment_s / r["duration"] for k in ("decode", "shots", "detect", "emotion")}
        b = sum(stage.values())
        per_video_s = (busy(tm) if n else sum(tm.get(k, 0.0) for k in stage)) / r["duration"]
        wall_busy = f"{(r['total_s'] - busy(tm)) / n:.2f}" if n and tm.get("workers") == 1 else "-"
        store = tm.get("store", 0.0)
        t.add_row(r["name"], str(n or "-"), *(f"{v:.2f}" for v in stage.values()), f"{b:.2f}",
                  f"{per_video_s:.3f}", wall_busy, ms(tm.get("track", 0)), ms(store), ms(tm.get("identity", 0)),
                  ms(driver_s(tm)), ms(r["total_s"] - tm.get("wait", 0)) if n else "-",
                  f"{tm.get('wait', 0):.1f}" if n else "-", f"{r['obs'] / store:.0f}" if store > 0 else "-")
    console.print(t)


# -- 2. many ----------------------------------------------------------------------------------------
def bench_many(tmp: Path, quick: bool) -> None:
    from moodlens.media import probe

    clips = [DATA / "video" / c for c in (MANY_QUICK if quick else MANY)]
    clips = [need(c) for c in clips]
    seconds = sum(probe(c).duration_s for c in clips)
    console.print(f"[bold]many[/]: {len(clips)} clips, {seconds:.1f} s of video; load at start {load()}",
                  highlight=False)
    t = Table(title=f"{len(clips)} clips ({seconds:.0f} s of video) in one `moodlens analyze ... --json` process",
              box=box.MARKDOWN)
    for c in ("executor", "wall s", "x real time", "sum of analyses' s", "frames", "faces", "tracks", "left over"):
        t.add_column(c, justify="left" if c == "executor" else "right")
    rows = {}
    for executor in ("local", "ray"):
        out_dir = tmp / f"many-{executor}"
        cmd = [sys.executable, "-m", "moodlens.cli", "analyze", *map(str, clips), "--executor", executor,
               "--fps", f"{FPS:g}", "--json", "--db", f"sqlite:///{tmp / f'many-{executor}.db'}", "--out", str(out_dir)]
        console.print(f"  {executor}: load {load()} ...", highlight=False)
        out, wall, left = run_cmd(cmd, child_env(tmp / "ray"), f"moodlens analyze --executor {executor}")
        res = json.loads(out[out.index("["):])
        if errors := [r for r in res if "error" in r]:
            raise SystemExit(f"{executor}: {errors}")
        rows[executor] = (sum(r["frames"] for r in res), sum(r["observations"] for r in res),
                          sum(r["tracks"] for r in res))
        RESULTS.setdefault("many", {})[executor] = {"wall_s": wall, "video_s": seconds, "left": left, "analyses": res}
        t.add_row(executor, f"{wall:.1f}", f"{seconds / wall:.2f}", f"{sum(r['timings']['total'] for r in res):.1f}",
                  *map(str, rows[executor]), str(left))
        shutil.rmtree(out_dir, ignore_errors=True)
    console.print(t)
    if rows["local"] != rows["ray"]:
        console.print(f"[red]frames/faces/tracks differ: local {rows['local']}, ray {rows['ray']}[/]")
    console.print(f"load at end {load()}", highlight=False)


# -- 3. model ---------------------------------------------------------------------------------------
def split(video_s: float, segment_s: float) -> tuple[int, float, float]:
    """(tasks, a task's seconds, the last task's seconds) as ``moodlens.segments.segment_bounds`` cuts."""
    samples = max(1, math.ceil(video_s * FPS - 1e-9))
    step = max(1, round(segment_s * FPS))
    n = math.ceil(samples / step)
    return n, step / FPS, (samples - (n - 1) * step) / FPS


def costs(r1: dict, segment_s: float, cold: float) -> dict:
    """The model's inputs from a Ray-1 run and a worker's cold start (see :func:`predict`)."""
    tm, v, f = r1["timings"], r1["duration"], max(r1["frames"], 1)
    s, _, last = split(v, segment_s)
    w = busy(tm) / v
    d = (r1["total_s"] - tm.get("wait", 0.0)) / f
    rest = max(r1["total_s"] - busy(tm) - last * FPS * d, 0.0)  # neither busy work nor the driver's tail
    c0 = min(cold, rest)  # a fresh process' start can exceed what the run left for it (noise, a loaded machine)
    o = (rest - c0) / s
    store = tm.get("store", 0.0)
    return dict(w=w, o=o, c0=c0, cold=cold, d=d, d_tsi=driver_s(tm) / f, d_db=store / f,
                rows_per_s=r1["obs"] / v, insert_rate=r1["obs"] / store if store > 0 else math.inf)


def predict(c: dict, video_s: float, segment_s: float, n: int) -> dict:
    """Expected time of one video on ``n`` one-CPU workers.

    Inputs, from the Ray-1 run of the long video (one worker: its time is the worker's start, its
    tasks and the driver's tail) and a fresh worker process's start:

    - ``w``: worker s per s of video = the tasks' busy time (decode, shots, detect, emotion) / V
    - ``d``: driver s per frame = (total - wait) / frames: all the driver does between results
      (unpickling, shots, tracking, rows, SQLite, identity); of it ``d_db`` = timings['store'] / frames
    - ``c0``: a worker's one-time start (imports, models), measured in a fresh process (at most
      what of the Ray-1 run is neither busy work nor the driver's tail)
    - ``o``: per-task overhead = (T1 - c0 - w V - D_L) / S: the rest of the Ray-1 run (scheduling,
      seeking to the segment, appearance features, pickling), per task

    For a video of V s in segments of g s at f frames/s on N workers::

        S = ceil(V f / (g f)) tasks, the last L = V - (S - 1) g s long (as segment_bounds cuts)
        t = g w + o,  t_L = L w + o           a task's time
        D = g f d,    D_L = L f d             the driver's time on a segment's frames
        W = ceil(S / N), r = S - (W - 1) N    waves of tasks, tasks in the last wave
        T(N) = c0 + max((W - 1) t + (t if r > 1 else t_L) + (r - 1) D + D_L,   workers-bound: the driver
                                                                               keeps up, then works off
                                                                               the last wave
                        (t if S > 1 else t_L) + (S - 1) D + D_L)               driver-bound: one process,
                                                                               in order, from the 1st result

    Speed-up = T(1) / T(N); T(1) is the Ray-1 run by construction. The driver is the limit once
    N D > t (N* = t / D); the database alone once N > t / (g f d_db). Rows/s the database must take:
    (faces per s of video) V / T(N). Only S tasks exist, so N > S workers idle: g <= V / N is needed.
    """
    s, g, last = split(video_s, segment_s)
    t, t_last = g * c["w"] + c["o"], last * c["w"] + c["o"]
    dd, dd_last = g * FPS * c["d"], last * FPS * c["d"]
    waves = math.ceil(s / n)
    r = s - (waves - 1) * n
    workers_bound = c["c0"] + (waves - 1) * t + (t if r > 1 else t_last) + (r - 1) * dd + dd_last
    driver_bound = c["c0"] + (t if s > 1 else t_last) + (s - 1) * dd + dd_last
    total = max(workers_bound, driver_bound)
    return dict(segments=s, waves=waves, used=min(n, s), t_task=t, workers_bound=workers_bound,
                driver_bound=driver_bound, total=total, limit="driver" if driver_bound > workers_bound else
                ("segments" if s < n else "workers"), rows_s=c["rows_per_s"] * video_s / total)


def best_segment(c: dict, video_s: float, n: int) -> tuple[float, float]:
    """(g, T) with the g, of a few, that gives the shortest T(N)."""
    return min(((g, predict(c, video_s, g, n)["total"]) for g in (5, 10, 15, 20, 30, 45, 60, 120, 300)),
               key=lambda x: x[1])


def describe(c: dict, r1: dict) -> None:
    console.print(f"[bold]model[/] (from the Ray-1 run of {r1['duration']:.0f} s): w = {c['w']:.3f} worker s per s "
                  f"of video, c0 = {c['c0']:.2f} s worker start (a fresh process: {c['cold']:.2f}), "
                  f"o = {c['o']:.2f} s per task"
                  f", d = {1000 * c['d']:.2f} ms per frame on the driver (track+store+identity "
                  f"{1000 * c['d_tsi']:.2f}, of which SQLite {1000 * c['d_db']:.2f}), {c['rows_per_s']:.1f} faces "
                  f"per s of video, SQLite takes {c['insert_rate']:.0f} rows/s", highlight=False)


def bench_model(r1: dict, segment_s: float, local: dict | None, cold: float) -> None:
    c = costs(r1, segment_s, cold)
    describe(c, r1)
    t = Table(title=f"expected time on N workers, segments of {segment_s:g} s (formula: predict's docstring)",
              box=box.MARKDOWN)
    for col in ("video", "N", "tasks", "waves", "workers-bound s", "driver-bound s", "T s", "x real time",
                "speed-up vs Ray-1", "vs local", "limit", "rows/s to SQLite", "best g: s (T s)"):
        t.add_column(col, justify="left" if col in ("video", "limit") else "right")
    for name, v in (("long video", r1["duration"]), ("3 hours", 3 * 3600.0)):
        base = predict(c, v, segment_s, 1)["total"]
        local_t = local["total_s"] * v / local["duration"] if local else None
        for n in (1, 2, 4, 16, 64):
            p = predict(c, v, segment_s, n)
            g, tg = best_segment(c, v, n)
            t.add_row(f"{name} ({v / 60:.1f} min)", str(n), str(p["segments"]), str(p["waves"]),
                      f"{p['workers_bound']:.0f}", f"{p['driver_bound']:.0f}", f"{p['total']:.0f}",
                      f"{v / p['total']:.1f}", f"{base / p['total']:.1f}x",
                      f"{local_t / p['total']:.1f}x" if local_t else "-", p["limit"], f"{p['rows_s']:.0f}",
                      f"{g:g} ({tg:.0f})")
    console.print(t)
    t_task = segment_s * c["w"] + c["o"]
    n_driver = t_task / (segment_s * FPS * c["d"])
    n_db = t_task / (segment_s * FPS * c["d_db"]) if c["d_db"] > 0 else math.inf
    console.print(f"the driver (one process, in order) is the limit beyond N* = t / D = {n_driver:.0f} workers "
                  f"({1 / (FPS * c['d']):.0f} s of video per s at most); SQLite alone would be beyond "
                  f"{n_db:.0f} ({c['insert_rate']:.0f} rows/s / {c['rows_per_s']:.1f} faces per s of video = "
                  f"{c['insert_rate'] / c['rows_per_s']:.0f}x real time at most)", highlight=False)


# -- 4. cluster -------------------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def node_cmd(head: str | None, worker_ports: int) -> tuple[list[str], int]:
    """``ray start --block`` for a 1-CPU node with ports of its own (several share this host); the head's
    GCS port (the cluster's address) with it."""
    ray = str(Path(sys.executable).with_name("ray"))
    nm, om, agent, agent_grpc, renv, metrics, dashboard, gcs = free_ports(8)
    cmd = [ray, "start", "--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
           "--node-manager-port", str(nm), "--object-manager-port", str(om),
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(renv), "--metrics-export-port", str(metrics),
           "--min-worker-port", str(worker_ports), "--max-worker-port", str(worker_ports + 99),
           "--object-store-memory", str(300 * 2**20), "--disable-usage-stats", "--log-style", "record"]
    if head is None:
        return cmd + ["--head", "--port", str(gcs), "--include-dashboard", "false",
                      "--dashboard-port", str(dashboard)], gcs  # a minimal dashboard starts anyway
    return cmd + ["--address", head], gcs


def stop_nodes(nodes: list[subprocess.Popen]) -> int:
    """SIGTERM each ``ray start --block`` (it stops its node's processes), workers first; then reap."""
    for p in reversed(nodes):
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(30)
    time.sleep(1.0)
    return reap({p.pid for p in nodes}, "cluster")


def bench_cluster(video: Path, tmp: Path, segment_s: float, n_nodes: int) -> None:
    r1 = ray1(video, tmp, segment_s)
    console.print(f"[bold]cluster[/]: {n_nodes} Ray nodes of 1 CPU on this machine; load at start {load()}",
                  highlight=False)
    env = child_env(tmp / "ray-cluster")
    nodes: list[subprocess.Popen] = []
    logs = [open(tmp / f"node{i}.log", "w") for i in range(n_nodes)]  # noqa: SIM115 - closed below
    left = 0
    try:
        t0 = time.perf_counter()
        head_cmd, port = node_cmd(None, 20000)
        head = f"127.0.0.1:{port}"
        nodes.append(spawn(head_cmd, env, stdout=logs[0], stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            if nodes[0].poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the head node did not start:\n{(tmp / 'node0.log').read_text()[-3000:]}")
            time.sleep(0.5)
        for i in range(1, n_nodes):
            nodes.append(spawn(node_cmd(head, 20000 + 100 * i)[0], env, stdout=logs[i],
                               stderr=subprocess.STDOUT))
        run_cmd([sys.executable, "-c", READY, head, str(n_nodes)], env, "cluster readiness check", timeout=180)
        console.print(f"  cluster of {n_nodes} CPUs at {head} up in {time.perf_counter() - t0:.1f} s", highlight=False)
        r = RESULTS["cluster"] = analysis(video, tmp, f"cluster-{n_nodes}", "ray", address=head, segment_s=segment_s)
    finally:
        left = stop_nodes(nodes)
        for f in logs:
            f.close()
    c = costs(r1, segment_s, cold_start(tmp))
    describe(c, r1)
    t = Table(title=f"{video.name} on a simulated cluster ({n_nodes} nodes x 1 CPU, one machine of "
                    f"{os.cpu_count()} cores)", box=box.MARKDOWN)
    for col in ("run", "workers", "s", "x real time", "model s", "measured / model", "wall s", "wait s",
                "worker procs", "faces", "left over"):
        t.add_column(col, justify="left" if col == "run" else "right")
    for name, res, n in (("Ray-1 (ray.init)", r1, 1), (f"cluster ({n_nodes} nodes)", r, n_nodes)):
        p = predict(c, res["duration"], segment_s, n)
        t.add_row(name, str(n), f"{res['total_s']:.1f}", f"{res['duration'] / res['total_s']:.2f}", f"{p['total']:.1f}",
                  f"{res['total_s'] / p['total']:.2f}", f"{res['wall_s']:.1f}", f"{res['timings'].get('wait', 0):.1f}",
                  str(res["timings"].get("workers")), str(res["obs"]),
                  str(res["left"] + (left if res is r else 0)))
    console.print(t)
    if n_nodes > (os.cpu_count() or 1) - 1:
        console.print(f"note: {n_nodes} workers and the driver share {os.cpu_count()} cores here", highlight=False)
    print_segment_costs([r1, r], segment_s)
    console.print(f"load at end {load()}", highlight=False)


# -- main -------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(DEFAULT),
                    help=f"comma-separated sections [{','.join(DEFAULT)}; also: cluster]")
    ap.add_argument("--quick", action="store_true", help="a 2-minute video and 4 clips")
    ap.add_argument("--minutes", type=float, default=None, help="length of the long video [10; 2 with --quick]")
    ap.add_argument("--segment-s", type=float, default=60.0, help="seconds of video per Ray task [60]")
    ap.add_argument("--reid", action="store_true",
                    help="long/model/cluster with identity on (analyze(reid=True): SFace on the driver)")
    ap.add_argument("--cluster-nodes", type=int, default=2, help="nodes (1 CPU each) of the simulated cluster [2]")
    ap.add_argument("--save", type=Path, default=None, help="also write every run's figures (timings) here as JSON")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the long video here between runs [a temporary folder, removed at the end]")
    args = ap.parse_args()
    which = [w.strip() for w in args.only.split(",") if w.strip()]
    if bad := [w for w in which if w not in SECTIONS]:
        ap.error(f"--only: unknown section(s) {bad}; choose from {','.join(SECTIONS)}")
    if args.segment_s <= 0 or args.cluster_nodes < 1:
        ap.error("--segment-s must be above 0 and --cluster-nodes at least 1")
    minutes = args.minutes or (2.0 if args.quick else 10.0)
    if args.reid:
        OPTIONS["reid"] = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below still cleans up
    console.print(f"load average (1/5/15 min) at start: {load()}; {os.cpu_count()} CPUs", highlight=False)
    tmp = Path(tempfile.mkdtemp(prefix="mlrb-"))  # short: Ray's socket paths live under it
    t0 = time.perf_counter()
    try:
        video = None
        if {"long", "model", "cluster"} & set(which):
            if args.work:
                args.work.mkdir(parents=True, exist_ok=True)
            video = long_video(minutes, args.work or tmp)
        if "long" in which:
            bench_long(video, tmp, args.segment_s)
        if "many" in which:
            bench_many(tmp, args.quick)
        if "model" in which:
            bench_model(ray1(video, tmp, args.segment_s), args.segment_s, RESULTS.get("local"), cold_start(tmp))
        if "cluster" in which:
            bench_cluster(video, tmp, args.segment_s, args.cluster_nodes)
        if args.save:
            args.save.write_text(json.dumps(RESULTS, indent=2, default=str))
    finally:
        reap(set(SESSIONS), "at exit")
        shutil.rmtree(tmp, ignore_errors=True)
        console.print(f"load average at end: {load()}; {time.perf_counter() - t0:.0f} s in all", highlight=False)


if __name__ == "__main__":
    main()
