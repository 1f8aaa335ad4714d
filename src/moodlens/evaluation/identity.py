"""``moodlens eval identity``: enrol K photos a person, probe with the rest, hold strangers out.

Layouts: a folder of person folders (``DIR/<person>/*.jpg``), or a folder with a
manifest CSV naming each image's identity (``identity_clusters.csv``,
``identity_manifest.csv`` or ``labels.csv``; columns image|path|file and
identity|person|cluster_id|label), as ``identity/deepface_unit`` and ``identity/bbt``.

Every photo is embedded once (largest face, as at enrolment); the random splits are then
cheap, so ``repeats`` splits (seeded) are pooled. Per split: ``strangers`` of the people
(a fraction < 1, or a count) are held out entirely; every other person enrols
``min(K, n - 1)`` photos and is probed with the rest. Reported:

- rank-1: the best-scoring enrolled person is the right one (known probes);
- TAR at FAR = 1e-3: verification over all probe-vs-enrolled-face scores (genuine: the
  probe's own person; impostor: everyone else, strangers' probes included), at the score
  that at most 0.1 % of impostor pairs reach (with fewer than 1,000 impostor pairs this is
  "no impostor accepted");
- stranger rejection: strangers whose best score stays under the threshold (default 70);
- at the threshold: known probes accepted as the right person, and the pairwise FMR/FNMR.

Rank-1, stranger rejection and known acceptance use the open-set decision ``analyze``
makes (``Gallery.identify``: person templates, ``open_set_score``); ``pairwise`` holds the
same for the nearest-face per-pair score (the decision before issue 21), and
``template_tar_at_far_1e-3`` is TAR at FAR 1e-3 over probe-vs-person-template scores.
``gallery_sizes`` repeats everything on random subsets of that many people.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from moodlens.collections import IMAGE_SUFFIXES, faces_in_photo, read_image
from moodlens.errors import MoodlensError
from moodlens.faces.identity import (DEFAULT_MATCH_THRESHOLD, Embedder, Gallery, align_for_identity,
                                     default_embedder, similarity_to_score)

MANIFESTS = ("identity_clusters.csv", "identity_manifest.csv", "labels.csv")
IMAGE_COLS = ("image", "path", "file", "filename")
IDENTITY_COLS = ("identity", "person", "cluster_id", "label", "name")


def read_identity_set(root: Path) -> tuple[str, list[Path], list[str]]:
    """(layout, image paths, person ids) of a labelled identity folder."""
    root = Path(root)
    if not root.is_dir():
        raise MoodlensError(f"{root}: not a folder")
    for name in MANIFESTS:
        manifest = root / name
        if manifest.is_file():
            with open(manifest, newline="") as f:
                rows = list(csv.DictReader(f))
            cols = {c.lower().strip(): c for c in (rows[0].keys() if rows else [])}
            img = next((cols[c] for c in IMAGE_COLS if c in cols), None)
            ident = next((cols[c] for c in IDENTITY_COLS if c in cols), None)
            if img is None or ident is None:
                raise MoodlensError(f"{manifest}: needs an image column ({'|'.join(IMAGE_COLS)}) and an identity "
                                    f"column ({'|'.join(IDENTITY_COLS)})")
            paths = [root / r[img] for r in rows]
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise MoodlensError(f"{manifest}: {len(missing)} listed images are missing, e.g. {missing[0]}")
            return f"manifest:{name}", paths, [r[ident].strip() for r in rows]
    paths, people = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(sub.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(f)
                people.append(sub.name)
    if not paths:
        raise MoodlensError(f"{root}: no person folders with images, and no manifest ({', '.join(MANIFESTS)})")
    return "person-folders", paths, people


def embed_photos(paths: list[Path], embedder: Embedder | None = None,
                 progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (N, 128), found (N,) bool): the largest face of each photo."""
    embedder = embedder or default_embedder()
    emb = np.zeros((len(paths), 128), np.float32)
    found = np.zeros(len(paths), bool)
    for i, p in enumerate(paths):
        image, _ = read_image(p)
        faces = faces_in_photo(image, threshold=0.7)
        if len(faces):
            emb[i] = embedder(align_for_identity(image, faces.landmarks[:1]))[0]
            found[i] = True
        if progress:
            progress(i + 1, len(paths))
    return emb, found


