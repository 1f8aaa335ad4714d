"""Schema migrations (Alembic), applied by :class:`moodlens.store.Store` when it opens a database.

Users need nothing: ``Store(url)`` brings any database to the newest schema. The revisions
live in ``versions/`` inside the package; the Alembic configuration is built here in code
(no ``alembic.ini``).

Opening a database:

* **Fast path.** One ``SELECT version_num FROM alembic_version``; at :data:`HEAD` it returns.
  Alembic is not even imported.
* **Upgrade, under a lock**, so that processes opening a new database at the same moment
  never race (``table analyses already exists``):

  - PostgreSQL: ``pg_advisory_xact_lock`` on the connection that migrates; the upgrade runs
    in that one transaction (DDL is transactional there), so it is all or nothing, and the
    lock goes with the commit.
  - SQLite: ``BEGIN IMMEDIATE`` on the connection that migrates: SQLite's own write lock,
    which serialises processes and threads alike (and waits for a writer that is busy),
    without a side file. SQLite's DDL is transactional as well, so a killed upgrade leaves
    the previous schema. Readers (WAL) go on reading the old schema meanwhile.

  Under the lock the version is read again: whoever waited finds the work done.
* **A database made before migrations** (the tables, no ``alembic_version``) is adopted:
  revision 0001 keeps the tables that are there (after checking that they are moodlens's)
  and creates only the missing ones, then the later revisions run. No row is touched.
* **A database newer than this code** (a revision it does not know) is refused with a
  one-line error: upgrade moodlens.

Adding a revision (developers): write ``versions/NNNN_what.py`` in the style of the others
(``revision``/``down_revision`` chained, frozen ``sa`` types, never the models), or start one
with ``alembic.command.revision(moodlens.migrations.config(), "what", rev_id="NNNN")``; then
append the id to :data:`REVISIONS`. ``tests/test_migrations.py`` checks that the list matches
the scripts and that the migrated schema matches the models on SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from moodlens.errors import MoodlensError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection, Engine

#: Every revision this code knows, oldest first; the last one is the head.
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006")
HEAD = REVISIONS[-1]
#: The tables of revision 0001: a database holding ``analyses`` but no version is pre-migration.
LEGACY_MARKER = "analyses"
#: pg_advisory_xact_lock key (a signed 64-bit integer, stable across versions).
PG_LOCK_KEY = zlib.crc32(b"moodlens.migrations") - (1 << 31)
SQLITE_LOCK_WAIT_MS = 60_000  # how long to wait for another process's upgrade or write

_process_lock = threading.Lock()  # Alembic's op/context proxies are module globals: one run at a time


class SchemaTooNewError(MoodlensError):
    """The database was migrated by a newer moodlens than this one."""


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, in code: scripts inside this package, the given connection."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent))
    cfg.attributes["connection"] = connection
    return cfg


def current(engine: Engine) -> str | None:
    """The database's revision, read with one query; None when it has no version (yet)."""
    try:
        with engine.connect() as c:
            rows = c.execute(text("SELECT version_num FROM alembic_version")).all()
    except DBAPIError:
        return None  # no such table (a new or a pre-migration database); the slow path says more
    return rows[0][0] if len(rows) == 1 else None


def _too_new(rev: str, where: str) -> SchemaTooNewError:
    from moodlens import __version__

    return SchemaTooNewError(f"{where}: the database's schema (revision {rev}) is newer than this moodlens "
                             f"({__version__}) knows; upgrade moodlens (pip install -U moodlens)")


def ensure_schema(engine: Engine, where: str = "database") -> str:
    """Bring the database to :data:`HEAD`; returns ``"current"``, ``"upgraded"`` or ``"adopted"``.

    ``where`` names the database in messages (a URL without its password).
    """
    rev = current(engine)
    if rev == HEAD:
        return "current"
    if rev is not None and rev not in REVISIONS:
        raise _too_new(rev, where)
    with _process_lock:
        return _upgrade_locked(engine, where)


def _upgrade_locked(engine: Engine, where: str) -> str:
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import inspect

    with engine.connect() as conn:
        dialect = engine.dialect.name
        restore_timeout = None
        if dialect == "sqlite":
            restore_timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
            conn.exec_driver_sql(f"PRAGMA busy_timeout = {SQLITE_LOCK_WAIT_MS}")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})
        try:
            heads = MigrationContext.configure(conn).get_current_heads()
            unknown = [h for h in heads if h not in REVISIONS]
            if unknown:
                raise _too_new(unknown[0], where)
            if heads == (HEAD,):
                conn.commit()
                return "current"  # another process did it while we waited
            adopted = not heads and inspect(conn).has_table(LEGACY_MARKER)
            command.upgrade(config(conn), "head")
            conn.commit()
            return "adopted" if adopted else "upgraded"
        finally:
            if restore_timeout is not None:
                try:
                    conn.rollback()
                    conn.exec_driver_sql(f"PRAGMA busy_timeout = {int(restore_timeout)}")
                    conn.commit()
                except Exception:  # noqa: BLE001 - the connection is discarded on error anyway
                    pass
