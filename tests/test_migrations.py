"""Schema migrations: an upgrade from the pre-migration schema keeps every row, concurrent
first opens do not race, the migrated schema equals the models, and the view of complete
analyses' rows (issue 22, items 6 and 7)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from moodlens import migrations
from moodlens.errors import MoodlensError
from moodlens.store import COMPLETE, Store

DATA = Path(__file__).parent / "data"
TABLES = ("analyses", "observations", "collections", "persons", "face_embeddings")
CLI = [sys.executable, "-c", "from moodlens.cli import app; app()"]
EMO = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")


# -- helpers ------------------------------------------------------------------------------------
def _v0_rows() -> dict[str, list[dict]]:
    """Rows as the pre-migration code wrote them: a complete and a failed analysis, a collection."""
    t = "2025-01-02 03:04:05.000000"
    analyses = [
        dict(id=1, video="lecture.mp4", video_sha256="a" * 64, status="complete", params='{"fps": 2.0}',
             models='{"emotion": "x"}', video_info='{"fps": 25}', timings='{"total_s": 1.5}', frames=4,
             observations=3, error=None, host="h", pid=1, started_at=t, finished_at=t),
        dict(id=2, video="broken.mp4", video_sha256=None, status="failed", params="{}", models="{}",
             video_info="{}", timings="{}", frames=0, observations=0, error="decode error", host="h", pid=2,
             started_at=t, finished_at=t),
    ]
    obs = []
    for i, aid in enumerate((1, 1, 1, 2, 2), start=1):
        obs.append(dict(id=i, analysis_id=aid, seq=f"v/{i}", person=f"unknown-{i % 2 + 1}", frame=i, time_s=i / 2,
                        track=i % 2, x=1.0, y=2.0, w=30.0, h=40.0, score=0.9, quality=0.8,
                        **{e: 12.5 for e in EMO}, landmarks=json.dumps([[1, 2]] * 5)))
    return {
        "analyses": analyses,
        "observations": obs,
        "collections": [dict(id=1, name="class-a", created_at=t)],
        "persons": [dict(id=1, collection_id=1, person="ada", created_at=t)],
        "face_embeddings": [dict(id=1, collection_id=1, person_id=1, model="sface", embedding=b"\x00\x01" * 256,
                                 image_sha256="b" * 64, source_path="/p/ada.jpg", quality=0.7, face_jpeg=None,
                                 created_at=t)],
    }


def _insert(conn, rows: dict[str, list[dict]]) -> None:
    for table in TABLES:
        for r in rows[table]:
            cols = ", ".join(r)
            conn.execute(text(f"INSERT INTO {table} ({cols}) VALUES ({', '.join(':' + c for c in r)})"), r)


def _dump(url: str) -> dict[str, list[tuple]]:
    """Every row of the v0 tables (v0 columns only), for before/after comparison."""
    names = {t: list(rows[0]) for t, rows in _v0_rows().items()}
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return {t: [tuple(r) for r in c.execute(text(f"SELECT {', '.join(cols)} FROM {t} ORDER BY id"))]
                    for t, cols in names.items()}
    finally:
        engine.dispose()


def _sqlite_v0(path: Path, tables: tuple[str, ...] = TABLES) -> str:
    """A SQLite file with the pre-migration schema (tests/data/schema_v0.sql) and rows."""
    ddl = "\n".join(line for line in (DATA / "schema_v0.sql").read_text().splitlines()
                    if not line.startswith("--"))
    con = sqlite3.connect(path)
    for statement in filter(str.strip, ddl.split(";")):
        words = statement.split()  # CREATE TABLE name ( ... | CREATE INDEX ix ON name (...)
        target = words[2] if words[1] == "TABLE" else words[words.index("ON") + 1]
        if target in tables:
            con.execute(statement)
    con.commit()
    con.close()
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    with engine.begin() as c:
        _insert(c, {t: (r if t in tables else []) for t, r in _v0_rows().items()})
    engine.dispose()
    return url


def _version(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return [r[0] for r in c.execute(text("SELECT version_num FROM alembic_version"))]
    finally:
        engine.dispose()


def _check_head(url: str) -> None:
    assert _version(url) == [migrations.HEAD]
    engine = create_engine(url)
    try:
        insp = inspect(engine)
        assert "decode_gaps" in {c["name"] for c in insp.get_columns("analyses")}
        assert "complete_observations" in insp.get_view_names()
        assert set(TABLES) <= set(insp.get_table_names())
    finally:
        engine.dispose()


def _no_diff(url: str) -> None:
    """The models' metadata and the migrated schema agree (Alembic autogenerate finds nothing)."""
    import moodlens.collections  # noqa: F401 - the collection tables on Base
    import moodlens.service.tables  # noqa: F401 - and the service's
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from moodlens.store import Base

    engine = create_engine(url)
    try:
        with engine.connect() as c:
            diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def _view_rows(store: Store) -> list[tuple]:
    with store.engine.connect() as c:
        return [tuple(r) for r in c.execute(text(
            "SELECT analysis_id, video, count(*) FROM complete_observations GROUP BY analysis_id, video"))]


