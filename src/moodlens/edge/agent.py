"""The edge agent: sample a camera, find and align faces on the device, send crops or scores.

Capture and sending are decoupled by the :class:`~moodlens.edge.outbox.Outbox`: the
capture loop writes each batch to disk and goes on; a sender thread posts the oldest
batch, deletes it once the server acknowledges it, and backs off while the server is
away. A stop (SIGINT, SIGTERM, the end of a file) writes the session's closing batch and
waits up to ``flush_timeout`` for the backlog to drain; what is left stays in the buffer
for the next start.
"""

from __future__ import annotations

import random
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from moodlens.edge.outbox import Outbox
from moodlens.edge.protocol import MEDIA_TYPE, Batch, FaceIn, FrameIn, encode
from moodlens.edge.sources import open_source, public_name
from moodlens.errors import MoodlensError

BACKOFF_MAX_S = 30.0
NAIVE_EVERY = 5  # every 5th sampled frame is JPEG-encoded whole to estimate the naive design's bytes


class AgentError(MoodlensError):
    """The agent cannot go on (a refused token, a server that is not moodlens)."""


@dataclass
class EdgeConfig:
    source: str
    server: str
    token: str | None = None
    fps: float = 2.0
    device: str = field(default_factory=socket.gethostname)
    session: str | None = None
    scores_only: bool = False
    collection: str | None = None
    buffer: Path | None = None
    buffer_max_mb: float = 1024
    realtime: bool = False
    batch_interval_s: float = 0.5  # a batch holds at most this much video; whatever waited goes at once
    crop_format: str = "jpeg"  # jpeg | webp
    crop_quality: int = 90
    flush_timeout_s: float = 60.0

    def __post_init__(self):
        if self.crop_format not in ("jpeg", "webp"):
            raise MoodlensError(f"--crop-format {self.crop_format!r}: jpeg or webp")
        if not 1 <= self.crop_quality <= 100:
            raise MoodlensError("--crop-quality is 1-100")
        if not self.fps > 0 or self.fps > 60:
            raise MoodlensError("--fps must be above 0 and at most 60")
        self.server = self.server.rstrip("/")
        if not self.server.startswith(("http://", "https://")):
            raise MoodlensError(f"--server {self.server!r}: give a URL such as http://host:8000")
        if self.buffer is None:
            import os
            base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
            self.buffer = base / "moodlens" / "edge" / _safe(self.device)

    @property
    def mode(self) -> str:
        return "scores" if self.scores_only else "crops"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100] or "device"


@dataclass
class Status:
    """What the agent is doing, for the terminal and the exit summary (this run only)."""

    frames: int = 0
    faces: int = 0
    batches: int = 0
    sent_batches: int = 0
    sent_bytes: int = 0
    duplicates: int = 0
    rejected: int = 0
    naive_bytes_sampled: int = 0
    naive_frames_sampled: int = 0
    server: str = "starting"  # ok | unreachable (reason) | refused (reason)
    started: float = field(default_factory=time.monotonic)
    capture_done: bool = False
    last_error: str | None = None

    @property
    def naive_bytes(self) -> float:
        """Every sampled frame as a JPEG (quality 90), estimated from every NAIVE_EVERY-th one."""
        if not self.naive_frames_sampled:
            return 0.0
        return self.naive_bytes_sampled / self.naive_frames_sampled * self.frames


