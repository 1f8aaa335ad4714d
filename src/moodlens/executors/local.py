"""Local worker processes, one per slot, that die with the server.

Each worker is a fresh interpreter (``spawn``), loads the models once and runs attempts one
after another. On Linux a worker asks the kernel to kill it when its parent dies
(``PR_SET_PDEATHSIG``), so ``kill -9`` of the server cannot leave a worker finishing an
attempt that a restarted server has already put back in the queue.

Two details make that hold:

- The kernel sends the signal when the *thread* that started the process ends, not the
  process. Workers are therefore started from one thread of the executor's own that lives
  until :meth:`LocalExecutor.shutdown` (never from the dispatcher's thread, which ends when
  the server starts stopping and would take the running attempts with it).
- A worker checks its parent right after asking, so a server that died while the worker was
  still starting cannot leave it behind.

Each slot is its own one-process pool: a worker that dies (killed, out of memory) breaks
only its own pool, which the next :meth:`~LocalExecutor.submit` replaces; the attempts of
the other slots go on. Workers ignore SIGINT and SIGTERM (a terminal's Ctrl-C, or systemd
signalling the whole service): stopping is the server's decision, made through
:meth:`~LocalExecutor.shutdown`.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from moodlens.executors import Attempt


def _die_with_parent(parent: int | None = None, threads: int | None = None) -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the server died before the line above: it can no longer kill us
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so is SIGTERM (systemd sends it to every process)
    if threads and "MOODLENS_ORT_THREADS" not in os.environ:
        os.environ["MOODLENS_ORT_THREADS"] = str(threads)  # workers share the cores rather than each taking all


def _run(attempt: Attempt) -> int | None:
    from moodlens.service.worker import run_job

    return run_job(attempt.db, attempt.job_id, attempt.attempt, attempt.data_dir)


class LocalExecutor:
    """``workers`` processes on this machine."""

    def __init__(self, workers: int = 1):
        self.slots = max(1, int(workers))
        self._lock = threading.Lock()
        self._pools: list[ProcessPoolExecutor | None] = [None] * self.slots
        self._busy: list[Future | None] = [None] * self.slots
        self._closed = False
        # Every worker process is started from this thread (see the module's docstring).
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="moodlens-spawn")

    def _new_pool(self) -> ProcessPoolExecutor:
        threads = max(1, (os.cpu_count() or 1) // self.slots)
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_die_with_parent, initargs=(os.getpid(), threads))

    def submit(self, attempt: Attempt) -> Future:
        return self._spawner.submit(self._submit, attempt).result()

    def _submit(self, attempt: Attempt) -> Future:
        with self._lock:
            if self._closed:
                raise RuntimeError("the executor was shut down")
            free = [i for i, f in enumerate(self._busy) if f is None or f.done()]
            i = free[0] if free else 0  # the dispatcher keeps within slots; else it waits its turn
            pool = self._pools[i]
            try:
                if pool is None:
                    raise BrokenProcessPool("not started")
                fut = pool.submit(_run, attempt)
            except RuntimeError:  # BrokenProcessPool: its worker died (killed, out of memory); start afresh
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)
                pool = self._pools[i] = self._new_pool()
                fut = pool.submit(_run, attempt)
            self._busy[i] = fut
            return fut

    def pids(self) -> list[int]:
        """The worker processes now running (for logs and tests)."""
        with self._lock:
            pools = [p for p in self._pools if p is not None]
        return [pid for p in pools for pid in list(getattr(p, "_processes", None) or {})]

    def shutdown(self, grace_s: float) -> None:
        """Let running attempts finish for up to ``grace_s`` seconds, then stop the workers."""
        with self._lock:
            self._closed = True
            pools = [p for p in self._pools if p is not None]
        done = threading.Event()

        def wait() -> None:
            for p in pools:
                p.shutdown(wait=True, cancel_futures=True)
            done.set()
        threading.Thread(target=wait, daemon=True).start()
        if not done.wait(grace_s):
            for pool in pools:
                for p in list((getattr(pool, "_processes", None) or {}).values()):
                    p.kill()
            done.wait(5.0)
        self._spawner.shutdown(wait=False)


__all__ = ["LocalExecutor"]