def _complete_and_failed(store: Store) -> tuple[int, int]:
    row = {"seq": "v/0", "person": "unknown-1", "frame": 0, "time_s": 0.0, "track": 1, "x": 0.0, "y": 0.0, "w": 9.0,
           "h": 9.0, "score": 0.9, "quality": 0.5, "landmarks": None, **{e: 12.5 for e in EMO}}
    ok = store.create_analysis("ok.mp4", {}, {}, {})
    store.add_observations(ok, [row, {**row, "frame": 1}])
    store.finish(ok, 2, {}, decode_gaps=[{"start_s": 1.0, "end_s": 2.0, "frames": 3}])
    bad = store.create_analysis("bad.mp4", {}, {}, {})
    store.add_observations(bad, [row, row, row])
    store.fail(bad, "killed")
    return ok, bad


def _race(argvs: list[list[str]]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argvs]
    out = []
    for p, a in zip(procs, argvs):
        so, se = p.communicate(timeout=180)
        out.append(subprocess.CompletedProcess(a, p.returncode, so, se))
    return out


def _assert_all_ok(results: list[subprocess.CompletedProcess]) -> None:
    bad = [(r.returncode, r.stderr.strip()[-300:]) for r in results if r.returncode != 0]
    assert not bad, bad


def _threads_open(url: str, n: int = 6) -> list:
    barrier, results = threading.Barrier(n), [None] * n

    def opener(i):
        barrier.wait()
        try:
            results[i] = Store(url).schema
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=opener, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


OPEN_ONE = ("import sys; from moodlens.store import Store; s = Store(sys.argv[1]); "
            "print(s.schema, 'alembic' in sys.modules)")


# -- the package ----------------------------------------------------------------------------------
def test_revision_list_matches_scripts():
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrations.config())
    assert script.get_current_head() == migrations.HEAD
    assert [s.revision for s in reversed(list(script.walk_revisions()))] == list(migrations.REVISIONS)
    assert (Path(migrations.__file__).parent / "script.py.mako").is_file()


# -- SQLite -----------------------------------------------------------------------------------------
def test_sqlite_upgrade_from_pre_migration_schema_keeps_rows(tmp_path):
    url = _sqlite_v0(tmp_path / "v0.db")
    before = _dump(url)
    store = Store(url)
    assert store.schema == "adopted"
    assert _dump(url) == before
    _check_head(url)
    # the old rows read as before, the new column is empty on them, and the view has the complete one only
    assert store.analysis(1).status == COMPLETE and store.analysis(1).decode_gaps is None
    assert len(store.observations(1)) == 3
    assert _view_rows(store) == [(1, "lecture.mp4", 3)]
    from moodlens.collections import list_people
    assert [(p.collection, p.person, p.faces) for p in list_people(store)] == [("class-a", "ada", 1)]
    assert Store(url).schema == "current"
    _no_diff(url)


def test_sqlite_adopts_a_database_without_the_collection_tables(tmp_path):
    # create_all made the collection tables only at the first enrolment: many databases lack them
    url = _sqlite_v0(tmp_path / "v0.db", tables=("analyses", "observations"))
    store = Store(url)
    assert store.schema == "adopted"
    _check_head(url)
    assert len(store.observations(1)) == 3
    from moodlens.collections import collections
    assert collections(store) == []
    _no_diff(url)


def test_sqlite_adopts_a_database_that_already_has_decode_gaps(tmp_path):
    # made by create_all from the models between the column (7f102d7) and the migrations
    import moodlens.collections  # noqa: F401
    from moodlens.store import Base

    url = f"sqlite:///{tmp_path / 'dev.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine, tables=[Base.metadata.tables[n] for n in (
        "analyses", "observations", "collections", "persons", "face_embeddings")])
    engine.dispose()
    assert Store(url).schema == "adopted"
    _check_head(url)
    _no_diff(url)


def test_sqlite_downgrade_and_upgrade_again_keep_rows(tmp_path):
    from alembic import command

    url = _sqlite_v0(tmp_path / "v0.db")
    before = _dump(url)
    store = Store(url)
    with store.engine.begin() as c:
        command.downgrade(migrations.config(c), "0001")
    assert _version(url) == ["0001"] and "complete_observations" not in inspect(store.engine).get_view_names()
    assert Store(url).schema == "upgraded"
    assert _dump(url) == before
    _check_head(url)


def test_new_sqlite_schema_matches_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert Store(url).schema == "upgraded"
    _check_head(url)
    _no_diff(url)


def test_complete_observations_excludes_failed_analyses(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'v.db'}")
    ok, bad = _complete_and_failed(store)
    assert _view_rows(store) == [(ok, "ok.mp4", 2)]
    with store.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM observations")).scalar() == 5
    assert store.analysis(ok).decode_gaps == [{"start_s": 1.0, "end_s": 2.0, "frames": 3}]


