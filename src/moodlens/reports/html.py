"""report.html: one self-contained, offline page that a teacher or presenter reads at a glance.

The Plotly bundle that ships inside the ``plotly`` package is inlined, so the page makes
no network request (no CDN, no web fonts); it opens from a USB stick or an e-mail.

What the page shows, and how each number is defined (the page says the same):

* **Audience timeline** – for each second of video, the mean of each emotion over every
  face observed in that second (each face in each sampled frame counts once), then a
  centred moving average over ``smooth_s`` seconds. Seconds without faces are gaps.
* **Per person** – the same per id (enrolled person or anonymous ``unknown-<n>``), with
  a menu to pick the net reaction, positive, negative or any one emotion.
* **Attendance** – seconds seen per id: observations / sampling fps, as in summary.csv.
* **Class summary** – :func:`moodlens.reports.tables.summary`, the seed's class summary.
* **Top moments** – *positive* = happy + surprised, *negative* = sad + angry + disgusted
  + fear + contempt (percentage points, 0-100, of the audience's per-second mean);
  *net reaction* = positive - negative (a derived score, -100..100). The strongest
  seconds of each are listed, at least ``moment_gap_s`` apart.
* **Run** – the analysis' parameters, model versions, video facts and timings.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import pkgutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from moodlens.atomic import atomic_write
from moodlens.reports.tables import SCORED, STORE_COLUMN, SummaryAccumulator, engine_of

# report columns (seed names) in the page's order: the own model's eight classes
COLUMNS: tuple[str, ...] = ("happy", "surprised", "calm", "sad", "angry", "disgusted", "fear", "contempt")
assert set(COLUMNS) == set(SCORED)
# what each engine scores (Rekognition: its emotion types; contempt stays NULL, so no line)
ENGINE_COLUMNS: dict[str, tuple[str, ...]] = {
    "rekognition": ("happy", "surprised", "calm", "sad", "angry", "disgusted", "fear", "confused", "unknown"),
}


def report_columns(models: Mapping | None) -> tuple[str, ...]:
    """The report columns an analysis's engine scores (the own model's eight unless it names another)."""
    return ENGINE_COLUMNS.get(engine_of(dict(models or {})), COLUMNS)


def _score(o: dict, column: str) -> float:
    """A row's score for a report column; 0 where the engine gave none (NULL: Rekognition has no
    contempt), so that sums and the positive/negative composites stay defined."""
    v = o.get(STORE_COLUMN[column])
    return 0.0 if v is None else v
POSITIVE: tuple[str, ...] = ("happy", "surprised")
NEGATIVE: tuple[str, ...] = ("sad", "angry", "disgusted", "fear", "contempt")
COLOURS = {
    "happy": "#e6a800", "surprised": "#17a2b8", "calm": "#9aa0a6", "sad": "#4e79a7",
    "angry": "#e15759", "disgusted": "#59a14f", "fear": "#b07aa1", "contempt": "#9c755f",
    "confused": "#d37295", "unknown": "#79706e",
}
DEFINITIONS = (
    "Positive reaction = happy + surprised; negative reaction = sad + angry + disgusted + fear + "
    "contempt (percentage points of the audience's mean for that second, 0–100). "
    "Net reaction = positive − negative (a derived score, −100…100, not a model output)."
)
_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True,
                  "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}


MAX_POINTS = 1800
"""Points per line at most: up to 30 minutes a line has a point a second; longer videos are
binned (a two-hour lecture: 4-second bins), so the page and the memory to make it stay small."""
MAX_PEOPLE_LINES = 40
"""Ids drawn in the per-person chart (those seen longest); every id is in the class summary."""


_BUNDLE = "\x00plotly.js\x00"  # where the page's inline Plotly bundle goes


def _row_source(analysis: Any) -> Callable[[], Iterator[dict]]:
    """A way to read an analysis's rows again, from its store (streamed) or a list."""
    if hasattr(analysis, "iter_observations"):
        return analysis.iter_observations
    rows = sorted(_attr(analysis, "observations") or [], key=lambda o: o["time_s"])  # in time order, as the store's
    return lambda: iter(rows)


