"""Read-only SQL over a moodlens database: what ``moodlens query`` runs.

Read-only is a property of the connection, never of the statement's text (a
``WITH … UPDATE`` starts like a read):

- **SQLite**: the file is opened through a URI with ``mode=ro`` (a missing file is an
  error, never created), with ``PRAGMA query_only=ON``, an authorizer that refuses
  ``ATTACH``/``DETACH`` (which could create files) and pragma assignments, and no room for
  attached databases. A progress handler stops the statement at the deadline, or on
  Ctrl-C.
- **PostgreSQL** (psycopg 3): one transaction, ``SET TRANSACTION READ ONLY`` and
  ``SET LOCAL statement_timeout``, always rolled back. Rows stream from the server
  (psycopg's single-row or chunked mode), so no statement shape is refused that the
  server would run, and memory does not grow with the rows.

It opens its own connection and never goes through :class:`moodlens.store.Store`, which
creates files and schemas. Errors come back as one-line :class:`MoodlensError`s; a
database password never appears in them.

Python use::

    from moodlens.query import open_query, run_query

    with open_query("sqlite:///moodlens.db", "SELECT person, time_s FROM observations") as result:
        print(result.columns)
        for row in result:          # tuples, streamed
            ...

    columns, rows = run_query("sqlite:///moodlens.db", "SELECT COUNT(*) FROM analyses")  # small results
"""

from __future__ import annotations

import math
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moodlens.errors import MoodlensError

DEFAULT_TIMEOUT = 60.0
FETCH_ROWS = 1000  # rows a fetch asks the server for (PostgreSQL, libpq 17+)
_PROGRESS_OPS = 10_000  # SQLite VM steps between checks of the deadline and Ctrl-C (~0.1 ms)
_CHANGE_HINT = "use the database's own tools to change data"
_ONE_STATEMENT = "query runs one read-only statement at a time; this SQL holds several"
_NO_ROWS = ("query: the statement returns no rows; query runs one read-only statement that does "
            "(SELECT, WITH, VALUES, EXPLAIN, …)")
# Pragmas whose argument names a table, index or schema to describe: reads, not settings.
_INFO_PRAGMAS = frozenset({"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
                           "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check"})


def masked(db) -> str:
    """The database URL (a string or SQLAlchemy URL) as it may be shown: passwords as ``***``."""
    from moodlens.store import safe_url

    return safe_url(db)


def _stopped(timeout: float) -> MoodlensError:
    return MoodlensError(f"query: stopped after {timeout:g} s (--timeout {timeout:g})")


class QueryResult:
    """The columns of a running statement and its rows, streamed: iterate once."""

    def __init__(self, columns: list[str], rows: Iterator[tuple]):
        self.columns = columns
        self._rows = rows

    def __iter__(self) -> Iterator[tuple]:
        return self._rows


