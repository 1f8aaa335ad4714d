"""The command line: one-line errors for bad input, non-zero exit, database intact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import shared

MOODLENS = [sys.executable, "-m", "moodlens.cli"]


def _cli(*args, cwd=None):
    return subprocess.run([*MOODLENS, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        for i in range(20):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, i * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    (tmp / "dir.mp4").mkdir()
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "text.mp4").write_text("this is not a video\n" * 50)
    return {"missing": tmp / "nope.mp4", "directory": tmp / "dir.mp4", "empty": tmp / "empty.mp4",
            "text": tmp / "text.mp4", "audio": _audio_only(tmp / "audio.m4a")}


def test_help_has_examples():
    r = _cli("analyze", "--help")
    assert r.returncode == 0 and "Examples" in r.stdout and "--fps" in r.stdout


def test_bad_inputs_get_one_line_errors_and_keep_the_database(tmp_path):
    db = f"sqlite:///{tmp_path / 'm.db'}"
    good = shared("video", "pyfeat", "single_face.mp4")
    ok = _cli("analyze", good, "--fps", "1", "--db", db, "--out", tmp_path / "good", "--json")
    assert ok.returncode == 0, ok.stderr
    first = json.loads(ok.stdout)
    cut = tmp_path / "truncated.mp4"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 5])
    cases = _bad_inputs(tmp_path) | {"truncated": cut}
    for name, path in cases.items():
        r = _cli("analyze", path, "--db", db, "--out", tmp_path / name)
        assert r.returncode != 0, name
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in r.stderr, (name, r.stderr)
        assert path.name in lines[0] or str(path) in " ".join(lines), (name, lines)
        assert not (tmp_path / name / "records.csv").exists()
    listing = _cli("analyses", "--db", db)
    assert listing.returncode == 0
    again = _cli("export", first["analysis_id"], "--db", db, "--out", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "records.csv").read_text() == (tmp_path / "good" / "records.csv").read_text()


def test_unknown_analysis_id_is_a_clear_error(tmp_path):
    r = _cli("export", "42", "--db", f"sqlite:///{tmp_path / 'm.db'}", "--out", tmp_path / "x")
    assert r.returncode == 2 and "analysis 42" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("layout", ["folders"])
def test_eval_emotion_reads_class_folders(tmp_path, layout):
    ferplus = shared("ferplus", "FER2013Valid")
    import csv
    import shutil
    rows = list(csv.reader(open(ferplus / "label.csv")))[:60]
    names = ["neutral", "happy", "surprised", "sad", "angry", "disgusted", "fearful", "contempt"]
    for r in rows:
        votes = [int(v) for v in r[2:12]]
        if max(range(10), key=votes.__getitem__) < 8:
            d = tmp_path / names[max(range(8), key=votes.__getitem__)]
            d.mkdir(exist_ok=True)
            shutil.copy(ferplus / r[0], d / r[0])
    out = _cli("eval", "emotion", tmp_path, "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["layout"] == "folders" and rep["n"] >= 50 and rep["accuracy"] > 0.5
    assert "ece_votes" not in rep  # no votes in this layout


def test_eval_emotion_on_ferplus_scores_calibration_against_the_votes():
    """The model is trained on vote shares, so its confidence should match the share of annotators
    who agree with it, much more closely than it matches the majority label."""
    out = _cli("eval", "emotion", shared("ferplus", "FER2013Valid"), "--limit", "300", "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["layout"] == "ferplus" and rep["n"] == 300
    assert rep["ece_votes"] < 0.07 and rep["ece_votes"] < rep["ece"] / 2, (rep["ece_votes"], rep["ece"])


def test_flip_tta_reaches_analyze_and_eval(tmp_path):
    """--flip-tta changes the emotion model's recorded version, so flipped and plain scores never mix unnoticed."""
    db = f"sqlite:///{tmp_path / 'm.db'}"
    r = _cli("analyze", shared("video", "pyfeat", "single_face.mp4"), "--fps", "1", "--db", db,
             "--out", tmp_path / "o", "--json", "--flip-tta")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["models"]["emotion"].endswith("+flip")
    ev = _cli("eval", "emotion", shared("ferplus", "FER2013Valid"), "--limit", "40", "--json", "--flip-tta")
    assert ev.returncode == 0, ev.stderr
    rep = json.loads(ev.stdout)
    assert rep["model"].endswith("+flip") and rep["flip_agreement"] == 1.0


