"""End-to-end analyses of real clips from ../shared/data/video (relational checks: no clip has
per-frame ground truth)."""

from __future__ import annotations

import numpy as np
import pytest

import moodlens
from conftest import shared
from moodlens.store import Store

pytestmark = pytest.mark.slow


def _run(tmp_path, *parts, fps=2.0):
    return moodlens.analyze(shared("video", *parts), fps=fps, db=f"sqlite:///{tmp_path / 'm.db'}", out=tmp_path / "out")


def _faces_per_frame(a):
    times = sorted({o["time_s"] for o in a.observations})
    return times, [sum(1 for o in a.observations if o["time_s"] == t) for t in times]


def test_single_face_found_in_every_sampled_frame_on_one_track(tmp_path):
    a = _run(tmp_path, "pyfeat", "single_face.mp4")
    n_frames = a.info["duration_s"] * 2
    frames = {o["frame"] for o in a.observations}
    assert len(frames) >= int(n_frames) - 1 and len(a.observations) == len(frames)
    assert len(a.tracks) == 1
    probs = np.array([[o[c] for c in moodlens.EMOTIONS] for o in a.observations])
    np.testing.assert_allclose(probs.sum(1), 100, atol=0.1)
    assert (a.outputs["records.csv"]).read_text().startswith("seq,id,happy,sad,angry,confused")


def test_no_face_clip_yields_no_records(tmp_path):
    a = _run(tmp_path, "pyfeat", "no_face.mp4")
    assert a.observations == [] and a.status == "complete"
    assert a.outputs["records.csv"].read_text().count("\n") == 1  # header only


@pytest.mark.parametrize("clip, face_first", [("face_noface.mov", True), ("noface_face.mov", False)])
def test_faces_appear_and_disappear_where_the_video_shows_it(tmp_path, clip, face_first):
    a = _run(tmp_path, "pyfeat", clip)
    sampled = np.arange(0, a.info["duration_s"] - 0.25, 0.5)
    seen = np.array([any(abs(o["time_s"] - t) < 0.2 for o in a.observations) for t in sampled])
    q = max(1, len(seen) // 4)
    head, tail = seen[:q], seen[-q:]
    if face_first:
        assert head.all() and not tail.any()
    else:
        assert not head.any() and tail.all()
    changes = np.flatnonzero(np.diff(seen.astype(int)))
    assert len(changes) <= 2  # one clean transition (allowing one flicker at the cut)


def test_crowd_clip_finds_at_least_four_faces_per_frame(tmp_path):
    a = _run(tmp_path, "facenet_pytorch", "video.mp4")
    _, counts = _faces_per_frame(a)
    assert np.mean(counts) >= 4
    assert a.params["fps"] == 2.0 and a.models["emotion"]


def test_rerun_is_a_new_analysis(tmp_path):
    first = _run(tmp_path, "pyfeat", "single_face.mp4", fps=1)
    second = _run(tmp_path, "pyfeat", "single_face.mp4", fps=1)
    assert second.id != first.id
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    assert len(store.observations(first.id)) == len(first.observations)
    assert [o["track"] for o in second.observations] == [o["track"] for o in first.observations]
