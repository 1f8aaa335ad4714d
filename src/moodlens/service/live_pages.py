"""The live pages of ``moodlens serve``: ``/live`` (the sessions) and ``/live/{id}`` (one session's dashboard).

They are made as the console's pages are (``console.py``): Jinja2 templates, autoescaped
(device and session names are whatever the edge agent sent), the viewer role through the
API's own ``principal`` (no valid token: to ``/login``), the same Content Security Policy.
``static/live.js`` keeps them current without a reload: the list polls
``GET /api/live/sessions?all=true`` every second; the dashboard listens to the session's
server-sent events and draws its charts as inline SVG (a chart library such as Plotly would
be 4.6 MB for a few lines).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from moodlens.errors import NotFoundError
from moodlens.service.console import _iso, _seconds, _utc, _when
from moodlens.service.live_api import LiveSessionOut, _lag
from moodlens.types import EMOTIONS

RECENT_S = 24 * 3600  # closed sessions this recent are listed under the live ones
WINDOWS = (60, 300, 600)  # the dashboard's timeline spans (s); the server keeps 600 s per session


def lag_text(s: float | None) -> str:
    """0.06 s, 12.4 s, 2 min 05 s (as live.js writes it)."""
    if s is None:
        return "–"
    return f"{s:.2f} s" if s < 10 else _seconds(s)


def session_view(row, lag: float | None) -> dict[str, Any]:
    """A session as GET /api/live/sessions gives it, and the texts the templates show of it."""
    out = json.loads(LiveSessionOut.of(row, lag).model_dump_json())
    meta = out["meta"] or {}
    out.update(lag=lag_text(lag), backlog="–" if out["backlog_batches"] is None else out["backlog_batches"],
               last_iso=_iso(row.last_batch_at), last=_when(row.last_batch_at), created_iso=_iso(row.created_at),
               created=_when(row.created_at), closed_iso=_iso(row.closed_at), closed=_when(row.closed_at),
               width=int(meta.get("width") or 640), height=int(meta.get("height") or 360),
               report=f"/api/analyses/{row.analysis_id}/report.html" if row.analysis_id is not None else None)
    return out


def register_live_pages(app: FastAPI) -> None:
    """Add /live and /live/{session_id} to ``app`` (``/static`` is mounted by the console)."""
    # the console's page() and viewer() (register_console puts them on app.state): the same
    # templates, headers, login redirect and refusal of ingest tokens as every console page
    def page(request: Request, name: str, context: dict, status: int = 200) -> HTMLResponse:
        return app.state.page(request, name, {"emotions": EMOTIONS, **context}, status)

    def viewer(request: Request) -> dict | Response:  # looked up when called: the console registers later
        return app.state.viewer(request)

    def lag(row) -> float | None:
        return _lag(app.state.live, row)

    @app.get("/live", include_in_schema=False)
    def live_list(request: Request):
        who = viewer(request)
        if isinstance(who, Response):
            return who
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=RECENT_S)
        rows = app.state.live.sessions(True, 500)
        live = [session_view(r, lag(r)) for r in rows if r.status == "live"]
        closed = [session_view(r, None) for r in rows
                  if r.status != "live" and r.closed_at is not None and _utc(r.closed_at) >= since]
        return page(request, "live.html", {"who": who, "live": live, "closed": closed, "recent_s": RECENT_S})

    @app.get("/live/{session_id}", include_in_schema=False)
    def live_session(request: Request, session_id: int, window: str = "300"):
        who = viewer(request)
        if isinstance(who, Response):
            return who
        try:
            row = app.state.live.session_row(session_id)
        except NotFoundError:
            return page(request, "error.html", {"who": who, "title": "No such live session",
                                                "message": f"Live session {session_id} does not exist."}, 404)
        span = int(window) if window.isdigit() and int(window) in WINDOWS else 300
        return page(request, "live_session.html", {"who": who, "s": session_view(row, lag(row)), "window": span,
                                                   "windows": WINDOWS})


__all__ = ["lag_text", "register_live_pages", "session_view"]
