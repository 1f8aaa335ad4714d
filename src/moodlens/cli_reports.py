"""``moodlens render``, ``moodlens report`` and ``moodlens query``, and the outputs that
``moodlens analyze --emoji-video --report`` adds.

Registered by ``moodlens.cli`` with :func:`register` (``register(app)``), and ``analyze``
calls :func:`write_outputs` after the tables. Shared pieces come from ``cli_common``. ``app`` here holds the same three commands for tests.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from moodlens.cli_common import DbOpt, err_console, friendly, out_console, progress_bar
from moodlens.errors import MediaError, MoodlensError
from moodlens.store import DEFAULT_DB

app = typer.Typer(help="Reports from stored analyses.", no_args_is_help=True, rich_markup_mode="markdown",
                  pretty_exceptions_enable=False)

def default_out(analysis) -> Path:
    """``moodlens-out/<video stem>-<analysis id>``, as ``analyze`` uses."""
    return Path("moodlens-out") / f"{Path(analysis.video).stem}-{analysis.id}"


# -- the work, shared by analyze and the commands ------------------------------------------
def render_analysis(analysis, out: Path, blur_unknown: bool = False, label: str = "emoji video") -> Path:
    """emoji.mp4 for a loaded analysis (the video must still be where it was analysed)."""
    from moodlens.reports.emoji import render_emoji_video

    video = Path(analysis.video)
    if not video.is_file():
        raise MediaError(f"{video}: the analysed video is no longer there; cannot render analysis {analysis.id}")
    fps = (analysis.params or {}).get("fps")
    with progress_bar() as bar:
        task = bar.add_task(label, total=1.0)
        return render_emoji_video(video, analysis.observations, out, blur_unknown=blur_unknown,
                                  sample_interval_s=1.0 / fps if fps else None,
                                  progress=lambda done, total: bar.update(
                                      task, completed=min(done / total, 1.0) if total else 0))


def report_analysis(analysis, out: Path, keep_faces: bool = False) -> Path:
    """report.html for a loaded analysis; face thumbnails only with ``keep_faces``."""
    from moodlens.reports.html import face_thumbnails, write_report

    thumbs = face_thumbnails(analysis.video, analysis.observations) if keep_faces else None
    return write_report(analysis, out, keep_faces_thumbnails=thumbs)


def write_outputs(analysis, out: Path, *, emoji_video: bool = False, report: bool = False,
                  blur_unknown: bool = False, keep_faces: bool = False) -> dict[str, Path]:
    """What ``analyze --emoji-video --report [--blur-unknown] [--keep-faces]`` adds to ``out``."""
    outputs: dict[str, Path] = {}
    if report:
        outputs["report.html"] = report_analysis(analysis, out / "report.html", keep_faces)
    if emoji_video:
        outputs["emoji.mp4"] = render_analysis(analysis, out / "emoji.mp4", blur_unknown)
    return outputs


_READ_ONLY = re.compile(r"^\s*(select|with|explain|values)\b", re.I)


def run_query(db: str, sql: str) -> tuple[list[str], list[tuple]]:
    """Run one read-only statement (SELECT / WITH …); errors come back as one line."""
    from sqlalchemy.exc import SQLAlchemyError

    from moodlens.store import Store

    body = sql.strip().rstrip(";").strip()
    if not body:
        raise MoodlensError("query: empty SQL")
    if ";" in body or not _READ_ONLY.match(body):
        raise MoodlensError("query runs one read-only statement (SELECT or WITH …); "
                            "use the database's own tools to change data")
    try:
        return Store(db).query(body)
    except SQLAlchemyError as e:
        msg = str(getattr(e, "orig", None) or e).splitlines()[0]
        raise MoodlensError(f"query failed: {msg}") from None


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if v is None or isinstance(v, (int, str, bool)):
        return v
    return str(v)


# -- commands ------------------------------------------------------------------------------
@app.command("render", epilog="""Examples:

  moodlens render 3

  moodlens render 3 --blur-unknown --out results/talk-emoji.mp4

  moodlens render 3 --db sqlite:///out/demo/moodlens.db