def test_sqlite_concurrent_first_opens_cli(tmp_path):
    """Issue 22 item 6: four `moodlens analyses` on a new file at once, three trials."""
    for trial in range(3):
        url = f"sqlite:///{tmp_path / f'race{trial}.db'}"
        results = _race([CLI + ["analyses", "--db", url]] * 4)
        _assert_all_ok(results)
        assert all("error" not in r.stderr.lower() for r in results)
        _check_head(url)


def test_sqlite_concurrent_first_opens_threads(tmp_path):
    """Issue 22 item 6: six Store() at once (processes are the CLI test's)."""
    for trial in range(3):
        url = f"sqlite:///{tmp_path / f'threads{trial}.db'}"
        results = _threads_open(url)
        assert sorted(map(str, results)) == ["current"] * 5 + ["upgraded"], results
        _check_head(url)


def test_fast_path_does_not_import_alembic(tmp_path):
    url = f"sqlite:///{tmp_path / 'f.db'}"
    Store(url)
    r = subprocess.run([sys.executable, "-c", OPEN_ONE, url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["current", "False"]


def test_database_from_a_newer_moodlens_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'n.db'}"
    Store(url)
    con = sqlite3.connect(tmp_path / "n.db")
    con.execute("UPDATE alembic_version SET version_num = '0999'")
    con.commit()
    con.close()
    with pytest.raises(MoodlensError) as e:
        Store(url)
    msg = str(e.value)
    assert "\n" not in msg and "0999" in msg and "upgrade moodlens" in msg


def test_foreign_table_named_analyses_is_refused(tmp_path):
    con = sqlite3.connect(tmp_path / "other.db")
    con.execute("CREATE TABLE analyses (id INTEGER PRIMARY KEY, name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(MoodlensError, match="not moodlens's"):
        Store(f"sqlite:///{tmp_path / 'other.db'}")


# -- PostgreSQL -------------------------------------------------------------------------------------
@pytest.fixture
def pg_fresh(pg_url):
    """A factory of further empty databases on the same server (dropped at the end)."""
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(pg_url)
    conninfo = base.set(drivername="postgresql").render_as_string(hide_password=False)
    made: list[str] = []

    def new() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(conninfo, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return base.set(database=name).render_as_string(hide_password=False)

    yield new
    with psycopg.connect(conninfo, autocommit=True) as c:
        for name in made:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_postgresql_upgrade_from_pre_migration_schema_keeps_rows(pg_url):
    engine = create_engine(pg_url)
    with engine.begin() as c:
        c.exec_driver_sql((DATA / "schema_v0_postgresql.sql").read_text())
        _insert_pg(c, _v0_rows())
    engine.dispose()
    before = _dump(pg_url)
    store = Store(pg_url)
    assert store.schema == "adopted"
    assert _dump(pg_url) == before
    _check_head(pg_url)
    assert _view_rows(store) == [(1, "lecture.mp4", 3)]
    assert Store(pg_url).schema == "current"
    # new rows get ids after the old ones (the sequences were kept)
    ok, bad = _complete_and_failed(store)
    assert ok == 3 and bad == 4
    assert sorted(_view_rows(store)) == [(1, "lecture.mp4", 3), (ok, "ok.mp4", 2)]
    _no_diff(pg_url)
    store.engine.dispose()


def _insert_pg(conn, rows: dict[str, list[dict]]) -> None:
    json_cols = {"params", "models", "video_info", "timings", "landmarks"}
    for table in TABLES:
        for r in rows[table]:
            vals = ", ".join(f"CAST(:{c} AS JSON)" if c in json_cols else f":{c}" for c in r)
            conn.execute(text(f"INSERT INTO {table} ({', '.join(r)}) VALUES ({vals})"), r)
        # rows inserted with explicit ids: move the SERIAL sequences on, as the old code's inserts did
        conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                          f"(SELECT max(id) FROM {table}))"))


def test_new_postgresql_schema_matches_models_and_view(pg_url):
    store = Store(pg_url)
    assert store.schema == "upgraded"
    _check_head(pg_url)
    _no_diff(pg_url)
    ok, _bad = _complete_and_failed(store)
    assert _view_rows(store) == [(ok, "ok.mp4", 2)]
    store.engine.dispose()


def test_postgresql_concurrent_first_opens(pg_url, pg_fresh):
    """Four CLI processes on a new database (the advisory lock between processes; one trial, as
    each process costs the CLI's start-up), then six Store() threads, three trials."""
    _assert_all_ok(_race([CLI + ["analyses", "--db", pg_url]] * 4))
    _check_head(pg_url)
    for _trial in range(3):
        url = pg_fresh()
        results = _threads_open(url)
        assert sorted(map(str, results)) == ["current"] * 5 + ["upgraded"], results
        _check_head(url)
