"""One analysis: a streaming chain of stages over sampled frames.

decode -> detect -> align -> quality -> emotion -> track -> store, one frame at
a time, so memory is bounded by a frame and a write batch, never by the
video's length. Each stage is a plain function or a small callable; the
``FaceStage`` bundles the per-frame work so that an executor (in-process
today, a process pool or Ray later) can run it anywhere and give the same rows.
"""

from __future__ import annotations

import math
import numbers
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from moodlens import media
from moodlens.engines.base import STORE_EMOTIONS
from moodlens.errors import Cancelled, MediaError, MoodlensError, OptionError
from moodlens.faces.align import align_batch
from moodlens.faces.detect import detect_faces
from moodlens.faces.emotion import EmotionClassifier, default_classifier
from moodlens.faces.quality import quality as face_quality
from moodlens.faces.track import Tracker, appearance_features
from moodlens.models import YUNET_SHA256, sha256_file, yunet_session
from moodlens.shots import ShotDetector
from moodlens.store import DEFAULT_DB, FAILED, INTERRUPTED, Store, bulk, safe_url
from moodlens.types import EMOTIONS, Faces, Frame

Progress = Callable[[float, float], None]  # (seconds done, seconds total)


@dataclass
class Options:
    """Everything that changes an analysis's result; recorded with it."""

    fps: float = 2.0
    detect_threshold: float | None = None  # None: detect_faces' default
    max_side: int = 1920
    max_missed: int = 3
    write_batch: int = 500
    collection: str | None = None  # enrolled people to recognise
    match_threshold: float = 70.0  # 0-100, the seed's FaceMatchThreshold meaning
    reid: bool | None = None  # merge an unknown person's tracks; None: on when a collection is given
    faces_per_track: int = 5  # best-quality faces embedded per track
    shot_cuts: bool = True  # detect shot cuts between sampled frames; a cut ends every track
    check_tracks: bool = True  # check unsure pairings (re-acquisitions) with SFace before a track takes them

    def __post_init__(self) -> None:
        # inf or nan would pass a plain "> 0" check and fail much later (nan compares False)
        def finite(x) -> bool:
            return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)

        if not (finite(self.fps) and self.fps > 0):
            raise OptionError(f"fps must be a finite number above 0, not {self.fps!r}")
        if not finite(self.match_threshold):
            raise OptionError(f"match_threshold must be a finite number (0-100), not {self.match_threshold!r}")

    @property
    def identity(self) -> bool:
        return bool(self.collection) if self.reid is None else self.reid or bool(self.collection)

    def detect_kwargs(self) -> dict:
        kw = {"max_side": self.max_side}
        if self.detect_threshold is not None:
            kw["threshold"] = self.detect_threshold
        return kw


@dataclass
class Analysis:
    """The result of ``analyze``: its database id and metadata; the rows stay in the database.

    Rows are read only when asked: :meth:`iter_observations` streams them (flat memory
    however long the video), while :attr:`observations`, :attr:`records` and
    :attr:`tracks` load them all (about 3 KB a row: fine for a clip, not for a
    two-hour lecture). :attr:`summary` is folded over the stream.
    """

    id: int
    video: str
    status: str
    info: dict
    params: dict
    models: dict
    timings: dict
    store: Store = field(repr=False)
    n_observations: int = 0
    frames: int = 0  # sampled frames analysed
    decode_gaps: list[dict] = field(default_factory=list)
    outputs: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row, store: Store) -> "Analysis":
        return cls(id=row.id, video=row.video, status=row.status, info=row.video_info or {}, params=row.params or {},
                   models=row.models or {}, timings=row.timings or {}, store=store,
                   n_observations=row.observations or 0, frames=row.frames or 0,
                   decode_gaps=list(row.decode_gaps or []))

    def iter_observations(self) -> Iterator[dict]:
        """Store rows (percentages) in time order, streamed from the database."""
        return self.store.iter_observations(self.id)

    @property
    def observations(self) -> list[dict]:
        """Every store row in one list (memory grows with the rows)."""
        return list(self.iter_observations())

    @property
    def records(self) -> list[dict]:
        """Rows in records.csv's format (seed columns first)."""
        from moodlens.reports.tables import engine_of, record
        engine = engine_of(self.models)
        return [record(o, engine) for o in self.iter_observations()]

    @property
    def summary(self) -> list[dict]:
        """Per id: observations, seconds seen and each emotion's sum and mean (summary.csv)."""
        from moodlens.reports.tables import summary
        return summary(self.iter_observations(), self.params.get("fps"))

    @property
    def tracks(self) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        for o in self.iter_observations():
            out.setdefault(o["track"], []).append(o)
        return out

    @property
    def n_tracks(self) -> int:
        return self.store.track_count(self.id)


