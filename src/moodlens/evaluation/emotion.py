"""``moodlens eval emotion``: score the emotion model on a labelled folder.

Two layouts are read: FER+ (``label.csv`` with 10 annotator votes; majority
label, unknown / not-a-face majorities excluded) and one folder per class
(names such as ``happy`` or ``happiness``). Full images are searched for the
largest face, which is aligned like video faces; tight crops are landmarked
inside the crop, as the training data was. Scoring is restricted to the
classes the dataset has (a 7-class set never counts "contempt" as an answer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from moodlens.errors import MoodlensError
from moodlens.faces.align import align_batch
from moodlens.faces.detect import detect_faces
from moodlens.faces.emotion import EmotionClassifier, default_classifier, tight_crop_input
from moodlens.images import read_image
from moodlens.metrics import classification_report, restrict
from moodlens.training.ferplus import read_labels, vote_shares
from moodlens.types import EMOTIONS

ALIASES = {
    "neutral": "neutral", "calm": "neutral",
    "happy": "happiness", "happiness": "happiness", "joy": "happiness",
    "surprise": "surprise", "surprised": "surprise",
    "sad": "sadness", "sadness": "sadness",
    "angry": "anger", "anger": "anger",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear",
    "contempt": "contempt",
}
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
FULL_IMAGE_FACE_FRACTION = 0.5  # a face box under half the image area means a scene, not a crop


def _canonical(name: str) -> str | None:
    key = name.lower().strip()
    key = key.split("_", 1)[1] if key[:1].isdigit() and "_" in key else key
    return ALIASES.get(key)


def read_dataset(root: Path) -> tuple[str, list[Path], np.ndarray, np.ndarray | None]:
    """(layout, image paths, labels as EMOTIONS indices, each image's vote shares over
    EMOTIONS where the layout has votes, else None)."""
    if not root.is_dir():
        raise MoodlensError(f"{root}: not a folder")
    if (root / "label.csv").is_file():
        files, votes = read_labels(root)
        keep = votes.argmax(1) < 8
        paths = [root / f for f, k in zip(files, keep) if k]
        return "ferplus", paths, votes[keep, :8].argmax(1), vote_shares(votes[keep])
    paths, labels, unknown = [], [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        cls = _canonical(sub.name)
        if cls is None:
            unknown.append(sub.name)
            continue
        for f in sorted(sub.rglob("*")):
            if f.suffix.lower() in IMAGE_EXT:
                paths.append(f)
                labels.append(EMOTIONS.index(cls))
    if not paths:
        raise MoodlensError(f"{root}: no label.csv and no class folders with images"
                            + (f" (unrecognised folders: {', '.join(unknown[:8])})" if unknown else ""))
    return "folders", paths, np.asarray(labels), None


def model_input(image: np.ndarray, clf: EmotionClassifier) -> tuple[np.ndarray, str]:
    """The classifier's input for one labelled image, and how it was found (scene / crop)."""
    h, w = image.shape[:2]
    if max(h, w) > 96:
        faces = detect_faces(image)
        if len(faces) == 0:  # a labelled image shows a face: accept a less confident find
            faces = detect_faces(image, threshold=0.5)
        if len(faces):
            i = int(np.argmax(faces.areas))
            if faces.areas[i] < FULL_IMAGE_FACE_FRACTION * h * w:
                grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
                return align_batch(grey, faces.landmarks[i : i + 1], clf.size, clf.template)[0], "scene"
    return tight_crop_input(image, clf.size, clf.template), "crop"


