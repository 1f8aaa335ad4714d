"""``moodlens render``, ``moodlens report`` and ``moodlens query``, and the outputs that
``moodlens analyze --emoji-video --report`` adds.

Registered by ``moodlens.cli`` with :func:`register` (``register(app)``), and ``analyze``
calls :func:`write_outputs` after the tables. Shared pieces come from ``cli_common``. ``app`` here holds the same three commands for tests.
"""

from __future__ import annotations

import csv
import json
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
def render_analysis(analysis, out: Path, blur_unknown: bool = False, label: str = "emoji video",
                    progress=None) -> Path:
    """emoji.mp4 for a loaded analysis (the video must still be where it was analysed).
    ``progress(done, total)`` replaces the terminal's bar (a service job reports to its row)."""
    from moodlens.reports.emoji import render_emoji_video

    video = Path(analysis.video)
    if not video.is_file():
        raise MediaError(f"{video}: the analysed video is no longer there; cannot render analysis {analysis.id}")
    fps = (analysis.params or {}).get("fps")

    def render(report) -> Path:
        return render_emoji_video(video, analysis.iter_observations(), out, blur_unknown=blur_unknown,
                                  sample_interval_s=1.0 / fps if fps else None, progress=report)
    if progress is not None:
        return render(progress)
    with progress_bar() as bar:
        task = bar.add_task(label, total=1.0)
        return render(lambda done, total: bar.update(task, completed=min(done / total, 1.0) if total else 0))


def report_analysis(analysis, out: Path, keep_faces: bool = False) -> Path:
    """report.html for a loaded analysis; face thumbnails only with ``keep_faces``."""
    from moodlens.reports.html import face_thumbnails, write_report

    thumbs = face_thumbnails(analysis.video, analysis.iter_observations()) if keep_faces else None
    return write_report(analysis, out, keep_faces_thumbnails=thumbs)


def write_outputs(analysis, out: Path, *, tables: bool = True, emoji_video: bool = False, report: bool = False,
                  blur_unknown: bool = False, keep_faces: bool = False) -> dict[str, Path]:
    """What ``analyze [--emoji-video] [--report] [--blur-unknown] [--keep-faces]`` writes to ``out``.

    All files are written into a staging folder and moved into ``out`` together once
    every one is whole (:mod:`moodlens.outputs`): a failure leaves ``out`` as it was.
    """
    from moodlens.outputs import final_paths, staged, tables_into

    outputs: dict[str, Path] = {}
    with staged(out) as stage:
        if tables:
            outputs.update(tables_into(stage, analysis))
        if report:
            outputs["report.html"] = report_analysis(analysis, stage / "report.html", keep_faces)
        if emoji_video:
            outputs["emoji.mp4"] = render_analysis(analysis, stage / "emoji.mp4", blur_unknown)
    return final_paths(outputs, out)


def run_query(db: str, sql: str, timeout: float = 60.0) -> tuple[list[str], list[tuple]]:
    """Column names and rows of one read-only statement (see :mod:`moodlens.query`, whose
    ``open_query`` streams the rows instead of holding them); errors come back as one line."""
    from moodlens.query import run_query as _run

    return _run(db, sql, timeout=timeout)


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
    out_console.print(f"emoji.mp4: {path}", markup=False)
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
    out_console.print(f"report.html: {path}", markup=False)


TABLE_ROWS = 1000  # rows the on-screen table shows at most; --out, --json and a pipe get every row


def _write_csv(f, columns: list[str], rows) -> int:
    w = csv.writer(f)
    w.writerow(columns)
    n = 0
    for r in rows:
        w.writerow([_cell(v) for v in r])
        n += 1
    return n


def _write_jsonl(f, columns: list[str], rows) -> int:
    n = 0
    for r in rows:
        f.write(json.dumps(dict(zip(columns, map(_cell, r))), separators=(",", ":")) + "\n")
        n += 1
    return n


def _write_json(f, columns: list[str], rows) -> int:
    """A JSON array written a row at a time, laid out as ``json.dump(rows, f, indent=2)`` would."""
    n = 0
    for r in rows:
        item = json.dumps(dict(zip(columns, map(_cell, r))), indent=2).replace("\n", "\n  ")
        f.write(("[\n  " if n == 0 else ",\n  ") + item)
        n += 1
    f.write("\n]" if n else "[]")
    return n