class FaceStage:
    """Per-frame work: faces with crops, quality and emotion probabilities (no state).

    :meth:`geometry` is the part without the emotion model (detect, align, quality): what
    an edge camera runs before it sends crops; ``classifier`` may then be a model card
    (only its input size and template are used).
    """

    def __init__(self, classifier, options: Options, engine=None):
        self.classifier = classifier
        self.options = options
        self._engine = engine  # None: the own model (``classifier``), made when first scored
        self.size = getattr(classifier, "size", None) or classifier.input_size
        self.template = np.asarray(classifier.template, np.float32)
        self.timings = {"detect": 0.0, "emotion": 0.0}

    def geometry(self, frame: Frame) -> Faces:
        """Faces with boxes, landmarks, scores, aligned colour crops and quality; no emotions."""
        t0 = time.perf_counter()
        faces = detect_faces(frame.image, **self.options.detect_kwargs())
        if len(faces):
            crops = align_batch(frame.image, faces.landmarks, self.size, self.template)
            faces = faces.with_(crops=crops, quality=face_quality(frame.image, faces))
        else:
            faces = faces.with_(quality=np.zeros(0, np.float32))
        self.timings["detect"] += time.perf_counter() - t0
        return faces

    @property
    def engine(self):
        """What scores the emotions (:mod:`moodlens.engines`): the own model unless told otherwise."""
        if self._engine is None:
            from moodlens.engines.own import OwnEngine
            self._engine = OwnEngine(self.classifier)
        return self._engine

    def __call__(self, frame: Frame) -> Faces:
        return self.scored(frame, self.geometry(frame))

    def scored(self, frame: Frame, faces: Faces) -> Faces:
        """``faces`` with the engine's emotion scores (columns: ``engine.columns``)."""
        t1 = time.perf_counter()
        if len(faces):
            faces = faces.with_(emotions=self.engine.score(frame.image, faces))
        else:
            faces = faces.with_(emotions=np.zeros((0, len(self.engine.columns)), np.float32))
        self.timings["emotion"] += time.perf_counter() - t1
        return faces


def grey_crops(crops: np.ndarray) -> np.ndarray:
    """The emotion model's grey uint8 input (N, S, S) of aligned BGR crops (rounded luma, as cv2)."""
    grey = np.asarray(crops) @ np.array([0.114, 0.587, 0.299], np.float32)
    return np.clip(grey + 0.5, 0, 255).astype(np.uint8)


def observation_rows(stem: str, frame: Frame, faces: Faces, shot: int = 0,
                     columns: tuple[str, ...] = EMOTIONS) -> list[dict]:
    """Database rows (percentages) for one frame's tracked faces, seen in shot ``shot``.

    ``columns`` name the emotion scores' columns (an engine's); an engine that does not fill
    every store column gets NULL in the others, and a NaN score (no answer for that face) is NULL.
    """
    missing = () if columns == EMOTIONS else tuple(c for c in STORE_EMOTIONS if c not in columns)
    rows = []
    for i in range(len(faces)):
        x, y, w, h = (float(v) for v in faces.boxes[i])
        tid = int(faces.track_ids[i])
        row = {"seq": f"{stem}/{frame.index}", "person": f"unknown-{tid + 1}", "frame": frame.index,
               "time_s": frame.time_s, "track": tid, "x": x, "y": y, "w": w, "h": h,
               "score": float(faces.scores[i]), "quality": float(faces.quality[i]),
               "landmarks": np.round(faces.landmarks[i], 1).tolist(), "shot": shot}
        row.update({c: None if p != p else float(p) * 100.0 for c, p in zip(columns, faces.emotions[i])})
        row.update(dict.fromkeys(missing))
        rows.append(row)
    return rows


def with_shots(frames: Iterator[Frame], detector: ShotDetector | None, timings: dict) -> Iterator[tuple[Frame, int]]:
    """Each frame with its shot index (always 0 without a detector). Run inside
    :func:`prefetch`, the detector's work (0.5-0.7 ms a frame) overlaps with face
    detection on the previous frame; ``timings['shots']`` is its busy time."""
    for frame in frames:
        if detector is None:
            yield frame, 0
            continue
        t = time.perf_counter()
        detector.update(frame.image)
        timings["shots"] += time.perf_counter() - t
        yield frame, detector.shot


