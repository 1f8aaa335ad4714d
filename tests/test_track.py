"""Tracker: synthetic box sequences sampled at ~2 fps, where the truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from moodlens.faces.track import Tracker, appearance_features, iou_matrix
from moodlens.types import Faces


def faces(*boxes) -> Faces:
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Faces(boxes=b, landmarks=np.zeros((len(b), 5, 2), np.float32), scores=np.ones(len(b), np.float32))


def run(tracker, frames, features=None, seed=0):
    """Feed frames (lists of (true_id, box)) in shuffled order; return per-frame {true_id: track_id}."""
    rng = np.random.default_rng(seed)
    out = []
    for frame in frames:
        order = rng.permutation(len(frame))
        truth = [frame[i][0] for i in order]
        f = faces(*[frame[i][1] for i in order]) if len(frame) else faces()
        feats = None
        if features is not None:
            feats = np.stack([features[t] for t in truth]) if truth else np.zeros((0, 8))
        ids = tracker.update(f, feats)
        assert ids.dtype == np.int64 and ids.shape == (len(frame),)
        out.append(dict(zip(truth, ids.tolist())))
    return out


def test_iou_matrix_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 20, 20]])
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [100, 100, 5, 5]])
    m = iou_matrix(a, b)
    assert m.shape == (2, 3)
    assert np.allclose(m, [[1, 50 / 150, 0], [100 / 400, 100 / 400, 0]])
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)
    assert np.allclose(iou_matrix(a, a), iou_matrix(a, a).T)


def test_two_faces_crossing_keep_ids():
    # A moves right, B moves left, 40 px per sample, partly overlapping as they pass.
    frames = [[("A", (40 * k, 100, 60, 60)), ("B", (400 - 40 * k, 130, 60, 60))] for k in range(11)]
    seen = run(Tracker(), frames)
    assert all(s == seen[0] for s in seen), seen
    assert sorted(seen[0].values()) == [0, 1]


def test_appearance_prevents_swap_when_boxes_overlap():
    # Two faces side by side that trade places between samples: motion alone prefers the swap.
    frames = [[("A", (100, 100, 60, 60)), ("B", (120, 100, 60, 60))],
              [("A", (116, 100, 60, 60)), ("B", (104, 100, 60, 60))],
              [("A", (100, 100, 60, 60)), ("B", (120, 100, 60, 60))]]
    rng = np.random.default_rng(1)
    feats = {t: rng.normal(size=8) for t in "AB"}
    seen = run(Tracker(), frames, features=feats)
    assert all(s == seen[0] for s in seen), seen
    assert run(Tracker(), frames)[1] != seen[0]  # the motion-only tracker is fooled: the test bites


def test_short_gap_keeps_id_long_gap_gets_new_id():
    box = lambda k: ("A", (100 + 20 * k, 100, 60, 60))  # noqa: E731
    frames = [[box(0)], [box(1)], [], [], [box(4)], [box(5)]]  # missed for 2 samples
    seen = run(Tracker(max_missed=3), frames)
    assert [s.get("A") for s in seen] == [0, 0, None, None, 0, 0]
    frames = [[box(0)], [box(1)], [], [], [], [], [box(6)]]  # missed for 4 > max_missed
    seen = run(Tracker(max_missed=3), frames)
    assert seen[1]["A"] == 0 and seen[-1]["A"] == 1


def test_new_faces_get_new_increasing_ids_and_empty_frames_are_fine():
    t = Tracker()
    assert t.update(faces()).shape == (0,)
    assert t.update(faces((0, 0, 50, 50))).tolist() == [0]
    assert t.update(faces((2, 0, 50, 50), (300, 0, 50, 50))).tolist() == [0, 1]
    assert t.update(faces()).tolist() == []
    ids = t.update(faces((600, 0, 50, 50), (300, 0, 50, 50), (4, 0, 50, 50)))
    assert ids.tolist() == [2, 1, 0]


def test_gates_refuse_implausible_pairs():
    t = Tracker()
    t.update(faces((0, 0, 50, 50)))
    assert t.update(faces((200, 0, 50, 50))).tolist() == [1]  # far jump: a new face
    t = Tracker()
    e = np.eye(4)
    t.update(faces((0, 0, 50, 50)), e[:1])
    assert t.update(faces((0, 0, 50, 50)), e[1:2]).tolist() == [1]  # same place, another face
    assert t.update(faces((2, 0, 50, 50)), e[1:2] * 3).tolist() == [1]  # features are normalised


def test_appearance_features_and_crops_used_automatically():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    b = (rng.integers(0, 64, (112, 112, 3)) + [0, 0, 192]).astype(np.uint8)  # other texture, reddish
    brighter = np.clip(a.astype(int) + 20, 0, 255).astype(np.uint8)
    f = appearance_features(np.stack([a, brighter, b]))
    assert f.shape == (3, 320) and f.dtype == np.float32
    assert np.allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
    assert 1 - f[0] @ f[1] < 0.1 < 1 - f[0] @ f[2]
    assert appearance_features(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 320)
    # Without explicit features the tracker describes the crops itself: same place, other face.
    t = Tracker()
    t.update(faces((0, 0, 50, 50)).with_(crops=a[None]))
    assert t.update(faces((0, 0, 50, 50)).with_(crops=b[None])).tolist() == [1]
    assert t.update(faces((0, 0, 50, 50)).with_(crops=b[None])).tolist() == [1]


def test_feature_kinds_can_change_between_frames():
    t = Tracker()
    t.update(faces((0, 0, 50, 50)), np.ones((1, 4)))
    assert t.update(faces((2, 0, 50, 50)), np.ones((1, 7))).tolist() == [0]  # not comparable: motion decides
    assert t.update(faces((4, 0, 50, 50)), np.ones((1, 7))).tolist() == [0]


def test_call_fills_track_ids():
    t = Tracker()
    out = t(faces((0, 0, 50, 50), (100, 0, 50, 50)))
    assert out.track_ids.tolist() == [0, 1] and len(out) == 2


@pytest.mark.parametrize("seed", range(3))
def test_many_faces_random_walk_keep_ids(seed):
    """Six well-separated faces drifting, with random detection order and a random miss."""
    rng = np.random.default_rng(seed)
    pos = np.stack([np.arange(6) * 150.0, np.zeros(6) + 200], 1)
    vel = rng.normal(0, 8, (6, 2))
    frames = []
    for k in range(12):
        pos += vel + rng.normal(0, 3, (6, 2))
        frames.append([(i, (*pos[i], 60, 60)) for i in range(6) if rng.random() > 0.1 or k == 0])
    seen = run(Tracker(), frames, seed=seed)
    for i in range(6):
        assert len({s[i] for s in seen if i in s}) == 1


# -- the re-acquisition check (identity vectors for the pairings the tracker is unsure of) -------
class FakeEmbed:
    """Grey crops that are flat images of one value: that value is the person, and each person has
    a fixed random unit vector (people 1 and 2 look alike: cosine about 0.7). Counts its calls."""

    def __init__(self):
        rng = np.random.default_rng(7)
        v = rng.normal(size=(8, 16))
        v[2] = v[1] / np.linalg.norm(v[1]) + v[2] / np.linalg.norm(v[2])
        self.vectors = v / np.linalg.norm(v, axis=1, keepdims=True)
        self.calls = 0

    def __call__(self, grey):
        self.calls += len(grey)
        return self.vectors[np.asarray(grey)[:, 0, 0]].astype(np.float32)


def crops(*people) -> np.ndarray:
    return np.stack([np.full((8, 8), p, np.uint8) for p in people]) if people else np.zeros((0, 8, 8), np.uint8)


def test_a_face_coming_back_is_checked_and_another_person_starts_a_new_track():
    for other, same_track in ((3, False), (0, True)):
        embed = FakeEmbed()
        t = Tracker(embed=embed)
        box = faces((100, 100, 60, 60))
        for _ in range(3):
            assert t.update(box, grey=crops(0)).tolist() == [0]
        assert embed.calls == 0  # confident pairings cost nothing
        t.update(faces(), grey=crops())  # an occlusion: the track is missed
        assert t.update(box, grey=crops(other)).tolist() == ([0] if same_track else [1])
        assert embed.calls == 2 and t.stats["checks"] == 1 and t.stats["refused"] == (not same_track)
        # Without the crops (or without ``embed``) nothing is checked: the old behaviour.
        t2 = Tracker()
        for g in (0, 0, None, other):
            t2.update(box if g is not None else faces(), grey=None if g is None else crops(g))
        assert t2.stats["checks"] == 0 and t2.tracks[0].id == 0 and len(t2.tracks) == 1


def test_a_large_appearance_change_is_checked_without_a_miss_when_asked():
    embed = FakeEmbed()
    t = Tracker(embed=embed)
    box = faces((100, 100, 60, 60))
    e = np.eye(4)
    mid = np.array([[np.cos(0.9), np.sin(0.9), 0, 0]])  # descriptor distance 0.38: under the gate
    t.update(box, e[:1], crops(0))
    assert t.update(box, mid, crops(4)).tolist() == [0] and embed.calls == 0  # by default only misses
    t = Tracker(embed=embed, check_app_dist=0.3)
    t.update(box, e[:1], crops(0))
    near = np.array([[np.cos(0.6), np.sin(0.6), 0, 0]])  # descriptor distance 0.175: sure, not checked
    assert t.update(box, near, crops(3)).tolist() == [0] and embed.calls == 0
    far = np.array([[np.cos(1.2), np.sin(1.2), 0, 0]])  # distance over 0.45: gated out, never checked
    assert t.update(box, far, crops(3)).tolist() == [1]
    # between the check (0.3) and the gate (0.45): checked, and another person is refused
    t = Tracker(embed=embed, check_app_dist=0.3)
    t.update(box, e[:1], crops(0))
    assert t.update(box, mid, crops(4)).tolist() == [1] and t.stats["refused"] == 1
    t = Tracker(embed=embed, check_app_dist=0.3)
    t.update(box, e[:1], crops(1))
    assert t.update(box, mid, crops(2)).tolist() == [0]  # a lookalike above 0.3 is let through


def test_a_refused_face_can_take_the_right_track():
    """Two faces come back after an occlusion, each nearer the other's old place: motion prefers
    the swap, the check refuses it, and the assignment solved again gives each its own track."""
    embed = FakeEmbed()
    t = Tracker(embed=embed)
    first = t.update(faces((100, 100, 60, 60), (150, 100, 60, 60)), grey=crops(0, 3))
    assert first.tolist() == [0, 1]
    t.update(faces(), grey=crops())
    ids = t.update(faces((145, 100, 60, 60), (105, 100, 60, 60)), grey=crops(0, 3))
    assert ids.tolist() == [0, 1], ids
    assert t.stats["refused"] >= 1


def test_state_keeps_fresh_vectors_and_never_crops():
    embed = FakeEmbed()
    t = Tracker(embed=embed)
    box = faces((100, 100, 60, 60))
    t.update(box, grey=crops(0))
    t.update(faces(), grey=crops())
    t.update(box, grey=crops(0))  # checked: the track's vector is now its last face's
    t.update(faces(), grey=crops())
    state = t.state()
    assert all(v.dtype != np.uint8 for v in state.values())  # no image in it
    assert state["has_ref"].tolist() == [True] and state["ref_fresh"].tolist() == [True]
    restored = Tracker.from_state(state, embed=embed)
    for tracker in (t, restored):  # both refuse another person, with the same vectors
        assert tracker.update(box, grey=crops(3)).tolist() == [1]
    # a state saved before the check existed still loads (no vectors: nothing to check against)
    old = {k: v for k, v in state.items() if k not in ("has_ref", "refs", "ref_fresh")}
    old["params"] = old["params"][:4]
    assert Tracker.from_state(old).update(box).tolist() == [0]
