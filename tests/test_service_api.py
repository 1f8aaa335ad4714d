"""The service's API and security against a REAL ``moodlens serve`` (a uvicorn subprocess on loopback).

Each group of checks shares one server (a start costs ~3 s): results and bad input on a
server without tokens; the streaming size limit on one with ``--max-upload-mb 1``; tokens,
roles and ``moodlens submit`` on one with tokens; the watch folder across a restart; and
``--host 0.0.0.0`` refused or allowed. Only 127.0.0.1 is ever sent traffic.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import shared
from service_util import free_port, running_server, start_server, stop_server

CLI = [sys.executable, "-m", "moodlens.cli"]
BOUNDARY = "moodlens-test-boundary"
MP = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def video(name: str = "single_face.mp4") -> Path:
    return shared("video", "pyfeat", name)


def multipart(filename: bytes, data: bytes, fields: dict[str, str] | None = None, close: bool = True) -> bytes:
    """A hand-made multipart body (httpx would percent-encode odd filenames)."""
    b = BOUNDARY.encode()
    out = b"--" + b + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n' \
        b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    for k, v in (fields or {}).items():
        out += b"--" + b + f'\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    return out + (b"--" + b + b"--\r\n" if close else b"")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def uploads_of(server) -> set[str]:
    """Every name in the server's uploads folder, hidden ``.incoming-*.part`` files included."""
    up = server.data_dir / "uploads"
    return set(os.listdir(up)) if up.exists() else set()