""")
@friendly
def render(
    analysis_id: Annotated[int, typer.Argument(help="A complete analysis (see `moodlens analyses`).")],
    out: Annotated[Optional[Path], typer.Option(
        help="Output file [default: moodlens-out/<video>-<id>/emoji.mp4].")] = None,
    blur_unknown: Annotated[bool, typer.Option("--blur-unknown", help="Blur faces without an enrolled identity "
                                                                      "instead of drawing their emoji.")] = False,
    db: DbOpt = DEFAULT_DB,
):
    """Write emoji.mp4: every frame of the video, each face covered by the emoji of its dominant
    emotion and labelled with its id, with the original sound (copied, not re-encoded)."""
    from moodlens.pipeline import load_analysis
    from moodlens.reports.emoji import ATTRIBUTION

    a = load_analysis(analysis_id, db)
    path = render_analysis(a, out or default_out(a) / "emoji.mp4", blur_unknown)
    out_console.print(f"emoji.mp4: {path}")
    err_console.print(ATTRIBUTION, style="dim", highlight=False)


@app.command("report", epilog="""Examples:

  moodlens report 3

  moodlens report 3 --out results/talk.html --keep-faces
""")
@friendly
def report(
    analysis_id: Annotated[int, typer.Argument(help="A complete analysis (see `moodlens analyses`).")],
    out: Annotated[Optional[Path], typer.Option(help="Output file or folder "
                                                     "[default: moodlens-out/<video>-<id>/report.html].")] = None,
    keep_faces: Annotated[bool, typer.Option("--keep-faces", help="Show a face thumbnail per id (read back from "
                                                                  "the video); without it the page holds no faces.")] = False,
    db: DbOpt = DEFAULT_DB,
):
    """Write report.html: one self-contained offline page with the audience timeline, each person's
    line, attendance, the class summary, the strongest moments, and the run's parameters."""
    from moodlens.pipeline import load_analysis

    a = load_analysis(analysis_id, db)
    path = report_analysis(a, out or default_out(a) / "report.html", keep_faces)
    out_console.print(f"report.html: {path}")


@app.command("query", epilog="""Examples:

  moodlens query "SELECT person, COUNT(*) AS n, AVG(happiness) AS happy FROM observations WHERE analysis_id = 3 GROUP BY person"

  moodlens query "SELECT id, status, video, observations FROM analyses ORDER BY id DESC" --out analyses.csv

  moodlens query "SELECT * FROM observations WHERE analysis_id = 3 AND anger > 50" --json

Tables: analyses (id, video, status, params, models, …) and observations (analysis_id, seq, person,
frame, time_s, track, x, y, w, h, score, quality and the eight emotion scores in percent:
neutral, happiness, surprise, sadness, anger, disgust, fear, contempt).
""")
@friendly
def query(
    sql: Annotated[str, typer.Argument(help="One read-only SQL statement (SELECT or WITH …).")],
    out: Annotated[Optional[Path], typer.Option(help="Write the result to a file: .csv, .json or .jsonl.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON on stdout.")] = False,
    db: DbOpt = DEFAULT_DB,
):
    """Run SQL over the analyses and their observations, and print or export the result."""
    from moodlens.reports.tables import write_csv, write_jsonl

    columns, rows = run_query(db, sql)
    records = [dict(zip(columns, map(_cell, r))) for r in rows]
    if out is not None:
        suffix = out.suffix.lower()
        if suffix == ".csv":
            write_csv(out, columns, records)
        elif suffix == ".jsonl":
            write_jsonl(out, records)
        elif suffix == ".json":
            from moodlens.atomic import atomic_write
            atomic_write(out, lambda f: json.dump(records, f, indent=2))
        else:
            raise MoodlensError(f"{out}: unknown export format; use .csv, .json or .jsonl")
        out_console.print(f"{len(records)} rows: {out}")
        return
    if as_json:
        print(json.dumps(records, indent=2))
        return
    if not sys.stdout.isatty() and not out_console.is_terminal:
        w = csv.writer(sys.stdout)  # piped: plain CSV, nothing cut
        w.writerow(columns)
        w.writerows([[r[c] for c in columns] for r in records])
        return
    table = Table(show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in records:
        table.add_row(*("" if r[c] is None else str(r[c]) for c in columns))
    out_console.print(table)
    out_console.print(f"{len(records)} rows", style="dim")


def register(main_app: typer.Typer) -> None:
    """Add render, report and query to the main ``moodlens`` app."""
    for info in app.registered_commands:
        main_app.registered_commands.append(info)


__all__ = ["app", "register", "render_analysis", "report_analysis", "run_query", "write_outputs"]
