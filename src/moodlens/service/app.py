"""The FastAPI app behind ``moodlens serve``: JSON API, results, collections, metrics, console.

``create_app(config)`` builds it; its lifespan opens the database (migrating it), starts
the executor and the dispatcher (and the watch folder), and on shutdown stops claiming,
lets running jobs finish for ``config.grace_s`` and re-queues the rest.
"""


import datetime as dt
import logging
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from moodlens import __version__
from moodlens.errors import MediaError, MoodlensError, NotFoundError
from moodlens.service import auth
from moodlens.service.jobs import JobQueue, JobStateError
from moodlens.service.metrics import Metrics
from moodlens.service.tables import JobRow
from moodlens.service.uploads import UploadError, display_name, keep, receive, safe_suffix
from moodlens.service.worker import analysis_dir
from moodlens.store import Store, safe_url

log = logging.getLogger("moodlens.service")

HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
MAX_HEADER_BYTES = 64 * 1024  # as uvicorn's h11_max_incomplete_event_size in cli_serve
MAX_ENROL_BYTES = 100 * 2**20  # one enrolment's photos (at most 20), all together
RESULT_FILES = {"records.csv": "text/csv", "records.jsonl": "application/x-ndjson", "summary.csv": "text/csv",
                "report.html": "text/html", "emoji.mp4": "video/mp4"}


@dataclass
class ServeConfig:
    """What ``moodlens serve`` was started with."""

    db: str
    data_dir: Path
    workers: int = 1
    max_upload_mb: int = 4096
    watch: Path | None = None
    grace_s: float = 10.0
    loopback: bool = True  # bound to loopback: without tokens, no login needed
    insecure: bool = False  # --insecure: no tokens needed even off loopback
    live_idle_s: float = 300.0  # a live session with no batch for this long is closed (its analysis complete)
    executor: str = "local"  # local | ray
    ray_address: str | None = None
    segment_s: float = 60.0
    ship_video: bool = False  # uploads reach Ray workers through the object store


# -- typed boundaries ----------------------------------------------------------------------
class JobOut(BaseModel):
    id: int
    status: str = Field(description="queued, running, complete, failed or cancelled")
    stage: str | None = Field(None, description="what a running job is doing: analyze, tables, report, emoji video")
    progress: float = Field(description="0-1")
    filename: str
    source: str
    sha256: str | None
    size_bytes: int | None
    options: dict[str, Any]
    analysis_id: int | None
    attempts: int
    error: str | None
    stages: list[dict[str, Any]]
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @classmethod
    def of(cls, r: JobRow) -> "JobOut":
        return cls(id=r.id, status=r.status, stage=r.stage, progress=r.progress, filename=r.filename, source=r.source,
                   sha256=r.sha256, size_bytes=r.size_bytes, options=r.options or {}, analysis_id=r.analysis_id,
                   attempts=r.attempts, error=r.error, stages=r.stages or [], created_at=_utc(r.created_at),
                   started_at=_utc(r.started_at), finished_at=_utc(r.finished_at))


class Created(BaseModel):
    job_id: int


class AnalysisOut(BaseModel):
    id: int
    status: str
    video: str
    frames: int
    observations: int
    decode_gaps: list[dict[str, Any]]
    models: dict[str, Any]
    params: dict[str, Any]
    timings: dict[str, Any]
    error: str | None
    files: list[str]


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    return t.replace(tzinfo=dt.timezone.utc) if t is not None and t.tzinfo is None else t


def _loopback_name(host_header: str) -> bool:
    """Whether a Host header names this machine's loopback (localhost, 127.x.x.x, [::1]), any port."""
    import ipaddress

    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_file(path: Path, sha256: str | None) -> bool:
    """Whether ``path`` still holds the bytes whose SHA-256 a job recorded."""
    from moodlens.models import sha256_file

    return sha256 is not None and sha256_file(path) == sha256


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise HTTPException(422, f"{value!r} is not true or false")


