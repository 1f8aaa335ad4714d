"""Ray: a video's segments on a cluster's workers, the order-dependent work on the driver.

``segment_frames`` is what ``analyze(..., executor="ray")`` iterates instead of decoding
locally. It cuts the video into ``segment_s`` segments at sample targets, runs
:func:`moodlens.segments.analyze_segment` on each as a Ray task (at most two per CPU of
the cluster in flight, so results cannot pile up), and yields their frames in order.
The driver then decides shots, tracks, names and writes rows exactly as a local run does,
so the rows, the track ids and the names are the same.

A task whose worker dies (killed, out of memory) is retried by Ray (``max_retries``);
an error inside a task (a video the worker cannot read) is not retried and comes back as
the same one-line ``MediaError`` a local run would give. Ctrl-C, or any error, cancels
the tasks still queued or running.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from moodlens.errors import MediaError, MoodlensError
from moodlens.types import Frame

MAX_RETRIES = 3
INSTALL = "pip install 'moodlens[ray]'"


def _ray():
    try:
        import ray
    except ImportError:
        raise MoodlensError(f"--executor ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None):
    """Join the Ray cluster at ``address`` (``auto``, ``ray://host:10001``) or start a local one;
    a one-line ``MoodlensError`` when it cannot be reached. Returns the ``ray`` module."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    if address not in (None, "auto", "local"):
        _check_reachable(address)  # Ray itself waits about two minutes before it gives up
    env = {"MOODLENS_ORT_THREADS": os.environ.get("MOODLENS_ORT_THREADS", "1"),  # a task is one CPU:
           "MOODLENS_DECODE_THREADS": os.environ.get("MOODLENS_DECODE_THREADS", "1")}  # not one thread a core
    try:
        ray.init(address=address, num_cpus=num_cpus if address in (None, "local") else None,
                 include_dashboard=False, configure_logging=False, log_to_driver=False,
                 runtime_env={"env_vars": env, "worker_process_setup_hook": "moodlens.segments.warm"})
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError, grpc's: all one line
        where = address or "a local Ray instance"
        reason = " ".join(str(e).split())[:300]
        cause, seen = e, 0
        while cause is not None and seen < 6:
            if "Authentication" in type(cause).__name__:
                reason += ("; the cluster asks for a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or "
                           "~/.ray/auth_token) as on the head node")
                break
            cause, seen = cause.__cause__ or cause.__context__, seen + 1
        raise MoodlensError(f"cannot reach the Ray cluster at {where} ({type(e).__name__}: {reason})") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    import socket
    from urllib.parse import urlsplit

    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    try:
        parts = urlsplit(f"//{hostport}")
        host, port = parts.hostname, parts.port or (10001 if address.startswith("ray://") else 6379)
    except ValueError:
        raise MoodlensError(f"--ray-address {address!r}: give auto, HOST:PORT or ray://HOST:10001") from None
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise MoodlensError(f"cannot reach the Ray cluster at {address}: nothing answers at {host}:{port} "
                            f"({e.strerror or type(e).__name__}); is the head node started (ray start --head)?") from None


@functools.cache
def _remote():
    from moodlens.segments import analyze_segment

    return _ray().remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)(analyze_segment)


def _unwrap(e: BaseException, path: Path) -> MoodlensError:
    cause = getattr(e, "cause", None)
    if isinstance(cause, MoodlensError):
        return type(cause)(str(cause))
    name = type(e).__name__
    reason = " ".join(str(cause or e).split())[:300]
    if name in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError"):
        return MediaError(f"{path}: a Ray worker died {MAX_RETRIES + 1} times on a segment ({name}: {reason})")
    return MediaError(f"{path}: a Ray task failed ({name}: {reason})")


def segment_frames(path: Path, fps: float, duration_s: float, options: dict, identity: bool, classifier,
                   segment_s: float, address: str | None, shots, timings: dict, decoded,
                   ship_video: bool = False) -> Iterator[tuple]:
    """(frame, shot, faces, features, embeddings, grey crops, check vectors) for every sampled
    frame, in order, from Ray tasks.
    ``ship_video`` puts the file's bytes in Ray's object store once, for workers that do not
    share the driver's files (each machine keeps one copy while it works on it)."""
    import time

    from moodlens.segments import segment_bounds

    ray = connect(address)
    remote = _remote()
    card = getattr(getattr(classifier, "card", None), "path", None)
    model = (str(card) if card else None, bool(getattr(classifier, "flip", False)))  # the driver's model, there
    bounds = deque(segment_bounds(duration_s, segment_s, fps))
    timings.update(executor="ray", segments=len(bounds))
    workers: set[str] = set()  # the worker processes that ran a segment
    window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: deque = deque()
    busy = {"decode": 0.0, "shots": 0.0, "detect": 0.0, "emotion": 0.0, "track_check": 0.0}

    video = ray.put(path.read_bytes()) if ship_video else str(path.resolve())

    def submit() -> None:
        while bounds and len(pending) < window:
            start, end = bounds.popleft()
            pending.append(remote.remote(video, fps, start, end, options, identity, model, path.suffix or ".mp4"))

    submit()
    try:
        while pending:
            t = time.perf_counter()
            try:
                result = ray.get(pending.popleft())
            except ray.exceptions.RayError as e:
                raise _unwrap(e, path) from None
            timings["wait"] = timings.get("wait", 0.0) + time.perf_counter() - t
            submit()
            workers.add(f"{result.host}:{result.pid}")
            decoded.gaps.extend(result.gaps)
            for k in busy:
                busy[k] += result.timings.get(k, 0.0)
            for fr in result.frames:
                shot = 0
                if shots is not None:
                    shots.update_signature(fr.signature)
                    shot = shots.shot
                features = fr.features if len(fr.faces) else None
                yield Frame(fr.index, fr.time_s, None), shot, fr.faces, features, fr.embeddings, fr.grey, fr.vectors
    finally:
        for ref in pending:  # Ctrl-C or an error: stop what is queued or running
            ray.cancel(ref, force=True)
        timings.update({f"workers_{k}": round(v, 4) for k, v in busy.items()})
        timings["workers"] = len(workers)


class RayExecutor:
    """The service's jobs with their segments on a Ray cluster: each job is driven by a thread of
    the server (the database writes stay here), its per-frame work runs on the workers."""

    def __init__(self, workers: int = 1, address: str | None = None, segment_s: float = 60.0,
                 ship_video: bool = False):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        connect(address)
        self.slots = max(1, int(workers))
        self.address, self.segment_s, self.ship_video = address, segment_s, ship_video
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix="moodlens-ray-job")
        self._abort = threading.Event()
        self._futures: list = []

    def submit(self, attempt):
        from moodlens.service.worker import run_job

        fut = self._pool.submit(run_job, attempt.db, attempt.job_id, attempt.attempt, attempt.data_dir,
                                executor="ray", ray_address=self.address, segment_s=self.segment_s,
                                abort=self._abort, ship_video=self.ship_video)
        self._futures = [f for f in self._futures if not f.done()] + [fut]
        return fut

    def shutdown(self, grace_s: float) -> None:
        """Let running jobs finish for ``grace_s``; then stop them at their next frame (their Ray
        tasks are cancelled) and leave them to the dispatcher, which queues them again."""
        from concurrent.futures import wait

        wait(self._futures, timeout=grace_s)
        self._abort.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            _ray().shutdown()
        except Exception:  # noqa: BLE001 - stopping anyway
            pass


__all__ = ["RayExecutor", "connect", "segment_frames"]
