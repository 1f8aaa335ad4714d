"""The live routes: edge batches in (role ``ingest``), sessions, their state and its stream (SSE).

``register_live(app)`` adds them to the app ``create_app`` builds; the ingest itself is
:class:`moodlens.service.live.LiveIngest`, started in the app's lifespan.
"""


import asyncio
import datetime as dt
import json
import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from moodlens.edge.protocol import MAX_BATCH_BYTES, BatchError, decode
from moodlens.errors import NotFoundError


class AckOut(BaseModel):
    session_id: int
    analysis_id: int
    seq: int
    duplicate: bool = Field(description="true when this batch had been taken before (nothing changed)")
    closed: bool = Field(description="true when the session is closed (its analysis complete)")


class LiveSessionOut(BaseModel):
    id: int
    device: str
    name: str
    status: str = Field(description="live or closed")
    analysis_id: int | None
    mode: str = Field(description="crops (faces scored here) or scores (scored on the device)")
    collection: str | None
    frames: int
    faces: int
    batches: int
    duplicates: int
    backlog_batches: int | None = Field(description="batches waiting in the device's buffer, as it last said")
    dropped_frames: int | None = Field(description="frames the device could not keep (its buffer was full)")
    ingest_lag_s: float | None = Field(description="seconds from the newest frame's capture to its arrival here")
    last_batch_at: dt.datetime | None
    created_at: dt.datetime
    closed_at: dt.datetime | None
    meta: dict[str, Any]
    stats: dict[str, Any]

    @classmethod
    def of(cls, r, lag: float | None = None) -> "LiveSessionOut":
        st = r.stats or {}
        utc = lambda t: t.replace(tzinfo=dt.timezone.utc) if t is not None and t.tzinfo is None else t  # noqa: E731
        return cls(id=r.id, device=r.device, name=r.name, status=r.status, analysis_id=r.analysis_id, mode=r.mode,
                   collection=r.collection, frames=r.frames, faces=r.faces, batches=r.batches,
                   duplicates=r.duplicates, backlog_batches=st.get("backlog_batches"),
                   dropped_frames=st.get("dropped_frames"), ingest_lag_s=lag, last_batch_at=utc(r.last_batch_at),
                   created_at=utc(r.created_at), closed_at=utc(r.closed_at), meta=r.meta or {}, stats=st)


def _lag(ingest, row) -> float | None:
    view = ingest.views().get(row.id)
    return None if view is None or view.last_ingest_lag_s is None else round(view.last_ingest_lag_s, 3)


def register_live(app: FastAPI) -> None:
    principal = app.state.principal
    role = app.state.role
    Viewer = Annotated[dict, Depends(role("viewer"))]
    Uploader = Annotated[dict, Depends(role("upload"))]

    def ingest_role(request: Request) -> dict:
        who = principal(request)
        if who["role"] not in ("ingest", "admin"):
            raise HTTPException(403, f"token {who['name']!r} ({who['role']}) may not send live batches; "
                                     "it needs the ingest role (moodlens tokens create NAME --role ingest)")
        return who

    Ingest = Annotated[dict, Depends(ingest_role)]

    @app.get("/api/live/ping", tags=["live"], summary="For edge agents: is this server taking live batches?")
    def ping(_who: Ingest, collection: str | None = None) -> dict:
        out = {"live": True, "idle_timeout_s": app.state.live.idle_timeout_s}
        if collection:
            from moodlens.collections import load_gallery
            try:
                out["collection_people"] = len(set(load_gallery(app.state.store, collection).persons.tolist()))
            except NotFoundError as e:
                raise HTTPException(404, str(e).split(" in ")[0]) from None
        return out

    @app.post("/api/live/batches", response_model=AckOut, tags=["live"],
              summary="Take one edge batch (application/vnd.moodlens.batch); idempotent by (device, session, "
                      "stream, seq)",
              description="Sent by `moodlens edge`. 200 once the batch's rows are committed (or it was taken "
                          "before: `duplicate`); 422 for a batch that cannot be read; 503 when the database "
                          "failed (the agent sends it again).")
    async def batches(request: Request, who: Ingest) -> AckOut:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BATCH_BYTES:
            raise HTTPException(413, f"a batch is at most {MAX_BATCH_BYTES // 2**20} MB")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BATCH_BYTES:
                raise HTTPException(413, f"a batch is at most {MAX_BATCH_BYTES // 2**20} MB")
        try:
            batch = decode(bytes(body))
        except BatchError as e:
            raise HTTPException(422, str(e)) from None
        fut = app.state.live.submit(batch, who["name"])
        try:
            ack = await asyncio.wrap_future(fut)
        except BatchError as e:
            raise HTTPException(422, str(e)) from None
        except Exception as e:  # noqa: BLE001 - the database: the agent retries
            raise HTTPException(503, f"the batch could not be stored ({type(e).__name__}); send it again") from None
        app.state.metrics.live_batch(batch, ack)
        return AckOut(**ack.__dict__)

    @app.get("/api/live/sessions", response_model=list[LiveSessionOut], tags=["live"],
             summary="Live sessions (with `all=true`, closed ones too), newest first")
    def sessions(_who: Viewer, all: bool = False, limit: int = 100) -> list[LiveSessionOut]:
        ingest = app.state.live
        return [LiveSessionOut.of(r, _lag(ingest, r)) for r in ingest.sessions(all, max(1, min(limit, 1000)))]

    @app.get("/api/live/sessions/{session_id}", tags=["live"],
             summary="One session and its dashboard data: timeline, faces in view, dominant emotion, people")
    def session(session_id: int, _who: Viewer, window: float = 300) -> dict:
        return _state(session_id, window)

    def _state(session_id: int, window: float) -> dict:
        ingest = app.state.live
        row = ingest.session_row(session_id)
        snap = ingest.view(session_id).snapshot(max(10.0, min(window, 3600.0)))
        return {"session": json.loads(LiveSessionOut.of(row, _lag(ingest, row)).model_dump_json()), **snap,
                "server_time": time.time()}

    @app.get("/api/live/sessions/{session_id}/events", tags=["live"], response_class=StreamingResponse,
             summary="Server-sent events: the session's state (as GET /api/live/sessions/{id}) on every change, "
                     "at least once a second")
    async def events(session_id: int, request: Request, _who: Viewer, window: float = 300):
        await run_in_threadpool(app.state.live.session_row, session_id)  # 404 before the stream starts

        async def stream():
            last_version, last_sent = None, 0.0
            while not await request.is_disconnected():
                view = app.state.live.views().get(session_id)
                version = None if view is None else view.version
                if version != last_version or time.monotonic() - last_sent >= 1.0:
                    state = await run_in_threadpool(_state, session_id, window)
                    last_version, last_sent = state["version"], time.monotonic()
                    yield f"event: state\ndata: {json.dumps(state, separators=(',', ':'))}\n\n"
                    if state["session"]["status"] != "live":
                        return
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/api/live/sessions/{session_id}/close", response_model=LiveSessionOut, tags=["live"],
              summary="Close a live session now: its analysis becomes complete")
    async def close(session_id: int, _who: Uploader) -> LiveSessionOut:
        await asyncio.wrap_future(app.state.live.close_session(session_id, "closed from the server"))
        row = await run_in_threadpool(app.state.live.session_row, session_id)
        return LiveSessionOut.of(row)


__all__ = ["register_live"]
