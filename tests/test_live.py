"""Live audiences: the edge agent, its outbox, the batch format and the server's ingest.

The property that proves it: ``moodlens edge CLIP`` through a real server on loopback gives
the rows ``moodlens analyze CLIP`` gives at the same fps (same frames, faces, boxes, tracks;
emotion scores within what the crop's JPEG encoding explains), and still does when the
server is killed with SIGKILL midway and started again while the agent keeps capturing.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import shared
from moodlens.edge.outbox import Outbox
from moodlens.edge.protocol import Batch, BatchError, FaceIn, FrameIn, decode, encode
from moodlens.types import EMOTIONS
from service_util import free_port, running_server, start_server, stop_server

EDGE = [sys.executable, "-m", "moodlens.cli", "edge"]
DEMO = ("video", "pyfeat", "WolfgangLanger_Pexels.mp4")
CROWD = ("video", "facenet_pytorch", "video.mp4")
# What the crop's JPEG q90 explains (benchmarks/live_fidelity.py, 544 faces of 29 shared clips): a face's largest
# class change is 0.63 points at the median, 3.64 at p99, 8.34 at most (0-100 scale); a clip's mean of it, ~1.
JPEG_TOLERANCE = 10.0
JPEG_MEAN_TOLERANCE = 1.5


# -- the batch format -----------------------------------------------------------------------
def _face(**kw) -> FaceIn:
    base = dict(box=[1.5, 2.25, 30.0, 40.0], landmarks=[float(i) for i in range(10)], score=0.91, quality=0.5)
    return FaceIn(**{**base, **kw})


def test_batch_round_trip_crops_and_scores():
    hist = np.linspace(0, 1, 64) / np.linalg.norm(np.linspace(0, 1, 64))
    b = Batch("cam", "s", "stream1", 7, "crops", [
        FrameIn(0, 0.0, 0, 100.0, [_face(crop=b"\xff\xd8abc", hist=hist, arc=b"xyz")]),
        FrameIn(15, 0.5, 1, 100.5, [])], meta={"source": "a.mp4"}, stats={"sent_bytes": 5}, close=True)
    out = decode(encode(b))
    assert (out.device, out.session, out.stream, out.seq, out.mode, out.close) == ("cam", "s", "stream1", 7,
                                                                                 "crops", True)
    f = out.frames[0].faces[0]
    assert f.box == [1.5, 2.25, 30.0, 40.0] and f.crop == b"\xff\xd8abc" and f.arc == b"xyz"
    assert np.allclose(f.hist, hist, atol=1e-3)
    assert [fr.index for fr in out.frames] == [0, 15] and out.frames[1].shot == 1
    s = Batch("cam", "s", "x", 1, "scores", [FrameIn(0, 0.0, 0, 1.0, [
        _face(emotions=[0.125] * 8, track=3, embedding=np.ones(128) / np.sqrt(128))])])
    g = decode(encode(s)).frames[0].faces[0]
    assert g.emotions == [0.125] * 8 and g.track == 3 and g.crop is None
    assert np.allclose(g.embedding, 1 / np.sqrt(128), atol=1e-3)


@pytest.mark.parametrize("data, message", [
    (b"GIF89a", "magic"),
    (b"MLB1\x00\x00\x00\x05zzzzz", "cannot be read"),
])
def test_batch_errors_say_what(data, message):
    with pytest.raises(BatchError, match=message):
        decode(data)


def test_batch_cut_short_or_padded_is_refused():
    b = Batch("cam", "s", "x", 1, "crops", [FrameIn(0, 0.0, 0, 1.0, [_face(crop=b"abcdef", hist=np.ones(64) / 8)])])
    data = encode(b)
    with pytest.raises(BatchError, match="cut short"):
        decode(data[:-10])
    with pytest.raises(BatchError, match="bytes after"):
        decode(data + b"junk")
    with pytest.raises(BatchError, match="no emotion scores"):
        decode(encode(Batch("cam", "s", "x", 1, "scores", [FrameIn(0, 0.0, 0, 1.0, [_face(track=1)])])))


# -- the outbox -------------------------------------------------------------------------------
def test_outbox_keeps_batches_across_restarts_and_acks_in_order(tmp_path):
    box = Outbox(tmp_path / "buf", max_bytes=10_000)
    stream = box.stream
    seqs = [box.next_seq() for _ in range(3)]
    assert seqs == [1, 2, 3]
    for s in seqs:
        assert box.put(s, "sess", bytes([s]) * 100, frames=2, faces=1)
    box.ack(1, 100)
    box.close()
    again = Outbox(tmp_path / "buf", max_bytes=10_000)  # a restarted agent
    assert again.stream == stream and again.next_seq() == 4
    assert again.peek() == (2, bytes([2]) * 100)
    assert again.backlog() == (2, 200)
    assert again.counters()["sent_bytes"] == 100


def test_outbox_full_drops_new_batches_and_counts_them(tmp_path):
    box = Outbox(tmp_path / "buf", max_bytes=250)
    assert box.put(1, "s", b"a" * 200, frames=2, faces=3)
    assert not box.put(2, "s", b"b" * 100, frames=2, faces=5)
    assert box.put(3, "s", b"c" * 100, frames=1, faces=0, force=True)  # a closing batch is always kept
    c = box.counters()
    assert (c["dropped_batches"], c["dropped_frames"], c["dropped_faces"]) == (1, 2, 5)
    assert box.backlog() == (2, 300)


# -- the tracker's state survives a restart ----------------------------------------------------
def test_tracker_state_round_trip_gives_the_same_ids():
    from moodlens.faces.track import Tracker
    from moodlens.types import Faces

    rng = np.random.default_rng(1)
    frames = []
    for k in range(12):
        boxes = np.array([[10 + 3 * k, 20, 40, 40], [200 - 4 * k, 50, 36, 36]], np.float32)
        keep = rng.random(2) > 0.2
        feats = rng.normal(size=(2, 320))
        frames.append((Faces(boxes=boxes[keep], landmarks=np.zeros((keep.sum(), 5, 2), np.float32),
                             scores=np.ones(keep.sum(), np.float32)), feats[keep]))
    whole = Tracker()
    ids_whole = [whole.update(f, x).tolist() for f, x in frames]
    first = Tracker()
    ids = [first.update(f, x).tolist() for f, x in frames[:6]]
    resumed = Tracker.from_state({k: np.array(v) for k, v in first.state().items()})
    ids += [resumed.update(f, x).tolist() for f, x in frames[6:]]
    assert ids == ids_whole


# -- edge == analyze, through a real server ------------------------------------------------------
@functools.cache
def _reference(clip: str, tmp: str) -> list[dict]:
    from moodlens.pipeline import analyze

    a = analyze(clip, fps=2.0, db=f"sqlite:///{tmp}/ref-{Path(clip).stem}.db")
    return a.observations


def _live_rows(server, analysis_id: int) -> list[dict]:
    from moodlens.pipeline import load_analysis

    return load_analysis(analysis_id, server.db).observations


def assert_same_observations(ref: list[dict], live: list[dict]) -> dict:
    """Same frames, faces, boxes, scores, quality, shots and tracks; emotions within JPEG's tolerance."""
    key = lambda o: (o["frame"], o["x"], o["y"])  # noqa: E731
    ref, live = sorted(ref, key=key), sorted(live, key=key)
    assert [o["frame"] for o in live] == [o["frame"] for o in ref], "different frames or face counts"
    fields = ("seq", "time_s", "x", "y", "w", "h", "score", "quality", "shot", "landmarks")
    for a, b in zip(ref, live):
        assert {f: a[f] for f in fields} == {f: b[f] for f in fields}
    assert len({o["track"] for o in live}) == len({o["track"] for o in ref}), "different track counts"
    assert [o["track"] for o in live] == [o["track"] for o in ref]
    diff = np.array([[abs(a[e] - b[e]) for e in EMOTIONS] for a, b in zip(ref, live)])
    assert diff.max() <= JPEG_TOLERANCE and diff.max(1).mean() <= JPEG_MEAN_TOLERANCE, diff.max()
    return {"rows": len(ref), "max": float(diff.max()), "mean_of_max": float(diff.max(1).mean())}