def prefetch(frames: Iterator, timings: dict, depth: int = 3) -> Iterator:
    """Decode in a background thread, ``depth`` frames ahead (memory stays bounded).

    FFmpeg and ONNX Runtime both release the GIL, so decoding the next frame
    overlaps with detecting faces in this one. ``timings['decode']`` is the
    decoder's own busy time; errors surface here, in order, as if not threaded.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                finally:
                    timings["decode"] += time.perf_counter() - t
                q.put(frame)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)
            return
        q.put(done)

    thread = threading.Thread(target=work, name="moodlens-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def analyze(
    path: str | Path,
    *,
    fps: float = 2.0,
    db: str = DEFAULT_DB,
    out: str | Path | None = None,
    progress: Progress | None = None,
    classifier: EmotionClassifier | None = None,
    store: Store | None = None,
    on_start: Callable[[int], None] | None = None,
    name: str | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    segment_s: float = 60.0,
    ship_video: bool = False,
    engine=None,
    **options,
) -> Analysis:
    """Analyse a video: every face in every sampled frame, with emotions and tracks.

    Results go to the database (``db``, SQLite by default) as a new analysis;
    with ``out``, records.csv, records.jsonl and summary.csv are written there.
    ``name`` is what the video is called in records (``seq``) and reports when the
    file's own name is not (a service stores uploads under random names).
    Raises ``MediaError`` for unreadable input; the database keeps the failed
    analysis marked as such, and earlier analyses are untouched.

    ``executor="ray"`` runs the per-frame work on a Ray cluster (``ray_address``: None
    starts a local one, ``"auto"`` or ``"ray://host:10001"`` joins one) in segments of
    ``segment_s`` seconds; the tracking, naming and rows stay here and are the same.
    ``ship_video`` sends the file through Ray's object store, for workers that cannot read it.

    ``engine`` (:mod:`moodlens.engines`) scores the emotions instead of the own model
    (``classifier``); its name and version are recorded with the analysis, and a remote engine
    (Rekognition) is called for a few frames at once while detection goes on here.
    """
    if executor not in ("local", "ray"):
        raise OptionError(f"executor {executor!r}: local or ray")
    if engine is not None and engine.name != "own" and executor != "local":
        raise OptionError(f"--engine {engine.name} runs with --executor local only (for now)")
    path = Path(path)
    opts = Options(fps=fps, **options)
    info = media.probe(path)  # validates the input before anything is written
    t_load = time.perf_counter()
    classifier = classifier or default_classifier()
    if executor == "local":  # on Ray the workers detect; the driver never does
        yunet_session()  # load models before the clock starts: throughput, not start-up, is timed below
    store = store or Store(db)
    models = {"detector": f"yunet-2023mar-int8bq@{YUNET_SHA256[:12]}",
              "emotion": classifier.version if engine is None else engine.version}
    if engine is not None and engine.name != "own":
        models["engine"] = engine.name  # records.csv's engine column; the own model's records stay as they were
    remote_collection = bool(opts.collection) and getattr(engine, "remote", False)
    if remote_collection:
        engine.check_collection(opts.collection)  # a missing collection: one line, nothing written
        models["identity"] = f"amazon-rekognition:SearchFacesByImage/{opts.collection}"
    gallery = None
    if opts.collection and not remote_collection:
        from moodlens.collections import load_gallery
        gallery = load_gallery(store, opts.collection)  # NotFoundError before any row is written
    if opts.identity and not remote_collection:
        from moodlens.faces.identity import TrackBank, default_embedder
        default_embedder()
        models["identity"] = "sface-2021dec-int8bq (float32 fold)"
    load_s = time.perf_counter() - t_load
    info_d = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(info).items()}
    info_d["name"] = Path(name).name if name else path.name  # what people call it (an upload's own name)
    stem = Path(info_d["name"]).stem
    aid = store.create_analysis(str(path.resolve()), asdict(opts), models, info_d, sha256_file(path))
    if on_start is not None:
        on_start(aid)  # e.g. a service job records its analysis before the long part
    stage = FaceStage(classifier, opts, engine)
    columns = stage.engine.columns
    tracker = Tracker(max_missed=opts.max_missed, embed=track_embedder(stage, opts))
    shots = ShotDetector() if opts.shot_cuts else None
    bank = TrackBank(per_track=opts.faces_per_track) if opts.identity and not remote_collection else None
    best = {} if remote_collection else None  # track -> (quality, JPEG crop): named by SearchFacesByImage
    timings = {"load_models": load_s, "decode": 0.0, "shots": 0.0, "track": 0.0, "store": 0.0}
    t_start = time.perf_counter()
    n_frames = 0
    buffer: list[dict] = []
    decoded = media.DecodeStats()
    try:
        if executor == "ray":
            from moodlens.executors.ray import segment_frames
            items = segment_frames(path, fps, info.duration_s, asdict(opts), opts.identity, classifier, segment_s,
                                   ray_address, shots, timings, decoded, ship_video)
        else:
            items = _local_frames(path, fps, stage, shots, timings, decoded)
        shot = 0
        cuts: list[float] = []  # the sampled frames that start a new shot (the report marks them)
        timings["shot_cuts"] = cuts
        for frame, frame_shot, faces, features, embeddings, grey, vectors in items:
            if frame_shot != shot:
                tracker.cut()  # nothing is associated across a cut
                shot = frame_shot
                cuts.append(round(frame.time_s, 3))
            t = time.perf_counter()
            if vectors and tracker.embed is not None:  # a Ray worker's run of the check: the same crops,
                tracker.embed.learn(vectors)  # the same vectors
            ids = tracker.update(faces, features, grey)
            faces = faces.with_(track_ids=np.asarray(ids, np.int64))
            timings["track"] += time.perf_counter() - t
            if bank is not None:
                t = time.perf_counter()
                if embeddings is not None:  # made where the frame was (a Ray worker): the same vectors
                    bank.add_embeddings(faces.track_ids.tolist(), embeddings, faces.quality.tolist(),
                                        frame_index=frame.index)
                else:
                    bank.add(frame.image, faces, frame_index=frame.index)
                timings["identity"] = timings.get("identity", 0.0) + time.perf_counter() - t
            if best is not None:
                _keep_best(best, frame, faces)
            buffer.extend(observation_rows(stem, frame, faces, shot, columns))
            n_frames += 1
            if len(buffer) >= opts.write_batch:
                t = time.perf_counter()
                store.add_observations(aid, buffer)
                buffer = []
                timings["store"] += time.perf_counter() - t
            if progress:
                progress(frame.time_s, info.duration_s)
        t = time.perf_counter()
        store.add_observations(aid, buffer)
        timings["store"] += time.perf_counter() - t
        if bank is not None:
            t = time.perf_counter()
            labels, moves = bank.resolve_split(gallery, threshold=opts.match_threshold)
            if moves:  # tracks whose faces are two people were split: their rows get the new ids
                from moodlens.collections import move_track_frames
                move_track_frames(store, aid, moves)
            store.set_person(aid, {track: name for track, (name, _) in labels.items()})
            timings["identity"] = timings.get("identity", 0.0) + time.perf_counter() - t
        if best:
            t = time.perf_counter()
            store.set_person(aid, _search_tracks(engine, opts.collection, best, opts.match_threshold))
            timings["identity"] = timings.get("identity", 0.0) + time.perf_counter() - t
    except KeyboardInterrupt:
        _record_failure(store, aid, "interrupted by the user", INTERRUPTED)
        raise
    except Exception as e:
        recorded = _record_failure(store, aid, str(e), INTERRUPTED if isinstance(e, Cancelled) else FAILED)
        if isinstance(e, SQLAlchemyError):
            raise _database_error(store, aid, e, recorded) from None
        if isinstance(e, MoodlensError):
            raise
        raise MediaError(f"{path}: analysis failed ({type(e).__name__}: {e})") from e
    if tracker.embed is not None:  # the re-acquisition check's share of "track", and how often it ran
        timings.update(track_check=tracker.stats["check_s"], track_checks=tracker.stats["checks"],
                       track_refused=tracker.stats["refused"], track_vectors_made=tracker.embed.made)
    if executor == "local":
        timings["decode"] -= timings["shots"]  # the decode thread's clock ran over both
        timings.update(stage.timings)
    if hasattr(stage.engine, "stats"):
        timings.update(stage.engine.stats())
    timings["total"] = time.perf_counter() - t_start
    timings["realtime_factor"] = info.duration_s / timings["total"] if timings["total"] > 0 else None
    try:
        store.finish(aid, n_frames, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in timings.items()},
                     decode_gaps=decoded.gaps)  # stretches skipped as undecodable (media.DecodeStats)
        analysis = Analysis.from_row(store.analysis(aid), store)
    except SQLAlchemyError as e:
        raise _database_error(store, aid, e, False) from None
    if out is not None:
        from moodlens.outputs import write_tables
        analysis.outputs = write_tables(analysis, Path(out))
    return analysis


def track_embedder(stage: FaceStage, opts: Options):
    """What the tracker checks unsure pairings with: SFace on the emotion model's grey crops
    (:class:`moodlens.faces.identity.CropEmbedder`), or None when ``check_tracks`` is off."""
    if not opts.check_tracks:
        return None
    from moodlens.faces.identity import CropEmbedder
    return CropEmbedder(stage.size, stage.template)


def _grey(stage: FaceStage, faces: Faces):
    """The grey crops the tracker's check needs (none when it is off)."""
    return grey_crops(faces.crops) if len(faces) and stage.options.check_tracks else None