def job_options(fields: dict[str, str]) -> dict[str, Any]:
    """The analysis options of an upload's form fields, checked."""
    import math

    try:
        fps = float(fields.get("fps") or 2.0)
    except ValueError:
        raise HTTPException(422, f"fps {fields.get('fps')!r} is not a number") from None
    if not math.isfinite(fps) or not 0 < fps <= 60:
        raise HTTPException(422, f"fps must be above 0 and at most 60, got {fields.get('fps')}")
    collection = (fields.get("collection") or "").strip() or None
    if collection is not None and len(collection) > 255:
        raise HTTPException(422, "collection names have at most 255 characters")
    from moodlens.engines import ENGINES

    engine = (fields.get("engine") or "own").strip().lower()
    if engine not in ENGINES:
        raise HTTPException(422, f"engine {fields.get('engine')!r}: {' or '.join(ENGINES)}")
    if engine == "rekognition":
        import importlib.util
        if importlib.util.find_spec("boto3") is None:
            raise HTTPException(422, "engine rekognition needs boto3 on the server: pip install 'moodlens[aws]'")
    out = {"fps": fps, "collection": collection, "report": _flag(fields.get("report"), True),
           "emoji_video": _flag(fields.get("emoji_video"), False),
           "blur_unknown": _flag(fields.get("blur_unknown"), False)}
    if engine != "own":
        out["engine"] = engine  # own jobs keep their options as before
    return out


