"""Ray: the same rows as a local run, a killed worker retried, and one-line errors.

Runs against a local Ray instance (``ray.init(num_cpus=2)``) with segments short enough
that every clip has several; skips without the ``[ray]`` extra.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import shared
from moodlens.errors import MediaError, MoodlensError
from moodlens.store import Store
from moodlens.types import EMOTIONS

ray = pytest.importorskip("ray", reason="the Ray tests need the [ray] extra (pip install 'moodlens[ray]')")

DEMO = ("video", "pyfeat", "WolfgangLanger_Pexels.mp4")
CROWD = ("video", "facenet_pytorch", "video.mp4")
CLI = [sys.executable, "-m", "moodlens.cli"]


@pytest.fixture(scope="module")
def local_ray():
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
                 runtime_env={"env_vars": {"MOODLENS_ORT_THREADS": "1"}})
    yield ray
    ray.shutdown()


def _rows(a) -> list[tuple]:
    return sorted((o["frame"], o["time_s"], o["x"], o["y"], o["w"], o["h"], o["track"], o["person"], o["shot"],
                   o["score"], o["quality"]) for o in a.observations)


def assert_same(local, distributed) -> None:
    """The same rows (frame, box, track id, name, shot), emotions equal to float tolerance."""
    assert (distributed.frames, distributed.n_observations, distributed.n_tracks) == \
        (local.frames, local.n_observations, local.n_tracks)
    assert _rows(distributed) == _rows(local)
    key = lambda o: (o["frame"], o["x"], o["y"])  # noqa: E731
    a = np.array([[o[e] for e in EMOTIONS] for o in sorted(local.observations, key=key)])
    b = np.array([[o[e] for e in EMOTIONS] for o in sorted(distributed.observations, key=key)])
    assert np.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("clip, segment_s, options", [
    (DEMO, 3.0, {}),
    (CROWD, 1.0, {"reid": True}),
], ids=["640x360-7-segments", "1080p-crowd-reid-5-segments"])
def test_ray_gives_the_local_rows(local_ray, tmp_path, clip, segment_s, options):
    from moodlens.pipeline import analyze

    path = shared(*clip)
    db = f"sqlite:///{tmp_path / 'm.db'}"
    local = analyze(path, fps=2.0, db=db, **options)
    distributed = analyze(path, fps=2.0, db=db, executor="ray", segment_s=segment_s, **options)
    assert distributed.timings["executor"] == "ray" and distributed.timings["segments"] >= 5
    assert_same(local, distributed)


def test_workers_make_the_check_vectors_the_driver_needs(local_ray, tmp_path):
    """The crowd clip's re-acquisition checks (one refused): a worker runs the check on its own
    segment and sends its vectors, so the driver makes none and decides as a local run does."""
    from moodlens.pipeline import analyze

    path = shared(*CROWD)
    db = f"sqlite:///{tmp_path / 'm.db'}"
    local = analyze(path, fps=2.0, db=db)
    distributed = analyze(path, fps=2.0, db=db, executor="ray", segment_s=60.0)
    assert local.timings["track_checks"] >= 2 and local.timings["track_refused"] >= 1
    assert local.timings["track_vectors_made"] >= 2
    assert distributed.timings["track_checks"] == local.timings["track_checks"]
    assert distributed.timings["track_vectors_made"] == 0, distributed.timings
    assert distributed.timings["workers_track_check"] > 0
    assert_same(local, distributed)


def test_shipped_video_gives_the_same_rows(local_ray, tmp_path):
    """--ship-video: the bytes go through the object store (workers without the driver's files)."""
    from moodlens.pipeline import analyze

    path = shared(*DEMO)
    db = f"sqlite:///{tmp_path / 'm.db'}"
    assert_same(analyze(path, fps=2.0, db=db),
                analyze(path, fps=2.0, db=db, executor="ray", segment_s=5.0, ship_video=True))


def test_a_killed_worker_is_retried_and_the_rows_are_the_same(local_ray, tmp_path):
    from moodlens.pipeline import analyze

    path = shared(*DEMO)
    db = f"sqlite:///{tmp_path / 'm.db'}"
    local = analyze(path, fps=2.0, db=db)
    killed: list[int] = []
    stop = threading.Event()

    def killer():
        """SIGKILL the first worker seen running a segment (its process title names the task)."""
        while not stop.is_set() and not killed:
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if cmd.startswith(b"ray::analyze_segment"):
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
                    return
            time.sleep(0.005)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        distributed = analyze(path, fps=2.0, db=db, executor="ray", segment_s=4.0)
    finally:
        stop.set()
        t.join(5)
    assert killed, "no segment task was seen running"
    assert_same(local, distributed)


def test_a_video_the_workers_cannot_read_fails_the_analysis_in_one_line(local_ray, tmp_path):
    from moodlens.pipeline import analyze

    path = tmp_path / "clip.mp4"
    path.write_bytes(shared(*DEMO).read_bytes())
    db = f"sqlite:///{tmp_path / 'm.db'}"
    earlier = analyze(path, fps=1.0, db=db).id
    started = []

    def vanish(aid: int) -> None:  # probed here, gone by the time a worker opens it
        started.append(aid)
        path.unlink()

    with pytest.raises(MediaError, match="clip.mp4: no such file"):
        analyze(path, fps=2.0, db=db, executor="ray", segment_s=5.0, on_start=vanish)
    store = Store(db)
    assert store.analysis(started[0]).status == "failed"
    assert store.analysis(earlier).status == "complete"


def test_unreachable_cluster_and_missing_ray_are_one_line(tmp_path, monkeypatch):
    clip = shared(*DEMO)
    r = subprocess.run([*CLI, "analyze", str(clip), "--executor", "ray", "--ray-address", "127.0.0.1:9",
                        "--db", f"sqlite:///{tmp_path / 'm.db'}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot reach the Ray cluster at 127.0.0.1:9" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    from moodlens.executors import ray as ray_executor
    with pytest.raises(MoodlensError, match=r"needs Ray, which is not installed: pip install 'moodlens\[ray\]'"):
        ray_executor.connect()


def test_many_videos_one_analysis_each_local_and_ray(tmp_path):
    demo, crowd = shared(*DEMO), shared(*CROWD)
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    db = f"sqlite:///{tmp_path / 'm.db'}"
    r = subprocess.run([*CLI, "analyze", str(demo), str(crowd), str(bad), "--db", db, "--out", str(tmp_path / "o"),
                        "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "1 of 3 videos failed: notes.mp4" in r.stderr
    local = {Path(x["video"]).name: x for x in json.loads(r.stdout)}
    assert "not a readable video" in local["notes.mp4"]["error"]
    assert (tmp_path / "o" / "video" / "records.csv").is_file()
    assert (tmp_path / "o" / "WolfgangLanger_Pexels" / "records.csv").is_file()
    r = subprocess.run([*CLI, "analyze", str(demo), str(crowd), "--db", db, "--executor", "ray", "--segment-s", "5",
                        "--json"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "RAY_ADDRESS": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    distributed = {Path(x["video"]).name: x for x in json.loads(r.stdout)}
    for name in ("WolfgangLanger_Pexels.mp4", "video.mp4"):
        assert (distributed[name]["observations"], distributed[name]["tracks"]) == \
            (local[name]["observations"], local[name]["tracks"])
        assert distributed[name]["timings"]["executor"] == "ray"


def test_serve_runs_its_jobs_on_ray(tmp_path):
    """``moodlens serve --executor ray``: the queue stays in the database, the segments run on Ray,
    and the job's analysis has the local run's rows."""
    from service_util import running_server

    from moodlens.pipeline import analyze, load_analysis

    clip = shared(*DEMO)
    local = analyze(clip, fps=2.0, db=f"sqlite:///{tmp_path / 'local.db'}")
    with running_server(tmp_path / "srv", "--executor", "ray", "--segment-s", "5", timeout=120) as server:
        with server.client() as c, open(clip, "rb") as f:
            job_id = c.post("/api/videos", files={"file": (clip.name, f, "video/mp4")},
                            data={"report": "false"}).json()["job_id"]
        job = server.wait_job(job_id, timeout=300)
        assert job["status"] == "complete", job
        a = load_analysis(job["analysis_id"], server.db)
        assert a.timings["executor"] == "ray" and a.timings["segments"] == 4
        assert _rows(a) == _rows(local)