def _n_strangers(strangers: float | int, people: int) -> int:
    if strangers < 0:
        raise MoodlensError(f"strangers must be >= 0, got {strangers}")
    n = int(round(strangers * people)) if isinstance(strangers, float) and strangers < 1 else int(strangers)
    return max(0, min(n, people - 1))


def split_scores(emb: np.ndarray, people: np.ndarray, enrol_k: int, n_strangers: int,
                 rng: np.random.Generator, threshold: float,
                 gallery_size: int | None = None) -> dict[str, np.ndarray]:
    """One random split: enrol, probe, and every score the metrics need.

    ``gallery_size``: use that many people (drawn at random) of the set, strangers included.
    Keys without a prefix are the open-set decision ``analyze`` makes (``Gallery.identify``);
    ``pairwise_*`` keys are the nearest-face, per-pair score (before issue 21).
    """
    names = np.unique(people)
    if gallery_size is not None and gallery_size < len(names):
        names = np.sort(rng.choice(names, size=gallery_size, replace=False))
    strangers = set(rng.choice(names, size=n_strangers, replace=False).tolist()) if n_strangers else set()
    enrol_idx, probe_idx = [], []
    for name in names:
        idx = rng.permutation(np.flatnonzero(people == name))
        if name in strangers:
            probe_idx += idx.tolist()
            continue
        k = len(idx) if len(idx) == 1 else min(enrol_k, len(idx) - 1)
        enrol_idx += idx[:k].tolist()
        probe_idx += idx[k:].tolist()
    enrol_idx, probe_idx = np.array(enrol_idx, int), np.array(probe_idx, int)
    gallery = Gallery(emb[enrol_idx], people[enrol_idx])
    probes, truth = emb[probe_idx], people[probe_idx]
    known = np.array([t not in strangers for t in truth], bool)
    per_person = gallery.person_similarities(probes)  # (Q, P)
    best = per_person.argmax(1) if len(gallery.persons) else np.zeros(len(probes), int)
    best_score = similarity_to_score(per_person.max(1)) if per_person.size else np.zeros(len(probes))
    pair = similarity_to_score(probes @ gallery.embeddings.T)  # (Q, M) probe vs every enrolled face
    same = truth[:, None] == gallery.labels[None, :]
    who, _, score = gallery.identify(probes)
    tmpl = similarity_to_score(probes @ gallery.templates().T)  # (Q, P) probe vs every person's template
    tmpl_same = truth[:, None] == gallery.persons[None, :]
    return {
        "rank1_hit": (who == truth)[known],
        "known_accept": ((who == truth) & (score >= threshold))[known],
        "stranger_best": np.asarray(score)[~known],
        "template_genuine": tmpl[tmpl_same],
        "template_impostor": tmpl[~tmpl_same],
        "pairwise_rank1_hit": (gallery.persons[best] == truth)[known],
        "pairwise_known_accept": ((gallery.persons[best] == truth) & (best_score >= threshold))[known],
        "pairwise_stranger_best": np.asarray(best_score)[~known],
        "genuine": pair[same],
        "impostor": pair[~same],
    }


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float]:
    """(TAR, score threshold) at the given FAR: accept when a score exceeds the threshold."""
    if len(genuine) == 0 or len(impostor) == 0:
        return float("nan"), float("nan")
    imp = np.sort(impostor)[::-1]
    allowed = int(np.floor(far * len(imp)))  # impostors that may score above the threshold
    t = float(imp[allowed]) if allowed < len(imp) else float(imp[-1])
    return float(np.mean(genuine > t)), t


