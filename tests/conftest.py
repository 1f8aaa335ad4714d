"""Shared fixtures: real third-party data lives in ../shared/data, never in the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


def shared(*parts: str) -> Path:
    """Path under ../shared/data, skipping the test with a clear message when it is absent."""
    p = DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs shared test data at {p} (../shared/data beside the repo); not present here")
    return p


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


# -- a throwaway PostgreSQL cluster ------------------------------------------------------------
# .ci/run installs Debian's postgresql; here the fixture starts its own cluster in a temporary
# folder (as the `postgres` user when running as root, since the server refuses root) on a
# Unix socket only, and drops it at the end. Without the binaries or psycopg the tests skip.

import glob
import os
import shutil
import subprocess
import tempfile
import uuid


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


@pytest.fixture(scope="session")
def pg_server():
    """``(socket_dir, port)`` of a running throwaway PostgreSQL; skips where it cannot start."""
    if os.environ.get("MOODLENS_TEST_PG_URL"):
        yield os.environ["MOODLENS_TEST_PG_URL"]
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("needs psycopg (pip install 'moodlens[postgres]') for the PostgreSQL tests")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("needs PostgreSQL's server (Debian: apt-get install postgresql); initdb/pg_ctl not found")
    root = os.geteuid() == 0
    if root:
        try:
            import pwd
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the PostgreSQL server as")
    base = tempfile.mkdtemp(prefix="moodlens-pg-")
    os.chmod(base, 0o777)
    data, sock = os.path.join(base, "data"), base
    as_pg = ["runuser", "-u", "postgres", "--"] if root else []
    port = 40000 + uuid.uuid4().int % 20000
    try:
        subprocess.run(as_pg + [initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run(as_pg + [pg_ctl, "-D", data, "-w", "-t", "60", "-l", os.path.join(base, "log"), "-o",
                                f"-k {sock} -p {port} -c listen_addresses='' -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        log = os.path.join(base, "log")
        tail = open(log).read()[-500:] if os.path.exists(log) else getattr(e, "stderr", b"")
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not start here ({type(e).__name__}): {tail!r}")
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={sock}&port={port}"
    finally:
        subprocess.run(as_pg + [pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server):
    """A new, empty PostgreSQL database for one test (dropped after it)."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(pg_server)
    name = f"t_{uuid.uuid4().hex[:12]}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield admin.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
