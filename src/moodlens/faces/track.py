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
"""

from __future__ import annotations

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
    """

    FEATURE_MOMENTUM = 0.8  # weight of the track's old appearance in the EMA
    VELOCITY_SMOOTHING = 0.5  # weight of the old velocity

    def __init__(self, max_missed: int = 3, min_iou: float = 0.1, appearance_weight: float = 0.5,
                 max_appearance_dist: float = 0.45):
        self.max_missed = max_missed
        self.min_iou = min_iou
        self.appearance_weight = appearance_weight
        self.max_appearance_dist = max_appearance_dist
        self.tracks: list[_Track] = []
        self._next_id = 0

    def state(self) -> dict[str, np.ndarray]:
        """Everything ``update`` depends on, as arrays (``np.savez``-able, no pickle), so a live
        session's tracker survives a server restart exactly (:meth:`from_state`)."""
        n = len(self.tracks)
        feats = [t.feature for t in self.tracks]
        dim = next((f.shape[0] for f in feats if f is not None), 0)
        return {"next_id": np.array(self._next_id, np.int64),
                "ids": np.array([t.id for t in self.tracks], np.int64).reshape(n),
                "boxes": np.array([t.box for t in self.tracks], np.float64).reshape(n, 4),
                "velocity": np.array([t.velocity for t in self.tracks], np.float64).reshape(n, 4),
                "missed": np.array([t.missed for t in self.tracks], np.int64).reshape(n),
                "hits": np.array([t.hits for t in self.tracks], np.int64).reshape(n),
                "has_feature": np.array([f is not None for f in feats], bool).reshape(n),
                "features": np.array([f if f is not None else np.zeros(dim) for f in feats],
                                     np.float64).reshape(n, dim),
                "params": np.array([self.max_missed, self.min_iou, self.appearance_weight,
                                    self.max_appearance_dist], np.float64)}

    @classmethod
    def from_state(cls, state) -> "Tracker":
        p = np.asarray(state["params"], np.float64)
        tracker = cls(max_missed=int(p[0]), min_iou=float(p[1]), appearance_weight=float(p[2]),
                      max_appearance_dist=float(p[3]))
        tracker._next_id = int(state["next_id"])
        tracker.tracks = [
            _Track(int(i), np.array(b, np.float64), np.array(v, np.float64), np.array(f, np.float64) if h else None,
                   int(m), int(k))
            for i, b, v, f, h, m, k in zip(state["ids"], state["boxes"], state["velocity"], state["features"],
                                           state["has_feature"], state["missed"], state["hits"])]
        return tracker

    def cut(self) -> None:
        """A shot boundary: every live track ends, so the next faces start fresh tracks (ids go on
        counting). Nothing is associated across a cut, however alike the place or the face."""
        self.tracks = []

    def __call__(self, faces: Faces, features: np.ndarray | None = None) -> Faces:
        """Pipeline stage form: the same faces with ``track_ids`` filled in."""
        return faces.with_(track_ids=self.update(faces, features))

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

    def _cost(self, boxes: np.ndarray, feats: np.ndarray | None) -> np.ndarray:
        iou, dist = self._motion(np.stack([t.predicted() for t in self.tracks]), boxes)
        iou_last, dist_last = self._motion(np.stack([t.box for t in self.tracks]), boxes)
        iou, dist = np.maximum(iou, iou_last), np.minimum(dist, dist_last)
        cost = (1 - iou + np.minimum(dist, 1.0)) / 2
        infeasible = (iou < self.min_iou) & (dist > 1.0)
        if feats is not None:
            comparable = lambda f: f is not None and f.shape == feats.shape[1:]  # noqa: E731
            has = np.array([comparable(t.feature) for t in self.tracks])
            if has.any():
                tf = np.stack([t.feature for t, h in zip(self.tracks, has) if h])
                app = np.zeros_like(cost)
                app[has] = 1 - tf @ feats.T
                w = self.appearance_weight
                cost = np.where(has[:, None], (1 - w) * cost + w * app, cost)
                infeasible |= has[:, None] & (app > self.max_appearance_dist)
        return np.where(infeasible, _INFEASIBLE, cost)

    def update(self, faces: Faces, features: np.ndarray | None = None) -> np.ndarray:
        """Assign this sample's faces to tracks; int64 ids in the order of ``faces``."""
        boxes = np.asarray(faces.boxes, np.float64).reshape(-1, 4)
        feats = self._features(faces, features) if len(faces) else None
        ids = np.full(len(boxes), -1, np.int64)
        matched_tracks: set[int] = set()
        if self.tracks and len(boxes):
            cost = self._cost(boxes, feats)
            for ti, di in zip(*linear_sum_assignment(cost)):
                if cost[ti, di] >= _INFEASIBLE:
                    continue
                self._observe(self.tracks[ti], boxes[di], None if feats is None else feats[di])
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
                                      None if feats is None else feats[di].copy()))
            self._next_id += 1
        return ids

    def _observe(self, track: _Track, box: np.ndarray, feature: np.ndarray | None) -> None:
        step = (box - track.box) / (track.missed + 1)
        a = self.VELOCITY_SMOOTHING if track.hits > 1 else 0.0
        track.velocity = a * track.velocity + (1 - a) * step
        track.box = box.copy()
        track.missed = 0
        track.hits += 1
        if feature is not None:
            if track.feature is None or track.feature.shape != feature.shape:
                track.feature = feature.copy()
            else:
                m = self.FEATURE_MOMENTUM
                track.feature = _unit(m * track.feature + (1 - m) * feature)
