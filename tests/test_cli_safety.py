"""Issue 22, item 7: an fps of inf or nan is refused up front, the database password never
shows, and Rich markup in names, ids and file names prints as written."""

from __future__ import annotations

import json
import math

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from conftest import shared
from moodlens.cli import app
from moodlens.errors import MoodlensError, NotFoundError, OptionError
from moodlens.store import Store, hide_password, safe_url

SECRET = "hunter2secret"
MARKUP = "[bold red]x[/]"


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _text(r) -> str:
    return r.stdout + (r.stderr if r.stderr_bytes is not None else "")


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "Infinity"])
def test_non_finite_fps_is_refused_at_the_command_line(tmp_path, value):
    db = tmp_path / "m.db"
    r = _invoke("analyze", tmp_path / "v.mp4", "--fps", value, "--db", f"sqlite:///{db}")
    assert r.exit_code == 2, _text(r)
    assert "--fps" in _text(r) and "Traceback" not in _text(r)
    assert not db.exists()  # refused while parsing, before anything opened


@pytest.mark.parametrize("fps", [math.inf, math.nan, -math.inf, 0, -1, "2"])
def test_non_finite_fps_is_refused_by_the_python_api(tmp_path, fps):
    from moodlens.pipeline import Options, analyze

    with pytest.raises(OptionError, match="fps") as e:
        Options(fps=fps)
    assert isinstance(e.value, ValueError) and isinstance(e.value, MoodlensError)
    with pytest.raises(OptionError):  # before the video is even looked at
        analyze(tmp_path / "missing.mp4", fps=fps, db=f"sqlite:///{tmp_path / 'm.db'}")
    assert Options(fps=0.5).fps == 0.5


def test_safe_url_masks_the_password_and_never_raises():
    assert safe_url(f"postgresql+psycopg://u:{SECRET}@h:5432/db") == "postgresql+psycopg://u:***@h:5432/db"
    assert SECRET not in safe_url(f"postgresql://u@h/db?password={SECRET}&sslmode=require")
    assert safe_url("sqlite:///out/moodlens.db") == "sqlite:///out/moodlens.db"
    assert safe_url("postgresql://u@h/db") == "postgresql://u@h/db"
    for bad in (f"post gres://u:{SECRET}@h", f"postgresql+psycopg://u:{SECRET}@h:port/db", "", "not a url"):
        assert SECRET not in safe_url(bad)
    assert SECRET not in safe_url(make_url(f"postgresql://u:{SECRET}@h/db"))
    # a short password is masked where it reads as one, and the rest of a message is left alone
    assert hide_password("user u:ab@h; abacus", "postgresql://u:ab@h/db") == "user u:***@h; abacus"
    assert hide_password(f"failed for s3cr%40t and {SECRET}", f"postgresql://u:{SECRET}@h/db") == \
        "failed for s3cr%40t and ***"


@pytest.mark.parametrize("url", [f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/db",
                                 f"postgresql+psycopg://u:{SECRET}@127.0.0.1:port/db",
                                 f"nosuchdialect://u:{SECRET}@h/db"])
def test_store_errors_hide_the_password(url):
    with pytest.raises(MoodlensError) as e:
        Store(url)
    msg = str(e.value)
    assert SECRET not in msg and "***" in msg and "\n" not in msg


def test_postgresql_messages_and_cli_hide_the_password(pg_url, tmp_path):
    url = make_url(pg_url).set(password=SECRET).render_as_string(hide_password=False)
    store = Store(url)  # the throwaway cluster trusts local connections: the password is ignored
    with pytest.raises(NotFoundError) as e:
        store.analysis(999)
    assert SECRET not in str(e.value) and "***" in str(e.value)
    store.engine.dispose()
    for args in (["export", "999", "--out", tmp_path / "x"], ["analyses"]):
        r = _invoke(*args, "--db", url)
        assert SECRET not in _text(r), _text(r)
    r = _invoke("export", "999", "--out", tmp_path / "x", "--db", url)
    assert r.exit_code == 2 and "analysis 999" in _text(r)


def test_markup_in_error_messages_prints_as_written(tmp_path):
    r = _invoke("faces", "remove", "-c", "[i]c[/i]", "-p", MARKUP, "--db", f"sqlite:///{tmp_path / 'm.db'}")
    assert r.exit_code == 2
    assert "[i]c[/i]" in _text(r)


def test_markup_in_video_names_prints_as_written(tmp_path):
    db = f"sqlite:///{tmp_path / 'm.db'}"
    store = Store(db)
    store.create_analysis("/v/[red]talk.mp4", {}, {}, {})  # no closing tag: a file name holds no "/"
    r = _invoke("analyses", "--db", db)
    assert r.exit_code == 0 and "[red]talk.mp4" in r.stdout, r.stdout


def test_markup_in_person_names_prints_as_written(tmp_path):
    photo = shared("identity", "deepface_unit", "img1.jpg")
    db = f"sqlite:///{tmp_path / 'm.db'}"
    r = _invoke("faces", "enroll", photo, "-c", "[i]class[/i]", "-p", MARKUP, "--db", db)
    assert r.exit_code == 0, _text(r)
    assert MARKUP in r.stdout and "[i]class[/i]" in r.stdout
    r = _invoke("faces", "list", "--db", db)
    assert r.exit_code == 0 and MARKUP in r.stdout and "[i]class[/i]" in r.stdout, r.stdout
    r = _invoke("faces", "list", "--db", db, "--json")
    assert json.loads(r.stdout)[0]["person"] == MARKUP
    r = _invoke("faces", "search", photo, "-c", "[i]class[/i]", "--db", db)
    assert r.exit_code == 0 and MARKUP in r.stdout, r.stdout
    r = _invoke("faces", "remove", "-c", "[i]class[/i]", "-p", MARKUP, "--db", db)
    assert r.exit_code == 0 and MARKUP in r.stdout, r.stdout
