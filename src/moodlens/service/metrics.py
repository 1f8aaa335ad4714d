"""Prometheus metrics for ``GET /metrics`` (the official ``prometheus-client``).

Job counts are read from the database at each scrape (the database is the truth, and
another server may share it); the rest is counted by this server: stage durations, frames
and faces of finished attempts, their real-time factor, upload bytes, HTTP latency.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

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


class Metrics:
    """One registry per app, so tests can run several apps in one process."""

    def __init__(self, queue):
        self.registry = CollectorRegistry()
        self.registry.register(_JobsCollector(queue))
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