def port_of(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def raw_request(port: int, data: bytes, timeout: float = 15) -> bytes:
    """Send bytes on a fresh socket and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return out


def detail(r: httpx.Response) -> str:
    d = r.json()["detail"]
    assert isinstance(d, str) and "\n" not in d, d  # one line
    return d


def upload(c: httpx.Client, path: Path, **fields) -> httpx.Response:
    with open(path, "rb") as f:
        return c.post("/api/videos", files={"file": (path.name, f, "video/mp4")},
                      data={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()})


def db_rows(server, sql: str, *params) -> list[tuple]:
    path = server.db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as con:
        return con.execute(sql, params).fetchall()


# == a server without tokens: results, erasure, bad input, metrics, collections ==============
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    shared("video", "pyfeat")
    root = tmp_path_factory.mktemp("api")
    with running_server(root / "deep" / "er" / "data") as s:
        yield s


@pytest.fixture(scope="module")
def done_job(server):
    """WolfgangLanger_Pexels.mp4 uploaded with emoji_video=true and analysed (fps 2)."""
    with server.client() as c:
        r = upload(c, video("WolfgangLanger_Pexels.mp4"), fps=2, emoji_video=True)
        assert r.status_code == 201, r.text
        assert set(r.json()) == {"job_id"}
        job = server.wait_job(r.json()["job_id"])
    assert job["status"] == "complete", job
    assert job["filename"] == "WolfgangLanger_Pexels.mp4" and job["progress"] == 1.0
    assert [s["name"] for s in job["stages"]] == ["analyze", "tables", "report", "emoji video"]
    return job


@pytest.fixture(scope="module")
def cli_out(done_job, tmp_path_factory):
    """The same video through ``moodlens analyze --out`` (its own database, same fps)."""
    d = tmp_path_factory.mktemp("cli")
    p = run_cli("analyze", str(video("WolfgangLanger_Pexels.mp4")), "--fps", "2", "--out", str(d / "out"),
                "--db", f"sqlite:///{d / 'cli.db'}")
    assert p.returncode == 0, p.stderr
    return d / "out"


def _seq_stem(records_csv: bytes) -> str:
    first = next(csv.DictReader(io.StringIO(records_csv.decode())))
    return first["seq"].rsplit("/", 1)[0]


@pytest.mark.parametrize("name", ["records.csv", "records.jsonl", "summary.csv"])
def test_results_over_http_equal_analyze_cli(server, done_job, cli_out, name):
    """One pipeline, several drivers: the service's tables equal `moodlens analyze --out`'s, byte for byte."""
    with server.client() as c:
        r = c.get(f"/api/analyses/{done_job['analysis_id']}/{name}")
        assert r.status_code == 200, r.text
    mine, theirs = r.content, (cli_out / name).read_bytes()
    assert len(theirs) > 200
    assert mine == theirs  # the upload's own name, not the server's random file name, is in `seq`
    if name == "records.csv":
        assert len(theirs.splitlines()) > 30  # 20 s at 2 fps, one face


def test_records_name_the_uploaded_file(server, done_job):
    with server.client() as c:
        stem = _seq_stem(c.get(f"/api/analyses/{done_job['analysis_id']}/records.csv").content)
        report = c.get(f"/api/analyses/{done_job['analysis_id']}/report.html").text
    assert stem == "WolfgangLanger_Pexels"
    assert "WolfgangLanger_Pexels.mp4" in report


def test_report_and_emoji_video_with_ranges(server, done_job):
    aid = done_job["analysis_id"]
    emoji = server.data_dir / "analyses" / str(aid) / "emoji.mp4"
    whole = emoji.read_bytes()
    with server.client() as c:
        a = c.get(f"/api/analyses/{aid}").json()
        assert a["status"] == "complete" and a["frames"] > 30 and a["observations"] > 30
        assert set(a["files"]) == {"records.csv", "records.jsonl", "summary.csv", "report.html", "emoji.mp4"}
        r = c.get(f"/api/analyses/{aid}/report.html")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "<html" in r.text[:2000].lower()
        r = c.get(f"/api/analyses/{aid}/emoji.mp4", headers={"Range": "bytes=0-99"})
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes 0-99/{len(whole)}"
        assert r.content == whole[:100]
        r = c.get(f"/api/analyses/{aid}/emoji.mp4", headers={"Range": f"bytes={len(whole) - 10}-"})
        assert r.status_code == 206 and r.content == whole[-10:]
        r = c.get(f"/api/analyses/{aid}/emoji.mp4")
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
        assert r.headers.get("accept-ranges") == "bytes"
        assert r.content == whole
        assert c.get(f"/api/analyses/{aid}/nope.txt").status_code == 404
        assert c.get(f"/api/analyses/{aid}/..%2f..%2fmoodlens.db").status_code == 404


def test_delete_erases_rows_files_upload_and_job(server):
    """Every attempt's rows go too: here a cancelled first attempt, then a retry that completes."""
    before = uploads_of(server)
    with server.client() as c:
        r = upload(c, video("WolfgangLanger_Pexels.mp4"), report=False, fps=10)  # seconds: time to cancel
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]
        t0 = time.monotonic()
        while not (job := c.get(f"/api/jobs/{job_id}").json())["analysis_id"] and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        first = job["analysis_id"]
        assert c.post(f"/api/jobs/{job_id}/cancel").status_code == 200
        assert server.wait_job(job_id)["status"] == "cancelled"
        assert db_rows(server, "SELECT status FROM analyses WHERE id = ?", first)[0][0] != "complete"
        assert c.post(f"/api/jobs/{job_id}/retry").status_code == 200
        job = server.wait_job(job_id)
        assert job["status"] == "complete" and job["attempts"] == 2, job
        aid = job["analysis_id"]
        assert aid != first
        (stored,) = uploads_of(server) - before
        assert re.fullmatch(r"[0-9a-f]{32}\.mp4", stored)
        assert db_rows(server, "SELECT count(*) FROM observations WHERE analysis_id = ?", aid)[0][0] > 0
        folder = server.data_dir / "analyses" / str(aid)
        assert folder.is_dir()

        r = c.delete(f"/api/analyses/{aid}")
        assert r.status_code == 204, r.text
        for a in (aid, first):
            assert db_rows(server, "SELECT count(*) FROM observations WHERE analysis_id = ?", a)[0][0] == 0
            assert db_rows(server, "SELECT count(*) FROM analyses WHERE id = ?", a)[0][0] == 0
        assert c.get(f"/api/analyses/{aid}").status_code == 404
        assert c.get(f"/api/analyses/{aid}/records.csv").status_code == 404
        assert not folder.exists()
        assert stored not in uploads_of(server)
        assert c.get(f"/api/jobs/{job['id']}").status_code == 404
        assert c.delete(f"/api/analyses/{aid}").status_code == 404