def _attr(obj: Any, name: str, default: Any = None) -> Any:
    return obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)


def _mmss(t: float) -> str:
    t = max(0.0, float(t))
    m, s = divmod(t, 60)
    return f"{int(m)}:{s:04.1f}" if m < 60 else f"{int(m // 60)}:{int(m % 60):02d}:{s:04.1f}"


# -- numbers ------------------------------------------------------------------------------
def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` samples that skips NaN (gaps stay NaN)."""
    y = np.asarray(y, np.float64)
    if window <= 1 or y.size == 0:
        return y.copy()
    ok = np.isfinite(y)
    k = np.ones(int(window))
    num = np.convolve(np.where(ok, y, 0.0), k, mode="same")
    den = np.convolve(ok.astype(np.float64), k, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~ok] = np.nan
    return out


class PerSecond:
    """Sums of each report column per ``bin_s`` seconds, folded over rows one at a time.

    Rows must come in time order (as the store streams them): the distinct ids of only the
    current second are held. Memory grows with the video's length in bins (9 numbers a
    bin), never with the number of rows.
    """

    def __init__(self, n_seconds: int = 60, track_ids: bool = True, bin_s: int = 1,
                 columns: tuple[str, ...] = COLUMNS):
        self.columns = tuple(columns)
        self.bin_s = max(1, int(bin_s))
        n_bins = max(1, math.ceil(n_seconds / self.bin_s))
        self.sums = np.zeros((n_bins, len(self.columns)))
        self.n = np.zeros(n_bins)
        self.faces = np.zeros(n_bins)  # most distinct ids seen in one second of the bin
        self.track_ids = track_ids
        self._second: int | None = None
        self._ids: set = set()
        self.last_t = 0.0
        self.count = 0

    def _grow(self, need: int) -> None:
        extra = max(need, 2 * len(self.n)) - len(self.n)
        self.sums = np.vstack([self.sums, np.zeros((extra, len(self.columns)))])
        self.n = np.concatenate([self.n, np.zeros(extra)])
        self.faces = np.concatenate([self.faces, np.zeros(extra)])

    def _close_second(self) -> None:
        if self._second is not None:
            b = self._second // self.bin_s
            self.faces[b] = max(self.faces[b], len(self._ids))

    def add(self, o: dict) -> None:
        sec = max(0, int(math.floor(o["time_s"])))
        b = sec // self.bin_s
        if b >= len(self.n):
            self._grow(b + 1)
        self.sums[b] += [_score(o, c) for c in self.columns]
        self.n[b] += 1
        if self.track_ids:
            if sec != self._second:
                self._close_second()
                self._second, self._ids = sec, set()
            self._ids.add(o["person"])
        self.last_t = max(self.last_t, o["time_s"])
        self.count += 1

    def arrays(self, n_seconds: int, bin_s: int | None = None) -> dict[str, np.ndarray]:
        """Means per ``bin_s``-second bin (a multiple of the fold's own) over the first
        ``n_seconds`` (later rows go to the last bin), plus ``n`` (face observations),
        ``faces`` (the most distinct ids seen in one second of the bin) and ``x`` (bin
        centres, s). NaN where no face was seen."""
        self._close_second()
        bin_s = bin_s or self.bin_s
        n_bins = max(1, math.ceil(n_seconds / bin_s))
        to_bin = np.minimum(np.arange(len(self.n)) * self.bin_s // bin_s, n_bins - 1)
        sums, n, faces = np.zeros((n_bins, len(self.columns))), np.zeros(n_bins), np.zeros(n_bins)
        np.add.at(sums, to_bin, self.sums)
        np.add.at(n, to_bin, self.n)
        np.maximum.at(faces, to_bin, self.faces)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums / n[:, None]
        out = {c: mean[:, i] for i, c in enumerate(self.columns)}
        out["positive"] = sum(out[c] for c in POSITIVE if c in out)
        out["negative"] = sum(out[c] for c in NEGATIVE if c in out)
        out["net"] = out["positive"] - out["negative"]
        out["n"], out["faces"] = n, faces
        out["x"] = np.minimum((np.arange(n_bins) + 0.5) * bin_s, max(n_seconds, 1))
        return out


def per_second(observations: Iterable[dict], n_seconds: int) -> dict[str, np.ndarray]:
    """Per second of video: the mean of each report column over all faces seen in it,
    ``faces`` (distinct ids seen) and ``n`` (face observations). NaN where none."""
    acc = PerSecond(n_seconds)
    for o in sorted(observations, key=lambda o: o["time_s"]):
        acc.add(o)
    return acc.arrays(n_seconds)


def top_moments(sec: dict[str, np.ndarray], key: str, k: int = 5, gap_s: float = 5.0,
                min_score: float = 1.0) -> list[int]:
    """The ``k`` seconds with the highest ``sec[key]``, at least ``gap_s`` apart."""
    y = np.asarray(sec[key], np.float64)
    order = [int(i) for i in np.argsort(-np.nan_to_num(y, nan=-np.inf), kind="stable") if np.isfinite(y[i])]
    chosen: list[int] = []
    for i in order:
        if y[i] < min_score or len(chosen) >= k:
            break
        if all(abs(i - j) >= gap_s for j in chosen):
            chosen.append(i)
    return chosen


# -- figures -------------------------------------------------------------------------------
def _layout(**kw) -> dict:
    import plotly.io as pio

    base = dict(template=pio.templates["plotly_white"].to_plotly_json(), margin=dict(l=56, r=16, t=36, b=48),
                height=380, font=dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size=13),
                legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0), hovermode="x unified")
    base.update(kw)
    return base


def _list(y: np.ndarray) -> list:
    return [None if not np.isfinite(v) else round(float(v), 2) for v in y]


# Figures are plain dicts in Plotly's JSON schema, not plotly.graph_objects: the objects
# validate and copy every number (46 MB for 30 people over 30 minutes, against 8 MB).
MAX_CUT_MARKS = 400  # more cuts than this are counted in the note, not drawn


def _timeline_figure(sec, smooth_n: int, duration: float, cuts: list[float] = (),
                     columns: tuple[str, ...] = COLUMNS) -> dict:
    x = sec["x"].tolist()
    data = [dict(type="scatter", x=x, y=_list(smooth(sec[c], smooth_n)), name=c, mode="lines",
                 line=dict(color=COLOURS[c], width=2.2), connectgaps=False, hovertemplate="%{y:.1f}")
            for c in columns]
    data.append(dict(type="bar", x=x, y=sec["faces"].tolist(), name="faces in view", yaxis="y2", showlegend=False,
                     marker=dict(color="#b8c0cc"), hovertemplate="%{y:.0f} faces"))
    return dict(data=data, layout=_layout(
        height=430,
        xaxis=dict(title=dict(text="video time (s)"), range=[0, max(duration, 1.0)], anchor="y2"),
        yaxis=dict(title=dict(text="mean score (%)"), rangemode="tozero", domain=[0.3, 1.0]),
        yaxis2=dict(title=dict(text="faces"), domain=[0.0, 0.2], rangemode="tozero", tickformat="d",
                    dtick=max(1, int(math.ceil(float(np.max(sec["faces"], initial=1)) / 2)))),
        bargap=0.15,
        shapes=[dict(type="line", x0=t, x1=t, y0=0, y1=1, yref="paper", layer="below",
                     line=dict(color="#8a94a6", width=1, dash="dot")) for t in cuts[:MAX_CUT_MARKS]]))


def _people_figure(series: dict[str, dict[str, np.ndarray]], ids: list[str], smooth_n: int, duration: float,
                   columns: tuple[str, ...] = COLUMNS) -> dict:
    metrics = [("net", "net reaction (derived)"), ("positive", "positive"), ("negative", "negative")] + [
        (c, c) for c in columns]
    x = series[ids[0]]["x"].tolist() if ids else []
    data = [dict(type="scatter", x=x, y=_list(smooth(series[p]["net"], smooth_n)), name=p, mode="lines",
                 connectgaps=False, hovertemplate="%{y:.1f}") for p in ids]
    buttons = []
    for key, label in metrics:
        ys = [_list(smooth(series[p][key], smooth_n)) for p in ids]
        rng = [-100, 100] if key == "net" else [0, 100]
        buttons.append(dict(label=label, method="update",
                            args=[{"y": ys}, {"yaxis.title.text": f"{label} (%)", "yaxis.range": rng}]))
    return dict(data=data, layout=_layout(
        xaxis=dict(title=dict(text="video time (s)"), range=[0, max(duration, 1.0)]),
        yaxis=dict(title=dict(text="net reaction (derived) (%)"), range=[-100, 100], zeroline=True),
        updatemenus=[dict(buttons=buttons, direction="down", x=0.0, xanchor="left", y=1.02, yanchor="bottom",
                          showactive=True, bgcolor="white", bordercolor="#cfd5de")],
        legend=dict(orientation="v", x=1.02, xanchor="left", y=1.0, yanchor="top", title=dict(text="id")),
        showlegend=True,
        margin=dict(l=56, r=16, t=56, b=48)))


def _attendance_figure(summ: list[dict]) -> dict:
    rows = sorted(summ, key=lambda r: (r["seconds"] or 0, r["id"]))
    data = [dict(type="bar", x=[r["seconds"] or 0 for r in rows], y=[r["id"] for r in rows], orientation="h",
                 marker=dict(color="#5b8def"), text=[f"{(r['seconds'] or 0):.1f} s" for r in rows],
                 textposition="auto", hovertemplate="%{y}: %{x:.1f} s<extra></extra>")]
    return dict(data=data, layout=_layout(height=max(220, 34 * len(rows) + 90), hovermode="closest",
                                          xaxis=dict(title=dict(text="seconds seen"), rangemode="tozero"),
                                          yaxis=dict(type="category", automargin=True), showlegend=False))


def _figure_html(fig: dict, div_id: str) -> str:
    import plotly.io as pio

    payload = pio.to_json(fig, validate=False)  # escapes <, > and / in strings: safe inside <script>
    return (f'<div id="{div_id}" class="chart"></div>\n<script>(function(){{var f={payload};'
            f'Plotly.newPlot("{div_id}",f.data,f.layout,{json.dumps(_PLOTLY_CONFIG)});}})();</script>')


# -- page ---------------------------------------------------------------------------------
_CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#e4e7ec;--bg:#f6f7f9;--card:#fff;--accent:#3559e0;
--pos:#1f9d55;--neg:#d64545}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{background:#1d2330;color:#fff;padding:28px 32px 22px}
header h1{margin:0 0 4px;font-size:24px;font-weight:650}
header p{margin:0;color:#c7cdd8}
main{max-width:1180px;margin:0 auto;padding:24px 24px 48px}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 22px;margin:0 0 20px}
h2{font-size:18px;margin:0 0 4px}
.note{color:var(--muted);font-size:13px;margin:0 0 10px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:14px;margin:0 0 20px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px}
.card .v{font-size:24px;font-weight:650}
.card .k{color:var(--muted);font-size:13px}
.chart{width:100%;min-height:220px}
table{border-collapse:collapse;width:100%;font-size:13.5px}
th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:#fafbfc;font-weight:600;color:#36404e}
td.l,th.l{text-align:left}
td small{display:block;color:var(--muted);font-size:11.5px;line-height:1.2}
.scroll{overflow-x:auto}
.two{display:grid;grid-template-columns:1fr 1fr;gap:20px}
@media (max-width:820px){.two{grid-template-columns:1fr}}
.pos{color:var(--pos);font-weight:600}.neg{color:var(--neg);font-weight:600}
.chip{display:inline-block;padding:1px 8px;border-radius:999px;background:#eef1f6;margin:0 4px 2px 0;font-size:12.5px}
img.thumb{width:44px;height:44px;object-fit:cover;border-radius:6px;vertical-align:middle;margin-right:8px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:0;font-size:13.5px}
dt{color:var(--muted)}dd{margin:0;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;word-break:break-all}
footer{color:var(--muted);font-size:12.5px;text-align:center;padding:8px 24px 32px}
.empty{color:var(--muted);font-style:italic}
"""


def _thumb_uri(value: Any) -> str | None:
    """A data: URI for a thumbnail given as bytes (JPEG/PNG), a file path or a BGR array."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        import cv2
        ok, buf = cv2.imencode(".jpg", value, [cv2.IMWRITE_JPEG_QUALITY, 85])
        data, mime = (buf.tobytes(), "image/jpeg") if ok else (None, None)
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    else:
        p = Path(value)
        if not p.is_file():
            return None
        data = p.read_bytes()
        mime = "image/png" if p.suffix.lower() == ".png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}" if data else None


def face_thumbnails(video: str | Path, observations: Iterable[dict], size: int = 96) -> dict[str, np.ndarray]:
    """One face crop per id (BGR, ``size`` px square) for the report, from the id's best
    observation (highest quality x detector score), read back from the video by seeking.

    Only for ``--keep-faces``: the report carries no face images unless asked to.
    Rotated videos are turned upright, as the boxes are. Ids whose frame cannot be read
    are left out.
    """
    import av
    import cv2

    best: dict[str, dict] = {}
    for o in observations:  # one pass, keeping one row per id: the rows may stream
        key = (o.get("quality") or 0) * (o.get("score") or 0)
        if o["person"] not in best or key > best[o["person"]]["_key"]:
            best[o["person"]] = {"time_s": o["time_s"], "x": o["x"], "y": o["y"], "w": o["w"], "h": o["h"],
                                 "_key": key}
    out: dict[str, np.ndarray] = {}
    if not best:
        return out
    try:
        with av.open(str(video)) as c:
            s = c.streams.video[0]
            tb, origin = s.time_base, s.start_time or 0
            for person, o in sorted(best.items(), key=lambda kv: kv[1]["time_s"]):
                target = origin + int(round(o["time_s"] / tb))
                c.seek(target, stream=s, backward=True)
                for frame in c.decode(s):
                    if frame.pts is None or frame.pts + 1 < target:
                        continue
                    k = int(round(-frame.rotation / 90.0)) % 4
                    img = frame.to_ndarray(format="bgr24")
                    img = np.ascontiguousarray(np.rot90(img, -k)) if k else img
                    x, y, w, h = o["x"], o["y"], o["w"], o["h"]
                    side = max(w, h) * 1.15
                    cx, cy = x + w / 2, y + h / 2
                    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
                    x1, y1 = int(min(img.shape[1], cx + side / 2)), int(min(img.shape[0], cy + side / 2))
                    if x1 > x0 and y1 > y0:
                        out[person] = cv2.resize(img[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)
                    break
    except (av.FFmpegError, OSError):
        pass
    return out


def _dl(d: Mapping) -> str:
    if not d:
        return '<p class="empty">none recorded</p>'
    items = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(_fmt(v))}</dd>" for k, v in d.items())
    return f"<dl>{items}</dl>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return str(v)


def _moments_table(sec, idx: list[int], key: str, cls: str, observations_by_sec) -> str:
    if not idx:
        return '<p class="empty">no moment stands out</p>'
    rows = []
    for i in idx:
        obs = observations_by_sec.get(i, [])
        score = {}
        cols = [c for c in (POSITIVE if key == "positive" else NEGATIVE) if c in sec]
        for o in obs:
            score.setdefault(o["person"], []).append(sum(_score(o, c) for c in cols))
        leaders = sorted(score, key=lambda p: -np.mean(score[p]))[:3]
        main = max(cols, key=lambda c: np.nan_to_num(sec[c][i]))
        rows.append(
            f"<tr><td class='l'>{_mmss(i)}–{_mmss(i + 1)}</td><td class='{cls}'>{sec[key][i]:.1f}</td>"
            f"<td class='l'>{html.escape(main)} {sec[main][i]:.0f}</td><td>{int(sec['faces'][i])}</td>"
            f"<td class='l'>{''.join(f'<span class=chip>{html.escape(p)}</span>' for p in leaders)}</td></tr>")
    return ("<table><thead><tr><th class='l'>time</th><th>score</th><th class='l'>strongest</th><th>faces</th>"
            "<th class='l'>most reactive ids</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _summary_table(summ: list[dict], thumbs: Mapping[str, str | None], columns: tuple[str, ...] = COLUMNS) -> str:
    if not summ:
        return '<p class="empty">no faces were found</p>'
    head = ("<tr><th class='l'>id</th><th>obs.</th><th>seen (s)</th><th>first (s)</th><th>last (s)</th>"
            + "".join(f"<th style='color:{COLOURS[c]}'>{c}</th>" for c in columns) + "</tr>")
    body = []
    for r in summ:
        uri = thumbs.get(r["id"])
        img = f"<img class='thumb' alt='' src='{uri}'>" if uri else ""
        cells = "".join("<td>–</td>" if r[c + "_mean"] is None else
                        f"<td>{r[c + '_mean']:.1f}<small>{r[c + '_sum']:.0f}</small></td>" for c in columns)
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        body.append(f"<tr><td class='l'>{img}{html.escape(str(r['id']))}</td><td>{r['observations']}</td>"
                    f"<td>{seconds}</td><td>{r['first_s']:.1f}</td><td>{r['last_s']:.1f}</td>{cells}</tr>")
    return f"<div class='scroll'><table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>"


def decode_gaps_notice(gaps: Iterable[Mapping] | None, duration: float, shown: int = 10) -> str:
    """The report's notice for stretches of video that could not be decoded and were
    skipped (``analysis.decode_gaps``); empty when there are none."""
    gaps = [g for g in (gaps or []) if g.get("end_s") is not None and g.get("start_s") is not None]
    if not gaps:
        return ""
    long = duration >= 60 or any(float(g["end_s"]) >= 60 for g in gaps)
    when = [f"{_mmss(g['start_s'])}–{_mmss(g['end_s'])}" if long
            else f"{float(g['start_s']):.1f}–{float(g['end_s']):.1f} s" for g in gaps[:shown]]
    if len(gaps) > shown:
        when.append(f"and {len(gaps) - shown} more")
    lost = sum(float(g["end_s"]) - float(g["start_s"]) for g in gaps)
    share = f"{100 * lost / duration:.0f} % of the video" if duration > 0 else f"{lost:.1f} s of video"
    n = len(gaps)
    text = (f"{n} stretch{'es' if n != 1 else ''} of the video could not be decoded (corrupt data) and "
            f"{'were' if n != 1 else 'was'} skipped: {', '.join(when)}; {share}. "
            "No faces are reported there.")
    return ('<p class="decode-gaps" role="alert" style="background:#fff4e5;border:1px solid #f0b45b;'
            f'border-radius:8px;padding:10px 14px;margin:0 0 16px">⚠ {html.escape(text)}</p>')


def write_report(
    analysis: Any,
    out: str | Path,
    keep_faces_thumbnails: Mapping[str, Any] | None = None,
    *,
    smooth_s: int = 3,
    top_k: int = 5,
    moment_gap_s: float = 5.0,
) -> Path:
    """Write the self-contained ``report.html`` for an analysis; returns its path.

    ``analysis`` is a :class:`moodlens.pipeline.Analysis` (or anything with its
    ``id, video, info, params, models, timings, observations``). ``out`` is the file
    (``….html``) or a folder to write ``report.html`` into. ``keep_faces_thumbnails``
    maps an id to a thumbnail (JPEG/PNG bytes, a path, or a BGR array); thumbnails are
    shown only when it is given. Written to a temporary name, then renamed. When the
    analysis has ``decode_gaps`` (stretches of corrupt video that were skipped), a notice
    at the top lists them.
    """
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        out = out / "report.html"
    rows = _row_source(analysis)
    info = dict(_attr(analysis, "info") or {})
    params = dict(_attr(analysis, "params") or {})
    models = dict(_attr(analysis, "models") or {})
    timings = dict(_attr(analysis, "timings") or {})
    video = str(_attr(analysis, "video", "") or "")
    aid = _attr(analysis, "id")
    fps = params.get("fps")
    smooth_n = max(1, int(smooth_s))
    cuts = [float(t) for t in (timings.get("shot_cuts") or []) if isinstance(t, (int, float))]

    # Pass 1 over the rows: the summary and the audience's per-second sums.
    columns = report_columns(models)
    acc = SummaryAccumulator(fps)
    everyone = PerSecond(int(math.ceil(float(info.get("duration_s") or 0.0))) + 1, columns=columns)
    for o in rows():
        acc.add(o)
        everyone.add(o)
    n_obs, last_t = everyone.count, everyone.last_t
    duration = float(info.get("duration_s") or 0.0) or last_t + (1 / fps if fps else 1.0)
    n_seconds = max(1, int(math.ceil(max(duration, last_t + 1e-6))))
    bin_s = max(1, math.ceil(n_seconds / MAX_POINTS))  # long videos: coarser lines, same page size
    summ = acc.rows()
    sec = everyone.arrays(n_seconds)
    ids = [r["id"] for r in summ]
    plotted = ids[:MAX_PEOPLE_LINES]
    thumbs = {str(k): _thumb_uri(v) for k, v in (keep_faces_thumbnails or {}).items()}
    pos_idx = top_moments(sec, "positive", top_k, moment_gap_s)
    neg_idx = top_moments(sec, "negative", top_k, moment_gap_s)

    # Pass 2: the plotted ids' per-second sums, and the rows of the few top-moment seconds.
    people_acc = {p: PerSecond(n_seconds, track_ids=False, bin_s=bin_s, columns=columns) for p in plotted}
    by_sec: dict[int, list[dict]] = {i: [] for i in (*pos_idx, *neg_idx)}
    if n_obs:
        for o in rows():
            if o["person"] in people_acc:
                people_acc[o["person"]].add(o)
            i = min(n_seconds - 1, int(o["time_s"]))
            if i in by_sec:
                by_sec[i].append(o)

    # headline cards
    mean_all = ({c: float(everyone.sums[:, i].sum() / n_obs) for i, c in enumerate(columns)} if n_obs else {})
    top_emotion = max(mean_all, key=mean_all.get) if mean_all else "—"
    peak_faces = int(np.max(sec["faces"])) if n_obs else 0
    cards = [
        (str(len(ids)), "ids seen (people and anonymous)"),
        (str(peak_faces), "most faces in one second"),
        (f"{top_emotion}", "most present emotion overall"),
        (_mmss(pos_idx[0]) if pos_idx else "—", "strongest positive moment"),
        (_mmss(neg_idx[0]) if neg_idx else "—", "strongest negative moment"),
        (f"{n_obs}", "face observations"),
    ]
    negative_sum = " + ".join(c for c in NEGATIVE if c in columns)
    if columns == COLUMNS:
        class_note = ("Model classes map to columns as calm = neutral, happy = happiness, surprised = surprise, "
                      "sad = sadness, angry = anger, disgusted = disgust; <em>confused</em> and <em>unknown</em> "
                      "have no model class.")
    else:
        class_note = (f"Scored by {html.escape(engine_of(models))}: its emotion types fill the columns directly; "
                      + ", ".join(f"<em>{c}</em>" for c in COLUMNS + ("confused", "unknown") if c not in columns)
                      + " it does not score.")
    cards_html = "".join(f"<div class='card'><div class='v'>{html.escape(v)}</div><div class='k'>{k}</div></div>"
                         for v, k in cards)

    smooth_bins = max(1, round(smooth_n / bin_s))
    if n_obs:
        timeline = _figure_html(_timeline_figure(everyone.arrays(n_seconds, bin_s), smooth_bins, duration, cuts, columns),
                                "timeline")
        series = {p: people_acc[p].arrays(n_seconds, bin_s) for p in plotted}
        people = _figure_html(_people_figure(series, plotted, smooth_bins, duration, columns), "people")
        if len(ids) > len(plotted):
            people += (f'<p class="note">The {len(plotted)} ids seen longest are drawn; the other '
                       f'{len(ids) - len(plotted)} are in the class summary below.</p>')
        attendance = _figure_html(_attendance_figure(summ), "attendance")
    else:
        timeline = people = attendance = '<p class="empty">no faces were found in this video</p>'
    resolution = (f"{bin_s}-second bins (the video is long), smoothed over {smooth_bins} bins" if bin_s > 1
                  else f"smoothed with a centred {smooth_n}-second moving average")

    name = info.get("name") or Path(video).name or "video"
    sub = " · ".join(x for x in [
        f"analysis {aid}" if aid is not None else "",
        f"{_mmss(duration)} of video",
        f"{info.get('width')}×{info.get('height')}" if info.get("width") else "",
        f"sampled at {fps:g} fps" if fps else "",
        f"report written {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}",
    ] if x)
    run_info = {"video": video, **{k: v for k, v in info.items() if k != "path"}}
    gaps_notice = decode_gaps_notice(_attr(analysis, "decode_gaps"), duration)
    cuts_note = "" if not cuts else (
        f" Dotted lines: the {len(cuts)} shot cut{'s' if len(cuts) > 1 else ''} found (no track crosses one)"
        + (f"; the first {MAX_CUT_MARKS} are drawn" if len(cuts) > MAX_CUT_MARKS else "") + ".")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>moodlens report – {html.escape(name)}</title>
<style>{_CSS}</style>
<script>{_BUNDLE}</script>
</head><body>
<header><h1>Audience emotions – {html.escape(name)}</h1><p>{html.escape(sub)}</p></header>
<main>
{gaps_notice}<div class="cards">{cards_html}</div>
<section><h2>Audience emotion timeline</h2>
<p class="note">Mean of each emotion over all faces seen in each second of video, {resolution};
gaps are seconds with no face. Below: how many faces were in view.{cuts_note}</p>
{timeline}</section>
<section><h2>Per person</h2>
<p class="note">One line per id (enrolled people and anonymous <code>unknown-n</code> tracks), same smoothing.
Pick the measure in the menu; click a legend entry to hide or show a person. {html.escape(DEFINITIONS)}</p>
{people}</section>
<div class="two">
<section><h2>Top positive moments</h2><p class="note">Seconds with the highest positive reaction
(happy + surprised), at least {moment_gap_s:g} s apart.</p>
{_moments_table(sec, pos_idx, "positive", "pos", by_sec)}</section>
<section><h2>Top negative moments</h2><p class="note">Seconds with the highest negative reaction
({negative_sum}), at least {moment_gap_s:g} s apart.</p>
{_moments_table(sec, neg_idx, "negative", "neg", by_sec)}</section>
</div>
<section><h2>Attendance</h2><p class="note">Seconds seen per id: observations ÷ sampling rate
({f"{fps:g} fps" if fps else "unknown"}).</p>
{attendance}</section>
<section><h2>Class summary</h2><p class="note">Per id: observations, seconds seen, and for each emotion its
mean score (0–100) with the sum of its scores below in grey – the same numbers as <code>summary.csv</code>. {class_note}</p>
{_summary_table(summ, thumbs, columns)}</section>
<section><h2>Run</h2><p class="note">Everything that produced these numbers.</p>
<div class="two"><div><h3>Parameters</h3>{_dl(params)}<h3>Models</h3>{_dl(models)}</div>
<div><h3>Video</h3>{_dl(run_info)}<h3>Timings (s)</h3>{_dl(timings)}</div></div></section>
</main>
<footer>Made with moodlens; charts by Plotly (MIT), inlined, no network access needed.
Emotion scores are model estimates of facial expressions, not of what people feel.</footer>
</body></html>
"""
    head, tail = page.split(_BUNDLE)

    def write(f) -> None:
        # The 4.6 MB bundle goes to the file as the bytes Plotly ships (what get_plotlyjs decodes):
        # as a str it would take up to 4 bytes a character, and the page a second copy.
        f.write(head)
        f.flush()
        f.buffer.write(pkgutil.get_data("plotly", "package_data/plotly.min.js"))
        f.write(tail)
    return atomic_write(out, write)


__all__ = ["COLUMNS", "DEFINITIONS", "NEGATIVE", "POSITIVE", "report_columns", "face_thumbnails", "per_second", "smooth", "top_moments",
           "write_report"]
