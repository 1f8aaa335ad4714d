"""Peak memory of what follows a long analysis: the result, the exports and the report.

A 2-hour lecture with 30 faces at 2 fps is about 430,000 observation rows. The
pipeline streams (``pipeline_speed.py`` shows its memory flat against length); this
benchmark measures the part that used to load every row at the end. For a 10-minute
and a 2-hour synthetic analysis (30 people at 2 fps, written to SQLite the way
``analyze`` writes them, in 500-row batches), each in a fresh process:

* **analyze's end**: the models loaded as ``analyze`` loads them, then the returned
  ``Analysis``, its summary and track count, records.csv, records.jsonl, summary.csv and
  report.html, exactly as ``moodlens analyze --report`` does after the last frame;
* ``moodlens export ID --out DIR`` and ``moodlens report ID`` as commands;
* for comparison, loading every row into a list (what the three did before).

Target (issue 22): analyze's end for 2 hours at most 1.2x the 10-minute figure, and
under 700 MB.

    python benchmarks/long_analysis_memory.py [--faces 30] [--fps 2] [--minutes 10 120]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from _util import run_child

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

WRITE = """
import sys, time; sys.path.insert(0, {tests!r})
from test_outputs import synthetic_analysis
t = time.perf_counter()
aid = synthetic_analysis({db!r}, seconds={seconds}, faces={faces}, fps={fps})
RESULT = dict(aid=aid, write_s=time.perf_counter() - t)
"""

ANALYZE_END = """
import time
from pathlib import Path
from moodlens.faces.emotion import default_classifier
from moodlens.models import yunet_session
default_classifier(); yunet_session()  # what analyze holds while it writes its outputs
from moodlens.cli_reports import write_outputs
from moodlens.pipeline import load_analysis
t = time.perf_counter()
a = load_analysis({aid}, {db!r})
outputs = write_outputs(a, Path({out!r}), report=True)
summary, tracks = a.summary, a.n_tracks
RESULT = dict(s=time.perf_counter() - t, rows=a.n_observations, ids=len(summary), tracks=tracks,
              report_mb=Path(outputs["report.html"]).stat().st_size / 1e6)
"""

COMMAND = """
import time
from moodlens.cli import app
t = time.perf_counter()
try:
    app({args!r}, standalone_mode=False)
except SystemExit:
    pass
RESULT = dict(s=time.perf_counter() - t)
"""

LOAD_ALL = """
import time
from moodlens.store import Store
t = time.perf_counter()
rows = Store({db!r}).observations({aid})
RESULT = dict(s=time.perf_counter() - t, rows=len(rows))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=30)
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 120])
    args = ap.parse_args()
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    console = Console(width=200)
    t = Table(title=f"peak RSS after an analysis: {args.faces} faces at {args.fps:g} fps, SQLite, 2-core CPU")
    for c in ("video", "rows", "write s", "analyze's end MB", "s", "export MB", "s", "report MB", "s",
              "report.html MB", "all rows in a list MB", "s"):
        t.add_column(c, justify="right")
    peaks = {}
    with tempfile.TemporaryDirectory() as d:
        for minutes in args.minutes:
            db = f"sqlite:///{d}/m{minutes:g}.db"
            w = run_child(WRITE.format(tests=tests, db=db, seconds=int(minutes * 60), faces=args.faces, fps=args.fps))
            aid = w["aid"]
            end = run_child(ANALYZE_END.format(aid=aid, db=db, out=f"{d}/out{minutes:g}"))
            exp = run_child(COMMAND.format(args=["export", str(aid), "--out", f"{d}/exp{minutes:g}", "--db", db]))
            rep = run_child(COMMAND.format(args=["report", str(aid), "--out", f"{d}/rep{minutes:g}.html", "--db", db]))
            old = run_child(LOAD_ALL.format(aid=aid, db=db))
            peaks[minutes] = end["rss_mb"]
            t.add_row(f"{minutes:g} min", f"{end['rows']:,}", f"{w['write_s']:.1f}", f"{end['rss_mb']:.0f}",
                      f"{end['s']:.1f}", f"{exp['rss_mb']:.0f}", f"{exp['s']:.1f}", f"{rep['rss_mb']:.0f}",
                      f"{rep['s']:.1f}", f"{end['report_mb']:.1f}", f"{old['rss_mb']:.0f}", f"{old['s']:.1f}")
    console.print(t)
    lo, hi = min(peaks), max(peaks)
    console.print(f"analyze's end, {hi:g} min / {lo:g} min: {peaks[hi] / peaks[lo]:.2f}x (target <= 1.2x); "
                  f"{hi:g} min: {peaks[hi]:.0f} MB (target < 700 MB)")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
