"""A minimal DevTools-protocol client for the browser tests: Debian's headless Chromium over
``--remote-debugging-pipe``, no driver or extra package needed."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

import pytest


class Chromium:
    """Chromium over ``--remote-debugging-pipe`` (fds 3 and 4); events are kept in order."""

    def __init__(self, binary: str, timeout: float = 60.0):
        self.profile = tempfile.mkdtemp(prefix="moodlens-chromium-")

        def high(fd: int) -> int:  # keep our ends away from 3 and 4
            new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
            os.close(fd)
            return new
        cmd_r, self.cmd_w = map(high, os.pipe())
        self.resp_r, resp_w = map(high, os.pipe())

        def child():
            os.dup2(cmd_r, 3)
            os.dup2(resp_w, 4)
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={self.profile}", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--mute-audio", "--hide-scrollbars", "--disable-renderer-backgrounding",
             "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows", "about:blank"],
            preexec_fn=child, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(cmd_r)
        os.close(resp_w)
        self.buf, self.next_id, self.events, self.timeout = b"", 0, [], timeout

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            if select.select([self.resp_r], [], [], left)[0]:
                chunk = os.read(self.resp_r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium exited: " + self.proc.stderr.read().decode(errors="replace")[-2000:])
                self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def drain(self) -> None:
        """Take in the events sent so far (without waiting)."""
        while select.select([self.resp_r], [], [], 0)[0] or b"\0" in self.buf:
            self.events.append(self._read(time.monotonic() + 5))

    def wait_for(self, method: str, seconds: float, since: int = 0, session: str | None = None) -> dict:
        """The first event ``method`` (of ``session``) from ``events[since]`` on, waiting for it."""
        deadline = time.monotonic() + seconds
        i = since
        while True:
            while i < len(self.events):
                e = self.events[i]
                i += 1
                if e.get("method") == method and (session is None or e.get("sessionId") == session):
                    return e
            self.events.append(self._read(deadline))

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:  # noqa: BLE001
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.cmd_w)
        os.close(self.resp_r)
        shutil.rmtree(self.profile, ignore_errors=True)


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("needs a Chromium binary (Debian: apt-get install -y chromium); none on PATH")
