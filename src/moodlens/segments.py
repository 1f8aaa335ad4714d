"""A time segment of a video, analysed where it runs (a Ray worker): the per-frame work only.

``analyze_segment`` decodes the sampled frames in ``[start_s, end_s)`` (the same frames a
whole decode samples there, :func:`moodlens.media.iter_frames`) and runs everything that
needs the image: face detection, alignment, quality, emotions, the tracker's appearance
descriptors, the shot detector's signature and, with identity, the 112 px ArcFace crops.
With identity on, each face's SFace embedding is made here too (only 512 bytes travel).
What needs the order of the whole video (shot decisions, the tracker, which embeddings the
identity bank keeps, the rows) stays with the driver, which takes segments in order: so a
segmented run gives the local run's ids exactly, with no stitching heuristics at the boundaries.

Models load once per process (``default_classifier`` and the YuNet session are cached), so
a Ray worker that runs many segments loads them once.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moodlens.types import Faces


@dataclass
class FrameResult:
    """One sampled frame's per-frame work, small enough to travel (no image)."""

    index: int
    time_s: float
    signature: tuple  # moodlens.shots.signature of the frame
    faces: Faces  # boxes, landmarks, scores, quality, emotions (no crops)
    features: np.ndarray  # (N, 320) appearance descriptors for the tracker
    embeddings: np.ndarray | None = None  # (N, 128) SFace embeddings when identity is on (made here, not
    # on the driver: the one ordered process must not become the cluster's bottleneck)
    grey: np.ndarray | None = None  # (N, S, S) uint8 emotion-model crops: the tracker's re-acquisition check
    # (on the driver, for the few pairings it is unsure of; in memory only, as in a local run)
    vectors: dict | None = None  # crop_key -> SFace vector: what this worker's own run of the check made at
    # this frame (the driver's tracker, which decides, then rarely makes one: it does not become the bottleneck)


@dataclass
class SegmentResult:
    start_s: float
    end_s: float | None
    frames: list[FrameResult]
    gaps: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    host: str = ""
    pid: int = 0


def segment_bounds(duration_s: float, segment_s: float, fps: float) -> list[tuple[float, float | None]]:
    """``[start, end)`` pairs covering the video; each boundary is a sample target (``k / fps``), the
    last segment open-ended (it makes the whole decode's end checks: truncation, loss)."""
    if segment_s <= 0:
        raise ValueError("segment_s must be above 0")
    step = max(1, round(segment_s * fps))  # samples per segment
    n_samples = max(1, int(np.ceil(duration_s * fps - 1e-9)))
    starts = list(range(0, n_samples, step))
    bounds = [(k / fps, (k + step) / fps) for k in starts]
    bounds[-1] = (bounds[-1][0], None)
    return bounds


@functools.cache
def classifier_for(card_path: str | None = None, flip: bool = False):
    """The emotion classifier of a model card and flip setting, loaded once per process."""
    from moodlens.faces.emotion import EmotionClassifier, default_classifier
    from moodlens.models import ModelCard

    default = default_classifier()
    if (card_path is None or Path(card_path) == Path(default.card.path)) and not flip:
        return default
    return EmotionClassifier(ModelCard.load(Path(card_path)) if card_path else None, flip=flip)


