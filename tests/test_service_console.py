"""The web console of ``moodlens serve``, in a real headless Chromium against a real server.

The browser is Debian's ``chromium``, driven through the DevTools protocol over a pipe (as
test_reports does: no extra Python package, no network). The page uploads a real clip
through its own form (the file input, and drag and drop), the jobs list follows the job to
``complete`` without reloading, the job page shows stages, player, report and downloads,
and its Cancel / Retry / Delete buttons work. The login test checks the cookie a browser
really keeps (HttpOnly, SameSite=Strict). A plain httpx test covers escaping, redirects,
the cookie's attributes and the API's CSRF rule.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from conftest import shared
from service_util import running_server

from moodlens.service import auth
from moodlens.service.jobs import JobQueue
from moodlens.store import Store

SHOTS = Path(tempfile.gettempdir())  # console.png and job.png are also left here to look at


from chromium_util import Chromium as _Chromium, chromium_binary  # noqa: E402


class _Tab:
    """One page (target) of the browser."""

    def __init__(self, chrome: _Chromium, width: int = 1280, height: int = 900):
        self.chrome = chrome
        target = chrome.send("Target.createTarget", {"url": "about:blank", "newWindow": True})["targetId"]
        self.sid = chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.size(width, height)

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.chrome.send(method, params, session=self.sid)

    def size(self, width: int, height: int, mobile: bool = False) -> None:
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": mobile})

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {json.dumps(r['exceptionDetails'])[:1500]}")
        return r["result"].get("value")

    def loads(self, action, seconds: float = 60) -> None:
        """Run ``action`` (a callable) and wait for the page it leads to."""
        mark = len(self.chrome.events)
        action()
        self.chrome.wait_for("Page.loadEventFired", seconds, since=mark, session=self.sid)

    def go(self, url: str) -> None:
        self.loads(lambda: self.send("Page.navigate", {"url": url}))

    def until(self, expression: str, seconds: float, what: str):
        """Poll ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + seconds
        value = None
        probe = f"(() => {{ const v = ({expression}); return v instanceof Node ? true : v; }})()"
        while time.monotonic() < deadline:
            value = self.js(probe)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"{what}: not after {seconds} s (last value {value!r}); page: "
                             + str(self.js("document.body.innerText"))[:1500])

    def screenshot(self, path: Path, width: int = 1280, mobile: bool = False) -> bytes:
        """The whole page at ``width`` (at most 6000 px tall)."""
        self.size(width, 800, mobile)
        time.sleep(0.3)
        height = int(self.js("document.documentElement.scrollHeight"))
        self.size(width, min(max(height, 400), 6000), mobile)
        time.sleep(0.3)
        shot = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        path.write_bytes(shot)
        self.size(1280, 900)
        return shot

    def errors(self) -> list[dict]:
        """Script exceptions and console errors or warnings of this tab (an HTTP error status is
        logged too: those are checked through :meth:`responses`)."""
        self.chrome.drain()
        return [e for e in self.chrome.events if e.get("sessionId") == self.sid and (
            e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert", "warning"))
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning")
                and not (e["params"]["entry"]["source"] == "network"
                         and "the server responded with a status of" in e["params"]["entry"]["text"])))]

    def responses(self) -> list[tuple[str, int]]:
        self.chrome.drain()
        return [(e["params"]["response"]["url"], e["params"]["response"]["status"]) for e in self.chrome.events
                if e.get("sessionId") == self.sid and e.get("method") == "Network.responseReceived"]


@pytest.fixture
def chrome():
    c = _Chromium(chromium_binary())
    try:
        yield c
    finally:
        c.close()


ROWS = ("Array.from(document.querySelectorAll('#job-rows tr.job')).map(tr => ({id: +tr.dataset.id, "
        "status: tr.dataset.status, file: tr.querySelector('.c-file').innerText, "
        "badge: tr.querySelector('.badge').innerText.toLowerCase(), pct: tr.querySelector('.pct').innerText, "
        "stage: tr.querySelector('.c-stage').innerText, duration: tr.querySelector('.c-duration').innerText, "
        "created: tr.querySelector('.c-created').innerText}))")