def test_bad_uploads_get_one_line_answers_and_leave_nothing(server, tmp_path):
    before = uploads_of(server)
    n_jobs = len(db_rows(server, "SELECT id FROM jobs"))
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a video\n" * 100)
    with server.client() as c:
        r = upload(c, text_file)
        assert r.status_code == 415
        assert detail(r).startswith("notes.txt: not a readable video")
        r = c.post("/api/videos", files={"file": ("empty.mp4", b"")})
        assert r.status_code == 422 and detail(r) == "empty.mp4: empty file (0 bytes)"
        r = c.post("/api/videos", content=b"", headers=MP)
        assert r.status_code == 422 and detail(r).startswith("empty request body")
        r = c.post("/api/videos", content=b"")
        assert r.status_code == 415 and "multipart/form-data" in detail(r)
        r = c.post("/api/videos", json={"file": "x.mp4"})
        assert r.status_code == 415 and "multipart/form-data" in detail(r)
        r = c.post("/api/videos", content=multipart(b"x.mp4", b"123"),
                   headers={"content-type": "multipart/form-data"})  # no boundary
        assert r.status_code == 415
        r = c.post("/api/videos", content=multipart(b"x.mp4", video().read_bytes()),
                   headers={"content-type": "multipart/form-data; boundary=another"})
        assert r.status_code == 400 and detail(r).startswith("malformed multipart body")
        r = c.post("/api/videos", content=multipart(b"x.mp4", video().read_bytes(), close=False), headers=MP)
        assert r.status_code == 400 and "truncated" in detail(r)
        r = c.post("/api/videos", content=os.urandom(4096), headers=MP)
        assert r.status_code == 400 and detail(r).startswith("malformed multipart body")
        r = c.post("/api/videos", content=multipart(b"x.mp4", b"x", {"fps": "2"}).replace(b'name="file"', b'name="f"'),
                   headers=MP)
        assert r.status_code == 422 and "field named 'file'" in detail(r)
        data = video().read_bytes()
        for fps in ("nan", "-1", "x", "1000", "inf", "0"):
            r = c.post("/api/videos", files={"file": ("a.mp4", data)}, data={"fps": fps})
            assert r.status_code == 422, (fps, r.text)
            assert "fps" in detail(r)
        r = c.post("/api/videos", files={"file": ("a.mp4", data)}, data={"emoji_video": "maybe"})
        assert r.status_code == 422 and detail(r) == "'maybe' is not true or false"
        assert c.get("/api/jobs/987654").status_code == 404
        assert detail(c.get("/api/jobs/987654")) == "job 987654: no such job"
        assert c.post("/api/jobs/987654/retry").status_code == 404
        assert c.post("/api/jobs/987654/cancel").status_code == 404
        r = c.get("/api/analyses/987654")
        assert r.status_code == 404 and detail(r) == "analysis 987654: no such analysis"  # no database URL
    assert uploads_of(server) == before  # no partial or kept file, hidden ones included
    assert len(db_rows(server, "SELECT id FROM jobs")) == n_jobs  # and no job


def test_traversal_and_control_character_filenames_stay_names(server):
    data_dir = server.data_dir
    outside = data_dir.parents[2]  # tmp/api*/ : "../../" from data-dir lands here
    before_outside = {p for p in outside.rglob("*") if data_dir not in p.parents and p != data_dir}
    before = uploads_of(server)
    cases = {b"../../etc/passwd.mp4": "passwd.mp4", b"..\\..\\x.mp4": "x.mp4", b"a\x00b.mp4": "ab.mp4",
             b"a\nb.mp4": "ab.mp4", b"/abs/path/y.MP4": "y.MP4", b"../../": "upload", b"..": "upload",
             b"..\\..\\evil.sh": "evil.sh"}
    ids = {}
    with server.client() as c:
        for raw, shown in cases.items():
            r = c.post("/api/videos", content=multipart(raw, video().read_bytes(), {"report": "false"}), headers=MP)
            assert r.status_code == 201, (raw, r.text)
            ids[raw] = r.json()["job_id"]
            assert c.get(f"/api/jobs/{ids[raw]}").json()["filename"] == shown
        new = uploads_of(server) - before
        assert len(new) == len(cases)
        assert all(re.fullmatch(r"[0-9a-f]{32}\.(mp4|bin|sh)", n) for n in new), new
        for job_id in ids.values():
            assert server.wait_job(job_id)["status"] == "complete"
    after_outside = {p for p in outside.rglob("*") if data_dir not in p.parents and p != data_dir}
    assert after_outside == before_outside
    assert not Path("/etc/passwd.mp4").exists() and not Path("/work/etc/passwd.mp4").exists()


