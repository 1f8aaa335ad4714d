"""A small client for the service's API (what ``moodlens submit`` uses)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from moodlens.errors import MoodlensError

TERMINAL = ("complete", "failed", "cancelled")


def _check(r) -> dict:
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text[:200]
        raise MoodlensError(f"{r.request.url}: {r.status_code} {detail}")
    return r.json()


def upload(client, video: Path, fields: dict[str, str]) -> int:
    """Stream ``video`` to ``POST /api/videos``; returns the job id."""
    with open(video, "rb") as f:
        r = client.post("/api/videos", data=fields, files={"file": (video.name, f, "application/octet-stream")})
    return int(_check(r)["job_id"])


def follow(client, job_id: int, on_update: Callable[[dict], None] | None = None, poll_s: float = 0.5,
           timeout_s: float | None = None) -> dict:
    """Poll ``GET /api/jobs/{id}`` until the job ends; returns its last state."""
    t0 = time.monotonic()
    while True:
        job = _check(client.get(f"/api/jobs/{job_id}"))
        if on_update:
            on_update(job)
        if job["status"] in TERMINAL:
            return job
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise MoodlensError(f"job {job_id}: still {job['status']} after {timeout_s:g} s")
        time.sleep(poll_s)


__all__ = ["TERMINAL", "follow", "upload"]
