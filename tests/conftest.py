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