@contextmanager
def open_query(db: str, sql: str, *, timeout: float = DEFAULT_TIMEOUT) -> Iterator[QueryResult]:
    """Run one statement read-only on ``db``; yields its columns and a stream of rows.

    ``timeout`` is in seconds for the whole statement, rows included (0 or None: no
    limit). Ctrl-C stops the statement and raises ``KeyboardInterrupt``. Anything that
    would write is refused by the database itself, and the connection is closed (on
    PostgreSQL, rolled back) on the way out.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    timeout = float(timeout or 0)
    if not math.isfinite(timeout) or timeout < 0:
        raise MoodlensError("query: --timeout takes a number of seconds (0 for no limit)")
    if not sql.strip():
        raise MoodlensError("query: empty SQL")
    try:
        url = make_url(db)
    except ArgumentError:
        raise MoodlensError("--db: not a database URL; give sqlite:///PATH or postgresql+psycopg://…") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        runner: _Sqlite | _Postgres = _Sqlite(url, timeout)
    elif backend == "postgresql":
        runner = _Postgres(url, timeout)
    else:
        raise MoodlensError(f"{masked(db)}: query runs read-only on SQLite and PostgreSQL only, not {backend}")
    try:
        yield runner.start(sql)
    finally:
        runner.close()


def run_query(db: str, sql: str, *, timeout: float = DEFAULT_TIMEOUT) -> tuple[list[str], list[tuple]]:
    """Column names and every row of one read-only statement (for small results;
    :func:`open_query` streams)."""
    with open_query(db, sql, timeout=timeout) as result:
        return result.columns, list(result)


# -- SQLite --------------------------------------------------------------------------------
class _Sqlite:
    def __init__(self, url, timeout: float):
        self.url, self.timeout = url, timeout
        self.shown = masked(url)
        self.deadline = time.monotonic() + timeout if timeout else math.inf
        self.stop: str | None = None  # "timeout" or "interrupt", once the progress handler stopped the statement
        self.denied: str | None = None  # what the authorizer refused
        self.interrupted = False
        self.conn: sqlite3.Connection | None = None
        self.rows: Iterator[tuple] | None = None
        self._old_sigint = None

    # Ctrl-C: a flag the progress handler reads. Python's own handler cannot run while
    # SQLite is stepping, so without this a runaway statement ignores Ctrl-C.
    def _on_sigint(self, _sig, _frame):
        self.interrupted = True

    def _progress(self) -> int:
        if self.interrupted:
            self.stop = "interrupt"
            return 1
        if time.monotonic() > self.deadline:
            self.stop = "timeout"
            return 1
        return 0

    def _authorize(self, action, arg1, arg2, _db, _trigger) -> int:
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            self.denied = "ATTACH" if action == sqlite3.SQLITE_ATTACH else "DETACH"
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_PRAGMA and arg2 is not None and (arg1 or "").lower() not in _INFO_PRAGMAS:
            self.denied = f"PRAGMA {arg1} = …"
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def start(self, sql: str) -> QueryResult:
        path = self.url.database or ""
        if path in ("", ":memory:"):
            target, uri = ":memory:", False
        else:
            p = Path(path).expanduser()
            if not p.is_file():
                raise MoodlensError(f"{self.shown}: no such database file")
            target, uri = p.resolve().as_uri() + "?mode=ro", True
        try:
            self.conn = sqlite3.connect(target, uri=uri, isolation_level=None, timeout=5.0)
            self.conn.execute("PRAGMA query_only=ON")
            self.conn.execute("PRAGMA schema_version").fetchone()  # reads the header: is it a database at all?
        except sqlite3.Error as e:
            if "not a database" in str(e):
                raise MoodlensError(f"{self.shown}: not an SQLite database ({_first_line(e)})") from None
            raise MoodlensError(f"{self.shown}: cannot open database ({_first_line(e)})") from None
        if hasattr(self.conn, "setlimit"):  # Python 3.11+
            self.conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        self.conn.set_authorizer(self._authorize)
        self.conn.set_progress_handler(self._progress, _PROGRESS_OPS)
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):  # else: ignored, or someone's own
            self._old_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            cur = self.conn.execute(sql)
        except (sqlite3.Error, sqlite3.Warning) as e:
            raise self._error(e) from None
        if cur.description is None:
            raise MoodlensError(_NO_ROWS)
        self.rows = self._rows(cur)
        return QueryResult([d[0] for d in cur.description], self.rows)

    def _rows(self, cur) -> Iterator[tuple]:
        try:
            for row in cur:  # not ``yield from``: closing this generator must not touch the cursor
                yield row
        except sqlite3.Error as e:
            raise self._error(e) from None
        if self.interrupted:  # Ctrl-C after the last step: still an interruption
            raise KeyboardInterrupt

    def _error(self, e: Exception) -> BaseException:
        msg = _first_line(e)
        if self.stop == "interrupt" or self.interrupted:
            return KeyboardInterrupt()
        if self.stop == "timeout":
            return _stopped(self.timeout)
        if "one statement at a time" in msg:
            return MoodlensError(_ONE_STATEMENT)
        if self.denied and ("not authorized" in msg or "authorization denied" in msg):
            return _read_only(f"{self.denied} is not allowed")
        if isinstance(e, sqlite3.OperationalError) and "readonly database" in msg:
            return _read_only(msg)
        if "file is not a database" in msg:
            return MoodlensError(f"{self.shown}: not an SQLite database ({msg})")
        return MoodlensError(f"query failed: {msg}")

    def close(self) -> None:
        if self.rows is not None:
            self.rows.close()
            self.rows = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self._old_sigint is not None:
            signal.signal(signal.SIGINT, self._old_sigint)
            self._old_sigint = None


# -- PostgreSQL ----------------------------------------------------------------------------
class _Postgres:
    def __init__(self, url, timeout: float):
        self.timeout = timeout
        self.shown = masked(url)
        if url.drivername == "postgresql":  # no driver named: SQLAlchemy would pick psycopg2
            url = url.set(drivername="postgresql+psycopg")
        if url.get_driver_name() != "psycopg":
            raise MoodlensError(f"{self.shown}: query on PostgreSQL needs the psycopg driver "
                                "(postgresql+psycopg://…; pip install 'moodlens[postgres]')")
        self.url = url
        self.engine = self.conn = self.stream = None

    def start(self, sql: str) -> QueryResult:
        try:
            import psycopg
        except ImportError:
            raise MoodlensError(f"{self.shown}: query on PostgreSQL needs psycopg "
                                "(pip install 'moodlens[postgres]')") from None
        from sqlalchemy import create_engine
        from sqlalchemy.exc import SQLAlchemyError
        from sqlalchemy.pool import NullPool

        try:
            self.engine = create_engine(self.url, poolclass=NullPool)
            self.conn = self.engine.connect()
            # The first statements of the transaction SQLAlchemy begins: from here on it
            # cannot write, and it is rolled back at the end whatever happens.
            self.conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            if self.timeout:
                ms = min(max(1, round(self.timeout * 1000)), 2**31 - 1)
                self.conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
            # A query (it takes the snapshot): after it, nothing can make the transaction read-write again.
            if self.conn.exec_driver_sql("SELECT current_setting('transaction_read_only')").scalar() != "on":
                raise MoodlensError(f"{self.shown}: could not make the transaction read-only; query refused")
        except (SQLAlchemyError, ImportError) as e:
            raise MoodlensError(f"{self.shown}: cannot open database ({_first_line(getattr(e, 'orig', None) or e)})"
                                ) from None
        raw = self.conn.connection.driver_connection
        columns = self._describe(raw, sql)
        cur = raw.cursor()
        size = FETCH_ROWS if psycopg.pq.version() >= 170000 else 1
        stream = self.stream = cur.stream(sql, size=size)
        try:
            first = next(stream, None)
        except psycopg.Error as e:
            raise self._error(e) from None
        return QueryResult(columns, self._rows(first, stream))

    def _describe(self, raw, sql: str) -> list[str]:
        """The statement's columns, from the server's parse of it, before it runs. A statement
        without columns (SET, DO, COPY … TO, COMMIT, …) is refused here: it would have
        nothing to show, and some of them act outside the transaction."""
        import psycopg
        from psycopg import pq

        enc = raw.info.encoding
        pg = raw.pgconn
        res = pg.prepare(b"", sql.encode(enc))
        if res.status == pq.ExecStatus.COMMAND_OK:
            res = pg.describe_prepared(b"")
        if res.status == pq.ExecStatus.EMPTY_QUERY:
            raise MoodlensError("query: empty SQL (nothing but comments)")
        if res.status != pq.ExecStatus.COMMAND_OK:
            raise self._error(psycopg.errors.error_from_result(res, encoding=enc))
        if res.nfields == 0:
            raise MoodlensError(_NO_ROWS)
        return [res.fname(i).decode(enc) for i in range(res.nfields)]

    def _rows(self, first, stream) -> Iterator[tuple]:
        import psycopg

        if first is None:
            return
        yield first
        try:
            for row in stream:  # closed by close(), which cancels the rest on the server
                yield row
        except psycopg.Error as e:
            raise self._error(e) from None

    def _error(self, e: Exception) -> MoodlensError:
        import psycopg.errors as pe

        msg = _first_line(e)
        if isinstance(e, pe.QueryCanceled) and "statement timeout" in msg:
            return _stopped(self.timeout)
        if isinstance(e, pe.ReadOnlySqlTransaction) or "read-write mode must be set" in msg:
            return _read_only(msg)
        if "multiple commands" in msg:
            return MoodlensError(_ONE_STATEMENT)
        if "EMPTY_QUERY" in msg:
            return MoodlensError("query: empty SQL (nothing but comments)")
        if "didn't produce a result" in msg:
            return MoodlensError(_NO_ROWS)
        return MoodlensError(f"query failed: {msg}")

    def close(self) -> None:
        try:
            if self.stream is not None:  # stopped early: psycopg cancels the rest of the rows
                self.stream.close()
            if self.conn is not None:
                self.conn.rollback()
                self.conn.close()
        except Exception:  # a dead or cancelled connection: nothing was written either way
            pass
        finally:
            self.conn = self.stream = None
            if self.engine is not None:
                self.engine.dispose()
                self.engine = None


def _read_only(why: str) -> MoodlensError:
    return MoodlensError(f"query: the database is opened read-only; {_CHANGE_HINT} ({why})")


def _first_line(e) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


__all__ = ["DEFAULT_TIMEOUT", "QueryResult", "masked", "open_query", "run_query"]
