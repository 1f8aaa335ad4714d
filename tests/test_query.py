"""``moodlens query``: read-only by the connection (SQLite mode=ro, PostgreSQL READ ONLY),
a statement timeout, Ctrl-C, streamed rows, no password in messages."""

from __future__ import annotations

import csv
import io
import json
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

FOREVER = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c"


def _invoke(*args):
    from typer.testing import CliRunner

    from moodlens.cli_reports import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _obs(i: int) -> dict:
    return {"seq": f"clip/{i}", "person": "alice" if i % 2 else "bob", "frame": i, "time_s": i / 2, "track": i % 2,
            "x": 1.0, "y": 2.0, "w": 30.0, "h": 30.0, "score": 0.9, "quality": 0.8, "neutral": 50.0,
            "happiness": 40.0 + i, "surprise": 1.0, "sadness": 2.0, "anger": 3.0, "disgust": 1.0, "fear": 2.0,
            "contempt": 1.0, "landmarks": None}


def _fill(url: str) -> int:
    from moodlens.store import Store

    store = Store(url)
    aid = store.create_analysis("clip.mp4", {"fps": 2.0}, {"emotion": "test"}, {"width": 640})
    store.add_observations(aid, [_obs(i) for i in range(6)])
    store.finish(aid, frames=6, timings={"total": 1.0})
    store.engine.dispose()
    return aid