HISTORY = """window.__history = {};
new MutationObserver(() => {
  for (const tr of document.querySelectorAll('#job-rows tr.job')) {
    const h = (window.__history[tr.dataset.id] = window.__history[tr.dataset.id] || []);
    if (h[h.length - 1] !== tr.dataset.status) h.push(tr.dataset.status);
  }
}).observe(document.querySelector('#job-rows'), {subtree: true, childList: true, attributes: true});"""
"""Every status each row of the jobs list showed, in order."""


def _rows(tab: _Tab) -> dict[int, dict]:
    return {r["id"]: r for r in tab.js(ROWS)}


# -- the console in a browser ----------------------------------------------------------------
def test_console_upload_live_list_and_job_page_in_chromium(chrome, tmp_path):
    video = shared("video", "pyfeat", "single_face.mp4")
    with running_server(tmp_path / "srv") as server:
        jobs = _Tab(chrome)
        jobs.go(server.url + "/")
        assert jobs.js("document.title") == "Jobs – moodlens"
        assert jobs.js("document.querySelector('#empty').hidden") is False  # no jobs yet
        jobs.js("window.__sameDocument = 'yes'")  # gone if the page ever reloads
        jobs.js(HISTORY)

        jobs.js("window.__uploadTexts = []; new MutationObserver(() => window.__uploadTexts.push("
                "document.querySelector('#upload-text').textContent)).observe("
                "document.querySelector('#upload-text'), {childList: true, characterData: true, subtree: true})")

        # 0. a file that is not a video: the API's answer is shown in the form
        notes = tmp_path / "notes.txt"
        notes.write_text("not a video\n" * 100)
        file_input = jobs.send("Runtime.evaluate", {"expression": "document.querySelector('#file')"})["result"]
        jobs.send("DOM.setFileInputFiles", {"files": [str(notes)], "objectId": file_input["objectId"]})
        jobs.until("document.querySelector('#drop-title').innerText === 'notes.txt'", 30, "text file chosen")
        jobs.js("document.querySelector('#upload-btn').click()")
        error = jobs.until("!document.querySelector('#upload-error').hidden && "
                           "document.querySelector('#upload-error').innerText", 30, "the upload's error")
        assert error.startswith("notes.txt: not a readable video"), error  # the API's detail (415)
        assert jobs.js("document.querySelectorAll('#job-rows tr.job').length") == 0
        jobs.js("document.querySelector('#fps').value = '0'")
        jobs.js("document.querySelector('#upload-btn').click()")
        assert "Frames per second" in jobs.js("document.querySelector('#upload-error').innerText")
        jobs.js("document.querySelector('#fps').value = '2'")

        # 1. upload through the file input, with an emoji video
        file_input = jobs.send("Runtime.evaluate", {"expression": "document.querySelector('#file')"})["result"]
        jobs.send("DOM.setFileInputFiles", {"files": [str(video)], "objectId": file_input["objectId"]})
        assert jobs.until("document.querySelector('#drop-title').innerText", 30, "file chosen") == "single_face.mp4"
        assert jobs.js("document.querySelector('#opt-blur').disabled") is True  # only with an emoji video
        jobs.js("document.querySelector('#opt-emoji').click()")
        assert jobs.js("document.querySelector('#opt-blur').disabled") is False
        jobs.js("document.querySelector('#upload-btn').click()")
        jobs.until("!document.querySelector('#upload-ok').hidden", 60, "upload answered")
        ok_text = jobs.js("document.querySelector('#upload-ok').innerText")
        first = int(re.search(r"job #(\d+)", ok_text).group(1))
        texts = jobs.js("window.__uploadTexts")
        assert any(re.fullmatch(r"[\d.]+ KB of 20\d\.\d KB", t) for t in texts), texts  # upload progress events
        assert jobs.js("document.querySelector('#upload-progress').hidden")  # and gone when done
        jobs.until(f"document.querySelector('#job-rows tr.job[data-id=\"{first}\"]')", 30, "the new job's row")

        # 2. a second upload, dropped on the drop zone (a real drag, through Input.dispatchDragEvent)
        box = jobs.js("(() => { const r = document.querySelector('#drop').getBoundingClientRect();"
                      " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        jobs.js("document.querySelector('#opt-emoji').click()")  # no emoji video this time
        drag = {"items": [], "files": [str(video)], "dragOperationsMask": 1}
        for kind in ("dragEnter", "dragOver"):
            jobs.send("Input.dispatchDragEvent", {"type": kind, "x": box[0], "y": box[1], "data": drag})
        assert jobs.js("document.querySelector('#drop').classList.contains('over')")
        jobs.send("Input.dispatchDragEvent", {"type": "drop", "x": box[0], "y": box[1], "data": drag})
        assert jobs.until("document.querySelector('#drop-title').innerText", 30, "dropped file") == "single_face.mp4"
        jobs.js("document.querySelector('#upload-btn').click()")
        jobs.until(f"/job #(?!{first}\\b)\\d+/.test(document.querySelector('#upload-ok').innerText)", 60,
                   "second upload answered")
        second = int(re.search(r"job #(\d+)", jobs.js("document.querySelector('#upload-ok').innerText")).group(1))
        assert second == first + 1

        # 3. the second job's page, in another tab, while it waits behind the first (one worker):
        # Cancel, then Retry, through its buttons; the page follows without reloading
        page = _Tab(chrome)
        page.go(f"{server.url}/jobs/{second}")
        page.js("window.__sameDocument = 'yes'")
        status = page.js("document.querySelector('#job-status').innerText.toLowerCase()")
        assert status in ("queued", "running"), status
        page.js("document.querySelector('button[data-action=cancel]').click()")
        page.until("document.querySelector('#job-status').innerText.toLowerCase() === 'cancelled'", 30, "cancelled")
        page.until("document.querySelector('button[data-action=retry]')", 30, "a Retry button")
        jobs.until(f"document.querySelector('#job-rows tr.job[data-id=\"{second}\"]').dataset.status === 'cancelled'",
                   30, "the list shows the cancel")
        page.js("document.querySelector('button[data-action=retry]').click()")
        page.until("['queued', 'running', 'complete'].includes("
                   "document.querySelector('#job-status').innerText.toLowerCase())", 30, "queued again")

        # 4. the list follows both jobs to complete, without a reload
        deadline = time.monotonic() + 240
        while True:
            rows = _rows(jobs)
            if all(j in rows and rows[j]["status"] in ("complete", "failed") for j in (first, second)):
                break
            assert time.monotonic() < deadline, (rows, server.log.read_text()[-3000:])
            time.sleep(0.2)
        seen = {int(k): v for k, v in jobs.js("window.__history").items()}
        assert rows[first]["status"] == rows[second]["status"] == "complete", (rows, server.log.read_text()[-3000:])
        assert jobs.js("window.__sameDocument") == "yes"  # updated in place
        assert seen[first][0] in ("queued", "running") and seen[first][-1] == "complete", seen  # changed in place
        assert seen[second][-1] == "complete" and "cancelled" in seen[second], seen  # cancel and retry, seen live
        for j in (first, second):
            assert rows[j]["badge"] == "complete" and rows[j]["pct"] == "100%" and rows[j]["stage"] == "done"
            assert rows[j]["file"] == "single_face.mp4"
            assert re.fullmatch(r"\d+\.\d s", rows[j]["duration"]), rows[j]
            assert rows[j]["created"].startswith("today ") or "UTC" not in rows[j]["created"]  # local time
        assert list(rows) == [second, first]  # newest first
        assert jobs.js("getComputedStyle(document.querySelector('#job-rows .badge')).color") == "rgb(31, 157, 85)"
        shot = jobs.screenshot(tmp_path / "console.png")
        shutil.copyfile(tmp_path / "console.png", SHOTS / "console.png")
        assert shot[:8] == b"\x89PNG\r\n\x1a\n"
        jobs.size(390, 800, mobile=True)
        time.sleep(0.3)
        assert jobs.js("document.documentElement.scrollWidth") <= 391, "a phone scrolls sideways"
        jobs.screenshot(tmp_path / "console-narrow.png", width=390, mobile=True)

        # the second job's page went from queued to complete by itself, results included
        page.until("document.querySelector('#job-status').innerText.toLowerCase() === 'complete'", 30,
                   "job page complete")
        page.until("document.querySelector('#downloads')", 30, "downloads after completion")
        assert page.js("window.__sameDocument") == "yes"

        # 5. the first job's page: stages with timings, the player, downloads, the report
        page.loads(lambda: page.js(f"location.assign('/jobs/{first}')"))
        stages = page.js("Array.from(document.querySelectorAll('table.stages tbody tr')).map("
                         "tr => [tr.dataset.stage, tr.querySelector('.secs').innerText])")
        assert [s[0] for s in stages] == ["analyze", "tables", "report", "emoji video"], stages
        assert all(re.fullmatch(r"\d+\.\d\d s", s[1]) for s in stages), stages
        assert page.js("document.querySelectorAll('.timeline .seg').length") == 4
        facts = page.js("document.querySelector('#analysis').innerText")
        assert "frames sampled" in facts and "faces seen" in facts and "real time" in facts
        links = page.js("Object.fromEntries(Array.from(document.querySelectorAll('#downloads a')).map("
                        "a => [a.innerText, a.getAttribute('href')]))")
        job = server.client().get(f"/api/jobs/{first}").json()
        aid = job["analysis_id"]
        for name in ("records.csv", "records.jsonl", "summary.csv", "emoji.mp4", "report.html"):
            assert links[name] == f"/api/analyses/{aid}/{name}", links
        fetched = page.js("Promise.all(Array.from(document.querySelectorAll('#downloads a')).map("
                          "a => fetch(a.href, {cache: 'no-store'}).then(r => [a.innerText, r.status, r.headers.get('content-type')])))")
        assert all(status == 200 for _, status, _ in fetched), fetched
        assert page.js("document.querySelector('video').getAttribute('src')") == f"/api/analyses/{aid}/emoji.mp4"
        page.until("document.querySelector('video').readyState >= 1", 30, "the player loaded the video's metadata")
        dims = page.js("[document.querySelector('video').videoWidth, document.querySelector('video').duration]")
        assert dims[0] > 0 and 2.0 < dims[1] < 3.0, dims
        assert page.js("document.querySelector('#report iframe').getAttribute('src')") == \
            f"/api/analyses/{aid}/report.html"
        sandbox = page.js("document.querySelector('#report iframe').getAttribute('sandbox')").split()
        assert "allow-scripts" in sandbox and "allow-same-origin" not in sandbox  # the report cannot use the API
        page.js("document.querySelector('#report').scrollIntoView()")
        time.sleep(1.0)  # the lazy iframe loads the report
        page.js("window.scrollTo(0, 0)")
        assert not page.js("document.querySelector('button[data-action=cancel]')")  # complete: nothing to cancel
        shot = page.screenshot(tmp_path / "job.png")
        shutil.copyfile(tmp_path / "job.png", SHOTS / "job.png")
        page.size(390, 800, mobile=True)
        time.sleep(0.3)
        assert page.js("document.documentElement.scrollWidth") <= 391, "a phone scrolls sideways"
        page.screenshot(tmp_path / "job-narrow.png", width=390, mobile=True)
        video_responses = [s for u, s in page.responses() if u.endswith("/emoji.mp4")]
        assert 206 in video_responses, video_responses  # the player asked for ranges

        # 6. Delete (admin): a confirm() dialog, then back to the list, where the row is gone
        page.go(f"{server.url}/jobs/{second}")
        mark = len(chrome.events)
        page.js("setTimeout(() => document.querySelector('button[data-action=delete]').click(), 0)")
        dialog = chrome.wait_for("Page.javascriptDialogOpening", 20, since=mark, session=page.sid)
        assert "cannot be undone" in dialog["params"]["message"]
        page.loads(lambda: page.send("Page.handleJavaScriptDialog", {"accept": True}))
        assert page.js("location.pathname") == "/"
        jobs.until(f"!document.querySelector('#job-rows tr.job[data-id=\"{second}\"]')", 30, "deleted row removed")
        assert server.client().get(f"/api/jobs/{second}").status_code == 404

        # nothing from elsewhere, and no script errors
        for tab in (jobs, page):
            assert not tab.errors(), json.dumps(tab.errors(), indent=1)[:3000]
            assert all(u.startswith((server.url, "data:", "about:")) for u, _ in tab.responses())
            failed = [(u, status) for u, status in tab.responses() if status >= 400]
            assert failed == ([(f"{server.url}/api/videos", 415)] if tab is jobs else []), failed  # notes.txt


def test_console_login_in_chromium(chrome, tmp_path):
    data = tmp_path / "srv"
    db = f"sqlite:///{data / 'moodlens.db'}"
    data.mkdir()
    store = Store(db)
    token = auth.create_token(store, "alice", "upload")
    store.engine.dispose()
    with running_server(data, db=db) as server:
        tab = _Tab(chrome)
        tab.go(server.url + "/")
        assert tab.js("location.pathname + location.search") == "/login?next=/"
        assert tab.js("document.querySelector('#login-error')") is None

        tab.js("document.querySelector('#token').value = 'ml_not-a-token'")
        tab.loads(lambda: tab.js("document.querySelector('#login button[type=submit]').click()"))
        assert tab.js("location.pathname") == "/login"
        assert "not valid" in tab.js("document.querySelector('#login-error').innerText")
        tab.screenshot(tmp_path / "login.png")
        assert not tab.send("Network.getCookies", {"urls": [server.url]})["cookies"]

        tab.js(f"document.querySelector('#token').value = {json.dumps(token)}")
        tab.loads(lambda: tab.js("document.querySelector('#login button[type=submit]').click()"))
        assert tab.js("location.pathname") == "/"
        assert tab.js("document.querySelector('.who .user').innerText").startswith("alice")
        assert tab.js("!!document.querySelector('#upload')")  # an upload token may upload
        cookies = {c["name"]: c for c in tab.send("Network.getCookies", {"urls": [server.url]})["cookies"]}
        c = cookies[auth.COOKIE]
        assert c["value"] == token and c["httpOnly"] is True and c["sameSite"] == "Strict" and c["path"] == "/"
        assert c["secure"] is False  # plain http on loopback; https makes it Secure
        assert auth.COOKIE not in tab.js("document.cookie")  # scripts cannot read it
        # the page's own API calls work with the cookie; a cookie POST without the header is refused
        assert tab.js("fetch('/api/jobs', {headers: {'X-Requested-With': 'moodlens'}}).then(r => r.status)") == 200
        assert tab.js("fetch('/api/jobs/99/cancel', {method: 'POST'}).then(r => r.status)") == 403
        assert tab.js("fetch('/api/jobs/99/cancel', {method: 'POST', headers: {'X-Requested-With': 'moodlens'}})"
                      ".then(r => r.status)") == 404
        tab.until("document.querySelector('#offline').hidden && document.querySelector('#empty')", 30, "polling")
        time.sleep(1.5)
        assert tab.js("location.pathname") == "/"  # the 1 s poll did not bounce to /login

        # a link from another site: the browser withholds the SameSite=Strict cookie, the server asks
        # for a login, and the login page (same-site, so the cookie is sent) goes on to the job
        tab.go("data:text/html,<a id=go href='" + server.url + "/jobs/1'>job 1</a>")
        mark = len(chrome.events)
        tab.js("document.querySelector('#go').click()")
        tab.until("location.pathname === '/jobs/1' && document.readyState === 'complete'", 30,
                  "back on the linked page after the login page")
        time.sleep(0.5)
        chrome.drain()  # its load event, before the next wait
        requests = [e["params"]["request"]["url"].removeprefix(server.url) for e in chrome.events[mark:]
                    if e.get("sessionId") == tab.sid and e.get("method") == "Network.requestWillBeSent"
                    and e["params"]["type"] == "Document"]
        assert requests == ["/jobs/1", "/login?next=/jobs/1", "/jobs/1"], requests
        assert "does not exist" in tab.js("document.body.innerText")  # logged in: the job page (404 here)

        tab.loads(lambda: tab.js("document.querySelector('.who form button').click()"))  # log out
        assert tab.js("location.pathname") == "/login"
        assert not tab.send("Network.getCookies", {"urls": [server.url]})["cookies"]
        tab.go(server.url + "/jobs/1")
        assert tab.js("location.pathname + location.search") == "/login?next=/jobs/1"
        assert not tab.errors(), json.dumps(tab.errors(), indent=1)[:3000]


# -- plain HTTP: escaping, redirects, cookie attributes, CSRF --------------------------------
EVIL = "<script>alert('x')</script>.mp4"


def test_console_pages_escape_and_auth_over_http(tmp_path):
    data = tmp_path / "srv"
    data.mkdir()
    db = f"sqlite:///{data / 'moodlens.db'}"
    store = Store(db)
    queue = JobQueue(store)
    job = queue.enqueue(filename=EVIL, video=str(data / "nowhere.mp4"), source="upload",
                        options={"fps": 2.0, "collection": "<b>class</b>", "report": True})
    queue.cancel(job)
    with store.session() as s, s.begin():
        from moodlens.service.tables import JobRow
        s.get(JobRow, job).error = "<img src=x onerror=alert(1)> broke"
    with running_server(data, db=db) as server, server.client() as c:
        # local mode: no login, pages render, user text is escaped
        for path in ("/", f"/jobs/{job}"):
            r = c.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), (path, r.text[:500])
            assert "<script>alert" not in r.text and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;.mp4" in r.text
            assert "<img src=x" not in r.text and "<b>class</b>" not in r.text
            csp = r.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'self'" in csp
            assert "http://" not in r.text.replace(server.url, "") and "https://" not in r.text  # nothing external
        page = c.get(f"/jobs/{job}").text
        assert "&lt;img src=x onerror=alert(1)&gt; broke" in page and "&lt;b&gt;class&lt;/b&gt;" in page
        assert 'data-action="retry"' in page and 'data-action="cancel"' not in page
        assert c.get("/jobs/999").status_code == 404 and "does not exist" in c.get("/jobs/999").text
        assert f'data-id="{job}"' in c.get("/?status=cancelled").text
        r = c.get("/?status=complete")
        assert f'data-id="{job}"' not in r.text and "No jobs complete yet" in r.text
        assert f'data-id="{job}"' in c.get("/?status=<script>&offset=-5").text  # unknown status: all jobs
        r = c.get("/login")
        assert r.status_code == 303 and r.headers["location"] == "/"  # nothing to log in to
        for asset in ("/static/console.js", "/static/console.css", "/static/favicon.svg"):
            assert c.get(asset).status_code == 200
        # local mode, but a browser page of another site may not change anything (CSRF)
        r = c.post(f"/api/jobs/{job}/retry", headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403 and "another site" in r.json()["detail"]

        # tokens now exist: pages ask for a login, the API still answers JSON 401
        upload = auth.create_token(store, "bob", "upload")
        viewer = auth.create_token(store, "carol", "viewer")
        ingest = auth.create_token(store, "cam", "ingest")
        revoked = auth.create_token(store, "old", "viewer")
        auth.revoke(store, "old")
        time.sleep(2.2)  # the server re-checks whether tokens exist every 2 s
        r = c.get(f"/jobs/{job}?x=1")
        assert r.status_code == 303 and r.headers["location"] == f"/login?next=/jobs/{job}%3Fx%3D1"
        assert c.get("/api/jobs").status_code == 401
        r = c.get("/login?next=/jobs/1")
        assert r.status_code == 200 and 'name="next" value="/jobs/1"' in r.text

        r = c.post("/login", data={"token": "ml_wrong", "next": "/"})
        assert r.status_code == 401 and "not valid" in r.text and "set-cookie" not in r.headers
        r = c.post("/login", data={"token": revoked})
        assert r.status_code == 401 and "set-cookie" not in r.headers
        r = c.post("/login", data={"token": ingest})
        assert r.status_code == 403 and "ingest" in r.text and "set-cookie" not in r.headers
        r = c.post("/login", data={"token": upload}, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403 and "set-cookie" not in r.headers  # login CSRF
        r = c.post("/login", data={"token": upload, "next": "//evil.example/x"})
        assert r.status_code == 303 and r.headers["location"] == "/"  # never an open redirect
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{auth.COOKIE}={upload};")
        attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "path", "samesite", "max-age"} <= attrs and "secure" not in attrs
        assert "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
        r = c.post("/login", data={"token": upload, "next": f"/jobs/{job}"})
        assert r.headers["location"] == f"/jobs/{job}"
        assert c.post("/login", content=b"token=" + b"x" * 9000,
                      headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 413

    with running_server(data, db=db) as server:
        def as_(token):
            return server.client(cookies={auth.COOKIE: token})

        with as_(upload) as c:
            r = c.get("/")
            assert r.status_code == 200 and 'id="upload"' in r.text and "bob" in r.text and "Log out" in r.text
            # a cookie alone does not change anything: the console's X-Requested-With is needed (CSRF)
            r = c.post(f"/api/jobs/{job}/retry")
            assert r.status_code == 403 and "X-Requested-With" in r.json()["detail"]
            r = c.post(f"/api/jobs/{job}/retry", headers={"X-Requested-With": "moodlens", "Sec-Fetch-Site": "same-site"})
            assert r.status_code == 403
            r = c.post(f"/api/jobs/{job}/cancel", headers={"X-Requested-With": "moodlens"})
            assert r.status_code == 409  # through auth and CSRF; cancelled jobs cannot be cancelled
            r = c.post("/logout")
            assert r.status_code == 303 and r.headers["location"] == "/login"
            assert auth.COOKIE in r.headers["set-cookie"] and "max-age=0" in r.headers["set-cookie"].lower()
        with server.client(upload) as c:  # a Bearer client is not a browser: no header needed
            assert c.post(f"/api/jobs/{job}/cancel").status_code == 409
        with as_(viewer) as c:
            r = c.get(f"/jobs/{job}")
            assert r.status_code == 200 and "carol" in r.text
            assert 'data-action="retry"' not in r.text and 'data-action="delete"' not in r.text
            r = c.get("/")
            assert 'id="upload"' not in r.text and "can see jobs but not upload" in r.text
        with as_(ingest) as c:
            r = c.get("/")
            assert r.status_code == 403 and "live batches only" in r.text
        with as_(revoked) as c:
            r = c.get("/")
            assert r.status_code == 303 and r.headers["location"] == "/login?next=/"
            assert "max-age=0" in r.headers["set-cookie"].lower()  # the dead cookie is dropped