def analyze_segment(path: str | bytes, fps: float, start_s: float, end_s: float | None, options: dict,
                    identity: bool, model: tuple[str | None, bool] = (None, False),
                    suffix: str = ".mp4") -> SegmentResult:
    """The per-frame work of the sampled frames in ``[start_s, end_s)``, with the emotion model
    ``model`` (its card's path and flip: the driver's). ``path`` may be the video's bytes
    (``--ship-video``: workers that cannot see the driver's files), kept once per machine."""
    import os
    import socket

    from moodlens import media
    from moodlens.faces.identity import align_for_identity, default_embedder
    from moodlens.faces.track import appearance_features
    from moodlens.pipeline import FaceStage, Options, grey_crops
    from moodlens.shots import signature

    if isinstance(path, (bytes, bytearray, memoryview)):  # shipped through Ray's object store
        path = str(local_copy(bytes(path), suffix))
    opts = Options(**options)
    stage = FaceStage(classifier_for(*model), opts)
    checker = _checker(stage, opts)
    stats = media.DecodeStats()
    out: list[FrameResult] = []
    t_decode = t_sig = t_id = t_check = 0.0
    frames = media.iter_frames(path, fps=fps, start_s=start_s, end_s=end_s, stats=stats)
    while True:
        t = time.perf_counter()
        frame = next(frames, None)
        t_decode += time.perf_counter() - t
        if frame is None:
            break
        t = time.perf_counter()
        sig = signature(frame.image)
        t_sig += time.perf_counter() - t
        faces = stage(frame)
        n = len(faces)
        feats = appearance_features(faces.crops) if n else np.zeros((0, 320), np.float32)
        emb = None
        if identity and n:
            t = time.perf_counter()
            emb = default_embedder()(align_for_identity(frame.image, faces.landmarks))  # one face a call: as local
            t_id += time.perf_counter() - t
        grey = grey_crops(faces.crops) if n and opts.check_tracks else None
        vectors = None
        if checker is not None:
            t = time.perf_counter()
            vectors = checker(sig, faces, feats, grey)
            t_check += time.perf_counter() - t
        out.append(FrameResult(frame.index, frame.time_s, sig, faces.with_(crops=None), feats, emb, grey, vectors))
    timings = {"decode": t_decode, "shots": t_sig, "identity": t_id, "track_check": t_check, **stage.timings}
    return SegmentResult(start_s, end_s, out, list(stats.gaps), timings, socket.gethostname(), os.getpid())


def _checker(stage, opts):
    """The worker's own run of the shots and the tracker over its segment, with the re-acquisition
    check: a function of one frame that returns the vectors the check made for it. The driver's
    tracker decides (it has the tracks from before the segment); where both runs check the same
    crops (all but a segment's first few samples), the driver gets its vectors from here."""
    from moodlens.faces.track import Tracker
    from moodlens.pipeline import track_embedder
    from moodlens.shots import ShotDetector

    embed = track_embedder(stage, opts)
    if embed is None:
        return None
    tracker = Tracker(max_missed=opts.max_missed, embed=embed)
    shots = ShotDetector() if opts.shot_cuts else None
    last = [0]

    def check(sig, faces, feats, grey) -> dict:
        if shots is not None:
            shots.update_signature(sig)
            if shots.shot != last[0]:
                tracker.cut()
                last[0] = shots.shot
        tracker.update(faces, feats if len(faces) else None, grey)
        return embed.take_new()

    return check


def local_copy(data: bytes, suffix: str) -> Path:
    """The video's bytes as a file in this machine's temp folder, named by their SHA-256, written
    once (atomically) however many segments of it run here."""
    import hashlib
    import os
    import tempfile

    folder = Path(tempfile.gettempdir()) / "moodlens-ray"
    folder.mkdir(exist_ok=True)
    path = folder / (hashlib.sha256(data).hexdigest()[:32] + suffix)
    for old in folder.iterdir():  # copies of videos last used over a day ago
        try:
            if old != path and time.time() - old.stat().st_mtime > 86400:
                old.unlink()
        except OSError:
            pass
    if path.exists():
        os.utime(path)  # in use
    else:
        tmp = folder / f".{path.name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path


def warm() -> None:
    """A Ray worker's set-up: load the models as the process starts, not in its first task."""
    from moodlens.faces.emotion import default_classifier
    from moodlens.models import yunet_session

    default_classifier()
    yunet_session()


__all__ = ["FrameResult", "SegmentResult", "analyze_segment", "local_copy", "segment_bounds", "warm"]