def _local_frames(path: Path, fps: float, stage: FaceStage, shots: ShotDetector | None, timings: dict,
                  decoded: media.DecodeStats) -> Iterator[tuple]:
    """(frame, shot, faces, appearance features, None, grey crops, None) in order: decoded in a
    thread, worked here."""
    frames = media.iter_frames(path, fps=fps, stats=decoded)
    if getattr(stage.engine, "remote", False):
        yield from _remote_frames(prefetch(with_shots(frames, shots, timings), timings), stage)
        return
    for frame, frame_shot in prefetch(with_shots(frames, shots, timings), timings):
        faces = stage(frame)
        yield (frame, frame_shot, faces, appearance_features(faces.crops) if len(faces) else None, None,
               _grey(stage, faces), None)


def _remote_frames(items: Iterator[tuple[Frame, int]], stage: FaceStage, ahead: int = 4) -> Iterator[tuple]:
    """As :func:`_local_frames`, for a remote engine: detection runs here, in order, while the
    engine scores up to ``ahead`` earlier frames (their calls in flight at once); results come
    back in frame order, so tracking and rows are as if run one by one."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pending: deque = deque()
    with ThreadPoolExecutor(ahead, thread_name_prefix="moodlens-engine") as pool:
        def done(item):
            frame, frame_shot, faces, future = item
            t = time.perf_counter()
            faces = future.result()
            stage.timings["emotion"] += time.perf_counter() - t  # time waited on the engine, not its total
            return (frame, frame_shot, faces, appearance_features(faces.crops) if len(faces) else None, None,
                    _grey(stage, faces), None)

        def scored(frame, faces):
            if not len(faces):
                return faces.with_(emotions=np.zeros((0, len(stage.engine.columns)), np.float32))
            return faces.with_(emotions=stage.engine.score(frame.image, faces))

        try:
            for frame, frame_shot in items:
                faces = stage.geometry(frame)
                pending.append((frame, frame_shot, faces, pool.submit(scored, frame, faces)))
                if len(pending) >= ahead:
                    yield done(pending.popleft())
            while pending:
                yield done(pending.popleft())
        finally:
            for item in pending:
                item[3].cancel()


def _keep_best(best: dict, frame: Frame, faces: Faces) -> None:
    """Per track, the JPEG crop of its best-quality face so far (what SearchFacesByImage is sent)."""
    from moodlens.engines.crops import face_jpeg

    for i in range(len(faces)):
        track, q = int(faces.track_ids[i]), float(faces.quality[i])
        if track not in best or q > best[track][0]:
            best[track] = (q, face_jpeg(frame.image, faces.boxes[i])[0])


def _search_tracks(engine, collection: str, best: dict, threshold: float) -> dict[int, str]:
    """Tracks named by SearchFacesByImage on their best crop (FaceMatchThreshold = ``threshold``)."""
    names = {}
    for track, (_, data) in sorted(best.items()):
        match = engine.search(collection, data, threshold)
        if match is not None:
            names[track] = match[0]
    return names


def _record_failure(store: Store, aid: int, error: str, status: str = FAILED) -> bool:
    """Mark an analysis failed or interrupted; False when the database itself is gone
    (then readers see it as interrupted, since its process is gone too)."""
    try:
        store.fail(aid, error, status)
        return True
    except SQLAlchemyError:
        return False


def _database_error(store: Store, aid: int, e: SQLAlchemyError, recorded: bool) -> MoodlensError:
    reason = " ".join(str(getattr(e, "orig", None) or e).split())[:300]
    return MoodlensError(
        f"{safe_url(store.url)}: the database failed during analysis {aid} ({type(e).__name__}: {reason}); "
        "the analysis is not complete" + ("" if recorded else
                                          " and will show as interrupted once the database answers again"))


def load_analysis(analysis_id: int, db: str = DEFAULT_DB) -> Analysis:
    """A complete analysis from the database (its rows are streamed when used)."""
    store = Store(db)
    return Analysis.from_row(store.complete_analysis(analysis_id), store)


__all__ = ["Analysis", "FaceStage", "Options", "analyze", "grey_crops", "load_analysis", "observation_rows", "bulk"]
