"""Outputs stream from the database and change as a whole set; a failure after the analysis
is stored is one line that says so and how to write the files again."""

from __future__ import annotations

import errno
import os
import tracemalloc

import pytest
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from conftest import shared
from moodlens.cli import app
from moodlens.outputs import staged
from moodlens.pipeline import load_analysis
from moodlens.reports.tables import export_tables
from moodlens.store import Store
from moodlens.types import EMOTIONS

CLIP = ("video", "pyfeat", "single_face.mp4")


def synthetic_analysis(db: str, seconds: int, faces: int = 30, fps: float = 2.0) -> int:
    """An analysis of ``faces`` people seen at ``fps`` for ``seconds``, written the way
    ``analyze`` writes it (500-row batches), with emotions varying over time."""
    store = Store(db)
    aid = store.create_analysis("/videos/lecture.mp4", {"fps": fps}, {"emotion": "synthetic"},
                                {"duration_s": float(seconds), "width": 1920, "height": 1080})
    batch: list[dict] = []
    for k in range(int(seconds * fps)):
        t = k / fps
        for f in range(faces):
            happy = 50 + 45 * ((k * 7 + f * 13) % 17 - 8) / 8
            emo = {c: 0.0 for c in EMOTIONS} | {"happiness": happy, "neutral": 100 - happy}
            batch.append({"seq": f"lecture/{k}", "person": f"unknown-{f + 1}", "frame": k * 15, "time_s": t,
                          "track": f, "x": 100.0 + f, "y": 50.0, "w": 60.0, "h": 70.0, "score": 0.9,
                          "quality": 0.8, "landmarks": [[1.0, 2.0]] * 5, **emo})
            if len(batch) >= 500:
                store.add_observations(aid, batch)
                batch = []
    store.add_observations(aid, batch)
    store.finish(aid, frames=int(seconds * fps), timings={"total": 1.0})
    return aid


def test_tables_and_report_stream_in_bounded_memory(tmp_path):
    from moodlens.cli_reports import write_outputs

    db = f"sqlite:///{tmp_path / 'm.db'}"
    aid = synthetic_analysis(db, seconds=600, faces=30)  # 36,000 rows: ~100 MB as a list of dicts
    a = load_analysis(aid, db)
    assert a.n_observations == 36_000 and a.frames == 1200
    small = load_analysis(synthetic_analysis(db, seconds=5, faces=1), db)
    write_outputs(small, tmp_path / "warm-up", report=True)  # imports (Plotly) are not what is measured
    tracemalloc.start()
    try:
        paths = write_outputs(a, tmp_path / "out", report=True)
        summary = a.summary
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 30e6, f"{peak / 1e6:.0f} MB traced while exporting 36,000 rows"
    assert sorted(paths) == ["records.csv", "records.jsonl", "report.html", "summary.csv"]
    assert sum(1 for _ in open(paths["records.csv"])) == 36_001
    assert sum(1 for _ in open(paths["records.jsonl"])) == 36_000
    assert len(summary) == 30 and all(r["observations"] == 1200 for r in summary)
    assert "36000" in paths["report.html"].read_text(encoding="utf-8")  # the observations card


def test_streamed_export_equals_the_list_export(tmp_path):
    db = f"sqlite:///{tmp_path / 'm.db'}"
    aid = synthetic_analysis(db, seconds=20, faces=3)
    a = load_analysis(aid, db)
    streamed = export_tables(tmp_path / "s", a.iter_observations(), a.models, 2.0)
    listed = export_tables(tmp_path / "l", a.observations, a.models, 2.0)
    for name in streamed:
        assert streamed[name].read_bytes() == listed[name].read_bytes(), name
    rows = a.observations
    assert [(o["time_s"], o["track"]) for o in rows] == sorted((o["time_s"], o["track"]) for o in rows)