def evaluate_dataset(root: Path, classifier: EmotionClassifier | None = None, limit: int | None = None,
                     progress: Callable[[int, int], None] | None = None) -> dict:
    clf = classifier or default_classifier()
    layout, paths, labels, shares = read_dataset(Path(root))
    if limit:
        paths, labels = paths[:limit], labels[:limit]
        shares = None if shares is None else shares[:limit]
    inputs, kinds = [], {"scene": 0, "crop": 0}
    for i, p in enumerate(paths):
        img = read_image(p)  # one-line MediaError for a missing, unreadable or oversized photo
        x, kind = model_input(img, clf)
        inputs.append(x)
        kinds[kind] += 1
        if progress:
            progress(i + 1, len(paths))
    x = np.stack(inputs)
    t = time.perf_counter()
    probs = clf.predict(x)
    ms = (time.perf_counter() - t) / len(x) * 1000
    flipped = clf.predict(x[:, :, ::-1].copy())
    present = sorted(set(labels.tolist()))
    sub = restrict(probs, present)
    remap = {c: i for i, c in enumerate(present)}
    y = np.array([remap[v] for v in labels])
    # the votes for absent classes leave with them, as their probabilities do
    report = classification_report(sub, y, [EMOTIONS[c] for c in present],
                                   None if shares is None else restrict(shares, present))
    report.update(
        model=clf.version, layout=layout, data=str(root), faces_from=kinds, ms_per_face=ms,
        flip_agreement=float((probs[:, present].argmax(1) == flipped[:, present].argmax(1)).mean()),
    )
    return report


def engine_image(image: np.ndarray) -> tuple[bytes, tuple[float, float]]:
    """What a remote engine is sent for one labelled image: its largest face's padded crop, or the
    whole image when it is already a tight face crop (FER+'s 48 px faces, enlarged as for video)."""
    from moodlens.engines.crops import face_jpeg

    h, w = image.shape[:2]
    if max(h, w) > 96:
        faces = detect_faces(image)
        if len(faces) == 0:
            faces = detect_faces(image, threshold=0.5)
        if len(faces):
            i = int(np.argmax(faces.areas))
            if faces.areas[i] < FULL_IMAGE_FACE_FRACTION * h * w:
                return face_jpeg(image, faces.boxes[i])
    return face_jpeg(image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), [0, 0, w, h])


def evaluate_engine(root: Path, engine, limit: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """The same report as :func:`evaluate_dataset` for a remote engine (Rekognition), over the
    FER+ classes it scores (not contempt). A face it returns no scores for counts as wrong in
    ``accuracy_all`` and is left out of the rest (``unscored``)."""
    layout, paths, labels, shares = read_dataset(Path(root))
    if limit:
        paths, labels = paths[:limit], labels[:limit]
        shares = None if shares is None else shares[:limit]
    jobs = []
    t = time.perf_counter()
    for p in paths:
        data, centre = engine_image(read_image(p))
        jobs.append(engine.pool.submit(engine.detect, data, centre, f"{p.name}"))
    scores = []
    for i, j in enumerate(jobs):
        scores.append(j.result())
        if progress:
            progress(i + 1, len(jobs))
    ms = (time.perf_counter() - t) / max(1, len(jobs)) * 1000
    probs = np.zeros((len(scores), len(EMOTIONS)), np.float64)
    cols = {c: k for k, c in enumerate(engine.columns)}
    for k, e in enumerate(EMOTIONS):
        if e in cols:
            probs[:, k] = [s[cols[e]] for s in scores]
    scored = ~np.isnan(probs).any(1)
    present = [c for c in sorted(set(labels.tolist())) if EMOTIONS[c] in cols]
    keep = scored & np.isin(labels, present)
    sub = restrict(probs[keep], present)
    remap = {c: i for i, c in enumerate(present)}
    y = np.array([remap[v] for v in labels[keep]])
    report = classification_report(sub, y, [EMOTIONS[c] for c in present],
                                   None if shares is None else restrict(shares[keep], present))
    in_classes = np.isin(labels, present)
    report.update(model=engine.version, layout=layout, data=str(root), ms_per_face=ms, flip_agreement=float("nan"),
                  unscored=int((~scored & in_classes).sum()),
                  accuracy_all=float((sub.argmax(1) == y).sum() / max(1, in_classes.sum())),
                  left_out_classes=[EMOTIONS[c] for c in sorted(set(labels.tolist())) if EMOTIONS[c] not in cols],
                  calls=engine.calls, bytes_sent=engine.bytes_sent)
    return report
