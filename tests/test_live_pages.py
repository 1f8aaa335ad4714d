"""The live pages of ``moodlens serve`` (/live and /live/{id}) against a real server fed by a real
``moodlens edge --realtime`` run, in Debian's headless Chromium (tests/chromium_util.py), and
over plain HTTP: auth redirects, 404, escaping, and the SSE stream the dashboard listens to.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from chromium_util import Chromium, chromium_binary
from conftest import shared
from service_util import Server, running_server, start_server, stop_server

from moodlens.service import auth
from moodlens.store import Store
from moodlens.types import EMOTIONS

CLIP = ("video", "pyfeat", "WolfgangLanger_Pexels.mp4")  # 640x360, 20 s, one face
PERSON = "speaker"


@dataclass
class LiveRun:
    server: Server
    edge: subprocess.Popen
    session_id: int
    edge_log: Path

    def edge_done(self, timeout: float = 60) -> dict:
        out, _ = self.edge.communicate(timeout=timeout)
        assert self.edge.returncode == 0, self.edge_log.read_text()[-3000:]
        return json.loads(out)


def _enrol_from_clip(clip: Path, db: str, at_s: float = 6.0) -> None:
    """The clip's speaker, enrolled from one of its frames: the dashboard then has a person's line."""
    import cv2

    from moodlens.collections import enroll

    cap = cv2.VideoCapture(str(clip))
    cap.set(cv2.CAP_PROP_POS_MSEC, at_s * 1000)
    ok, image = cap.read()
    cap.release()
    assert ok, f"could not read {clip} at {at_s} s"
    photo = Path(db.removeprefix("sqlite:///")).parent / "speaker.png"
    cv2.imwrite(str(photo), image)
    store = Store(db)
    enroll(store, "panel", PERSON, [photo], largest=True)
    store.engine.dispose()


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """A server, and an edge agent sending the clip at its own pace (the session stays live ~20 s)."""
    clip = shared(*CLIP)
    root = tmp_path_factory.mktemp("live")
    (root / "srv").mkdir()
    db = f"sqlite:///{root / 'srv' / 'moodlens.db'}"
    _enrol_from_clip(clip, db)
    server = start_server(root / "srv", db=db)
    edge_log = root / "edge.log"
    edge = subprocess.Popen([sys.executable, "-m", "moodlens.cli", "edge", str(clip), "--server", server.url,
                             "--buffer", str(root / "buf"), "--device-id", "cam1", "--session", "s1", "--realtime",
                             "--collection", "panel", "--json"], stdout=subprocess.PIPE,
                            stderr=open(edge_log, "wb"), text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        with server.client() as c:
            while True:
                live = [s for s in c.get("/api/live/sessions").json() if s["faces"] > 0]
                if live:
                    break
                assert edge.poll() is None, edge_log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no live session with faces after 60 s"
                time.sleep(0.2)
        yield LiveRun(server, edge, live[0]["id"], edge_log)
    finally:
        if edge.poll() is None:
            os.killpg(edge.pid, signal.SIGKILL)
            edge.wait(10)
        stop_server(server)


# -- the SSE stream and the pages over plain HTTP, while the session is live -------------------------
def _events(client: httpx.Client, url: str, n: int) -> list[tuple[str, dict]]:
    out, event = [], None
    with client.stream("GET", url, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                out.append((event, json.loads(line[6:])))
                if len(out) == n:
                    break
    return out


def test_live_pages_and_events_over_http(live_run):
    sid = live_run.session_id
    with live_run.server.client() as c:
        t0 = time.monotonic()
        events = _events(c, f"/api/live/sessions/{sid}/events", 3)
        assert time.monotonic() - t0 < 10  # one a second at least (a loaded machine may be slow to answer)
        for event, state in events:
            assert event == "state"
            assert {"timeline", "now", "dominant", "people", "session"} <= set(state)
            assert state["session"]["id"] == sid and state["session"]["status"] == "live"
        last = events[-1][1]
        assert last["timeline"] and set(last["timeline"][-1]["emotions"]) == set(EMOTIONS)
        assert last["dominant"] in EMOTIONS
        assert last["now"]["faces"] and last["now"]["faces"][0]["dominant"] in EMOTIONS
        assert events[-1][1]["session"]["frames"] >= events[0][1]["session"]["frames"]

        r = c.get(f"/live/{sid}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'self'" in csp
        assert '<script src="/static/live.js' in r.text and "<script>" not in r.text  # no inline script
        assert 'data-width="640" data-height="360"' in r.text and 'href="/live">Live</a>' in r.text
        assert "plotly" not in r.text.lower()
        r = c.get("/live")
        assert r.status_code == 200 and f'href="/live/{sid}"' in r.text and "cam1" in r.text
        assert c.get("/live/987654").status_code == 404 and "does not exist" in c.get("/live/987654").text
        assert c.get("/api/live/sessions/987654/events").status_code == 404
        for asset in ("/static/live.js", "/static/live.css"):
            assert c.get(asset).status_code == 200


# -- the dashboard in a browser --------------------------------------------------------------------
class Tab:
    """One page of the browser (as in test_service_console, cut to what these tests use)."""

    def __init__(self, chrome: Chromium):
        self.chrome = chrome
        target = chrome.send("Target.createTarget", {"url": "about:blank", "newWindow": True})["targetId"]
        self.sid = chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 1100, "deviceScaleFactor": 1,
                                                         "mobile": False})

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.chrome.send(method, params, session=self.sid)

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {json.dumps(r['exceptionDetails'])[:1500]}")
        return r["result"].get("value")

    def go(self, url: str) -> None:
        mark = len(self.chrome.events)
        self.send("Page.navigate", {"url": url})
        self.chrome.wait_for("Page.loadEventFired", 30, since=mark, session=self.sid)

    def until(self, expression: str, seconds: float, what: str):
        deadline, value = time.monotonic() + seconds, None
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"{what}: not after {seconds} s (last {value!r}); page: "
                             + str(self.js("document.body.innerText"))[:1500])

    def problems(self) -> list[dict]:
        """Script exceptions, console errors and warnings."""
        self.chrome.drain()
        return [e for e in self.chrome.events if e.get("sessionId") == self.sid and (
            e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "warning"))
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning")))]

    def responses(self) -> list[tuple[str, int]]:
        self.chrome.drain()
        return [(e["params"]["response"]["url"], e["params"]["response"]["status"]) for e in self.chrome.events
                if e.get("sessionId") == self.sid and e.get("method") == "Network.responseReceived"]


LOOK = """(() => {
  const t = document.querySelector('#timeline');
  return {points: +t.dataset.points, end: +t.dataset.end,
          lines: Array.from(t.querySelectorAll('path.line')).map(p => p.getAttribute('d')).join('|'),
          faces: document.querySelector('#faces-count').textContent,
          boxes: document.querySelectorAll('#frame-faces g.face rect').length,
          labels: Array.from(document.querySelectorAll('#frame-faces text')).map(t => t.textContent),
          list: Array.from(document.querySelectorAll('#face-list li')).map(li => li.textContent),
          dominant: document.querySelector('#dominant').textContent,
          frames: document.querySelector('#f-frames').textContent,
          status: document.querySelector('#f-status').textContent,
          desc: document.querySelector('#timeline-desc').textContent};
})()"""


def test_live_dashboard_in_chromium(live_run, tmp_path):
    binary = chromium_binary()
    server, sid = live_run.server, live_run.session_id
    chrome = Chromium(binary)
    try:
        dash = Tab(chrome)
        dash.go(f"{server.url}/live/{sid}")
        dash.js("window.__sameDocument = 'yes'")
        dash.until("+document.querySelector('#timeline').dataset.points >= 2", 20, "a timeline")
        first = dash.js(LOOK)
        assert first["status"] == "live", first
        assert int(first["faces"]) >= 1 and first["boxes"] == int(first["faces"]), first
        assert len(first["labels"]) == 1 and first["labels"][0].split(": ")[0] in ("unknown-1", PERSON), first
        assert first["labels"][0].split(": ")[1] in EMOTIONS, first
        assert first["list"] and first["list"][0].split(": ")[1].split()[0] in EMOTIONS, first
        assert first["dominant"] in EMOTIONS, first
        assert first["desc"].startswith("At "), first
        assert len(first["lines"].split("|")) == len(EMOTIONS) and "L" in first["lines"], first
        # a second look: the timeline grew in place (at least once a second)
        dash.until(f"+document.querySelector('#timeline').dataset.end > {first['end'] + 1}", 10, "the timeline grows")
        second = dash.js(LOOK)
        assert second["points"] > first["points"] and second["lines"] != first["lines"], (first, second)
        assert int(second["frames"]) > int(first["frames"]), (first, second)

        # the enrolled speaker is recognised: their own line, and their name on the frame
        dash.until(f"""(() => {{ const p = document.querySelector('#people .person[data-person="{PERSON}"]');
            return !document.querySelector('#people-card').hidden && p && +p.querySelector('svg').dataset.points >= 2
                   && p.querySelector('h3').textContent === '{PERSON}'; }})()""", 15, "the speaker's line")
        dash.until(f"document.querySelector('#frame-faces text').textContent.startsWith('{PERSON}: ')", 10,
                   "the speaker's name on the frame")
        assert PERSON in dash.js("document.querySelector('#people svg').getAttribute('aria-label')")

        # the list shows it among the live sessions, with its device and a dashboard link
        listing = Tab(chrome)
        listing.go(f"{server.url}/live")
        row = listing.until(f"""(() => {{ const tr = document.querySelector('#live-rows tr[data-id="{sid}"]');
            return tr && [tr.querySelector('.c-name').textContent, tr.querySelector('.c-device').textContent,
                          tr.querySelector('.c-mode').textContent,
                          tr.querySelector('.c-dash').getAttribute('href')]; }})()""",
                            10, "the session in the live list")
        assert row == ["s1", "cam1", "crops", f"/live/{sid}"], row
        assert listing.js("document.querySelector('nav a[href=\"/live\"]').textContent") == "Live"
        shot = dash.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        (tmp_path / "live.png").write_bytes(base64.b64decode(shot))  # to look at

        # the edge run ends: its closing batch closes the session; both pages follow without a reload
        summary = live_run.edge_done(60)
        assert summary["backlog_batches"] == 0, summary
        aid = server.client().get(f"/api/live/sessions/{sid}").json()["session"]["analysis_id"]
        report = f"/api/analyses/{aid}/report.html"
        dash.until("!document.querySelector('#closed-note').hidden", 20, "the dashboard says the session closed")
        assert dash.js("document.querySelector('#report-link').getAttribute('href')") == report
        assert dash.js("document.querySelector('#f-status').textContent") == "closed"
        assert dash.js("document.querySelector('#session-status .badge').textContent") == "closed"
        assert dash.js("window.__sameDocument") == "yes"
        closed = listing.until(f"""(() => {{
            const a = document.querySelector('#closed-rows tr[data-id="{sid}"] a.c-report');
            return a && a.getAttribute('href'); }})()""", 10, "the session among the closed ones")
        assert closed == report
        assert listing.js(f"!document.querySelector('#live-rows tr[data-id=\"{sid}\"]')")
        assert listing.js(f"fetch('{report}').then(r => r.status)") == 200

        # a late batch reopens the session (its next part): the dashboard follows it, still no reload
        again = subprocess.Popen([sys.executable, "-m", "moodlens.cli", "edge", str(shared(*CLIP)), "--server",
                                  server.url, "--buffer", str(tmp_path / "buf2"), "--device-id", "cam1", "--session",
                                  "s1", "--realtime"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        try:
            dash.until("document.querySelector('#closed-note').hidden && "
                       "document.querySelector('#f-status').textContent === 'live'", 30,
                       "the dashboard follows the reopened session")
            assert dash.js("window.__sameDocument") == "yes"
            part2 = server.client().get(f"/api/live/sessions/{sid}").json()["session"]["analysis_id"]
            assert part2 != aid
            os.killpg(again.pid, signal.SIGTERM)  # the agent closes its session as it stops
            again.wait(30)
            dash.until("!document.querySelector('#closed-note').hidden", 20, "closed again")
            assert dash.js("document.querySelector('#report-link').getAttribute('href')") == \
                f"/api/analyses/{part2}/report.html"
        finally:
            if again.poll() is None:
                os.killpg(again.pid, signal.SIGKILL)
                again.wait(10)

        events = [u for u, _ in dash.responses() if f"/api/live/sessions/{sid}/events" in u]
        assert events, "the dashboard did not use the event stream"
        for tab in (dash, listing):
            assert not tab.problems(), json.dumps(tab.problems(), indent=1)[:3000]
            assert all(u.startswith((server.url, "data:", "about:")) for u, _ in tab.responses())
            assert not [(u, s) for u, s in tab.responses() if s >= 400]
    finally:
        chrome.close()


# -- auth and escaping, without the edge ---------------------------------------------------------
EVIL = "<script>alert(1)</script>"


def test_live_pages_auth_and_escaping(tmp_path):
    from moodlens.service.tables import LiveSessionRow

    data = tmp_path / "srv"
    data.mkdir()
    db = f"sqlite:///{data / 'moodlens.db'}"
    store = Store(db)
    with store.session() as s, s.begin():
        row = LiveSessionRow(device="<img src=x onerror=alert(1)>", name=EVIL, mode="crops", status="live")
        s.add(row)
        s.flush()
        sid = row.id
    viewer = auth.create_token(store, "carol", "viewer")
    ingest = auth.create_token(store, "cam", "ingest")
    revoked = auth.create_token(store, "old", "viewer")
    auth.revoke(store, "old")
    store.engine.dispose()
    with running_server(data, db=db) as server:
        with server.client() as c:  # tokens exist: pages ask for a login, the API says 401
            r = c.get("/live")
            assert r.status_code == 303 and r.headers["location"] == "/login?next=/live"
            r = c.get(f"/live/{sid}?window=60")
            assert r.status_code == 303 and r.headers["location"] == f"/login?next=/live/{sid}%3Fwindow%3D60"
            assert c.get("/live/987654").status_code == 303  # who may not look is not told what exists
            assert c.get(f"/api/live/sessions/{sid}/events").status_code == 401
        with server.client(cookies={auth.COOKIE: viewer}) as c:
            for path in ("/live", f"/live/{sid}"):  # the edge's names are text, never markup
                r = c.get(path)
                assert r.status_code == 200 and "carol" in r.text and "Log out" in r.text, (path, r.text[:500])
                assert EVIL not in r.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
                assert "<img src=x" not in r.text
            assert 'data-window="300"' in c.get(f"/live/{sid}").text
            assert 'data-window="60"' in c.get(f"/live/{sid}?window=60").text
            for odd in ("7", "abc", "-60"):  # only the offered spans
                assert 'data-window="300"' in c.get(f"/live/{sid}?window={odd}").text
            assert c.get("/live/987654").status_code == 404
        with server.client(viewer) as c:  # a Bearer token works as well
            assert c.get("/live").status_code == 200
        with server.client(cookies={auth.COOKIE: ingest}) as c:
            r = c.get("/live")
            assert r.status_code == 403 and "live batches only" in r.text
        with server.client(cookies={auth.COOKIE: revoked}) as c:
            r = c.get(f"/live/{sid}")
            assert r.status_code == 303 and r.headers["location"] == f"/login?next=/live/{sid}"
            assert "max-age=0" in r.headers["set-cookie"].lower()  # the dead cookie is dropped
