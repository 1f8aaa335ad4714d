"""The web console of ``moodlens serve``: the jobs list, a page per job, and the login.

Pages are rendered on the server from Jinja2 templates (``service/templates``, autoescaped:
file names, errors and collection names are user text). ``service/static/console.js`` is a
little plain JS, no build step: it polls ``GET /api/jobs`` (or the job) every second and
updates the page in place, uploads with ``XMLHttpRequest`` (progress events) from a file
input or a drop zone, and calls the API for Cancel, Retry and Delete. Every request it makes
carries ``X-Requested-With``, which the API asks of cookie-authenticated changes.

Pages need the viewer role, through the API's own ``principal``: a page request without a
valid token is sent to ``/login``. Logging in checks a token and keeps it in an HttpOnly,
SameSite=Strict cookie (Secure over https). While no token is needed (a loopback server
without tokens) there is no login. Nothing is loaded from another origin (the Content
Security Policy says so), as for report.html.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from moodlens import __version__
from moodlens.errors import NotFoundError
from moodlens.service import auth

HERE = Path(__file__).parent
COOKIE_MAX_AGE = 30 * 24 * 3600  # the cookie only holds the token: revoking the token ends the session
LOGIN_BODY_MAX = 8192
DOWNLOADS = ("records.csv", "records.jsonl", "summary.csv")
ACTIVE = ("queued", "running")
_SAFE_NEXT = re.compile(r"^/(?![/\\])[^\s\\]*$")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "media-src 'self'; frame-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'self'")


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    return t.replace(tzinfo=dt.timezone.utc) if t is not None and t.tzinfo is None else t


def _iso(t: dt.datetime | None) -> str:
    t = _utc(t)
    return t.isoformat() if t is not None else ""


def _when(t: dt.datetime | None) -> str:
    t = _utc(t)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t is not None else "–"


def _seconds(s: float | None) -> str:
    """7.2 s, 1 min 05 s, 2 h 03 min (as console.js writes them)."""
    if s is None:
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    s = round(s)
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _size(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def job_view(r) -> dict[str, Any]:
    """What the templates show of a job row (and the JS's signature of what needs a re-render)."""
    started, finished = _utc(r.started_at), _utc(r.finished_at)
    duration = None
    if started is not None:
        end = finished if finished is not None else dt.datetime.now(dt.timezone.utc)
        duration = max(0.0, (end - started).total_seconds())
    stages = list(r.stages or [])
    options = dict(r.options or {})
    try:
        fps = f"{float(options.get('fps') or 2.0):g}"
    except (TypeError, ValueError):
        fps = str(options.get("fps"))
    return {"id": r.id, "status": r.status, "stage": r.stage, "progress": float(r.progress or 0.0),
            "percent": round(100 * float(r.progress or 0.0)), "filename": r.filename, "source": r.source,
            "sha256": r.sha256, "size": _size(r.size_bytes), "options": options, "fps": fps,
            "analysis_id": r.analysis_id, "attempts": r.attempts, "error": r.error, "stages": stages,
            "token_name": r.token_name, "created_iso": _iso(r.created_at), "created": _when(r.created_at),
            "started_iso": _iso(started), "finished_iso": _iso(finished), "finished": _when(finished),
            "duration": _seconds(duration) if duration is not None else "–", "active": r.status in ACTIVE,
            "signature": f"{r.status}|{r.attempts}|{len(stages)}|{r.stage or ''}|{r.analysis_id or ''}"}


def _stage_rows(stages: list[dict], active: bool) -> list[dict]:
    total = sum(s.get("seconds") or 0.0 for s in stages) or 1.0
    return [{"name": s.get("name", "?"), "seconds": s.get("seconds"),
             "text": ("running…" if active else "stopped") if s.get("seconds") is None else f"{s['seconds']:.2f} s",
             "share": 0 if s.get("seconds") is None else max(1, round(100 * s["seconds"] / total))}
            for s in stages]


def _safe_next(value: str | None) -> str:
    """Only a path on this server (no //host, no scheme): never an open redirect."""
    return value if value and len(value) < 2000 and _SAFE_NEXT.match(value) else "/"


def _cross_site(request: Request) -> bool:
    """A browser request sent by a page of another site (login CSRF)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    return bool(origin) and origin != "null" and origin.split("://", 1)[-1] != request.headers.get("host", "")


def register_console(app: FastAPI) -> None:
    """Add the console's pages (/, /jobs/{id}, /login, /logout) and /static to ``app``."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(version=__version__)
    templates = Jinja2Templates(env=env)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    store, queue, config = app.state.store, app.state.queue, app.state.config

    def page(request: Request, name: str, context: dict, status: int = 200) -> HTMLResponse:
        who = context.get("who")
        context = {"who": who, "can_upload": bool(who) and auth.RANK.get(who["role"], 0) >= auth.RANK["upload"],
                   "is_admin": bool(who) and who["role"] == "admin",
                   # the cookie was checked by principal(), else this page would not render
                   "logged_in": bool(who) and bool(request.cookies.get(auth.COOKIE))
                   and not request.headers.get("authorization"),
                   **context}
        resp = templates.TemplateResponse(request, name, context, status_code=status)
        resp.headers.update({"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "same-origin", "Cache-Control": "no-store"})
        return resp

    def viewer(request: Request) -> dict | Response:
        """The principal, or the response that replaces the page: /login (401) or a 403 page."""
        try:
            who = app.state.principal(request)
        except HTTPException as e:
            if e.status_code != 401:
                raise
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            resp = RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)
            if request.cookies.get(auth.COOKIE):  # a revoked or unknown token: forget it
                _clear(resp, request)
            return resp
        if who["role"] == "ingest":
            return page(request, "error.html", {"who": who, "title": "Not allowed", "message":
                        f"Token {who['name']!r} has the ingest role, which is for live batches only; "
                        "log in with a viewer, upload or admin token."}, 403)
        return who

    app.state.page, app.state.viewer = page, viewer  # the live pages are made the same way (live_pages.py)

    def _cookie(resp: Response, request: Request, token: str) -> None:
        resp.set_cookie(auth.COOKIE, token, max_age=COOKIE_MAX_AGE, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")

    def _clear(resp: Response, request: Request) -> None:
        resp.delete_cookie(auth.COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")

    @app.get("/", include_in_schema=False)
    def jobs_page(request: Request, status: str | None = None, offset: int = 0):
        who = viewer(request)
        if isinstance(who, Response):
            return who
        from moodlens.service.tables import JOB_STATUSES

        status = status if status in JOB_STATUSES else None
        offset = max(0, offset)
        rows = queue.list(limit=100, status=status, offset=offset)
        collections: list[str] = []
        try:
            from moodlens.collections import list_people
            collections = sorted({p.collection for p in list_people(store, None)})
        except Exception:  # noqa: BLE001 - a datalist is a convenience
            pass
        return page(request, "jobs.html", {
            "who": who, "jobs": [job_view(r) for r in rows], "status": status, "statuses": JOB_STATUSES,
            "offset": offset, "more": len(rows) == 100, "collections": collections,
            "max_upload_mb": config.max_upload_mb})

    @app.get("/jobs/{job_id}", include_in_schema=False)
    def job_page(request: Request, job_id: int):
        who = viewer(request)
        if isinstance(who, Response):
            return who
        try:
            row = queue.get(job_id)
        except NotFoundError:
            return page(request, "error.html", {"who": who, "title": "No such job",
                                                "message": f"Job {job_id} does not exist (or was deleted)."}, 404)
        job = job_view(row)
        analysis, files, inner = None, {}, []
        if row.analysis_id is not None:
            from moodlens.service.worker import analysis_dir

            try:
                a = store.analysis(row.analysis_id)
            except NotFoundError:
                a = None
            if a is not None:
                t = dict(a.timings or {})
                info = dict(a.video_info or {})
                analysis = {"id": a.id, "status": a.status, "frames": a.frames or 0,
                            "observations": a.observations or 0, "error": a.error,
                            "duration": _seconds(info.get("duration_s")) if info.get("duration_s") else "–",
                            "size": f"{info['width']}×{info['height']}" if info.get("width") else "–",
                            "rtf": f"{t['realtime_factor']:.1f}×" if t.get("realtime_factor") else "–",
                            "total": _seconds(t.get("total")) if t.get("total") else "–",
                            "gaps": list(a.decode_gaps or [])}
                inner = [{"name": k.replace("_", " "), "text": f"{v:.2f} s"} for k, v in t.items()
                         if k not in ("total", "realtime_factor") and isinstance(v, (int, float))]
                folder = analysis_dir(config.data_dir, a.id)
                for name in (*DOWNLOADS, "report.html", "emoji.mp4"):
                    p = folder / name
                    if p.is_file():
                        files[name] = _size(p.stat().st_size)
        timed = [st["seconds"] for st in job["stages"] if st.get("seconds") is not None]
        return page(request, "job.html", {"who": who, "job": job, "stages": _stage_rows(job["stages"], job["active"]),
                                          "stages_total": _seconds(sum(timed)) if timed else None,
                                          "analysis": analysis, "inner": inner, "files": files,
                                          "downloads": DOWNLOADS})

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str | None = None):
        target = _safe_next(next)
        try:
            who = app.state.principal(request)
        except HTTPException:
            who = None
        if who is not None and not request.cookies.get(auth.COOKIE):
            return RedirectResponse(target, status_code=303)  # no token needed here: nothing to log in to
        return page(request, "login.html", {"who": None, "next": target, "error": None,
                                            "current": who})

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > LOGIN_BODY_MAX:
                raise HTTPException(413, "login form larger than 8 KB")
        form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
        token = (form.get("token") or [""])[0].strip()
        target = _safe_next((form.get("next") or ["/"])[0])

        def again(message: str, status: int):
            return page(request, "login.html", {"who": None, "next": target, "error": message, "current": None},
                        status)
        if _cross_site(request):
            return again("This login came from another site and was refused; log in from this page.", 403)
        if not token:
            return again("Paste a token.", 422)
        row = auth.check(store, token)
        if row is None:
            return again("That token is not valid (unknown or revoked).", 401)
        if row.role == "ingest":
            return again(f"Token {row.name!r} has the ingest role (live batches only); it cannot open the console.",
                         403)
        resp = RedirectResponse(target, status_code=303)
        _cookie(resp, request, token)
        return resp

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request):
        resp = RedirectResponse("/login", status_code=303)
        _clear(resp, request)
        return resp


__all__ = ["job_view", "register_console"]