def evaluate_identity(root: Path, enrol_k: int = 2, strangers: float | int = 0.25, seed: int = 0,
                      threshold: float = DEFAULT_MATCH_THRESHOLD, repeats: int = 10,
                      embedder: Embedder | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      gallery_sizes: list[int] | None = None,
                      embedded: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Identification and verification metrics on a labelled identity folder (see module doc).

    ``gallery_sizes``: also evaluate on random subsets of that many people (strangers
    included, ``strangers`` of them when a fraction); the results are under ``"sizes"``.
    ``embedded``: (embeddings, found) from an earlier ``embed_photos`` of the same
    folder, to skip embedding.
    """
    if enrol_k < 1:
        raise MoodlensError(f"--enrol must be at least 1, got {enrol_k}")
    t0 = time.perf_counter()
    layout, paths, labels = read_identity_set(Path(root))
    emb, found = embedded if embedded is not None else embed_photos(paths, embedder, progress)
    t_embed = time.perf_counter() - t0
    people = np.array(labels, dtype=object)[found]
    emb = emb[found]
    names = np.unique(people)
    if len(names) < 2:
        raise MoodlensError(f"{root}: needs at least 2 people with a detectable face, found {len(names)}")
    out = {"dataset": str(root), "layout": layout, "people": int(len(names)), "images": len(paths),
           "no_face": [str(p) for p, f in zip(paths, found) if not f],
           **_metrics(emb, people, len(names), enrol_k, strangers, seed, threshold, repeats)}
    if gallery_sizes:
        out["sizes"] = [{"gallery_size": min(int(g), len(names)),
                         **_metrics(emb, people, min(int(g), len(names)), enrol_k, strangers, seed, threshold,
                                    repeats)}
                        for g in gallery_sizes if int(g) >= 2]
    out["seconds"] = {"embed": round(t_embed, 2), "total": round(time.perf_counter() - t0, 2)}
    return out


def _metrics(emb: np.ndarray, people: np.ndarray, size: int, enrol_k: int, strangers: float | int, seed: int,
             threshold: float, repeats: int) -> dict:
    n_str = _n_strangers(strangers, size)
    rng = np.random.default_rng(seed)
    pooled: dict[str, list[np.ndarray]] = {}
    for _ in range(max(1, repeats)):
        for k, v in split_scores(emb, people, enrol_k, n_str, rng, threshold, gallery_size=size).items():
            pooled.setdefault(k, []).append(np.asarray(v))
    r = {k: np.concatenate(v) if v else np.zeros(0) for k, v in pooled.items()}
    tar, far_t = tar_at_far(r["genuine"], r["impostor"], 1e-3)
    tar_t, far_tt = tar_at_far(r["template_genuine"], r["template_impostor"], 1e-3)
    mean = lambda a: float(np.mean(a)) if len(a) else None  # noqa: E731
    return {
        "enrol_k": enrol_k, "strangers_per_split": n_str, "repeats": max(1, repeats), "seed": seed,
        "threshold": threshold,
        "probes_known": int(len(r["rank1_hit"])), "probes_stranger": int(len(r["stranger_best"])),
        "rank1": mean(r["rank1_hit"]),
        "tar_at_far_1e-3": tar, "far_1e-3_score": far_t,
        "genuine_pairs": int(len(r["genuine"])), "impostor_pairs": int(len(r["impostor"])),
        "template_tar_at_far_1e-3": tar_t, "template_far_1e-3_score": far_tt,
        "stranger_rejection": mean(r["stranger_best"] < threshold),
        "strangers_named": mean(r["stranger_best"] >= threshold),
        "known_accept_at_threshold": mean(r["known_accept"]),
        "fmr_at_threshold": mean(r["impostor"] >= threshold),
        "fnmr_at_threshold": mean(r["genuine"] < threshold),
        "pairwise": {  # the nearest-face, per-pair decision used before issue 21
            "rank1": mean(r["pairwise_rank1_hit"]),
            "stranger_rejection": mean(r["pairwise_stranger_best"] < threshold),
            "strangers_named": mean(r["pairwise_stranger_best"] >= threshold),
            "known_accept_at_threshold": mean(r["pairwise_known_accept"]),
        },
    }