class Sender(threading.Thread):
    """Posts the outbox's oldest batch until it is acknowledged; backs off while the server is away."""

    def __init__(self, outbox: Outbox, config: EdgeConfig, status: Status, log: Callable[[str], None]):
        super().__init__(name="moodlens-edge-sender", daemon=True)
        import httpx

        self.outbox, self.config, self.status, self.log = outbox, config, status, log
        headers = {"Content-Type": MEDIA_TYPE}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        self.client = httpx.Client(base_url=config.server, headers=headers, timeout=30)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.fatal: str | None = None
        self._backoff = 0.0

    def run(self) -> None:
        import httpx

        while not self.stopping.is_set():
            item = self.outbox.peek()
            if item is None:
                self.wake.wait(0.2)
                self.wake.clear()
                continue
            seq, body = item
            try:
                r = self.client.post("/api/live/batches", content=body)
            except httpx.HTTPError as e:
                self._away(f"unreachable ({type(e).__name__})")
                continue
            if r.status_code == 200:
                wire = len(body) + _request_overhead(r.request)  # what the link carried, headers included
                self.outbox.ack(seq, wire)
                self.status.sent_batches += 1
                self.status.sent_bytes += wire
                self.status.duplicates += bool(r.json().get("duplicate"))
                if self.status.server != "ok":
                    if self.status.server.startswith("unreachable"):
                        self.log("server reachable again; sending the backlog")
                    self.status.server = "ok"
                self._backoff = 0.0
            elif r.status_code in (401, 403, 404):
                self.fatal = _refusal(self.config, r)
                self.status.server = "refused"
                return
            elif r.status_code in (413, 422):
                # the server cannot read it and never will: keeping it would block every later batch
                self.outbox.ack(seq, 0)
                self.outbox.count(rejected_batches=1)
                self.status.rejected += 1
                self.log(f"batch {seq} rejected by the server ({r.status_code}: {_detail(r)}); dropped")
            else:
                self._away(f"error {r.status_code} ({_detail(r)[:100]})")

    def _away(self, why: str) -> None:
        if not self.status.server.startswith(why.split(" ")[0]):
            self.log(f"server {why}; capture goes on into the buffer, retrying")
        self.status.server = why
        self._backoff = min(BACKOFF_MAX_S, max(0.5, self._backoff * 2))
        self.stopping.wait(self._backoff * random.uniform(0.8, 1.2))


def _request_overhead(request) -> int:
    """Bytes of an HTTP/1.1 request line and headers (the body is counted apart)."""
    line = len(request.method) + len(request.url.raw_path) + len(" HTTP/1.1\r\n") + 1
    return line + sum(len(k) + len(v) + 4 for k, v in request.headers.raw) + 2


def _detail(r) -> str:
    try:
        return str(r.json().get("detail"))
    except ValueError:
        return r.text[:200]


def _refusal(config: EdgeConfig, r) -> str:
    if r.status_code == 401:
        return f"{config.server} refused the token ({_detail(r)}): revoked or mistyped; make one with " \
               "`moodlens tokens create NAME --role ingest`"
    if r.status_code == 403:
        return f"{config.server} refused: {_detail(r)}"
    return f"{config.server} has no live ingest (404 at /api/live/batches): is it a moodlens server " \
           "(`moodlens serve`), and the right URL?"


def check_server(config: EdgeConfig) -> str | None:
    """Ask the server whether it takes our batches; raises AgentError for a refusal or a
    server that is not moodlens; returns a reason when it cannot be reached (we go on)."""
    import httpx

    headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
    try:
        r = httpx.get(f"{config.server}/api/live/ping", headers=headers, timeout=10,
                      params={"collection": config.collection} if config.collection else None)
    except httpx.HTTPError as e:
        return f"{type(e).__name__}: {e}"
    if r.status_code == 200 and isinstance(r.json(), dict) and r.json().get("live"):
        return None
    if r.status_code in (401, 403):
        raise AgentError(_refusal(config, r))
    if r.status_code == 404 and config.collection and "collection" in _detail(r):
        raise AgentError(f"{config.server}: {_detail(r)} (enrol people first: moodlens faces enroll)")
    raise AgentError(f"{config.server} does not answer like a moodlens server (GET /api/live/ping: "
                     f"{r.status_code}); check --server")


