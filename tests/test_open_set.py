"""Issue 21: open-set identification as a collection grows, and tracks of two people split
before they are named. Real photos and clips come from ../shared/data (skipped with a
message when absent)."""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest

from conftest import shared
from moodlens.collections import enroll, faces_in_photo
from moodlens.faces.identity import (DEFAULT_MATCH_THRESHOLD, IMPOSTOR_COS_MEAN, IMPOSTOR_COS_SD, Gallery, TrackBank,
                                     align_for_identity, default_embedder, open_set_score, score_to_similarity,
                                     similarity_to_score, two_groups)
from moodlens.store import Store


from test_identity import _near, _unit  # noqa: E402  (synthetic embeddings, one copy)


# -- the open-set score ---------------------------------------------------------------------
def test_open_set_score_is_a_bonferroni_correction_of_the_pairwise_score():
    from scipy.stats import norm

    cos = np.linspace(-0.2, 1.0, 241)
    assert np.allclose(open_set_score(cos, 1), similarity_to_score(cos), atol=1e-4)
    prev = similarity_to_score(cos)
    for n in (2, 10, 100, 1000):
        s = open_set_score(cos, n)
        assert np.all(np.diff(s) >= -1e-4)  # monotone in cosine
        assert np.all(s <= prev + 1e-4)  # never above the score for fewer people
        prev = s
    # 70 for N people: the pairwise false-match chance of the cosine is N times smaller
    for n in (10, 100, 500):
        c = float(cos[np.argmin(np.abs(open_set_score(cos, n) - 70))])
        p_pair = norm.sf(score_to_similarity(70), IMPOSTOR_COS_MEAN, IMPOSTOR_COS_SD)
        p = norm.sf(c, IMPOSTOR_COS_MEAN, IMPOSTOR_COS_SD)
        assert n * p == pytest.approx(p_pair, rel=0.25), n
    assert isinstance(open_set_score(0.5, 10), float)


def test_gallery_identify_matches_person_templates():
    rng = np.random.default_rng(0)
    people = _unit(rng, 40)
    emb = np.concatenate([_near(p, rng, n=2) for p in people])
    g = Gallery(emb, [f"id{i // 2:02d}" for i in range(80)])
    who, cos, score = g.identify(np.concatenate([_near(people[7], rng), _unit(rng, 1)]))
    assert who[0] == "id07" and score[0] >= DEFAULT_MATCH_THRESHOLD
    assert score[1] < DEFAULT_MATCH_THRESHOLD  # a random stranger
    assert score[0] == pytest.approx(open_set_score(cos[0], 40), abs=1e-3)
    empty = Gallery(np.zeros((0, 128), np.float32), [])
    who, _, score = empty.identify(people[:2])
    assert list(who) == [None, None] and list(score) == [0, 0]


# -- splitting tracks -----------------------------------------------------------------------
def test_two_groups_splits_two_people_and_not_one():
    rng = np.random.default_rng(1)
    a, b = _unit(rng, 2)
    one = _near(a, rng, noise=0.2, n=12)  # cos ~0.6 among themselves
    assert two_groups(one, score_to_similarity(70)) is None
    two = np.concatenate([_near(a, rng, noise=0.2, n=5), _near(b, rng, noise=0.2, n=4)])
    lab = two_groups(two, score_to_similarity(70))
    assert lab is not None and len(set(lab[:5])) == 1 and len(set(lab[5:])) == 1 and lab[0] != lab[5]
    # a lone face unlike all the others (the track reached B just before it ended) is split off ...
    lab = two_groups(np.concatenate([one, b[None]]), score_to_similarity(70))
    assert lab is not None and lab[-1] != lab[0] and len(set(lab[:-1])) == 1
    # ... but not one that is merely poor (still like the others)
    odd = (one[0] + 0.9 * b) / np.linalg.norm(one[0] + 0.9 * b)
    assert float((odd @ one.T).max()) >= score_to_similarity(70)
    assert two_groups(np.concatenate([one, odd[None]]), score_to_similarity(70)) is None


@functools.cache
def _pins_crops(person: str) -> np.ndarray:
    """Aligned crops (12, 112, 112, 3) of a pins105 person, largest face of each photo."""
    root = shared("identity", "pins105", person)
    crops = []
    for f in sorted(root.iterdir()):
        img = cv2.imread(str(f))
        faces = faces_in_photo(img, threshold=0.7)
        if len(faces):
            crops.append(align_for_identity(img, faces.landmarks[:1])[0])
    return np.stack(crops)


def _pins_people(n=2):
    root = shared("identity", "pins105")
    return sorted(p.name for p in root.iterdir() if p.is_dir())[:n]