@pytest.fixture
def db(tmp_path):
    """An SQLite database holding one complete analysis (id 1) of six observations."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    _fill(url)
    return url


def _snapshot(url: str) -> tuple[str, list[str]]:
    """Everything in the database (schema, rows, user_version) and the files beside it."""
    path = Path(url.removeprefix("sqlite:///"))
    c = sqlite3.connect(path)
    try:
        dump = "\n".join(c.iterdump()) + f"\nuser_version={c.execute('PRAGMA user_version').fetchone()[0]}"
    finally:
        c.close()
    files = sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(("-wal", "-shm")))
    return dump, files


# -- read-only on SQLite ----------------------------------------------------------------------
WRITES = [
    "WITH x AS (SELECT 1) UPDATE analyses SET status='failed' WHERE id=1",
    "WITH x AS (SELECT 1) UPDATE analyses SET status='failed' WHERE id=1 RETURNING id",
    "WITH x AS (SELECT 2) INSERT INTO analyses (video, status, params, models, video_info, timings, frames, "
    "observations, started_at) SELECT 'v', 'complete', '{}', '{}', '{}', '{}', 0, 0, '2020-01-01' FROM x RETURNING id",
    "WITH x AS (SELECT 1) DELETE FROM observations WHERE analysis_id IN (SELECT * FROM x)",
    "UPDATE analyses SET status='failed'",
    "INSERT INTO analyses (video) VALUES ('v')",
    "DELETE FROM observations",
    "CREATE TABLE t (x)",
    "CREATE TEMP TABLE t (x)",
    "DROP TABLE observations",
    "ATTACH 'other.db' AS o",
    "PRAGMA user_version = 5",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA query_only = OFF",
    "VACUUM",
    "VACUUM INTO 'copy.db'",
    "REINDEX",
    "ANALYZE",
]


@pytest.mark.parametrize("sql", WRITES)
def test_sqlite_writes_are_refused_and_change_nothing(db, tmp_path, monkeypatch, sql):
    monkeypatch.chdir(tmp_path)  # where ATTACH 'other.db' / VACUUM INTO 'copy.db' would create a file
    before = _snapshot(db)
    r = _invoke("query", sql, "--db", db)
    assert r.exit_code == 2, r.output
    assert "query: the database is opened read-only" in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert _snapshot(db) == before
    assert not (tmp_path / "other.db").exists() and not (tmp_path / "copy.db").exists()


def test_sqlite_with_update_names_the_sqlite_error(db):
    r = _invoke("query", "WITH x AS (SELECT 1) UPDATE analyses SET status='failed' WHERE id=1", "--db", db)
    assert "(attempt to write a readonly database)" in r.output, r.output
    assert _invoke("query", "SELECT status FROM analyses WHERE id = 1", "--db", db).output.splitlines() == [
        "status", "complete"]


def test_missing_sqlite_file_is_not_created(tmp_path):
    for path in (tmp_path / "none.db", tmp_path / "sub" / "none.db"):
        r = _invoke("query", "SELECT 1", "--db", f"sqlite:///{path}")
        assert r.exit_code == 2 and f"sqlite:///{path}: no such database file" in r.output, r.output
        assert "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


def test_not_a_database_is_one_line(tmp_path):
    (tmp_path / "text.db").write_text("hello\n" * 100)
    r = _invoke("query", "SELECT 1", "--db", f"sqlite:///{tmp_path / 'text.db'}")
    assert r.exit_code == 2 and "not an SQLite database" in r.output and "Traceback" not in r.output, r.output


# -- the statement's text is not judged: valid reads pass ---------------------------------------
@pytest.mark.parametrize("sql, first", [
    ("SELECT 'a;b' AS s", "a;b"),
    ("/* c */ SELECT 1 AS one", "1"),
    ("-- c\nSELECT 1 AS one", "1"),
    ("SELECT 1 AS one;", "1"),
    ("SELECT 1 AS one; -- done", "1"),
    ("  select '12:30' AS t  ", "12:30"),
    ("VALUES (7)", "7"),
    ("EXPLAIN QUERY PLAN SELECT * FROM analyses", None),
    ("EXPLAIN SELECT 1", None),
    ("PRAGMA table_info(analyses)", "0,id,INTEGER,1,,1"),
    ("SELECT name FROM pragma_table_info('analyses') LIMIT 1", "id"),
    ("PRAGMA user_version", "0"),
    ("WITH x AS (SELECT person FROM observations) SELECT COUNT(*) AS n FROM x", "6"),
])
def test_valid_reads_are_accepted(db, sql, first):
    r = _invoke("query", "--db", db, "--", sql)  # "--": SQL that starts with "--" is not an option
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) >= 2
    if first is not None:
        assert lines[1] == first


def test_several_statements_are_refused(db):
    before = _snapshot(db)
    for sql in ("SELECT 1; DROP TABLE analyses", "SELECT 1; SELECT 2"):
        r = _invoke("query", sql, "--db", db)
        assert r.exit_code == 2 and "one read-only statement at a time" in r.output, r.output
    assert _snapshot(db) == before


def test_statement_without_rows_and_empty_sql(db):
    for sql, msg in (("-- nothing", "returns no rows"), ("   ", "empty SQL"), ("BEGIN", "returns no rows")):
        r = _invoke("query", "--db", db, "--", sql)
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, (sql, r.output)


# -- timeout and Ctrl-C -----------------------------------------------------------------------
def test_timeout_stops_a_runaway_query(db):
    t = time.monotonic()
    r = _invoke("query", FOREVER, "--db", db, "--timeout", 1)
    took = time.monotonic() - t
    assert r.exit_code == 2, r.output
    assert r.output.strip() == "error: query: stopped after 1 s (--timeout 1)", r.output
    assert 0.9 < took < 5, took


def test_timeout_option_values(db):
    assert _invoke("query", "SELECT 1", "--db", db, "--timeout", 0).exit_code == 0  # 0: no limit
    assert _invoke("query", "SELECT 1", "--db", db, "--timeout", 0.5).exit_code == 0
    for bad in ("-1", "nan", "inf", "soon"):
        r = _invoke("query", "SELECT 1", "--db", db, "--timeout", bad)
        assert r.exit_code == 2 and "Traceback" not in r.output, (bad, r.output)


_CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # even where the parent ignores SIGINT
from moodlens.cli import app
print("ready", file=sys.stderr, flush=True)
app(["query", sys.argv[1], "--db", sys.argv[2], "--timeout", "0"], prog_name="moodlens")
"""


def _ctrl_c(url: str) -> tuple[int, float, str]:
    """Start ``moodlens query FOREVER --timeout 0``, press Ctrl-C once it runs: (exit status, seconds, stderr)."""
    p = subprocess.Popen([sys.executable, "-c", _CHILD, FOREVER, url], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr.readline().strip() == "ready"
        time.sleep(1.5)  # into the statement
        t = time.monotonic()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        return p.returncode, time.monotonic() - t, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_ctrl_c_stops_a_runaway_query_sqlite(db):
    rc, took, err = _ctrl_c(db)
    assert rc == 130 and "interrupted" in err and "Traceback" not in err, (rc, err)
    assert took < 10, took


def test_broken_pipe_is_quiet(tmp_path):
    """``moodlens query … | head -1``: the reader leaves; no traceback, no error status."""
    db = f"sqlite:///{tmp_path / 'm.db'}"
    _fill(db)
    sql = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 2000000) SELECT x FROM c"
    p = subprocess.Popen([sys.executable, "-m", "moodlens.cli", "query", sql, "--db", db],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"x\r\n"
    p.stdout.close()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0 and b"Traceback" not in err, (p.returncode, err[-500:])


# -- streaming --------------------------------------------------------------------------------
N = 20_000
GEN = (f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < {N}) "
       "SELECT x AS n, x / 3.0 AS third, 'p' || x AS name, NULL AS empty FROM c")


