"""Live ingest: edge batches in, live analyses out, and the state the dashboard shows.

One thread takes the batches of every device in arrival order. It scores all their crops
in one emotion-model call (batched across devices), then, per batch and in order, runs
the session's tracker, writes the rows and the session's new state in one transaction
with the batch's key. A resent batch hits that key and changes nothing; a server killed
between two batches resumes each session from its last committed state, so an edge
session gives the rows ``analyze`` gives for the same clip (``tests/test_live.py``).

A session's analysis has status ``live`` until the agent's closing batch, or until no
batch came for ``idle_timeout_s`` (counted from this server's start, so a backlog
draining after a restart is not cut off); then it is named (when a collection is given)
and ``complete``, and every export works on it.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import io
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from moodlens.edge.protocol import Batch, BatchError
from moodlens.errors import MoodlensError, NotFoundError
from moodlens.faces.track import Tracker, combine_features, thumbnail_features
from moodlens.pipeline import observation_rows
from moodlens.service.tables import CLOSED, LIVE, LiveBatchRow, LiveEmbeddingRow, LiveSessionRow
from moodlens.store import AnalysisRow, ObservationRow, Store
from moodlens.types import EMOTIONS, Faces, Frame

log = logging.getLogger("moodlens.live")

WINDOW_S = 600  # seconds of timeline the dashboard state keeps per session
MATCH_THRESHOLD = 70.0


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _pack(tracker: Tracker) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **tracker.state())
    return buf.getvalue()


def _unpack(data: bytes | None, embed=None) -> Tracker:
    """A session's tracker from its saved state (the last grey crops are not in it: see
    ``Tracker.from_state``), checking re-acquisitions with ``embed``."""
    if not data:
        return Tracker(embed=embed)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return Tracker.from_state({k: z[k] for k in z.files}, embed=embed)


@dataclass
class Ack:
    session_id: int
    analysis_id: int
    seq: int
    duplicate: bool = False
    closed: bool = False


@dataclass
class _Session:
    """A session's in-memory state: a cache of its row (reloaded after any failed write)."""

    id: int
    device: str
    name: str
    mode: str
    analysis_id: int
    stem: str
    collection: str | None
    tracker: Tracker
    shot: int | None
    frames: int
    faces: int
    status: str
    gallery: object | None = None
    best: dict = field(default_factory=dict)  # track -> [(quality, embedding)] for live names
    names: dict = field(default_factory=dict)  # track -> provisional person name


class LiveView:
    """What the dashboard shows of one session, kept in memory and rebuilt from the rows."""

    def __init__(self, session_id: int):
        self.session_id = session_id
        self.bins: dict[int, list] = {}  # second -> [frames, faces, emotion sums (8)]
        self.people: dict[str, dict[int, list]] = {}  # person -> second -> [faces, emotion sums]
        self.now: dict = {"time_s": None, "captured_at": None, "faces": []}
        self.version = 0
        self.last_ingest_lag_s: float | None = None
        self.received_at: float | None = None
        self.last_batch: list[dict] = []  # the newest batch's frames: time and capture time (latency)

    def add_frame(self, time_s: float, captured_at: float | None, faces: list[dict]) -> None:
        sec = int(np.floor(time_s))
        b = self.bins.setdefault(sec, [0, 0, np.zeros(len(EMOTIONS))])
        b[0] += 1
        b[1] += len(faces)
        for f in faces:
            e = np.array([f["emotions"][c] for c in EMOTIONS])
            b[2] += e
            if f.get("person") and not f["person"].startswith("unknown"):
                p = self.people.setdefault(f["person"], {}).setdefault(sec, [0, np.zeros(len(EMOTIONS))])
                p[0] += 1
                p[1] += e
        if self.now["time_s"] is None or time_s >= self.now["time_s"]:
            self.now = {"time_s": time_s, "captured_at": captured_at, "faces": faces}
        horizon = sec - WINDOW_S
        if len(self.bins) > WINDOW_S + 60:
            for k in [k for k in self.bins if k < horizon]:
                del self.bins[k]
            for series in self.people.values():
                for k in [k for k in series if k < horizon]:
                    del series[k]

    def snapshot(self, window_s: float = 300) -> dict:
        if not self.bins:
            return {"timeline": [], "people": {}, "now": self.now, "dominant": None, "version": self.version,
                    "last_batch": self.last_batch}
        end = max(self.bins)
        start = end - int(window_s)
        timeline = []
        for sec in sorted(k for k in self.bins if k >= start):
            frames, faces, sums = self.bins[sec]
            timeline.append({"t": sec, "faces": faces / max(frames, 1),
                             "emotions": {c: (round(float(v) / faces, 2) if faces else None)
                                          for c, v in zip(EMOTIONS, sums)}})
        people = {}
        for person, series in self.people.items():
            people[person] = [{"t": sec, "emotions": {c: round(float(v) / n, 2) for c, v in zip(EMOTIONS, sums)}}
                              for sec, (n, sums) in sorted(series.items()) if sec >= start]
        recent = [self.bins[k] for k in self.bins if k > end - 5]
        total = sum((b[2] for b in recent), np.zeros(len(EMOTIONS)))
        dominant = EMOTIONS[int(np.argmax(total))] if total.sum() > 0 else None
        return {"timeline": timeline, "people": {p: s for p, s in people.items() if s}, "now": self.now,
                "dominant": dominant, "version": self.version, "last_batch": self.last_batch}


