"""A real ``moodlens serve`` on loopback for the service tests: a subprocess on a free port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    data_dir: Path
    db: str
    log: Path

    def client(self, token: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kw)

    def wait_job(self, job_id: int, token: str | None = None, timeout: float = 180.0,
                 until=("complete", "failed", "cancelled")) -> dict:
        t0 = time.monotonic()
        with self.client(token) as c:
            while True:
                job = c.get(f"/api/jobs/{job_id}").json()
                if job.get("status") in until:
                    return job
                if time.monotonic() - t0 > timeout:
                    raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout} s; log:\n"
                                         + self.log.read_text()[-3000:])
                time.sleep(0.2)


def start_server(data_dir: Path, *args: str, db: str | None = None, port: int | None = None,
                 env: dict | None = None, timeout: float = 60.0) -> Server:
    """Start ``moodlens serve`` and wait until ``/healthz`` answers."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    db = db or f"sqlite:///{data_dir / 'moodlens.db'}"
    log = data_dir / f"server-{port}.log"
    cmd = [sys.executable, "-m", "moodlens.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
           "--db", db, *args]
    proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return Server(url, proc, data_dir, db, log)
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"server did not answer in {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def stop_server(server: Server, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
    """Stop the server (SIGTERM: a clean shutdown); returns its exit code."""
    if server.proc.poll() is None:
        server.proc.send_signal(sig)
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(10)
    return server.proc.returncode


@contextlib.contextmanager
def running_server(data_dir: Path, *args: str, **kw):
    server = start_server(data_dir, *args, **kw)
    try:
        yield server
    finally:
        stop_server(server)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)  # any worker left behind