def _expected(i: int) -> dict:
    return {"n": i, "third": round(i / 3.0, 4), "name": f"p{i}", "empty": None}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json"])
def test_export_writes_every_row(db, tmp_path, suffix):
    out = tmp_path / f"q{suffix}"
    r = _invoke("query", GEN, "--db", db, "--out", out)
    assert r.exit_code == 0 and f"{N} rows: {out}" in r.output, r.output
    text = out.read_text(encoding="utf-8")
    if suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert rows[0] == {"n": "1", "third": "0.3333", "name": "p1", "empty": ""}
        assert len(rows) == N and rows[-1]["n"] == str(N)
    else:
        rows = [json.loads(line) for line in text.splitlines()] if suffix == ".jsonl" else json.loads(text)
        assert rows == [_expected(i) for i in range(1, N + 1)]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_json_on_stdout_and_piped_csv_stream_every_row(db):
    r = _invoke("query", GEN, "--db", db, "--json")
    assert r.exit_code == 0 and json.loads(r.output) == [_expected(i) for i in range(1, N + 1)]
    r = _invoke("query", GEN, "--db", db)
    rows = list(csv.reader(io.StringIO(r.output)))
    assert rows[0] == ["n", "third", "name", "empty"] and len(rows) == N + 1 and rows[-1][0] == str(N)
    r = _invoke("query", "SELECT 1 AS a WHERE 0", "--db", db, "--json")
    assert r.exit_code == 0 and json.loads(r.output) == []
    r = _invoke("query", "SELECT 1 AS a, 2 AS b WHERE 0", "--db", db)
    assert r.output.splitlines() == ["a,b"]


def test_export_memory_does_not_grow_with_rows(db, tmp_path):
    """A 100k-row export holds a batch, not the result: the old code held every row twice (tens of MB)."""
    n = 100_000
    sql = GEN.replace(str(N), str(n))
    tracemalloc.start()
    try:
        r = _invoke("query", sql, "--db", db, "--out", tmp_path / "big.csv")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.exit_code == 0, r.output
    assert sum(1 for _ in open(tmp_path / "big.csv")) == n + 1
    assert peak < 8e6, f"peak {peak / 1e6:.1f} MB"


def test_failed_export_leaves_the_old_file(db, tmp_path):
    out = tmp_path / "q.csv"
    out.write_text("old\n")
    r = _invoke("query", FOREVER.replace("count(*)", "x"), "--db", db, "--out", out, "--timeout", 1)
    assert r.exit_code == 2 and "stopped after 1 s" in r.output, r.output
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == ["m.db", "q.csv"]
    r = _invoke("query", "SELECT 1", "--db", db, "--out", tmp_path / "q.txt")
    assert r.exit_code == 2 and "unknown export format" in r.output


def test_screen_table_is_capped(db, monkeypatch):
    from rich.console import Console

    import moodlens.cli_reports as cr

    buf = io.StringIO()
    monkeypatch.setattr(cr, "out_console", Console(file=buf, force_terminal=True, width=120, color_system=None))
    r = _invoke("query", GEN.replace(str(N), "5000"), "--db", db)
    assert r.exit_code == 0, r.output
    text = buf.getvalue()
    assert "p1000 " in text and "p1001 " not in text and "there are more: use --out" in text
    buf.truncate(0)
    buf.seek(0)
    r = _invoke("query", "SELECT '[bold red]x[/]' AS name", "--db", db)
    assert "[bold red]x[/]" in buf.getvalue() and "1 rows" in buf.getvalue()  # markup shown as typed


def test_python_api_streams_and_closes(db):
    from moodlens.cli_reports import run_query as cli_run_query
    from moodlens.query import open_query, run_query

    assert run_query(db, "SELECT id, status FROM analyses") == (["id", "status"], [(1, "complete")])
    assert cli_run_query(db, "SELECT COUNT(*) AS n FROM observations") == (["n"], [(6,)])
    t = time.monotonic()
    with open_query(db, FOREVER.replace("count(*)", "x"), timeout=30) as result:  # endless: only a stream can end
        assert result.columns == ["x"]
        first = [row for _, row in zip(range(5), result)]
    assert first == [(1,), (2,), (3,), (4,), (5,)] and time.monotonic() - t < 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