def test_huge_headers_are_refused_and_the_server_stays_up(server):
    port = port_of(server)
    one_read = raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert one_read.split(b"\r\n", 1)[0] in (b"HTTP/1.1 431 Request Header Fields Too Large",
                                            b"HTTP/1.1 400 Bad Request"), one_read[:200]
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(10_000))  # 1 MB of headers
    big = raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert big.split(b"\r\n", 1)[0] in (b"HTTP/1.1 431 Request Header Fields Too Large",
                                       b"HTTP/1.1 400 Bad Request"), big[:200]
    with server.client() as c:
        r = c.get("/healthz", headers={"X-Big": "a" * 100_000})
        assert r.status_code in (431, 400)  # 400 from uvicorn when the headers arrive in pieces
        if r.status_code == 431:
            assert detail(r) == "request headers larger than 64 KB"
        assert c.get("/healthz").status_code == 200


def test_without_tokens_only_this_machines_pages_may_call(server, done_job):
    """No token on loopback means the local user, not any web page they open: a cross-site form
    (Origin) and a name rebound to 127.0.0.1 (Host) are refused."""
    with server.client() as c:
        r = c.post("/api/collections/x/people", data={"person": "p"}, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and detail(r).startswith("refused: without a token")
        r = c.post("/api/videos", files={"file": ("a.mp4", b"x")}, headers={"Origin": "null"})
        assert r.status_code == 403
        assert c.get("/api/jobs", headers={"Host": "evil.example"}).status_code == 403
        assert c.delete(f"/api/analyses/{done_job['analysis_id']}", headers={"Host": "rebound.example:80"}
                        ).status_code == 403
        assert c.get("/api/jobs", headers={"Origin": server.url}).status_code == 200
        assert c.get("/api/jobs", headers={"Host": "localhost"}).status_code == 200
        assert c.get(f"/api/analyses/{done_job['analysis_id']}").status_code == 200  # not deleted


def test_metrics_labels_stay_bounded(server):
    port = port_of(server)
    for method in (b"BREW", b"X-RANDOM-1"):
        answer = raw_request(port, method + b" /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 405")
    with server.client() as c:
        text = c.get("/metrics").text
    assert "BREW" not in text and "X-RANDOM" not in text and 'method="other"' in text


def test_retry_of_a_complete_job_is_409(server, done_job):
    with server.client() as c:
        r = c.post(f"/api/jobs/{done_job['id']}/retry")
        assert r.status_code == 409
        assert detail(r) == f"job {done_job['id']} is complete; only failed or cancelled jobs can be retried"
        assert c.post(f"/api/jobs/{done_job['id']}/cancel").status_code == 409


def test_metrics_docs_and_openapi(server, done_job):
    with server.client() as c:
        text = c.get("/metrics").text
        for name in ('moodlens_jobs{status="complete"}', 'moodlens_jobs{status="queued"}', "moodlens_queue_depth",
                     "moodlens_stage_seconds_bucket", "moodlens_frames_total", "moodlens_faces_total",
                     "moodlens_realtime_factor", "moodlens_upload_bytes_total", "moodlens_http_request_seconds"):
            assert name in text, name
        frames = float(re.search(r"^moodlens_frames_total (\S+)$", text, re.M).group(1))
        assert frames >= 40  # at least the 20 s video at 2 fps
        assert float(re.search(r"^moodlens_upload_bytes_total (\S+)$", text, re.M).group(1)) >= 1_632_292
        assert c.get("/docs").status_code == 200 and "swagger" in c.get("/docs").text.lower()
        spec = c.get("/openapi.json").json()
        assert {"/api/videos", "/api/jobs", "/api/jobs/{job_id}", "/api/analyses/{analysis_id}"} <= set(spec["paths"])


def test_collections_enrol_list_delete(server, tmp_path):
    import cv2
    import numpy as np

    people = shared("identity", "facenet_pytorch")
    blank = tmp_path / "wall.jpg"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 128, np.uint8))
    with server.client() as c:
        for person in ("paul_rudd", "kate_siegel"):
            photos = sorted((people / person).glob("*.jpg"))
            files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
            r = c.post("/api/collections/cast/people", data={"person": person}, files=files)
            assert r.status_code == 201, r.text
            assert r.json() == {"collection": "cast", "person": person, "enrolled": len(photos)}
        listed = c.get("/api/collections").json()
        cast = next(x for x in listed if x["name"] == "cast")
        assert sorted(p["person"] for p in cast["people"]) == ["kate_siegel", "paul_rudd"]
        r = c.post("/api/collections/cast/people", data={"person": "nobody"},
                   files=[("file", ("wall.jpg", blank.read_bytes(), "image/jpeg"))])
        assert r.status_code == 422
        msg = detail(r)
        assert msg.startswith("wall.jpg: no face found"), msg
        assert str(server.data_dir) not in msg  # no server path in the answer
        r = c.post("/api/collections/cast/people", data={"person": "x"}, files=[("file", ("a.jpg", b"not an image"))])
        assert r.status_code == 422 and str(server.data_dir) not in detail(r)
        assert c.post("/api/collections/cast/people", data={"person": "x"}).status_code == 422
        big = os.urandom(101 * 2**20)  # over the 100 MB an enrolment may send, declared and chunked
        r = c.post("/api/collections/cast/people", data={"person": "x"}, files=[("file", ("big.jpg", big))])
        assert r.status_code == 413 and "at most 100 MB" in detail(r)

        def chunked():
            body = multipart(b"big.jpg", big, {"person": "x"})
            for i in range(0, len(body), 2**20):
                yield body[i:i + 2**20]
        r = c.post("/api/collections/cast/people", content=chunked(), headers=MP)
        assert r.status_code == 413 and "at most 100 MB" in detail(r)
        assert c.delete("/api/collections/cast/people/paul_rudd").status_code == 204
        assert c.delete("/api/collections/cast/people/paul_rudd").status_code == 404
        cast = next(x for x in c.get("/api/collections").json() if x["name"] == "cast")
        assert [p["person"] for p in cast["people"]] == ["kate_siegel"]
    assert not [p for p in server.data_dir.iterdir() if p.name.startswith("tmp")]  # photos' temp folder gone


