"""Prometheus metrics for ``GET /metrics`` (the official ``prometheus-client``).

Job counts are read from the database at each scrape (the database is the truth, and
another server may share it); the rest is counted by this server: stage durations, frames
and faces of finished attempts, their real-time factor, upload bytes, HTTP latency.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

STAGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _JobsCollector:
    def __init__(self, queue):
        self.queue = queue

    def collect(self):
        jobs = GaugeMetricFamily("moodlens_jobs", "Jobs in the database by status.", labels=["status"])
        depth = GaugeMetricFamily("moodlens_queue_depth", "Jobs waiting for a worker.")
        try:
            counts = self.queue.counts()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database blinked
            return
        for status, n in counts.items():
            jobs.add_metric([status], n)
        depth.add_metric([], counts.get("queued", 0))
        yield jobs
        yield depth


class _LiveCollector:
    """Per live session, the CloudWatch counterpart: faces in view, mean score per emotion (the
    last 5 s), ingest lag, batches and duplicates, and the edge agent's own counters."""

    EDGE = (("sent_bytes", "moodlens_live_edge_sent_bytes", "Bytes the edge agent has sent (its own count)."),
            ("naive_bytes", "moodlens_live_edge_naive_bytes",
             "Bytes the agent would have sent as whole JPEG frames (estimated on the device)."),
            ("source_bitrate", "moodlens_live_edge_source_bitrate", "The camera or file's own bitrate (bits/s)."),
            ("dropped_frames", "moodlens_live_edge_dropped_frames",
             "Sampled frames the agent could not keep (its buffer was full)."),
            ("backlog_batches", "moodlens_live_edge_backlog_batches", "Batches waiting in the agent's buffer."))

    def __init__(self, live):
        self.live = live

    def collect(self):
        from moodlens.types import EMOTIONS

        labels = ["device", "session"]
        fam = {
            "faces": GaugeMetricFamily("moodlens_live_faces_in_view", "Faces in the newest frame.", labels=labels),
            "emotion": GaugeMetricFamily("moodlens_live_emotion_mean", "Mean score (0-100) per emotion over "
                                         "the faces of the last 5 seconds.", labels=[*labels, "emotion"]),
            "lag": GaugeMetricFamily("moodlens_live_ingest_lag_seconds", "From the newest frame's capture on the "
                                     "device to its rows being stored here.", labels=labels),
            "batches": CounterMetricFamily("moodlens_live_batches", "Batches received (duplicates included).",
                                           labels=labels),
            "dups": CounterMetricFamily("moodlens_live_duplicates", "Resent batches dropped as duplicates.",
                                        labels=labels),
            "frames": CounterMetricFamily("moodlens_live_frames", "Sampled frames stored.", labels=labels),
        }
        edge = {k: GaugeMetricFamily(name, doc, labels=labels) for k, name, doc in self.EDGE}
        try:
            rows = self.live.sessions()
            views = self.live.views()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database blinked
            return
        for r in rows:
            lv = [r.device, r.name]
            view = views.get(r.id)
            fam["batches"].add_metric(lv, r.batches + r.duplicates)
            fam["dups"].add_metric(lv, r.duplicates)
            fam["frames"].add_metric(lv, r.frames)
            for key, _, _ in self.EDGE:
                v = (r.stats or {}).get(key)
                if v is not None:
                    edge[key].add_metric(lv, float(v))
            if view is None:
                continue
            fam["faces"].add_metric(lv, len(view.now["faces"]))
            if view.last_ingest_lag_s is not None:
                fam["lag"].add_metric(lv, view.last_ingest_lag_s)
            snap = view.snapshot(5)
            recent = [b for b in snap["timeline"] if b["emotions"]["neutral"] is not None]
            for c in EMOTIONS:
                vals = [b["emotions"][c] for b in recent]
                if vals:
                    fam["emotion"].add_metric([*lv, c], sum(vals) / len(vals))
        yield from fam.values()
        yield from edge.values()


class Metrics:
    """One registry per app, so tests can run several apps in one process."""

    def __init__(self, queue, live=None):
        self.registry = CollectorRegistry()
        self.registry.register(_JobsCollector(queue))
        if live is not None:
            self.registry.register(_LiveCollector(live))
        self.live_faces = Counter("moodlens_live_faces", "Live face observations stored (all sessions).",
                                  registry=self.registry)
        self.stage_seconds = Histogram("moodlens_stage_seconds", "Time a job spent in each stage.", ["stage"],
                                       buckets=STAGE_BUCKETS, registry=self.registry)
        self.frames = Counter("moodlens_frames", "Sampled video frames analysed.", registry=self.registry)
        self.faces = Counter("moodlens_faces", "Face observations stored.", registry=self.registry)
        self.realtime = Histogram("moodlens_realtime_factor", "Seconds of video analysed per second of work.",
                                  buckets=(0.5, 1, 2, 5, 10, 20, 50, 100), registry=self.registry)
        self.upload_bytes = Counter("moodlens_upload_bytes", "Bytes of video received by upload.",
                                    registry=self.registry)
        self.jobs_finished = Counter("moodlens_jobs_finished", "Attempts that ended, by outcome.", ["status"],
                                     registry=self.registry)
        self.http = Histogram("moodlens_http_request_seconds", "HTTP request latency.", ["method", "route", "status"],
                              buckets=HTTP_BUCKETS, registry=self.registry)

    def live_batch(self, batch, ack) -> None:
        if not ack.duplicate:
            self.live_faces.inc(batch.n_faces)

    def job_done(self, job, analysis) -> None:
        """Count a finished attempt: its stages, and the frames, faces and speed of its analysis."""
        self.jobs_finished.labels(job.status).inc()
        for st in job.stages or []:
            if st.get("seconds") is not None:
                self.stage_seconds.labels(st["name"]).observe(st["seconds"])
        if analysis is not None and analysis.status == "complete":
            self.frames.inc(analysis.frames or 0)
            self.faces.inc(analysis.observations or 0)
            rtf = (analysis.timings or {}).get("realtime_factor")
            if rtf:
                self.realtime.observe(rtf)


__all__ = ["Metrics"]