# -- passwords ---------------------------------------------------------------------------------
def test_password_is_never_shown(tmp_path):
    for url in (f"postgresql+psycopg://ann:s3cret@/moodlens?host={tmp_path}/nowhere",
                "mysql://ann:s3cret@localhost/moodlens", "ann:s3cret at localhost"):
        r = _invoke("query", "SELECT 1", "--db", url)
        assert r.exit_code == 2 and "s3cret" not in r.output and "Traceback" not in r.output, r.output
    r = _invoke("query", "SELECT 1", "--db", f"postgresql+psycopg://ann:s3cret@/moodlens?host={tmp_path}/nowhere")
    assert "ann:***@" in r.output and "cannot open database" in r.output, r.output
    from moodlens.query import masked

    assert masked("postgresql+psycopg://ann:s3cret@db.example/moodlens") == \
        "postgresql+psycopg://ann:***@db.example/moodlens"
    assert "s3cret" not in masked("postgresql+psycopg://ann@db.example/moodlens?password=s3cret")


# -- PostgreSQL ---------------------------------------------------------------------------------
def _pg_status(url: str) -> list[tuple]:
    from sqlalchemy import create_engine, text

    e = create_engine(url)
    try:
        with e.connect() as c:
            return [tuple(r) for r in c.execute(text(
                "SELECT id, status, (SELECT count(*) FROM observations) FROM analyses ORDER BY id"))]
    finally:
        e.dispose()


def test_postgres_writes_are_refused_and_rolled_back(pg_url):
    _fill(pg_url)
    before = _pg_status(pg_url)
    assert before == [(1, "complete", 6)]
    for sql in ("WITH x AS (SELECT 1) UPDATE analyses SET status='failed' WHERE id=1 RETURNING id",
                "WITH x AS (SELECT 1) DELETE FROM observations RETURNING id",
                "SELECT nextval('analyses_id_seq')",
                "EXPLAIN ANALYZE DELETE FROM observations"):
        r = _invoke("query", sql, "--db", pg_url)
        assert r.exit_code == 2 and "query: the database is opened read-only" in r.output, (sql, r.output)
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    for sql in ("WITH x AS (SELECT 1) UPDATE analyses SET status='failed' WHERE id=1", "DELETE FROM observations",
                "UPDATE analyses SET status='failed'", "CREATE TABLE t (x int)",
                "SET transaction_read_only = off", "COMMIT", "COPY analyses TO STDOUT",
                "DO $$ BEGIN UPDATE analyses SET status = 'x'; END $$"):  # no rows: refused before it runs
        r = _invoke("query", sql, "--db", pg_url)
        assert r.exit_code == 2 and "returns no rows" in r.output, (sql, r.output)
    r = _invoke("query", "SELECT 1; UPDATE analyses SET status='failed'", "--db", pg_url)
    assert r.exit_code == 2 and "one read-only statement at a time" in r.output, r.output
    assert _pg_status(pg_url) == before


def test_postgres_reads_and_statement_timeout(pg_url):
    _fill(pg_url)
    for sql, lines in (("SELECT 'a;b' AS s, '50%' AS p, ':x' AS c", ["s,p,c", "a;b,50%,:x"]),
                       ("/* c */ SELECT 1 AS one;", ["one", "1"]),
                       ("SELECT id FROM analyses WHERE false", ["id"]),
                       ("VALUES (1)", ["column1", "1"])):
        r = _invoke("query", sql, "--db", pg_url)
        assert r.exit_code == 0 and r.output.splitlines() == lines, (sql, r.output)
    assert _invoke("query", "EXPLAIN SELECT * FROM analyses", "--db", pg_url).exit_code == 0
    t = time.monotonic()
    r = _invoke("query", FOREVER, "--db", pg_url, "--timeout", 1)
    took = time.monotonic() - t
    assert r.exit_code == 2 and r.output.strip() == "error: query: stopped after 1 s (--timeout 1)", r.output
    assert 0.9 < took < 5, took
    from moodlens.query import open_query

    t = time.monotonic()
    with open_query(pg_url, "SELECT generate_series(1, 1000000000) AS n") as result:  # streamed, then cancelled
        assert result.columns == ["n"] and [r for _, r in zip(range(3), result)] == [(1,), (2,), (3,)]
    assert time.monotonic() - t < 10


def test_ctrl_c_stops_a_runaway_query_postgres(pg_url):
    _fill(pg_url)
    rc, took, err = _ctrl_c(pg_url)
    assert rc == 130 and "interrupted" in err and "Traceback" not in err, (rc, err)
    assert took < 10, took
    from moodlens.query import run_query

    active = run_query(pg_url, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                               "AND datname = current_database() AND pid <> pg_backend_pid()")[1]
    assert active == [(0,)]  # the server stopped it too