def _edge(server_url: str, clip: Path, buffer: Path, *args: str, timeout: float = 240) -> dict:
    r = subprocess.run([*EDGE, str(clip), "--server", server_url, "--buffer", str(buffer), "--device-id", "cam1",
                        "--json", *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _session(server, name: str) -> dict:
    with server.client() as c:
        rows = [s for s in c.get("/api/live/sessions", params={"all": "true"}).json() if s["name"] == name]
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize("clip", [DEMO, CROWD], ids=["640x360", "1080p-crowd"])
def test_edge_gives_the_rows_analyze_gives(tmp_path, clip):
    path = shared(*clip)
    ref = _reference(str(path), str(tmp_path.parent))
    with running_server(tmp_path / "srv") as server:
        summary = _edge(server.url, path, tmp_path / "buf", "--session", "s1")
        s = _session(server, "s1")
        assert s["status"] == "closed" and s["frames"] == summary["frames"]
        assert summary["backlog_batches"] == 0 and summary["sent_batches"] >= summary["frames"] // 2
        stats = assert_same_observations(ref, _live_rows(server, s["analysis_id"]))
        # every batch output works on it: the tables and the report, through the API
        with server.client() as c:
            assert c.get(f"/api/analyses/{s['analysis_id']}").json()["status"] == "complete"
            csv = c.get(f"/api/analyses/{s['analysis_id']}/records.csv")
            assert csv.status_code == 200 and len(csv.text.splitlines()) == stats["rows"] + 1
            assert c.get(f"/api/analyses/{s['analysis_id']}/report.html").status_code == 200


def test_edge_survives_the_server_killed_midway(tmp_path):
    """kill -9 the server while the agent captures at the clip's own pace; start it again;
    the agent's outbox resends what was not acknowledged and the rows are still analyze's."""
    path = shared(*DEMO)
    ref = _reference(str(path), str(tmp_path.parent))
    data = tmp_path / "srv"
    port = free_port()
    server = start_server(data, port=port)
    edge = subprocess.Popen([*EDGE, str(path), "--server", server.url, "--buffer", str(tmp_path / "buf"),
                             "--device-id", "cam1", "--session", "killed", "--realtime", "--json",
                             "--flush-timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # until a few batches are in
            with contextlib.suppress(AssertionError, httpx.HTTPError):
                if _session(server, "killed")["frames"] >= 8:
                    break
            assert time.monotonic() < deadline and edge.poll() is None, edge.stderr.read() if edge.poll() else ""
            time.sleep(0.2)
        os.kill(server.proc.pid, signal.SIGKILL)  # the server only, as a crash would
        server.proc.wait(10)
        time.sleep(3)  # the agent captures into its outbox meanwhile
        server = start_server(data, port=port)
        out, err = edge.communicate(timeout=180)
        assert edge.returncode == 0, err[-3000:]
        summary = json.loads(out.strip().splitlines()[-1])
        assert "unreachable" in err and summary["backlog_batches"] == 0
        s = _session(server, "killed")
        assert s["status"] == "closed" and s["frames"] == summary["frames"] == 40  # 20 s at 2 fps
        assert_same_observations(ref, _live_rows(server, s["analysis_id"]))
    finally:
        if edge.poll() is None:
            edge.kill()
        stop_server(server)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'srv' / 'moodlens.db'}"
    return request.getfixturevalue("pg_url")


def test_a_resent_batch_changes_nothing(tmp_path, any_db):
    """At-least-once from the agent, exactly-once in effect: the key (device, session, stream, seq)."""
    b = Batch("cam9", "dup", "st", 1, "scores", [FrameIn(0, 0.0, 0, time.time(), [
        _face(emotions=[0.5, 0.5, 0, 0, 0, 0, 0, 0], track=0)])], meta={"source": "x.mp4", "fps": 2.0})
    body = encode(b)
    with running_server(tmp_path / "srv", db=any_db) as server, server.client() as c:
        headers = {"Content-Type": "application/vnd.moodlens.batch"}
        first = c.post("/api/live/batches", content=body, headers=headers).json()
        second = c.post("/api/live/batches", content=body, headers=headers).json()
        assert (first["duplicate"], second["duplicate"]) == (False, True)
        s = _session(server, "dup")
        assert (s["batches"], s["duplicates"], s["frames"], s["faces"]) == (1, 1, 1, 1)
        assert c.post("/api/live/batches", content=b"nonsense", headers=headers).status_code == 422
        metrics = c.get("/metrics").text
        assert 'moodlens_live_duplicates_total{device="cam9",session="dup"} 1.0' in metrics
        assert 'moodlens_live_faces_in_view{device="cam9",session="dup"} 1.0' in metrics
        assert 'moodlens_live_emotion_mean{device="cam9",emotion="happiness",session="dup"} 50.0' in metrics
        assert "moodlens_live_ingest_lag_seconds" in metrics
        # closing from the server completes the analysis
        closed = c.post(f"/api/live/sessions/{s['id']}/close").json()
        assert closed["status"] == "closed"
        assert c.get(f"/api/analyses/{s['analysis_id']}").json()["status"] == "complete"


def test_scores_only_sends_no_face_image_and_matches_analyze(tmp_path):
    path = shared(*DEMO)
    ref = _reference(str(path), str(tmp_path.parent))
    # with the server away and no time to flush, the batches stay in the outbox: look inside
    port = free_port()
    r = subprocess.run([*EDGE, str(path), "--server", f"http://127.0.0.1:{port}", "--buffer", str(tmp_path / "buf"),
                        "--device-id", "cam1", "--session", "sc", "--scores-only", "--flush-timeout", "0", "--json"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 3 and "unreachable" in r.stderr and "stay in" in r.stderr, r.stderr[-2000:]
    box = Outbox(tmp_path / "buf", max_bytes=2**30)
    batches = []
    while (item := box.peek()) is not None:
        batches.append(decode(item[1]))
        box.ack(item[0], 0)
    faces = [f for b in batches for fr in b.frames for f in fr.faces]
    assert faces and all(f.crop is None and f.arc is None and f.hist is None for f in faces)
    assert batches[-1].close
    # the scores the device made are the analysis' scores (no JPEG in between)
    got = sorted((fr.index, f.box[0], f.emotions) for b in batches for fr in b.frames for f in fr.faces)
    want = sorted((o["frame"], o["x"], [o[e] / 100 for e in EMOTIONS]) for o in ref)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    assert np.allclose([g[2] for g in got], [w[2] for w in want], atol=1e-5)


def test_restarted_agent_sends_its_backlog_first(tmp_path):
    """The server is down for the first run: everything waits in the buffer; the next run sends it."""
    path = shared(*DEMO)
    port = free_port()
    r = subprocess.run([*EDGE, str(path), "--server", f"http://127.0.0.1:{port}", "--buffer", str(tmp_path / "buf"),
                        "--device-id", "cam1", "--session", "first", "--flush-timeout", "0", "--json"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 3
    first = json.loads(r.stdout.strip().splitlines()[-1])
    assert first["backlog_batches"] > 5 and first["sent_batches"] == 0
    with running_server(tmp_path / "srv", port=port) as server:
        second = _edge(server.url, path, tmp_path / "buf", "--session", "second")
        assert second["backlog_batches"] == 0
        a, b = _session(server, "first"), _session(server, "second")
        assert a["status"] == b["status"] == "closed" and a["frames"] == b["frames"] == first["frames"]


def test_idle_session_is_closed_and_complete(tmp_path):
    b = Batch("cam2", "idle", "st", 1, "scores", [FrameIn(0, 0.0, 0, time.time(), [
        _face(emotions=[1, 0, 0, 0, 0, 0, 0, 0], track=0)])], meta={"source": "x.mp4", "fps": 2.0})
    with running_server(tmp_path / "srv", "--live-idle", "2") as server, server.client() as c:
        assert c.post("/api/live/batches", content=encode(b)).status_code == 200
        deadline = time.monotonic() + 30
        while _session(server, "idle")["status"] == "live":
            assert time.monotonic() < deadline, "the idle session was never closed"
            time.sleep(0.5)
        s = _session(server, "idle")
        assert c.get(f"/api/analyses/{s['analysis_id']}").json()["status"] == "complete"


def test_http_source(tmp_path):
    """A network stream (here HTTP from a local server) is read by PyAV like a camera."""
    path = shared(*DEMO)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with running_server(tmp_path / "srv") as server:
            url = f"http://127.0.0.1:{httpd.server_address[1]}/{path.name}"
            summary = _edge(server.url, url, tmp_path / "buf", "--session", "http", "--fps", "4")
            assert summary["frames"] > 10 and summary["faces"] > 10
            s = _session(server, "http")
            assert s["meta"]["source_kind"] == "stream" and s["faces"] == summary["faces"]
    finally:
        httpd.shutdown()


def test_clear_errors(tmp_path):
    path = shared(*DEMO)

    def edge(*args: str, server: str = "http://127.0.0.1:9") -> subprocess.CompletedProcess:
        return subprocess.run([*EDGE, *args, "--server", server, "--buffer", str(tmp_path / "b"),
                               "--flush-timeout", "0"], capture_output=True, text=True, timeout=120)

    r = edge("/dev/video99")
    assert r.returncode == 2 and "no such camera" in r.stderr
    r = edge(str(tmp_path / "missing.mp4"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = edge(str(path), server="ftp://x")
    assert r.returncode == 2 and "--server" in r.stderr
    # an HTTP server that is not moodlens
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        r = edge(str(path), server=f"http://127.0.0.1:{httpd.server_address[1]}")
        assert r.returncode == 2 and "moodlens server" in r.stderr
    finally:
        httpd.shutdown()
    # a revoked token, and one without the ingest role
    with running_server(tmp_path / "srv") as server:
        db = ["--db", server.db]
        cli = [sys.executable, "-m", "moodlens.cli", "tokens"]
        ingest = subprocess.run([*cli, "create", "cam", "--role", "ingest", *db], capture_output=True, text=True,
                                check=True).stdout.strip().splitlines()[-1]
        viewer = subprocess.run([*cli, "create", "v", "--role", "viewer", *db], capture_output=True, text=True,
                                check=True).stdout.strip().splitlines()[-1]
        subprocess.run([*cli, "revoke", "cam", *db], check=True, capture_output=True)
        r = edge(str(path), "--token", ingest, server=server.url)
        assert r.returncode == 2 and "refused the token" in r.stderr
        r = edge(str(path), "--token", viewer, server=server.url)
        assert r.returncode == 2 and "ingest role" in r.stderr


def test_sigterm_closes_the_session_and_a_killed_agent_resumes(tmp_path):
    """SIGTERM: the agent stops capturing, closes the session and flushes (exit 0). SIGKILL: the
    next run with the same --buffer resumes the session where its outbox stopped."""
    path = shared(*DEMO)
    ref = _reference(str(path), str(tmp_path.parent))
    with running_server(tmp_path / "srv") as server:
        def start(buffer: str, session: str) -> subprocess.Popen:
            return subprocess.Popen([*EDGE, str(path), "--server", server.url, "--buffer", str(tmp_path / buffer),
                                     "--device-id", "cam1", "--session", session, "--realtime", "--json"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def wait_frames(name: str, n: int) -> None:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(AssertionError):
                    if _session(server, name)["frames"] >= n:
                        return
                assert time.monotonic() < deadline
                time.sleep(0.2)

        edge = start("b1", "term")
        wait_frames("term", 6)
        edge.send_signal(signal.SIGTERM)
        out, err = edge.communicate(timeout=60)
        assert edge.returncode == 0, err[-2000:]
        summary = json.loads(out.strip().splitlines()[-1])
        s = _session(server, "term")
        assert s["status"] == "closed" and s["frames"] == summary["frames"] < 40
        got = _live_rows(server, s["analysis_id"])
        assert [(o["frame"], o["x"]) for o in got] == [(o["frame"], o["x"]) for o in ref][:len(got)]

        edge = start("b2", "resumed")
        wait_frames("resumed", 6)
        edge.kill()
        edge.wait(10)
        assert _session(server, "resumed")["status"] == "live"
        r = subprocess.run([*EDGE, str(path), "--server", server.url, "--buffer", str(tmp_path / "b2"),
                            "--device-id", "cam1", "--json"], capture_output=True, text=True, timeout=240)
        assert r.returncode == 0 and "resuming session 'resumed'" in r.stderr, r.stderr[-2000:]
        s = _session(server, "resumed")
        assert s["status"] == "closed" and s["frames"] == 40  # each sampled frame once, none twice
        got = _live_rows(server, s["analysis_id"])
        assert sorted((o["frame"], o["x"]) for o in got) == sorted((o["frame"], o["x"]) for o in ref)


def test_live_names_match_analyze_with_a_collection(tmp_path):
    """A session naming a collection: 112 px crops go up, SFace embeddings (never images) are
    stored, and at the close the tracks are named as ``analyze --collection`` names them."""
    import cv2

    from moodlens import media
    from moodlens.collections import enroll
    from moodlens.pipeline import analyze
    from moodlens.store import Store

    path = shared(*DEMO)
    other = shared("identity", "bbt", "raj", "raj1.png")
    frame = next(f for f in media.iter_frames(path, fps=1.0) if f.time_s >= 5)
    photo = tmp_path / "wolfgang.png"
    cv2.imwrite(str(photo), frame.image)
    with running_server(tmp_path / "srv") as server:
        store = Store(server.db)
        enroll(store, "cast", "wolfgang", [photo])
        enroll(store, "cast", "raj", [other])
        ref = analyze(path, fps=2.0, db=server.db, collection="cast")  # the same collection
        _edge(server.url, path, tmp_path / "buf", "--session", "named", "--collection", "cast")
        s = _session(server, "named")
        live = _live_rows(server, s["analysis_id"])
        # --scores-only with a collection: the device sends SFace embeddings (numbers), never a face
        _edge(server.url, path, tmp_path / "buf2", "--session", "named-scores", "--collection", "cast",
              "--scores-only")
        scores_only = _live_rows(server, _session(server, "named-scores")["analysis_id"])
        with server.client() as c:
            r = c.get("/api/live/ping", params={"collection": "nobody"})
            assert r.status_code == 404
    want = {(o["frame"], o["x"]): o["person"] for o in ref.observations}
    got = {(o["frame"], o["x"]): o["person"] for o in live}
    assert got == want and "wolfgang" in set(got.values())
    assert {(o["frame"], o["x"]): o["person"] for o in scores_only} == want
    with store.session() as db:
        from sqlalchemy import func, select

        from moodlens.service.tables import LiveEmbeddingRow
        assert db.scalar(select(func.count()).select_from(LiveEmbeddingRow)) == len(live) + len(scores_only)


def test_a_full_buffer_drops_new_batches_says_so_and_counts_them(tmp_path):
    from moodlens.edge.agent import EdgeAgent, EdgeConfig

    path = shared(*DEMO)
    said = []
    agent = EdgeAgent(EdgeConfig(source=str(path), server=f"http://127.0.0.1:{free_port()}", device="cam1",
                                 session="full", buffer=tmp_path / "buf", buffer_max_mb=0.03, flush_timeout_s=0),
                      log=said.append)
    summary = agent.run()
    assert summary["dropped_batches"] > 0 and summary["dropped_frames"] > 0
    assert summary["backlog_bytes"] <= 0.03 * 2**20 + 1000  # + the closing batch (a header, no frames)
    assert summary["frames"] == 40 and summary["sent_batches"] == 0
    assert any("is full" in m for m in said) and any("unreachable" in m for m in said)


def test_a_truncated_file_sends_what_it_had_then_fails(tmp_path):
    """Bad input loses nothing: the frames before the cut are stored, the session is closed, and
    the agent exits 2 with the file and the time where it stops."""
    path = shared(*DEMO)
    cut = tmp_path / "cut.mp4"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    with running_server(tmp_path / "srv") as server:
        r = subprocess.run([*EDGE, str(cut), "--server", server.url, "--buffer", str(tmp_path / "buf"),
                            "--device-id", "cam1", "--session", "cut"], capture_output=True, text=True, timeout=240)
        assert r.returncode == 2 and "cut.mp4" in r.stderr, r.stderr[-2000:]
        s = _session(server, "cut")
        assert s["status"] == "closed" and 0 < s["frames"] < 40