def test_train_online_teachers_without_a_teacher_is_refused_before_any_work(tmp_path):
    pytest.importorskip("torch", reason="training tests need the [train] extra (PyTorch)")
    (tmp_path / "FER2013Train").mkdir()
    (tmp_path / "FER2013Train" / "label.csv").write_text("")
    r = _cli("train", "emotion", "--data", tmp_path, "--out", tmp_path / "run", "--online-teachers")
    assert r.returncode != 0 and "--online-teachers needs at least one --teacher" in r.stderr
    assert not (tmp_path / "run").exists()


def test_train_teacher_file_with_teacher_networks_is_refused_before_any_work(tmp_path):
    pytest.importorskip("torch", reason="training tests need the [train] extra (PyTorch)")
    (tmp_path / "FER2013Train").mkdir()
    (tmp_path / "FER2013Train" / "label.csv").write_text("")
    for f in ("t.pt", "p.npz"):
        (tmp_path / f).write_bytes(b"x")
    r = _cli("train", "emotion", "--data", tmp_path, "--out", tmp_path / "run", "--teacher", tmp_path / "t.pt",
             "--teacher-file", tmp_path / "p.npz")
    assert r.returncode == 2 and "give it or --teacher, not both" in r.stderr
    r = _cli("train", "emotion", "--data", tmp_path, "--out", tmp_path / "run", "--teacher-file", tmp_path / "nope.npz")
    assert r.returncode == 2 and "nope.npz: no such file" in r.stderr
    assert not (tmp_path / "run").exists()


def test_emotion_model_option_runs_a_trained_model_and_refuses_a_damaged_one(tmp_path):
    """A model from `moodlens train emotion` is used by analyze and eval as it is, named by its own version."""
    import shutil

    from moodlens.models import packaged_dir

    card = json.loads((packaged_dir() / "emotion.json").read_text())
    card["version"] = "my-run-1"
    (tmp_path / "m").mkdir()
    shutil.copy(packaged_dir() / card["file"], tmp_path / "m" / card["file"])
    (tmp_path / "m" / "emotion.json").write_text(json.dumps(card))
    ev = _cli("eval", "emotion", shared("ferplus", "FER2013Valid"), "--limit", "40", "--json",
              "--emotion-model", tmp_path / "m" / "emotion.json")
    assert ev.returncode == 0, ev.stderr
    base = json.loads(_cli("eval", "emotion", shared("ferplus", "FER2013Valid"), "--limit", "40", "--json").stdout)
    rep = json.loads(ev.stdout)
    assert rep["model"] == "moodlens-emotion@my-run-1" and rep["accuracy"] == base["accuracy"]
    r = _cli("analyze", shared("video", "pyfeat", "single_face.mp4"), "--fps", "1", "--db", f"sqlite:///{tmp_path / 'a.db'}",
             "--out", tmp_path / "o", "--json", "--emotion-model", tmp_path / "m" / "emotion.json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["models"]["emotion"] == "moodlens-emotion@my-run-1"
    with open(tmp_path / "m" / card["file"], "ab") as f:
        f.write(b"\0")  # the weights no longer match the card's SHA-256
    bad = _cli("eval", "emotion", shared("ferplus", "FER2013Valid"), "--limit", "5",
               "--emotion-model", tmp_path / "m" / "emotion.json")
    assert bad.returncode == 2 and "does not match" in bad.stderr and "Traceback" not in bad.stderr
    missing = _cli("eval", "emotion", shared("ferplus", "FER2013Valid"), "--emotion-model", tmp_path / "nope.json")
    assert missing.returncode == 2 and "nope.json: model card is missing" in missing.stderr