# == the size limit while streaming, and a client that goes away ============================
def test_size_limit_and_disconnect_leave_nothing(tmp_path):
    data = video().read_bytes()
    with running_server(tmp_path / "data", "--max-upload-mb", "1") as s:
        with s.client() as c:
            big = os.urandom(3 * 2**20)
            r = c.post("/api/videos", files={"file": ("big.mp4", big)})  # Content-Length declared
            assert r.status_code == 413 and "limit of 1 MB" in detail(r)

            def chunked():  # no Content-Length: the limit must apply while the bytes arrive
                body = multipart(b"big.mp4", big)
                for i in range(0, len(body), 65536):
                    yield body[i:i + 65536]
            r = c.post("/api/videos", content=chunked(), headers=MP)
            assert r.status_code == 413 and "limit of 1 MB" in detail(r)
            assert uploads_of(s) == set()

        body = multipart(b"half.mp4", data)
        port = port_of(s)
        with socket.create_connection(("127.0.0.1", port)) as sk:
            sk.sendall(b"POST /api/videos HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + MP["content-type"].encode()
                       + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
            sk.sendall(body[:len(body) // 2])
            t0 = time.monotonic()
            while not uploads_of(s) and time.monotonic() - t0 < 10:
                time.sleep(0.05)
            (part,) = uploads_of(s)
            assert part.startswith(".incoming-") and part.endswith(".part")  # streaming to a temporary name
        t0 = time.monotonic()
        while uploads_of(s) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        time.sleep(1.0)
        assert uploads_of(s) == set()
        with s.client() as c:
            assert c.get("/api/jobs").json() == []
            assert c.get("/healthz").status_code == 200
            assert upload(c, video(), report=False).status_code == 201  # under the limit: fine
    assert "the client went away mid-body" in s.log.read_text()


# == tokens, roles and `moodlens submit` ======================================================
def test_tokens_cli_roles_and_submit(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = f"sqlite:///{data_dir / 'moodlens.db'}"
    p = run_cli("tokens", "create", "alice", "--role", "admin", "--db", db)
    assert p.returncode == 0, p.stderr
    admin = p.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"ml_[A-Za-z0-9_-]{40,}", admin)
    viewer = run_cli("tokens", "create", "val", "--role", "viewer", "--db", db).stdout.strip().splitlines()[-1]
    uploader = run_cli("tokens", "create", "uli", "--role", "upload", "--db", db).stdout.strip().splitlines()[-1]
    bad = run_cli("tokens", "create", "x", "--role", "root", "--db", db)
    assert bad.returncode != 0 and "role 'root'" in bad.stderr

    with sqlite3.connect(data_dir / "moodlens.db") as con:
        rows = con.execute("SELECT * FROM tokens").fetchall()
        cols = [d[0] for d in con.execute("SELECT * FROM tokens").description]
    assert len(rows) == 3
    for token in (admin, viewer, uploader):
        assert not any(token in str(v) for row in rows for v in row)  # only hashes are stored
    hashes = {row[cols.index("token_sha256")] for row in rows}
    assert hashlib.sha256(admin.encode()).hexdigest() in hashes

    listed = run_cli("tokens", "list", "--db", db)
    assert listed.returncode == 0, listed.stderr
    assert "alice" in listed.stdout and "admin" in listed.stdout and "viewer" in listed.stdout
    assert not any(t in listed.stdout for t in (admin, viewer, uploader))
    assert not any(t[:12] in listed.stdout for t in (admin, viewer, uploader))

    with running_server(data_dir) as s:
        with s.client() as anon, s.client("ml_wrong") as wrong, s.client(viewer) as v, s.client(admin) as a:
            r = anon.get("/api/jobs")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert "a token is needed" in detail(r)
            assert wrong.get("/api/jobs").status_code == 401
            assert detail(wrong.get("/api/jobs")) == "invalid or revoked token"
            assert anon.get("/metrics").status_code == 401
            assert anon.get("/healthz").status_code == 200  # liveness stays open
            assert anon.post("/api/videos", files={"file": ("a.mp4", b"x")}).status_code == 401
            assert uploads_of(s) == set()  # refused before a byte is stored
            assert v.get("/api/jobs").status_code == 200
            r = upload(v, video())
            assert r.status_code == 403 and "needs the upload role" in detail(r)
            assert uploads_of(s) == set()
            assert v.delete("/api/analyses/1").status_code == 403
            assert v.post("/api/collections/c/people", data={"person": "p"}).status_code == 403
            assert a.get("/api/jobs").status_code == 200

            # moodlens submit --wait with an upload token
            p = run_cli("submit", str(video()), "--server", s.url, "--token", uploader, "--wait")
            assert p.returncode == 0, p.stderr
            job_id = int(p.stdout.strip().splitlines()[0])
            job = a.get(f"/api/jobs/{job_id}").json()
            assert job["status"] == "complete" and job["filename"] == "single_face.mp4"
            p = run_cli("submit", str(video()), "--server", s.url, "--token", "ml_wrong", "--wait")
            assert p.returncode != 0 and p.stdout == ""
            assert p.stderr.strip().count("\n") == 0 and "401 invalid or revoked token" in p.stderr, p.stderr
            p = run_cli("submit", str(video()), "--server", s.url, "--token", viewer)
            assert p.returncode != 0 and "403" in p.stderr and p.stderr.strip().count("\n") == 0
            p = run_cli("submit", str(video()), "--server", f"http://127.0.0.1:{free_port()}", "--token", admin)
            assert p.returncode != 0 and p.stderr.strip().count("\n") == 0, p.stderr

            # revoked: 401 at once
            p = run_cli("tokens", "revoke", "val", "--db", db)
            assert p.returncode == 0, p.stderr
            r = v.get("/api/jobs")
            assert r.status_code == 401 and detail(r) == "invalid or revoked token"
            assert run_cli("tokens", "revoke", "val", "--db", db).returncode != 0  # already revoked
            assert a.get("/api/jobs").status_code == 200
            # the console's cookie works like the header
            assert httpx.get(f"{s.url}/api/jobs", cookies={"moodlens_token": admin}).status_code == 200
            assert httpx.get(f"{s.url}/api/jobs", cookies={"moodlens_token": viewer}).status_code == 401
    listed = run_cli("tokens", "list", "--db", db).stdout
    assert re.search(r"val\s.*viewer.*\d{4}-\d\d-\d\d \d\d:\d\d\s.*\d{4}-\d\d-\d\d", listed)  # revoked shows a date


def stopped(s) -> None:
    """SIGTERM: a clean stop, exit 0."""
    assert stop_server(s) == 0
    assert "moodlens stopped" in s.log.read_text()


# == --host 0.0.0.0 ===========================================================================
def test_non_loopback_host_needs_a_token_or_insecure(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    p = run_cli("serve", "--host", "0.0.0.0", "--port", str(port), "--data-dir", str(data_dir), timeout=60)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "no token exists" in lines[0], p.stderr

    s = start_server(data_dir, "--host", "0.0.0.0", "--insecure")  # polled on 127.0.0.1 only
    try:
        assert "warning: --insecure" in s.log.read_text()
    finally:
        stopped(s)

    p = run_cli("tokens", "create", "ops", "--role", "admin", "--db", f"sqlite:///{data_dir / 'moodlens.db'}")
    token = p.stdout.strip().splitlines()[-1]
    s = start_server(data_dir, "--host", "0.0.0.0")
    try:
        with s.client() as c:
            assert c.get("/api/jobs").status_code == 401  # off loopback a token is always needed
        with s.client(token) as c:
            assert c.get("/api/jobs").status_code == 200
        assert "warning" not in s.log.read_text()
    finally:
        stopped(s)


# == the watch folder ==========================================================================
def _wait_jobs(c, n: int, timeout: float = 30) -> list[dict]:
    t0 = time.monotonic()
    while len(jobs := c.get("/api/jobs").json()) < n and time.monotonic() - t0 < timeout:
        time.sleep(0.2)
    return jobs


def test_watch_folder_queues_a_slow_copy_once(tmp_path):
    """A file is queued once it stops changing, once: not again on later scans nor after a restart
    (a symlinked one neither); erasing a watched job's analysis removes the file, or a restart
    would analyse it again."""
    data_dir, watch, elsewhere = tmp_path / "data", tmp_path / "incoming", tmp_path / "elsewhere"
    watch.mkdir()
    elsewhere.mkdir()
    src = video().read_bytes()
    target = watch / "slow copy.mp4"
    with running_server(data_dir, "--watch", str(watch)) as s:
        with open(target, "wb") as f:  # ~4.5 s of arriving bytes, never 2 s without a change
            step = len(src) // 10 + 1
            for i in range(0, len(src), step):
                f.write(src[i:i + step])
                f.flush()
                time.sleep(0.45)
        last_write = time.time()
        with s.client() as c:
            assert c.get("/api/jobs").json() == []  # not while it was changing
            jobs = _wait_jobs(c, 1)
            assert len(jobs) == 1
            job = s.wait_job(jobs[0]["id"])
            assert job["status"] == "complete", job
            assert job["source"] == "watch" and job["filename"] == "slow copy.mp4"
            assert job["size_bytes"] == len(src) and job["sha256"] == hashlib.sha256(src).hexdigest()
            created = time.mktime(time.strptime(job["created_at"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
            assert created >= int(last_write) - 1
            time.sleep(3.5)  # more scans
            assert len(c.get("/api/jobs").json()) == 1

            (elsewhere / "v.mp4").write_bytes(src)
            (watch / "linked.mp4").symlink_to(elsewhere / "v.mp4")
            (watch / "erase me.mp4").write_bytes(src)
            jobs = _wait_jobs(c, 3)
            assert sorted(j["filename"] for j in jobs) == ["erase me.mp4", "linked.mp4", "slow copy.mp4"]
            for j in jobs:
                assert s.wait_job(j["id"])["status"] == "complete"
            erase = next(s.wait_job(j["id"]) for j in jobs if j["filename"] == "erase me.mp4")
            assert c.delete(f"/api/analyses/{erase['analysis_id']}").status_code == 204
            assert not (watch / "erase me.mp4").exists()
            assert (watch / "slow copy.mp4").exists() and (elsewhere / "v.mp4").exists()
    with running_server(data_dir, "--watch", str(watch)) as s:
        time.sleep(4.5)  # several scans after a restart
        with s.client() as c:
            assert sorted(j["filename"] for j in c.get("/api/jobs").json()) == ["linked.mp4", "slow copy.mp4"]