_WRITERS = {".csv": _write_csv, ".jsonl": _write_jsonl, ".json": _write_json}


def _stdout_gone() -> None:
    """The reader of our pipe (head, less) stopped early: not an error; keep Python quiet at exit."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@app.command("query", epilog="""Examples:

  moodlens query "SELECT person, COUNT(*) AS n, AVG(happiness) AS happy FROM observations WHERE analysis_id = 3 GROUP BY person"

  moodlens query "SELECT id, status, video, observations FROM analyses ORDER BY id DESC" --out analyses.csv

  moodlens query "SELECT * FROM observations WHERE analysis_id = 3 AND anger > 50" --json

  moodlens query "SELECT * FROM observations" --out everything.jsonl --timeout 0     (a big export, no time limit)

The database is opened read-only (SQLite: mode=ro; PostgreSQL: a READ ONLY transaction): a statement
that would change anything is refused, whatever word it starts with. One statement per call. It stops
after --timeout seconds (default 60, rows included; 0 for no limit) or on Ctrl-C. Rows stream to --out,
--json and a pipe; the on-screen table shows the first 1,000. SQL that begins with a -- comment goes
after a lone --: moodlens query -- "-- note …".

Tables: analyses (id, video, status, params, models, …) and observations (analysis_id, seq, person,
frame, time_s, track, x, y, w, h, score, quality and the eight emotion scores in percent:
neutral, happiness, surprise, sadness, anger, disgust, fear, contempt).
""")
@friendly
def query(
    sql: Annotated[str, typer.Argument(help="One read-only SQL statement (SELECT, WITH …, VALUES, EXPLAIN, …).")],
    out: Annotated[Optional[Path], typer.Option(help="Write the result to a file: .csv, .json or .jsonl.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON on stdout.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0, help="Stop the statement after this many seconds, "
                                                                    "its rows included (0: no limit).")] = 60.0,
    db: DbOpt = DEFAULT_DB,
):
    """Run SQL over the analyses and their observations, read-only, and print or export the result."""
    from rich.text import Text

    from moodlens.atomic import atomic_write
    from moodlens.query import open_query

    writer = None
    if out is not None:
        writer = _WRITERS.get(out.suffix.lower())
        if writer is None:
            raise MoodlensError(f"{out}: unknown export format; use .csv, .json or .jsonl")
    with open_query(db, sql, timeout=timeout) as result:
        columns = result.columns
        if writer is not None:
            n = 0

            def write(f):
                nonlocal n
                n = writer(f, columns, result)
            try:
                atomic_write(out, write)
            except OSError as e:
                raise MoodlensError(f"{out}: cannot write the result ({e.strerror or e})") from None
            out_console.print(f"{n} rows: {out}", markup=False, highlight=False, soft_wrap=True)
            return
        try:
            if as_json:
                _write_json(sys.stdout, columns, result)
                sys.stdout.write("\n")
                sys.stdout.flush()
                return
            if not sys.stdout.isatty() and not out_console.is_terminal:
                _write_csv(sys.stdout, columns, result)  # piped: plain CSV, every row
                sys.stdout.flush()
                return
        except BrokenPipeError:
            _stdout_gone()
            return
        table = Table(show_lines=False)
        for c in columns:
            table.add_column(Text(c), overflow="fold")
        shown, more = 0, False
        for r in result:
            if shown == TABLE_ROWS:
                more = True
                break
            table.add_row(*(Text("" if v is None else str(v)) for v in map(_cell, r)))
            shown += 1
    out_console.print(table)
    if more:
        out_console.print(f"the first {TABLE_ROWS:,} rows; there are more: use --out FILE (.csv, .json, .jsonl) "
                          "or pipe the output for all of them", style="dim")
    else:
        out_console.print(f"{shown} rows", style="dim")


def register(main_app: typer.Typer) -> None:
    """Add render, report and query to the main ``moodlens`` app."""
    for info in app.registered_commands:
        main_app.registered_commands.append(info)


__all__ = ["app", "register", "render_analysis", "report_analysis", "run_query", "write_outputs"]