class LiveIngest:
    """The ingest thread, the sessions' caches and their dashboard views."""

    def __init__(self, store: Store, idle_timeout_s: float = 300.0, classifier=None, gather_s: float = 0.02):
        self.store = store
        self.idle_timeout_s = idle_timeout_s
        self._classifier = classifier
        self._crop_embedder = None
        self.gather_s = gather_s
        self._queue: queue.Queue = queue.Queue()
        self._sessions: dict[int, _Session] = {}
        self._views: dict[int, LiveView] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle_thread: threading.Thread | None = None
        self.started = time.time()
        self.changed = threading.Condition()
        self.counts = {"batches": 0, "duplicates": 0, "faces": 0, "frames": 0}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="moodlens-live-ingest", daemon=True)
        self._thread.start()
        self._idle_thread = threading.Thread(target=self._idle_loop, name="moodlens-live-idle", daemon=True)
        self._idle_thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        for t in (self._thread, self._idle_thread):
            if t is not None:
                t.join(10)

    @property
    def classifier(self):
        if self._classifier is None:
            from moodlens.faces.emotion import default_classifier
            self._classifier = default_classifier()
        return self._classifier

    def _track_embed(self, grey: np.ndarray) -> np.ndarray:
        """The trackers' re-acquisition check (``analyze``'s, on the crops the devices sent);
        SFace loads when a session first needs it."""
        if self._crop_embedder is None:
            from moodlens.faces.identity import CropEmbedder
            self._crop_embedder = CropEmbedder(self.classifier.size, self.classifier.template)
        return self._crop_embedder(grey)

    def submit(self, batch: Batch, token_name: str | None = None) -> cf.Future:
        fut: cf.Future = cf.Future()
        self._queue.put(("batch", batch, token_name, fut))
        return fut

    # -- the ingest thread -------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                break
            items = [item]
            deadline = time.monotonic() + self.gather_s
            while len(items) < 64:  # whatever else arrives now shares the model call
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._stop.set()
                    break
                items.append(nxt)
            self._handle(items)

    def _handle(self, items: list) -> None:
        batches = [it for it in items if it[0] == "batch"]
        position = {id(it): i for i, it in enumerate(batches)}
        try:
            scored = self._score([b for _, b, _, _ in batches])
        except Exception as e:  # noqa: BLE001 - a crop that cannot be decoded fails its own batch below
            scored = None
            log.warning("scoring %d batch(es) together failed (%s); scoring one by one", len(batches), e)
        for k, (kind, *args) in enumerate(items):
            if kind == "close":
                session_id, reason, fut = args
                try:
                    fut.set_result(self._close_by_id(session_id, reason))
                except Exception as e:  # noqa: BLE001
                    log.exception("closing live session %d", session_id)
                    fut.set_exception(e)
                continue
            batch, token_name, fut = args
            try:
                emotions = scored[position[id(items[k])]] if scored is not None else self._score([batch])[0]
                fut.set_result(self._apply(batch, emotions, token_name))
            except Exception as e:  # noqa: BLE001 - the client gets it (503 or 422); the session reloads
                for sid, s in list(self._sessions.items()):
                    if (s.device, s.name) == (batch.device, batch.session):
                        self._sessions.pop(sid, None)
                if not isinstance(e, (BatchError, MoodlensError)):
                    log.warning("live batch %s/%s #%d failed: %s: %s", batch.device, batch.session, batch.seq,
                                type(e).__name__, e)
                fut.set_exception(e)

    def _score(self, batches: list[Batch]) -> list[list[np.ndarray]]:
        """Per batch, per frame: (n, 8) emotion probabilities (crops mode: one model call for all)."""
        greys, where = [], []
        size = self.classifier.size
        for bi, b in enumerate(batches):
            if b.mode != "crops":
                continue
            for fi, fr in enumerate(b.frames):
                for f in fr.faces:
                    g = cv2.imdecode(np.frombuffer(f.crop, np.uint8), cv2.IMREAD_GRAYSCALE)
                    if g is None or g.shape != (size, size):
                        raise BatchError(f"a crop of batch {b.seq} is not a {size}x{size} image")
                    f.grey = g  # the tracker's thumbnail is made from it too
                    greys.append(g)
                    where.append((bi, fi))
        probs = self.classifier.predict(np.stack(greys)) if greys else np.zeros((0, len(EMOTIONS)), np.float32)
        out = []
        for b in batches:
            if b.mode == "crops":
                out.append([np.zeros((len(fr.faces), len(EMOTIONS)), np.float32) for fr in b.frames])
            else:
                out.append([np.array([f.emotions for f in fr.faces], np.float32).reshape(-1, len(EMOTIONS))
                            for fr in b.frames])
        counters: dict = {}
        for (bi, fi), p in zip(where, probs):
            j = counters.get((bi, fi), 0)
            out[bi][fi][j] = p
            counters[(bi, fi)] = j + 1
        return out

    # -- sessions ------------------------------------------------------------------------------
    def _session(self, batch: Batch, token_name: str | None) -> _Session:
        for s in self._sessions.values():
            if (s.device, s.name) == (batch.device, batch.session):
                return s
        with self.store.session() as db:
            row = db.scalars(select(LiveSessionRow).where(LiveSessionRow.device == batch.device,
                                                          LiveSessionRow.name == batch.session)).first()
        if row is None:
            row = self._create(batch, token_name)
        return self._load(row)

    def _load(self, row: LiveSessionRow) -> _Session:
        stem = Path(str((row.meta or {}).get("source") or row.name)).stem or row.name
        s = _Session(id=row.id, device=row.device, name=row.name, mode=row.mode, analysis_id=row.analysis_id,
                     stem=stem, collection=row.collection, tracker=_unpack(row.tracker, self._track_embed), shot=row.shot,
                     frames=row.frames, faces=row.faces, status=row.status)
        if s.collection:
            from moodlens.collections import load_gallery
            try:
                s.gallery = load_gallery(self.store, s.collection)
            except NotFoundError as e:
                log.warning("live session %s/%s: %s; its faces stay unnamed", s.device, s.name, e)
        self._sessions[s.id] = s
        self._views.setdefault(s.id, None)
        return s

    def _new_analysis(self, batch: Batch, part: int) -> int:
        meta = batch.meta
        source = str(meta.get("source") or batch.session)
        params = {"fps": meta.get("fps"), "collection": meta.get("collection"), "live": True,
                  "device": batch.device, "session": batch.session, "mode": batch.mode, "part": part,
                  "shot_cuts": True, "check_tracks": True, "crop": meta.get("crop")}
        models = dict(meta.get("models") or {})
        if batch.mode == "crops":
            models["emotion"] = self.classifier.version
        info = {"name": source, "width": meta.get("width"), "height": meta.get("height"),
                "fps": meta.get("source_fps"), "source_kind": meta.get("source_kind"), "device": batch.device,
                "session": batch.session, "duration_s": None}
        return self.store.create_analysis(f"live:{batch.device}/{batch.session}", params, models, info, None,
                                          status=LIVE)

    def _create(self, batch: Batch, token_name: str | None) -> LiveSessionRow:
        aid = self._new_analysis(batch, 1)
        row = LiveSessionRow(device=batch.device, name=batch.session, status=LIVE, analysis_id=aid, part=1,
                             mode=batch.mode, collection=batch.meta.get("collection"), meta=batch.meta, stats={},
                             batches=0, duplicates=0, frames=0, faces=0, token_name=token_name)
        try:
            with self.store.session() as db, db.begin():
                db.add(row)
        except IntegrityError:  # another server made it first
            self.store.delete_analysis(aid)
            with self.store.session() as db:
                return db.scalars(select(LiveSessionRow).where(LiveSessionRow.device == batch.device,
                                                               LiveSessionRow.name == batch.session)).one()
        log.info("live session %s/%s opened (analysis %d, %s mode)", batch.device, batch.session, aid, batch.mode)
        return row

    def _reopen(self, s: _Session, batch: Batch) -> None:
        """A new batch for a closed session (the agent was away past the idle timeout): a new analysis."""
        with self.store.session() as db:
            part = (db.get(LiveSessionRow, s.id).part or 1) + 1
        aid = self._new_analysis(batch, part)
        with self.store.session() as db, db.begin():
            db.execute(update(LiveSessionRow).where(LiveSessionRow.id == s.id).values(
                status=LIVE, analysis_id=aid, part=part, frames=0, faces=0, shot=None, tracker=None, closed_at=None))
        log.info("live session %s/%s reopened as analysis %d (part %d)", s.device, s.name, aid, part)
        self._sessions.pop(s.id, None)
        self._views.pop(s.id, None)

    # -- one batch -----------------------------------------------------------------------------
    def _apply(self, batch: Batch, emotions: list[np.ndarray], token_name: str | None) -> Ack:
        s = self._session(batch, token_name)
        with self.store.session() as db:
            seen = db.get(LiveBatchRow, (s.id, batch.stream, batch.seq)) is not None
        if seen:
            with self.store.session() as db, db.begin():
                db.execute(update(LiveSessionRow).where(LiveSessionRow.id == s.id).values(
                    duplicates=LiveSessionRow.duplicates + 1))
            self.counts["duplicates"] += 1
            return Ack(s.id, s.analysis_id, batch.seq, duplicate=True, closed=s.status == CLOSED)
        if s.status == CLOSED:
            if not batch.frames and batch.close:
                self._record_only(s, batch)
                return Ack(s.id, s.analysis_id, batch.seq, closed=True)
            self._reopen(s, batch)
            s = self._session(batch, token_name)
        rows, embeddings, view_frames = [], [], []
        identity = s.collection is not None and s.gallery is not None
        arcs, arc_where = [], []
        for fr, probs in zip(batch.frames, emotions):
            if s.shot is not None and fr.shot != s.shot and s.mode == "crops":
                s.tracker.cut()  # a shot cut on the device: nothing is associated across it
            s.shot = fr.shot
            n = len(fr.faces)
            faces = Faces(boxes=np.array([f.box for f in fr.faces], np.float32).reshape(n, 4),
                          landmarks=np.array([f.landmarks for f in fr.faces], np.float32).reshape(n, 5, 2),
                          scores=np.array([f.score for f in fr.faces], np.float32).reshape(n),
                          quality=np.array([f.quality for f in fr.faces], np.float32).reshape(n),
                          emotions=probs)
            if s.mode == "crops":
                feats = None
                if n:
                    feats = combine_features(thumbnail_features([f.grey for f in fr.faces]),
                                             np.stack([f.hist for f in fr.faces]))
                ids = s.tracker.update(faces, feats, np.stack([f.grey for f in fr.faces]) if n else None)
            else:
                ids = np.array([f.track for f in fr.faces], np.int64).reshape(n)
            faces = faces.with_(track_ids=np.asarray(ids, np.int64))
            rows.extend(observation_rows(s.stem, Frame(fr.index, fr.time_s, None), faces, fr.shot))
            if identity:
                for i, f in enumerate(fr.faces):
                    if f.embedding is not None:
                        embeddings.append((fr.index, int(ids[i]), float(f.quality), f.embedding))
                    elif f.arc is not None:
                        arc = cv2.imdecode(np.frombuffer(f.arc, np.uint8), cv2.IMREAD_COLOR)
                        if arc is None or arc.shape[:2] != (112, 112):
                            raise BatchError(f"an identity crop of batch {batch.seq} is not a 112x112 image")
                        arcs.append(arc)
                        arc_where.append((fr.index, int(ids[i]), float(f.quality)))
            view_frames.append((fr, faces))
        if arcs:
            from moodlens.faces.identity import default_embedder
            vecs = default_embedder()(np.stack(arcs))
            embeddings.extend((fi, t, q, v) for (fi, t, q), v in zip(arc_where, vecs))
        n_faces = batch.n_faces
        last_capture = max((fr.captured_at for fr in batch.frames), default=None)
        values = dict(tracker=_pack(s.tracker) if s.mode == "crops" else None, shot=s.shot,
                      frames=LiveSessionRow.frames + len(batch.frames), faces=LiveSessionRow.faces + n_faces,
                      batches=LiveSessionRow.batches + 1, last_batch_at=_utcnow(),
                      # the closing batch is the last: whatever the device had queued before it has arrived
                      stats={**batch.stats, "backlog_batches": 0, "backlog_bytes": 0} if batch.close else batch.stats)
        if last_capture:
            values["last_captured_at"] = last_capture
        if batch.meta:
            values["meta"] = batch.meta
        with self.store.session() as db, db.begin():
            db.add(LiveBatchRow(session_id=s.id, stream=batch.stream, seq=batch.seq, frames=len(batch.frames),
                                faces=n_faces))
            db.flush()  # the key first: a concurrent duplicate fails here, before any row
            if rows:
                db.execute(ObservationRow.__table__.insert(), [{"analysis_id": s.analysis_id, **r} for r in rows])
            if embeddings:
                db.execute(LiveEmbeddingRow.__table__.insert(), [
                    {"analysis_id": s.analysis_id, "frame": fi, "track": t, "quality": q,
                     "vector": np.asarray(v, np.float32).tobytes()} for fi, t, q, v in embeddings])
            db.execute(update(LiveSessionRow).where(LiveSessionRow.id == s.id).values(**values))
        s.frames += len(batch.frames)
        s.faces += n_faces
        self.counts["batches"] += 1
        self.counts["frames"] += len(batch.frames)
        self.counts["faces"] += n_faces
        if identity and embeddings:
            self._name_live(s, embeddings)
        self._update_view(s, view_frames, last_capture)
        closed = False
        if batch.close:
            self._close(s, "the agent closed the session")
            closed = True
        return Ack(s.id, s.analysis_id, batch.seq, closed=closed)

    def _record_only(self, s: _Session, batch: Batch) -> None:
        with self.store.session() as db, db.begin():
            db.add(LiveBatchRow(session_id=s.id, stream=batch.stream, seq=batch.seq, frames=0, faces=0))

    def _name_live(self, s: _Session, embeddings: list) -> None:
        """Provisional names for the dashboard from each track's best faces so far (the final
        names are made at the close, the way ``analyze`` makes them)."""
        from moodlens.faces.identity import identify_tracks

        touched = set()
        for _, t, q, v in embeddings:
            best = s.best.setdefault(t, [])
            best.append((q, np.asarray(v, np.float32)))
            best.sort(key=lambda x: -x[0])
            del best[5:]
            touched.add(t)
        found = identify_tracks({t: np.stack([v for _, v in s.best[t]]) for t in touched}, s.gallery,
                                MATCH_THRESHOLD, {t: np.array([q for q, _ in s.best[t]], np.float32) for t in touched})
        for t, (person, _) in found.items():
            if person:
                s.names[t] = person

    # -- closing ---------------------------------------------------------------------------------
    def close_session(self, session_id: int, reason: str) -> cf.Future:
        fut: cf.Future = cf.Future()
        self._queue.put(("close", session_id, reason, fut))
        return fut

    def _close_by_id(self, session_id: int, reason: str) -> bool:
        s = self._sessions.get(session_id)
        if s is None:
            with self.store.session() as db:
                row = db.get(LiveSessionRow, session_id)
            if row is None or row.status != LIVE:
                return False
            s = self._load(row)
        if s.status != LIVE:
            return False
        self._close(s, reason)
        return True

    def _close(self, s: _Session, reason: str) -> None:
        """Name the tracks (as ``analyze`` does, from the stored embeddings) and complete the analysis."""
        if s.collection and s.gallery is not None:
            from moodlens.collections import move_track_frames
            from moodlens.faces.identity import TrackBank

            bank = TrackBank(per_track=5)
            with self.store.session() as db:
                rows = db.execute(select(LiveEmbeddingRow.frame, LiveEmbeddingRow.track, LiveEmbeddingRow.quality,
                                         LiveEmbeddingRow.vector).where(LiveEmbeddingRow.analysis_id == s.analysis_id)
                                  .order_by(LiveEmbeddingRow.id)).all()
            for frame, track, q, vec in rows:
                bank.add_embeddings([track], np.frombuffer(vec, np.float32)[None], [q], frame_index=frame)
            labels, moves = bank.resolve_split(s.gallery, threshold=MATCH_THRESHOLD)
            if moves:
                move_track_frames(self.store, s.analysis_id, moves)
            self.store.set_person(s.analysis_id, {t: name for t, (name, _) in labels.items()})
        with self.store.session() as db:
            a = db.get(AnalysisRow, s.analysis_id)
            info = dict(a.video_info or {})
            last = db.scalar(select(ObservationRow.time_s).where(ObservationRow.analysis_id == s.analysis_id)
                             .order_by(ObservationRow.time_s.desc()).limit(1))
        info["duration_s"] = float(last or 0.0) + 1.0 / float((a.params or {}).get("fps") or 2.0)
        with self.store.session() as db, db.begin():
            db.execute(update(AnalysisRow).where(AnalysisRow.id == s.analysis_id).values(video_info=info))
            db.execute(update(LiveSessionRow).where(LiveSessionRow.id == s.id).values(status=CLOSED,
                                                                                       closed_at=_utcnow()))
        self.store.finish(s.analysis_id, s.frames, {"live": True, "closed": reason})
        s.status = CLOSED
        log.info("live session %s/%s closed (%s): analysis %d complete, %d frames, %d faces", s.device, s.name,
                 reason, s.analysis_id, s.frames, s.faces)
        self._sessions.pop(s.id, None)
        self._notify()

    def _idle_loop(self) -> None:
        while not self._stop.wait(min(5.0, max(0.5, self.idle_timeout_s / 4))):
            try:
                self.close_idle()
            except Exception:  # noqa: BLE001 - the database blinked: next round
                log.exception("closing idle live sessions")

    def close_idle(self) -> list[int]:
        limit = time.time() - self.idle_timeout_s
        if self.started > limit:
            return []  # a backlog may still be on its way to a server that just started
        cutoff = dt.datetime.fromtimestamp(limit, dt.timezone.utc)
        with self.store.session() as db:
            ids = db.scalars(select(LiveSessionRow.id).where(LiveSessionRow.status == LIVE,
                                                             LiveSessionRow.last_batch_at < cutoff)).all()
        for sid in ids:
            self.close_session(sid, f"no batch for {self.idle_timeout_s:g} s").result(120)
        return list(ids)

    # -- the dashboard's state -------------------------------------------------------------------
    def _update_view(self, s: _Session, frames: list, last_capture: float | None) -> None:
        view = self._views.get(s.id) or self._rebuild_view(s.id, s.analysis_id)
        for fr, faces in frames:
            items = []
            for i in range(len(faces)):
                t = int(faces.track_ids[i])
                emo = {c: round(float(p) * 100, 2) for c, p in zip(EMOTIONS, faces.emotions[i])}
                items.append({"track": t, "person": s.names.get(t, f"unknown-{t + 1}"),
                              "box": [round(float(v), 1) for v in faces.boxes[i]], "emotions": emo,
                              "dominant": max(emo, key=emo.get)})
            view.add_frame(fr.time_s, fr.captured_at or None, items)
        view.last_batch = [{"time_s": fr.time_s, "captured_at": fr.captured_at or None} for fr, _ in frames]
        view.received_at = time.time()
        if last_capture:
            view.last_ingest_lag_s = max(0.0, view.received_at - last_capture)
        view.version += 1
        self._notify()

    def _rebuild_view(self, session_id: int, analysis_id: int) -> LiveView:
        """The last WINDOW_S seconds of a session from its rows (after a restart, or on first look)."""
        view = LiveView(session_id)
        cols = [ObservationRow.frame, ObservationRow.time_s, ObservationRow.track, ObservationRow.person,
                ObservationRow.x, ObservationRow.y, ObservationRow.w, ObservationRow.h,
                *[getattr(ObservationRow, c) for c in EMOTIONS]]
        with self.store.session() as db:
            last = db.scalar(select(ObservationRow.time_s).where(ObservationRow.analysis_id == analysis_id)
                             .order_by(ObservationRow.time_s.desc()).limit(1))
            rows = [] if last is None else db.execute(
                select(*cols).where(ObservationRow.analysis_id == analysis_id,
                                    ObservationRow.time_s >= last - WINDOW_S)
                .order_by(ObservationRow.time_s, ObservationRow.track)).all()
        by_frame: dict[tuple, list] = {}
        for r in rows:
            emo = {c: float(v) for c, v in zip(EMOTIONS, r[8:])}
            by_frame.setdefault((r.time_s, r.frame), []).append(
                {"track": r.track, "person": r.person, "box": [r.x, r.y, r.w, r.h], "emotions": emo,
                 "dominant": max(emo, key=emo.get)})
        for (time_s, _), faces in sorted(by_frame.items()):
            view.add_frame(time_s, None, faces)
        self._views[session_id] = view
        return view

    def view(self, session_id: int) -> LiveView:
        view = self._views.get(session_id)
        if view is None:
            with self.store.session() as db:
                row = db.get(LiveSessionRow, session_id)
            if row is None:
                raise NotFoundError(f"live session {session_id}: no such session")
            view = self._rebuild_view(session_id, row.analysis_id) if row.analysis_id else LiveView(session_id)
        return view

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def sessions(self, include_closed: bool = False, limit: int = 100) -> list[LiveSessionRow]:
        with self.store.session() as db:
            stmt = select(LiveSessionRow).order_by(LiveSessionRow.id.desc()).limit(limit)
            if not include_closed:
                stmt = stmt.where(LiveSessionRow.status == LIVE)
            return list(db.scalars(stmt))

    def session_row(self, session_id: int) -> LiveSessionRow:
        with self.store.session() as db:
            row = db.get(LiveSessionRow, session_id)
        if row is None:
            raise NotFoundError(f"live session {session_id}: no such session")
        return row

    def views(self) -> dict[int, LiveView]:
        return {k: v for k, v in self._views.items() if v is not None}


__all__ = ["Ack", "LiveIngest", "LiveView"]
