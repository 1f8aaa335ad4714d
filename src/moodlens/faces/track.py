"""Multi-face tracking across sampled frames (~2 fps).

At 2 fps a face can move more than its own width between samples, and people
cross in front of each other, so box overlap alone is not enough. Each track
predicts its box with a constant velocity, and keeps an exponential moving
average of an appearance descriptor (an identity embedding when one exists,
else ``appearance_features`` of the aligned crop). Detections are assigned to
tracks by the Hungarian algorithm on a cost that mixes motion and appearance,
with implausible pairs gated out. Tracks are short-lived: one that goes unseen
for more than ``max_missed`` samples ends, and a returning face gets a new id;
joining tracks of the same person is identity's job, not this module's.

The cheap descriptor cannot tell every two people apart (another person at the same
place can be as close as a face is to itself half a second later), so a pairing the
tracker is unsure of is checked with an identity model before it is kept
(``Tracker(embed=...)``, see :meth:`Tracker.update`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from moodlens.types import Faces

_INFEASIBLE = 1e6


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes given as x, y, w, h: shape (len(a), len(b))."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 0] + a[:, None, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, None, 0], b[:, 0])
    ih = np.minimum(a[:, None, 1] + a[:, None, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, None, 1], b[:, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def appearance_features(crops: np.ndarray) -> np.ndarray:
    """Cheap L2-normalised descriptor of aligned BGR crops (N, S, S, 3) -> (N, 320) float32.

    Two equally weighted unit halves: a 16x16 grey thumbnail standardised to zero
    mean and unit variance (layout of hair, glasses, beard, independent of
    exposure), and a coarse 4x4x4 BGR colour histogram, square-rooted (skin, hair
    and clothing colour, robust to small misalignment). Cosine similarity of two
    descriptors is then the mean of the thumbnails' correlation and the
    histograms' Bhattacharyya coefficient.
    """
    crops = np.asarray(crops)
    if len(crops) == 0:
        return np.zeros((0, 320), np.float32)
    grey = [crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) for crop in crops]
    return combine_features(thumbnail_features(grey), colour_histograms(crops))


def thumbnail_features(grey) -> np.ndarray:
    """The layout half of :func:`appearance_features`: (N, 256) unit standardised 16x16 thumbnails."""
    out = np.empty((len(grey), 256), np.float64)
    for i, g in enumerate(grey):
        t = cv2.resize(np.asarray(g), (16, 16), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
        out[i] = _unit((t - t.mean()) / (t.std() + 1e-6))
    return out


def colour_histograms(crops) -> np.ndarray:
    """The colour half of :func:`appearance_features`: (N, 64) unit square-rooted 4x4x4 BGR histograms.
    An edge camera sends this beside a grey crop (64 numbers, no image)."""
    out = np.empty((len(crops), 64), np.float64)
    for i, crop in enumerate(crops):
        colour = crop if crop.ndim == 3 else cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
        out[i] = _unit(np.sqrt(cv2.calcHist([colour], [0, 1, 2], None, [4, 4, 4], [0, 256] * 3).ravel()))
    return out


def combine_features(thumbnails: np.ndarray, histograms: np.ndarray) -> np.ndarray:
    """(N, 320) float32 descriptors from their two unit halves, equally weighted."""
    return (np.hstack([np.asarray(thumbnails, np.float64).reshape(-1, 256),
                       np.asarray(histograms, np.float64).reshape(-1, 64)]) / np.sqrt(2.0)).astype(np.float32)


@dataclass
class _Track:
    id: int
    box: np.ndarray  # last observed x, y, w, h
    velocity: np.ndarray  # per sampled frame
    feature: np.ndarray | None
    missed: int = 0
    hits: int = 1
    crop: np.ndarray | None = None  # last grey face crop: in memory only, never in ``Tracker.state``
    ref: np.ndarray | None = None  # identity vector of one of its faces (the re-acquisition check)
    ref_fresh: bool = False  # ``ref`` is the vector of the last face (``crop``)

    def predicted(self) -> np.ndarray:
        """Constant-velocity box for the next sample (size kept positive)."""
        box = self.box + self.velocity * (self.missed + 1)
        box[2:] = np.maximum(box[2:], self.box[2:] * 0.5)
        return box


class Tracker:
    """Associates each frame's faces with running tracks; ``update`` returns track ids.

    Cost of pairing track t with detection d, both in [0, 1] before weighting:
      motion = (1 - IoU(pred_t, d) + min(centre_distance / size, 1)) / 2
      cost   = (1 - w) * motion + w * appearance_distance   (w = appearance_weight)
    Centre distance (in box sizes) joins IoU because at 2 fps IoU is often zero for
    every candidate and then says nothing. Both are taken against the better of the
    predicted and the last seen box: people stop and turn, and a velocity from two
    samples half a second apart over-shoots as often as it helps. Without comparable
    features on both sides (none, or another kind), the cost is motion alone. A pair
    is infeasible when IoU < ``min_iou`` and the centres are more than one box size
    apart, or when the appearance cosine distance exceeds ``max_appearance_dist``.
    0.45 (was 0.6): on the shared clips a face's descriptor moves at most 0.37 from its
    track's between samples, while another person at the same place is 0.09-0.6 away; the
    gate stops some of those switches, never all (benchmarks/shot_cuts.py). Shot cuts, where
    most such switches happen, end every track instead (:meth:`cut`).

    The re-acquisition check (with ``embed``, a function from grey face crops to unit identity
    vectors): a pairing is *unsure* when its track was missed in the samples before (a face
    coming back after an occlusion: is it the same one?), and, when ``check_app_dist`` is set,
    when the descriptor moved more than that (0.3: 2 % of a face's own moves on the shared
    clips, about half of the other-person pairs; off by default, since shot cuts already end
    tracks where a new face appears in place, and it would make most checks on single-person
    clips). An unsure pairing is kept only when the identity cosine between the
    face and the track's last face is at least ``check_min_cos`` (0.3); otherwise it is refused
    and the assignment solved again, so the face starts a new track (or takes another). The
    track's vector is made from its last crop only when needed, so a confident frame costs
    nothing; ``stats`` counts checks, refusals and their time (``embed`` counts what it makes).
    """

    FEATURE_MOMENTUM = 0.8  # weight of the track's old appearance in the EMA
    VELOCITY_SMOOTHING = 0.5  # weight of the old velocity

    def __init__(self, max_missed: int = 3, min_iou: float = 0.1, appearance_weight: float = 0.5,
                 max_appearance_dist: float = 0.45, embed: Callable[[np.ndarray], np.ndarray] | None = None,
                 check_min_cos: float = 0.3, check_app_dist: float = float("inf")):
        self.max_missed = max_missed
        self.min_iou = min_iou
        self.appearance_weight = appearance_weight
        self.max_appearance_dist = max_appearance_dist
        self.embed = embed
        self.check_min_cos = check_min_cos
        self.check_app_dist = check_app_dist
        self.tracks: list[_Track] = []
        self._next_id = 0
        self.stats = {"checks": 0, "refused": 0, "check_s": 0.0}

    def state(self) -> dict[str, np.ndarray]:
        """Everything ``update`` depends on, as arrays (``np.savez``-able, no pickle), so a live
        session's tracker survives a server restart exactly (:meth:`from_state`)."""
        n = len(self.tracks)
        feats = [t.feature for t in self.tracks]
        dim = next((f.shape[0] for f in feats if f is not None), 0)
        refs = [t.ref for t in self.tracks]
        ref_dim = next((r.shape[0] for r in refs if r is not None), 0)
        return {"next_id": np.array(self._next_id, np.int64),
                "ids": np.array([t.id for t in self.tracks], np.int64).reshape(n),
                "boxes": np.array([t.box for t in self.tracks], np.float64).reshape(n, 4),
                "velocity": np.array([t.velocity for t in self.tracks], np.float64).reshape(n, 4),
                "missed": np.array([t.missed for t in self.tracks], np.int64).reshape(n),
                "hits": np.array([t.hits for t in self.tracks], np.int64).reshape(n),
                "has_feature": np.array([f is not None for f in feats], bool).reshape(n),
                "features": np.array([f if f is not None else np.zeros(dim) for f in feats],
                                     np.float64).reshape(n, dim),
                "has_ref": np.array([r is not None for r in refs], bool).reshape(n),
                "refs": np.array([r if r is not None else np.zeros(ref_dim) for r in refs],
                                 np.float32).reshape(n, ref_dim),
                "ref_fresh": np.array([t.ref_fresh for t in self.tracks], bool).reshape(n),
                "params": np.array([self.max_missed, self.min_iou, self.appearance_weight,
                                    self.max_appearance_dist, self.check_min_cos, self.check_app_dist], np.float64)}

    @classmethod
    def from_state(cls, state, embed: Callable[[np.ndarray], np.ndarray] | None = None) -> "Tracker":
        """The tracker ``state()`` saved (older states, without identity vectors, too). Crops are
        never saved: a track whose last face's vector was not made yet is checked against the older
        vector it has, or not at all (the only way a restored tracker can differ from the original)."""
        p = np.asarray(state["params"], np.float64)
        checks = {} if len(p) < 6 else {"check_min_cos": float(p[4]), "check_app_dist": float(p[5])}
        tracker = cls(max_missed=int(p[0]), min_iou=float(p[1]), appearance_weight=float(p[2]),
                      max_appearance_dist=float(p[3]), embed=embed, **checks)
        tracker._next_id = int(state["next_id"])
        n = len(state["ids"])
        has_ref = state["has_ref"] if "has_ref" in state else np.zeros(n, bool)
        refs = state["refs"] if "refs" in state else np.zeros((n, 0), np.float32)
        fresh = state["ref_fresh"] if "ref_fresh" in state else np.zeros(n, bool)
        tracker.tracks = [
            _Track(int(i), np.array(b, np.float64), np.array(v, np.float64), np.array(f, np.float64) if h else None,
                   int(m), int(k), None, np.array(r, np.float32) if hr else None, bool(fr) and bool(hr))
            for i, b, v, f, h, m, k, r, hr, fr in zip(state["ids"], state["boxes"], state["velocity"],
                                                       state["features"], state["has_feature"], state["missed"],
                                                       state["hits"], refs, has_ref, fresh)]
        return tracker

    def cut(self) -> None:
        """A shot boundary: every live track ends, so the next faces start fresh tracks (ids go on
        counting). Nothing is associated across a cut, however alike the place or the face."""
        self.tracks = []

    def __call__(self, faces: Faces, features: np.ndarray | None = None, grey: np.ndarray | None = None) -> Faces:
        """Pipeline stage form: the same faces with ``track_ids`` filled in."""
        return faces.with_(track_ids=self.update(faces, features, grey))

    @staticmethod
    def _motion(tracks: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """IoU and centre distance in box sizes (the larger box's sqrt area) of every pair."""
        centre = lambda b: b[:, :2] + b[:, 2:] / 2  # noqa: E731
        side = lambda b: np.sqrt(b[:, 2] * b[:, 3])  # noqa: E731
        size = np.maximum(side(tracks)[:, None], side(boxes)[None])
        dist = np.linalg.norm(centre(tracks)[:, None] - centre(boxes)[None], axis=2) / np.maximum(size, 1e-6)
        return iou_matrix(tracks, boxes), dist

    def _features(self, faces: Faces, features: np.ndarray | None) -> np.ndarray | None:
        """Given features, else identity embeddings, else crop descriptors, else none."""
        if features is not None:
            return _unit(np.asarray(features, np.float64).reshape(len(faces), -1))
        if faces.embeddings is not None:
            return _unit(np.asarray(faces.embeddings, np.float64))
        if faces.crops is not None:
            return appearance_features(faces.crops).astype(np.float64)
        return None

    def _cost(self, boxes: np.ndarray, feats: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The cost matrix (infeasible pairs at ``_INFEASIBLE``) and the appearance distances
        (NaN where a track has no comparable feature)."""
        iou, dist = self._motion(np.stack([t.predicted() for t in self.tracks]), boxes)
        iou_last, dist_last = self._motion(np.stack([t.box for t in self.tracks]), boxes)
        iou, dist = np.maximum(iou, iou_last), np.minimum(dist, dist_last)
        cost = (1 - iou + np.minimum(dist, 1.0)) / 2
        infeasible = (iou < self.min_iou) & (dist > 1.0)
        app = np.full_like(cost, np.nan)
        if feats is not None:
            comparable = lambda f: f is not None and f.shape == feats.shape[1:]  # noqa: E731
            has = np.array([comparable(t.feature) for t in self.tracks])
            if has.any():
                tf = np.stack([t.feature for t, h in zip(self.tracks, has) if h])
                app[has] = 1 - tf @ feats.T
                w = self.appearance_weight
                cost = np.where(has[:, None], (1 - w) * cost + w * np.nan_to_num(app), cost)
                infeasible |= has[:, None] & (app > self.max_appearance_dist)
        return np.where(infeasible, _INFEASIBLE, cost), app

    def update(self, faces: Faces, features: np.ndarray | None = None, grey: np.ndarray | None = None) -> np.ndarray:
        """Assign this sample's faces to tracks; int64 ids in the order of ``faces``.

        ``grey``: the faces' grey crops (N, S, S) uint8, what ``embed`` takes; without them (or
        without ``embed``) nothing is checked.
        """
        boxes = np.asarray(faces.boxes, np.float64).reshape(-1, 4)
        feats = self._features(faces, features) if len(faces) else None
        ids = np.full(len(boxes), -1, np.int64)
        matched_tracks: set[int] = set()
        check = self.embed is not None and grey is not None and len(boxes) > 0
        probes: dict[int, np.ndarray] = {}  # detection -> identity vector, made when first needed
        if self.tracks and len(boxes):
            cost, app = self._cost(boxes, feats)
            decided: dict[tuple[int, int], bool] = {}
            while True:
                pairs = [(ti, di) for ti, di in zip(*linear_sum_assignment(cost)) if cost[ti, di] < _INFEASIBLE]
                refused = [(ti, di) for ti, di in pairs if check and self._refuses(ti, di, app, grey, probes, decided)]
                if not refused:
                    break
                for ti, di in refused:  # solved again without them: each round refuses at least one more pair
                    cost[ti, di] = _INFEASIBLE
            for ti, di in pairs:
                self._observe(self.tracks[ti], boxes[di], None if feats is None else feats[di],
                              None if grey is None else grey[di], probes.get(di))
                ids[di] = self.tracks[ti].id
                matched_tracks.add(ti)
        survivors = []
        for ti, t in enumerate(self.tracks):
            if ti not in matched_tracks:
                t.missed += 1
            if t.missed <= self.max_missed:
                survivors.append(t)
        self.tracks = survivors
        for di in np.flatnonzero(ids < 0):
            ids[di] = self._next_id
            self.tracks.append(_Track(self._next_id, boxes[di].copy(), np.zeros(4),
                                      None if feats is None else feats[di].copy(),
                                      crop=None if grey is None else np.array(grey[di]),
                                      ref=probes.get(di), ref_fresh=di in probes))
            self._next_id += 1
        return ids

    def _refuses(self, ti: int, di: int, app: np.ndarray, grey: np.ndarray, probes: dict,
                 decided: dict) -> bool:
        """The re-acquisition check of one proposed pairing (see the class's docstring)."""
        if (ti, di) in decided:
            return decided[(ti, di)]
        track = self.tracks[ti]
        unsure = track.missed > 0 or bool(app[ti, di] > self.check_app_dist)
        refuse = False
        if unsure:
            t = time.perf_counter()
            ref = self._reference(track)
            if ref is not None:
                if di not in probes:
                    probes[di] = self._vector(grey[di])
                self.stats["checks"] += 1
                refuse = float(ref @ probes[di]) < self.check_min_cos
                self.stats["refused"] += refuse
            self.stats["check_s"] += time.perf_counter() - t
        decided[(ti, di)] = refuse
        return refuse

    def _reference(self, track: _Track) -> np.ndarray | None:
        """The vector of the track's last face (made now if need be), else an older one, else None."""
        if not track.ref_fresh and track.crop is not None:
            track.ref, track.ref_fresh = self._vector(track.crop), True
        return track.ref

    def _vector(self, crop: np.ndarray) -> np.ndarray:
        return np.asarray(self.embed(np.asarray(crop)[None]), np.float32)[0]

    def _observe(self, track: _Track, box: np.ndarray, feature: np.ndarray | None, crop: np.ndarray | None = None,
                 probe: np.ndarray | None = None) -> None:
        step = (box - track.box) / (track.missed + 1)
        a = self.VELOCITY_SMOOTHING if track.hits > 1 else 0.0
        track.velocity = a * track.velocity + (1 - a) * step
        track.box = box.copy()
        track.missed = 0
        track.hits += 1
        if crop is not None:
            track.crop = np.array(crop)
            track.ref_fresh = probe is not None
            if probe is not None:
                track.ref = probe
        if feature is not None:
            if track.feature is None or track.feature.shape != feature.shape:
                track.feature = feature.copy()
            else:
                m = self.FEATURE_MOMENTUM
                track.feature = _unit(m * track.feature + (1 - m) * feature)