class EdgeAgent:
    """One agent run: ``run()`` captures until the source ends or ``stop()``, then flushes."""

    def __init__(self, config: EdgeConfig, log: Callable[[str], None] = print):
        self.config = config
        self.log = log
        self.status = Status()
        self.outbox = Outbox(config.buffer, int(config.buffer_max_mb * 2**20))
        self.stop_event = threading.Event()
        self._full_warned = False
        self._batch: list[FrameIn] = []
        self._batch_started = 0.0

    # -- session bookkeeping (in the outbox, so a restart resumes) -------------------------------
    def _session(self, source_name: str) -> dict:
        old = self.outbox.get("session")
        if old and not old.get("closed") and self.config.session in (None, old["name"]):
            self.log(f"resuming session {old['name']!r} from {self.outbox.folder}")
            old["resumed"] = True
            if old.get("source") != source_name:
                old["last_time_s"] = None
            return old
        if old and not old.get("closed"):
            self._close_old(old)
        name = self.config.session or f"{_safe(self.config.device)}-{time.strftime('%Y%m%d-%H%M%S')}"
        return {"name": name, "origin": time.time(), "source": source_name, "closed": False, "shot": -1,
                "next_track": 0, "last_time_s": None, "resumed": False}  # stored once the source opens

    def _close_old(self, old: dict) -> None:
        """An unclosed session from an earlier run under another name: close it first."""
        seq = self.outbox.next_seq()
        batch = Batch(self.config.device, old["name"], self.outbox.stream, seq, self.config.mode, [], close=True,
                      meta={"source": old.get("source")})
        self.outbox.put(seq, old["name"], encode(batch), 0, 0, force=True)
        self.log(f"the earlier session {old['name']!r} was never closed: its closing batch is queued")

    # -- the capture loop ------------------------------------------------------------------
    def run(self) -> dict:
        from moodlens.faces.emotion import EmotionClassifier
        from moodlens.faces.identity import align_for_identity, default_embedder
        from moodlens.faces.track import Tracker, appearance_features, colour_histograms
        from moodlens.models import default_emotion_card
        from moodlens.pipeline import FaceStage, Options, grey_crops, prefetch, track_embedder
        from moodlens.shots import ShotDetector

        cfg = self.config
        unreachable = check_server(cfg)
        if unreachable:
            self.log(f"server {cfg.server} unreachable ({unreachable}); capturing into {cfg.buffer} until it answers")
            self.status.server = "unreachable"
        source_name = cfg.source if Path(cfg.source).exists() else public_name(cfg.source)
        session = self._session(Path(source_name).name if Path(cfg.source).exists() else source_name)
        start_s = 0.0
        if session.get("resumed") and session.get("last_time_s") is not None and Path(cfg.source).is_file():
            start_s = session["last_time_s"] + 0.5 / cfg.fps  # a file resumes after its last sent frame
        source = open_source(cfg.source, cfg.fps, realtime=cfg.realtime, start_s=start_s,
                             clock_origin=session["origin"])
        self.source = source
        self.outbox.set("session", session)
        card = default_emotion_card()
        classifier = EmotionClassifier(card) if cfg.scores_only else None
        stage = FaceStage(classifier or card, Options(fps=cfg.fps))
        embedder = default_embedder() if (cfg.scores_only and cfg.collection) else None
        tracker = Tracker(embed=track_embedder(stage, stage.options)) if cfg.scores_only else None
        if tracker is not None:
            tracker._next_id = int(session.get("next_track", 0))
        shots = ShotDetector()
        shot_base = int(session.get("shot", -1)) + 1  # a restart is a cut: tracks never span it
        meta = {"source": session["source"], "source_kind": source.kind, "fps": cfg.fps, "width": source.width,
                "height": source.height, "source_fps": source.fps, "collection": cfg.collection,
                "crop": {"format": cfg.crop_format, "quality": cfg.crop_quality, "size": stage.size},
                "models": {"detector": "yunet-2023mar-int8bq", "emotion": classifier.version if classifier else None}}
        ext = ".webp" if cfg.crop_format == "webp" else ".jpg"
        params = [cv2.IMWRITE_WEBP_QUALITY if ext == ".webp" else cv2.IMWRITE_JPEG_QUALITY, cfg.crop_quality]
        self.sender = Sender(self.outbox, cfg, self.status, self.log)
        self.sender.start()
        timings = {"decode": 0.0}
        cpu0 = time.process_time()
        shot = None
        capture_error = None
        try:
            for frame, captured_at in prefetch(self._frames(source, session), timings):
                if self.stop_event.is_set() or self.sender.fatal:
                    break
                shots.update(frame.image)
                frame_shot = shot_base + shots.shot
                faces = stage.geometry(frame)
                fr = FrameIn(frame.index, frame.time_s, frame_shot, captured_at)
                if len(faces):
                    grey = grey_crops(faces.crops)
                    if cfg.scores_only:
                        emotions = classifier.predict(grey)
                        if shot is not None and frame_shot != shot:
                            tracker.cut()
                        ids = tracker.update(faces, appearance_features(faces.crops), grey)
                        embeddings = embedder(align_for_identity(frame.image, faces.landmarks)) if embedder else None
                    else:
                        hists = colour_histograms(faces.crops)
                        arcs = align_for_identity(frame.image, faces.landmarks) if cfg.collection else None
                    for i in range(len(faces)):
                        face = FaceIn(box=faces.boxes[i].tolist(), landmarks=faces.landmarks[i].ravel().tolist(),
                                      score=float(faces.scores[i]), quality=float(faces.quality[i]))
                        if cfg.scores_only:
                            face.emotions = emotions[i].tolist()
                            face.track = int(ids[i])
                            if embeddings is not None:
                                face.embedding = embeddings[i]
                        else:
                            face.crop = cv2.imencode(ext, grey[i], params)[1].tobytes()
                            face.hist = hists[i]
                            if arcs is not None:
                                face.arc = cv2.imencode(ext, arcs[i], params)[1].tobytes()
                        fr.faces.append(face)
                elif cfg.scores_only and shot is not None and frame_shot != shot:
                    tracker.cut()
                shot = frame_shot
                if self.status.frames % NAIVE_EVERY == 0:
                    self.status.naive_bytes_sampled += len(cv2.imencode(".jpg", frame.image,
                                                                        [cv2.IMWRITE_JPEG_QUALITY, 90])[1])
                    self.status.naive_frames_sampled += 1
                self.status.frames += 1
                self.status.faces += len(fr.faces)
                if not self._batch:
                    self._batch_started = time.monotonic()
                self._batch.append(fr)
                session.update(last_time_s=frame.time_s, shot=frame_shot,
                               next_track=int(tracker._next_id) if tracker is not None else 0)
                span = frame.time_s - self._batch[0].time_s + 1.0 / cfg.fps  # the batch's video time
                age = time.monotonic() - self._batch_started + 1.0 / cfg.fps  # and its first frame's wait
                if max(span, age) >= cfg.batch_interval_s:
                    self._flush_batch(session, meta)
        except MoodlensError as e:  # a file that stops short: what was captured is still sent and closed
            capture_error = e
            self.log(f"capture stopped: {e}")
        finally:
            self.status.capture_done = True
            self.cpu_s = time.process_time() - cpu0
        if self.sender.fatal:
            self._flush_batch(session, meta)
            self.sender.stopping.set()
            raise AgentError(self.sender.fatal + f"; {self.outbox.backlog()[0]} batch(es) stay in {cfg.buffer}")
        self._flush_batch(session, meta, close=True)
        summary = self._drain()
        if capture_error is not None:
            raise capture_error
        return summary

    def _frames(self, source, session: dict):
        """(frame, capture time) from the source; a camera or stream that drops is reopened with
        backoff (up to 30 s between tries) until it answers again or the agent is stopped."""
        delay = 1.0
        while True:
            try:
                for frame in source.frames:
                    yield frame, time.time()
                    delay = 1.0
                    if self.stop_event.is_set():
                        return
                if source.kind != "camera":
                    return  # a file or a stream that ended: the session ends with it
                reason = "the camera stopped sending frames"
            except MoodlensError as e:
                if source.kind == "file":
                    raise
                reason = str(e)
            while not self.stop_event.is_set():
                self.log(f"{reason}; opening it again in {delay:g} s")
                if self.stop_event.wait(delay):
                    return
                delay = min(30.0, delay * 2)
                try:
                    source = open_source(self.config.source, self.config.fps, clock_origin=session["origin"])
                    self.log(f"{source.name} is back")
                    break
                except MoodlensError as e:
                    reason = str(e)
            else:
                return

    def _flush_batch(self, session: dict, meta: dict, close: bool = False) -> None:
        frames, self._batch = self._batch, []
        if not frames and not close:
            return
        seq = self.outbox.next_seq()
        c = self.outbox.counters()
        backlog = self.outbox.backlog()
        stats = {"frames": self.status.frames, "faces": self.status.faces, "sent_bytes": c["sent_bytes"],
                 "naive_bytes": round(self.status.naive_bytes), "source_bitrate": self.source.bitrate,
                 "dropped_batches": c["dropped_batches"], "dropped_frames": c["dropped_frames"],
                 "backlog_batches": backlog[0], "backlog_bytes": backlog[1]}
        batch = Batch(self.config.device, session["name"], self.outbox.stream, seq, self.config.mode, frames,
                      meta=meta, stats=stats, close=close)
        body = encode(batch)
        kept = self.outbox.put(seq, session["name"], body, len(frames), batch.n_faces, force=close and not frames)
        if close and not kept:  # the frames are dropped (and counted); the close itself always goes
            batch.frames = []
            self.outbox.put(seq, session["name"], encode(batch), 0, 0, force=True)
        if close:
            session["closed"] = True
        self.outbox.set("session", session)  # after the batch: a crash in between resends, never skips
        self.status.batches += kept
        if not kept and not self._full_warned:
            self._full_warned = True
            self.log(f"the buffer {self.config.buffer} is full ({self.config.buffer_max_mb:g} MB): new batches are "
                     "not kept until the server takes the backlog; what is dropped is counted")
        elif kept and self._full_warned and backlog[1] < self.outbox.max_bytes * 0.9:
            self._full_warned = False
            self.log("the buffer has room again; batches are kept")
        self.sender.wake.set()

    def _drain(self) -> dict:
        """Wait up to flush_timeout for the backlog to be acknowledged; the summary."""
        deadline = time.monotonic() + self.config.flush_timeout_s
        while self.outbox.backlog()[0] and time.monotonic() < deadline and not self.sender.fatal:
            time.sleep(0.1)
        self.sender.stopping.set()
        self.sender.join(5)
        if self.sender.fatal:
            raise AgentError(self.sender.fatal + f"; {self.outbox.backlog()[0]} batch(es) stay in {self.config.buffer}")
        return self.summary()

    def summary(self) -> dict:
        s, c = self.status, self.outbox.counters()
        backlog = self.outbox.backlog()
        wall = time.monotonic() - s.started
        duration = (self.source.duration_s if self.source.kind == "file" and not self.config.realtime
                    else None) or wall
        return {"device": self.config.device, "session": (self.outbox.get("session") or {}).get("name"),
                "mode": self.config.mode, "source": self.source.name, "frames": s.frames, "faces": s.faces,
                "batches": s.batches, "sent_batches": s.sent_batches, "sent_bytes": s.sent_bytes,
                "naive_bytes": round(s.naive_bytes), "source_bitrate": self.source.bitrate,
                "source_seconds": round(duration, 3), "duplicates": s.duplicates, "rejected": s.rejected,
                "dropped_batches": c["dropped_batches"], "dropped_frames": c["dropped_frames"],
                "dropped_faces": c["dropped_faces"], "backlog_batches": backlog[0], "backlog_bytes": backlog[1],
                "cpu_s": round(getattr(self, "cpu_s", 0.0), 3), "wall_s": round(wall, 3)}

    def stop(self) -> None:
        self.stop_event.set()


def install_signals(agent: EdgeAgent) -> None:
    """SIGINT/SIGTERM: stop capturing, close the session, flush; a second one stops waiting."""
    def handler(signum, _frame):
        if agent.stop_event.is_set():
            raise KeyboardInterrupt
        agent.log(f"{signal.Signals(signum).name}: closing the session and sending the backlog "
                  f"(up to {agent.config.flush_timeout_s:g} s; again to stop now, the buffer keeps the rest)")
        agent.stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


__all__ = ["AgentError", "EdgeAgent", "EdgeConfig", "check_server", "install_signals"]