def test_a_track_of_two_people_is_split_before_it_is_named():
    """Synthetic track on real faces: person A in frames 0-9, then person B in frames 10-19,
    one track id. A is enrolled from two other photos: only A's frames may carry A's name."""
    a, b = _pins_people(2)
    ca, cb = _pins_crops(a), _pins_crops(b)
    gallery = Gallery(default_embedder()(ca[:2]), [a, a])
    bank = TrackBank(per_track=5, sample_every=3)
    track = list(ca[2:12]) + list(cb[2:12])
    for frame, crop in enumerate(track):
        bank.add_crops([4], crop[None], [0.5 + 0.01 * (frame % 7)], frame_index=frame)
    labels, moves = bank.resolve_split(gallery)
    assert set(moves) == {4}
    new_ids = set(moves[4].values())
    assert len(new_ids) >= 1 and min(new_ids) > 4
    assert set(moves[4]) == set(range(10, 20)), moves  # exactly B's frames leave track 4
    assert labels[4][0] == a
    assert all(labels[t][0].startswith("unknown-") for t in new_ids), labels
    # the same person all along is not split
    bank = TrackBank(per_track=5, sample_every=3)
    for frame, crop in enumerate(ca[2:12]):
        bank.add_crops([0], crop[None], [0.5], frame_index=frame)
    labels, moves = bank.resolve_split(gallery)
    assert moves == {} and labels[0][0] == a


def test_open_set_on_pins105_with_about_100_people():
    """Issue 21's targets, measured on pins105 (105 people, a quarter held out as strangers,
    2 photos enrolled): strangers named at 70 at most 1 %, rank-1 at least 0.97; and the
    open-set decision is not worse than the per-pair one at 10 and 50 people."""
    from moodlens.evaluation.identity import evaluate_identity

    r = evaluate_identity(shared("identity", "pins105"), enrol_k=2, strangers=0.25, repeats=5,
                          gallery_sizes=[10, 50])
    assert r["people"] == 105 and r["strangers_per_split"] == 26
    assert r["strangers_named"] <= 0.01
    assert r["rank1"] >= 0.97
    assert r["pairwise"]["strangers_named"] > r["strangers_named"]  # what the per-pair score let through
    for s in r["sizes"]:
        assert s["strangers_named"] <= max(0.01, s["pairwise"]["strangers_named"])
        assert s["rank1"] >= s["pairwise"]["rank1"] - 0.005


# -- end to end -----------------------------------------------------------------------------
class _OneTrack:
    """A tracker that gives every face track 0 and ignores cuts: the worst case of a track
    jumping from one person to another, for the split to undo."""

    embed = None  # no re-acquisition check either

    def __init__(self, *args, **kwargs):
        pass

    def cut(self) -> None:
        pass

    def update(self, faces, features=None, grey=None):
        return [0] * len(faces)


@pytest.mark.slow
@pytest.mark.parametrize("jumping_tracker", [False, True], ids=["tracker", "one-track"])
def test_concatenated_clips_name_only_the_enrolled_person(tmp_path, db_url, monkeypatch, jumping_tracker):
    """Person A (liveportrait d0) enrolled from stills of their clip; a video made of A's clip
    then another person's clip (d3): no face of the second part may carry A's name. With a
    tracker that keeps one track across the cut, the track must be split at the end."""
    import av

    from moodlens import media, pipeline

    clip_a = shared("video", "liveportrait_driving", "d10.mp4")
    clip_b = shared("video", "liveportrait_driving", "d12.mp4")
    size, fps, seconds = (512, 512), 10, 5
    if jumping_tracker:
        monkeypatch.setattr(pipeline, "Tracker", _OneTrack)

    def frames(path, start, n_seconds):
        with av.open(str(path)) as c:
            got = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)
                   if start <= float(f.pts * f.time_base) < start + n_seconds]
        pick = np.linspace(0, len(got) - 1, n_seconds * fps).round().astype(int)
        return [cv2.resize(got[i], size) for i in pick]

    stills = []
    for i, fr in enumerate(media.iter_frames(clip_a, fps=1.0)):
        if i in (0, 2):
            p = tmp_path / f"a{i}.png"
            cv2.imwrite(str(p), fr.image)
            stills.append(p)
    store = Store(db_url)
    enroll(store, "cast", "alice", stills, largest=True)
    clip = tmp_path / "a_then_b.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for img in frames(clip_a, 0, seconds) + frames(clip_b, 0, seconds):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    a = pipeline.analyze(clip, fps=2.0, db=db_url, collection="cast")
    first = [o for o in a.observations if o["time_s"] < seconds - 0.05]
    second = [o for o in a.observations if o["time_s"] >= seconds + 0.05]
    assert first and second
    assert not [o for o in second if o["person"] == "alice"], [(o["time_s"], o["track"]) for o in second]
    assert sum(o["person"] == "alice" for o in first) >= 0.8 * len(first)
    # the second person's faces are on tracks of their own (frames between the last embedded
    # face of A and the first of B may go to B's part: never the other way round)
    assert not {o["track"] for o in second} & {o["track"] for o in first if o["person"] == "alice"}