def test_a_failed_write_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "records.csv").write_text("old\n")
    with pytest.raises(OSError):
        with staged(out) as stage:
            (stage / "records.csv").write_text("new\n")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert (out / "records.csv").read_text() == "old\n"
    assert sorted(p.name for p in out.iterdir()) == ["records.csv"]  # no staging folder left
    dead = out / ".moodlens-stage.999999999.tmp"  # a killed run's staging folder
    dead.mkdir()
    (dead / "records.csv").write_text("half")
    with staged(out) as stage:
        (stage / "records.csv").write_text("new\n")
    assert (out / "records.csv").read_text() == "new\n" and not dead.exists()


def _analyze(tmp_path, *args):
    return CliRunner().invoke(app, ["analyze", str(shared(*CLIP)), "--fps", "1", "--db",
                                    f"sqlite:///{tmp_path / 'm.db'}", *map(str, args)])


def test_disk_full_after_the_analysis_is_stored(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "records.csv").write_text("from an earlier run\n")

    def full_disk(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "report.html"))
    monkeypatch.setattr("moodlens.cli_reports.report_analysis", full_disk)
    r = _analyze(tmp_path, "--out", out, "--report")
    assert r.exit_code == 2, r.output
    msg = " ".join(r.output.split())
    assert "Traceback" not in r.output and "is stored and complete" in msg and "No space left on device" in msg
    assert "moodlens export 1 --out DIR" in msg and "moodlens report 1 --out DIR" in msg
    assert (out / "records.csv").read_text() == "from an earlier run\n"  # nothing half-new
    assert sorted(p.name for p in out.iterdir()) == ["records.csv"]
    monkeypatch.undo()
    again = CliRunner().invoke(app, ["export", "1", "--out", str(out), "--db", f"sqlite:///{tmp_path / 'm.db'}"])
    assert again.exit_code == 0 and (out / "records.csv").read_text().startswith("seq,id,happy")


def test_out_naming_a_file_is_refused_before_any_work(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("keep me\n")
    r = _analyze(tmp_path, "--out", target)
    assert r.exit_code == 2 and "is not a folder" in r.output and "Traceback" not in r.output
    assert target.read_text() == "keep me\n"
    assert Store(f"sqlite:///{tmp_path / 'm.db'}").analyses() == []  # refused before the analysis started


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_refused_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = _analyze(tmp_path, "--out", ro / "x")
        assert r.exit_code == 2 and "cannot write there" in r.output
    finally:
        ro.chmod(0o755)


def test_database_stopping_mid_run_is_one_line(tmp_path, monkeypatch):
    def gone(*_a, **_k):
        raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
    monkeypatch.setattr(Store, "add_observations", gone)
    monkeypatch.setattr(Store, "fail", gone)
    r = _analyze(tmp_path, "--out", tmp_path / "out")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    msg = " ".join(r.output.split())
    assert "the database failed during analysis 1" in msg and "server closed the connection" in msg
    monkeypatch.undo()
    (row,) = Store(f"sqlite:///{tmp_path / 'm.db'}").analyses()
    assert row.status == "running"  # never complete; interrupted once this (the writing) process is gone


def test_person_ids_longer_than_the_column_are_refused(tmp_path):
    img = next(p for p in sorted(shared("identity", "facenet_pytorch", "paul_rudd").iterdir()))
    r = CliRunner().invoke(app, ["faces", "enroll", "-c", "panel", "-p", "x" * 256, str(img),
                                 "--db", f"sqlite:///{tmp_path / 'm.db'}"])
    assert r.exit_code == 2 and "256 characters long; at most 255" in r.output


def test_environment_errors_are_one_line(tmp_path, monkeypatch):
    db = f"sqlite:///{tmp_path / 'm.db'}"
    aid = synthetic_analysis(db, seconds=5, faces=1)

    def full_disk(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x" / "records.csv"))
    monkeypatch.setattr("moodlens.outputs.tables_into", full_disk)
    r = CliRunner().invoke(app, ["export", str(aid), "--out", str(tmp_path / "x"), "--db", db])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert " ".join(r.output.split()) == f"error: {tmp_path / 'x' / 'records.csv'}: No space left on device"