def _offline_docs(app: FastAPI) -> None:
    """``/docs`` with Swagger UI served from the pinned ``swagger-ui-bundle`` wheel: FastAPI's
    default page loads it from a CDN, which an offline machine cannot reach."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="moodlens API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")


# -- the app -------------------------------------------------------------------------------
def limited(request: Request, max_bytes: int, what: str) -> Request:
    """``request`` whose body stops with 413 past ``max_bytes``: at once when Content-Length says
    so, else while the bytes arrive (a chunked body), before Starlette spools them to disk."""
    declared = request.headers.get("content-length")
    limit = f"{what} are at most {max_bytes // 2**20} MB in all"
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, limit)
    seen = 0

    async def receive():
        nonlocal seen
        message = await request.receive()
        seen += len(message.get("body", b""))
        if seen > max_bytes:
            raise HTTPException(413, limit)
        return message

    return Request(request.scope, receive)


def create_app(config: ServeConfig, executor=None) -> FastAPI:
    from moodlens.service.dispatch import Dispatcher

    from moodlens.service.live import LiveIngest

    store = Store(config.db)
    queue = JobQueue(store)
    live = LiveIngest(store, idle_timeout_s=config.live_idle_s)
    metrics = Metrics(queue, live)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    uploads = config.data_dir / "uploads"
    state: dict[str, Any] = {"tokens_checked": 0.0, "tokens": False}

    def on_done(job_id: int) -> None:
        try:
            job = queue.get(job_id)
            metrics.job_done(job, store.analysis(job.analysis_id) if job.analysis_id else None)
        except Exception:  # noqa: BLE001
            log.exception("metrics for job %d", job_id)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from moodlens.executors.local import LocalExecutor

        if executor is not None:
            ex = executor
        elif config.executor == "ray":
            from moodlens.executors.ray import RayExecutor
            ex = RayExecutor(config.workers, config.ray_address, config.segment_s, config.ship_video)
        else:
            ex = LocalExecutor(config.workers)
        dispatcher = Dispatcher(queue, ex, config.db, str(config.data_dir), on_done=on_done)
        app.state.dispatcher = dispatcher
        dispatcher.start()
        live.start()
        watcher = None
        if config.watch is not None:
            from moodlens.service.watch import Watcher
            watcher = Watcher(config.watch, queue, on_queued=dispatcher.wake)
            watcher.start()
        log.info("moodlens %s serving; database %s; data in %s; %d worker(s)", __version__, safe_url(config.db),
                 config.data_dir, ex.slots)
        try:
            yield
        finally:
            if watcher is not None:
                watcher.stop()
            await run_in_threadpool(dispatcher.stop, config.grace_s)
            await run_in_threadpool(live.stop)
            log.info("moodlens stopped")

    app = FastAPI(title="moodlens", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Offline audience-emotion analytics as a service: upload a video, a job analyses "
                              "it, download the records, report and emoji video. Send `Authorization: Bearer "
                              "<token>` once tokens exist (`moodlens tokens create`).")
    _offline_docs(app)
    app.state.config, app.state.store, app.state.queue, app.state.metrics = config, store, queue, metrics
    app.state.live = live

    # -- auth -----------------------------------------------------------------------------
    def tokens_exist() -> bool:
        now = time.monotonic()
        if now - state["tokens_checked"] > 2.0:
            state["tokens"], state["tokens_checked"] = auth.any_tokens(store), now
        return state["tokens"]

    def principal(request: Request) -> dict | None:
        """Who is asking: a token's name and role, or the local user when no token is needed."""
        header = request.headers.get("authorization", "")
        bearer = header[:7].lower() == "bearer "
        token = header[7:].strip() if bearer else request.cookies.get(auth.COOKIE, "")
        if not bearer and request.method not in ("GET", "HEAD", "OPTIONS") and (  # CSRF (console.py)
                request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")
                or (token and "x-requested-with" not in request.headers)):
            raise HTTPException(403, "refused: a browser request from another site, or a cookie without the "
                                     "X-Requested-With header (API clients send Authorization: Bearer)")
        if token:
            row = auth.check(store, token)
            if row is None:
                raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
            return {"name": row.name, "role": row.role}
        if not tokens_exist() and config.insecure and not config.loopback:
            return {"name": "local", "role": "admin"}
        if not tokens_exist() and config.loopback:
            # the local user, but only as this machine's own pages: another site in their browser may
            # neither post here (Origin) nor read through a name rebound to 127.0.0.1 (Host)
            host = request.headers.get("host", "")
            origin = request.headers.get("origin")
            if _loopback_name(host) and (origin is None or origin.split("://", 1)[-1] == host):
                return {"name": "local", "role": "admin"}
            raise HTTPException(403, f"refused: without a token only pages of this machine's own address may call "
                                     f"it (Host {host[:100]!r}, Origin {(origin or '')[:100]!r})")
        raise HTTPException(401, "a token is needed: send 'Authorization: Bearer <token>' "
                                 "(moodlens tokens create NAME --role viewer)", headers={"WWW-Authenticate": "Bearer"})

    def role(min_role: str):
        def dep(request: Request) -> dict:
            who = principal(request)
            if who["role"] == "ingest" or auth.RANK[who["role"]] < auth.RANK[min_role]:
                raise HTTPException(403, f"token {who['name']!r} ({who['role']}) may not do this; "
                                         f"it needs the {min_role} role")
            request.state.who = who
            return who
        return dep

    app.state.principal = principal
    app.state.role = role  # role("viewer") etc.: the dependency a route uses to require a role
    Viewer = Annotated[dict, Depends(role("viewer"))]
    Uploader = Annotated[dict, Depends(role("upload"))]
    Admin = Annotated[dict, Depends(role("admin"))]

    @app.middleware("http")
    async def timing(request: Request, call_next):
        t = time.perf_counter()
        if sum(len(k) + len(v) for k, v in request.scope["headers"]) > MAX_HEADER_BYTES:
            # uvicorn (h11) stops headers over 64 KB that arrive in pieces with a 400; ones read at once get here
            response = JSONResponse({"detail": f"request headers larger than {MAX_HEADER_BYTES // 1024} KB"},
                                    status_code=431)
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        method = request.method if request.method in HTTP_METHODS else "other"  # clients choose it: bound the labels
        metrics.http.labels(method, getattr(route, "path", "unmatched"), str(response.status_code)).observe(
            time.perf_counter() - t)
        return response

    @app.exception_handler(MoodlensError)
    async def moodlens_error(_request: Request, e: MoodlensError):
        status = 404 if isinstance(e, NotFoundError) else 409 if isinstance(e, JobStateError) else 422
        # the store names its database ("no such analysis in sqlite:////srv/..."): not the client's business
        return JSONResponse({"detail": str(e).replace(f" in {safe_url(config.db)}", "")}, status_code=status)

    # -- health and metrics ---------------------------------------------------------------
    @app.get("/healthz", tags=["service"], summary="Liveness and the database's answer")
    def health() -> dict:
        counts = queue.counts()
        return {"status": "ok", "version": __version__, "queued": counts["queued"], "running": counts["running"],
                "workers": config.workers}

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics", response_class=Response)
    def prometheus(_who: Viewer) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- jobs -----------------------------------------------------------------------------
    @app.post("/api/videos", status_code=201, response_model=Created, tags=["jobs"],
              summary="Upload a video; it is queued for analysis",
              description="multipart/form-data: `file` (the video) and optional `fps` (default 2), `collection`, "
                          "`report` (default true), `emoji_video`, `blur_unknown`, `engine` (own or rekognition: "
                          "the server's AWS credentials). The size limit and SHA-256 are "
                          "applied while streaming; the file is probed before it is queued (415/422 if it is not "
                          "a readable video).")
    async def upload(request: Request, who: Uploader) -> Created:
        from starlette.requests import ClientDisconnect

        from moodlens.media import probe

        try:
            up = await receive(request, uploads, config.max_upload_mb * 2**20)
        except UploadError as e:
            raise HTTPException(e.status, str(e)) from None
        except ClientDisconnect:
            log.info("upload abandoned: the client went away mid-body (nothing kept)")
            raise HTTPException(400, "the client went away before the upload finished") from None
        metrics.upload_bytes.inc(up.size)
        try:
            opts = job_options(up.fields)
            try:
                await run_in_threadpool(probe, up.path)
            except MediaError as e:
                msg = str(e).replace(str(up.path), up.filename)
                raise HTTPException(415 if "not a readable video" in msg or "no video stream" in msg else 422,
                                    msg) from None
            final = keep(up, uploads)
        except BaseException:
            up.discard()
            raise
        try:  # off the event loop: a busy SQLite may make the write wait
            job_id = await run_in_threadpool(lambda: queue.enqueue(
                filename=up.filename, video=str(final), options=opts, source="upload", sha256=up.sha256,
                size_bytes=up.size, token_name=who["name"]))
        except BaseException:
            final.unlink(missing_ok=True)  # no job, no file
            raise
        request.app.state.dispatcher.wake()
        log.info("job %d: %s uploaded (%d bytes, sha256 %s) by %s", job_id, up.filename, up.size, up.sha256[:12],
                 who["name"])
        return Created(job_id=job_id)

    @app.get("/api/jobs", response_model=list[JobOut], tags=["jobs"], summary="Jobs, newest first")
    def jobs(_who: Viewer, status: str | None = None, limit: int = 100, offset: int = 0) -> list[JobOut]:
        return [JobOut.of(r) for r in queue.list(limit=max(1, min(limit, 1000)), status=status,
                                                 offset=max(0, offset))]

    @app.get("/api/jobs/{job_id}", response_model=JobOut, tags=["jobs"], summary="One job")
    def job(job_id: int, _who: Viewer) -> JobOut:
        return JobOut.of(queue.get(job_id))

    @app.post("/api/jobs/{job_id}/retry", response_model=JobOut, tags=["jobs"],
              summary="Queue a failed or cancelled job again")
    def retry(job_id: int, request: Request, _who: Uploader) -> JobOut:
        row = queue.retry(job_id)
        request.app.state.dispatcher.wake()
        return JobOut.of(row)

    @app.post("/api/jobs/{job_id}/cancel", response_model=JobOut, tags=["jobs"],
              summary="Cancel a queued job, or stop a running one")
    def cancel(job_id: int, _who: Uploader) -> JobOut:
        return JobOut.of(queue.cancel(job_id))

    # -- analyses and their files ---------------------------------------------------------
    def _files(aid: int) -> list[str]:
        folder = analysis_dir(config.data_dir, aid)
        return [n for n in RESULT_FILES if (folder / n).is_file()]

    @app.get("/api/analyses/{analysis_id}", response_model=AnalysisOut, tags=["analyses"])
    def analysis(analysis_id: int, _who: Viewer) -> AnalysisOut:
        a = store.analysis(analysis_id)
        return AnalysisOut(id=a.id, status=a.status, video=Path(a.video).name, frames=a.frames or 0,
                           observations=a.observations or 0, decode_gaps=a.decode_gaps or [], models=a.models or {},
                           params=a.params or {}, timings=a.timings or {}, error=a.error, files=_files(a.id))

    @app.get("/api/analyses/{analysis_id}/{name}", tags=["analyses"],
             summary="records.csv, records.jsonl, summary.csv, report.html or emoji.mp4 (Range requests work)",
             response_class=FileResponse)
    async def result_file(analysis_id: int, name: str, _who: Viewer):
        if name not in RESULT_FILES:
            raise HTTPException(404, f"{name}: not a result file; one of {', '.join(RESULT_FILES)}")
        await run_in_threadpool(store.complete_analysis, analysis_id)
        path = analysis_dir(config.data_dir, analysis_id) / name
        if not path.is_file() and name != "emoji.mp4":
            await run_in_threadpool(_write_result, analysis_id, name)
        if not path.is_file():
            raise HTTPException(404, f"analysis {analysis_id} has no {name} (upload with emoji_video=true)")
        return FileResponse(path, media_type=RESULT_FILES[name],
                            filename=None if name == "report.html" else f"analysis-{analysis_id}-{name}")

    def _write_result(analysis_id: int, name: str) -> None:
        """Tables or the report of an analysis made outside the service, written on first request."""
        from moodlens.cli_reports import report_analysis, write_outputs
        from moodlens.pipeline import load_analysis

        a = load_analysis(analysis_id, config.db)
        folder = analysis_dir(config.data_dir, analysis_id)
        if name == "report.html":
            report_analysis(a, folder / "report.html")
        else:
            write_outputs(a, folder)

    @app.delete("/api/analyses/{analysis_id}", status_code=204, tags=["analyses"],
                summary="Erase an analysis: its rows, its files, its job and the uploaded video")
    def delete_analysis(analysis_id: int, _who: Admin) -> Response:
        if store.analysis(analysis_id).status == "live":  # 404 when unknown
            raise HTTPException(409, f"analysis {analysis_id} is a live session's, still filling; close the "
                                     "session first (POST /api/live/sessions/ID/close)")
        job_row = queue.by_analysis(analysis_id)
        if job_row is not None and job_row.status == "running":
            raise HTTPException(409, f"analysis {analysis_id} is being made by job {job_row.id}; cancel it first")
        erase = [analysis_id]
        if job_row is not None:  # the job's earlier attempts (interrupted, failed) left rows of the same video too
            from sqlalchemy import select

            from moodlens.store import AnalysisRow
            with store.session() as s:
                erase += list(s.scalars(select(AnalysisRow.id).where(
                    AnalysisRow.video == str(Path(job_row.video).resolve()),
                    AnalysisRow.video_sha256 == job_row.sha256, AnalysisRow.status != "complete",
                    AnalysisRow.id != analysis_id)))
        for aid in erase:
            store.delete_analysis(aid)
            shutil.rmtree(analysis_dir(config.data_dir, aid), ignore_errors=True)
        if job_row is not None:
            video = Path(job_row.video)
            if job_row.source == "upload" and video.parent.resolve() == uploads.resolve():
                video.unlink(missing_ok=True)
            elif job_row.source == "watch" and video.is_file() and _same_file(video, job_row.sha256):
                video.unlink()  # else the watch folder would queue it again at the next start
            queue.delete(job_row.id)
        log.info("analysis %s erased", ", ".join(map(str, erase)))
        return Response(status_code=204)

    # -- collections ----------------------------------------------------------------------
    @app.get("/api/collections", tags=["collections"], summary="Collections and their people")
    def collections(_who: Viewer) -> list[dict]:
        from moodlens.collections import list_people

        out: dict[str, dict] = {}
        for p in list_people(store, None):
            out.setdefault(p.collection, {"name": p.collection, "people": []})["people"].append(
                {"person": p.person, "faces": p.faces, "enrolled_at": _utc(p.created_at)})
        return list(out.values())

    @app.post("/api/collections/{collection}/people", status_code=201, tags=["collections"],
              summary="Enrol a person from photos (multipart: `person`, one or more `file`)")
    async def enrol(collection: str, request: Request, _who: Admin) -> dict:
        from moodlens.collections import enroll

        form = await limited(request, MAX_ENROL_BYTES, "an enrolment's photos").form(max_files=20, max_fields=10)
        person = str(form.get("person") or "").strip()
        files = [f for f in form.getlist("file") if hasattr(f, "filename")]
        if not person or not files:
            raise HTTPException(422, "send `person` and at least one `file` (a photo)")
        with tempfile.TemporaryDirectory(dir=config.data_dir) as d:
            paths, names = [], {}
            for i, f in enumerate(files):
                p = Path(d) / f"photo{i}.{safe_suffix(f.filename or 'x.jpg')}"
                p.write_bytes(await f.read())
                paths.append(p)
                names[str(p)] = display_name(f.filename or f"photo {i + 1}")
            try:
                results = await run_in_threadpool(enroll, store, collection, person, paths)
            except MoodlensError as e:  # name the client's photo, never the server's temporary path
                msg = str(e)
                for tmp, name in names.items():
                    msg = msg.replace(tmp, name)
                raise type(e)(msg) from None
        return {"collection": collection, "person": person, "enrolled": len(results)}

    @app.delete("/api/collections/{collection}/people/{person}", status_code=204, tags=["collections"],
                summary="Remove a person and their embeddings")
    def unenrol(collection: str, person: str, _who: Admin) -> Response:
        from moodlens.collections import remove_person

        remove_person(store, collection, person)
        return Response(status_code=204)

    from moodlens.service.console import register_console
    from moodlens.service.live_api import register_live
    from moodlens.service.live_pages import register_live_pages
    register_live(app)
    register_live_pages(app)
    register_console(app)
    return app


__all__ = ["AnalysisOut", "Created", "JobOut", "ServeConfig", "create_app", "job_options"]
