import os
import subprocess
import sys

import pytest

from moodlens.errors import NotFoundError
from moodlens.reports.tables import RECORD_COLUMNS, SEED_COLUMNS, export_tables, summary
from moodlens.store import COMPLETE, FAILED, INTERRUPTED, Store
from moodlens.types import EMOTIONS


def _obs(person="unknown-1", track=0, t=0.0, **emo):
    base = {c: 0.0 for c in EMOTIONS}
    base.update(emo)
    return {"seq": f"clip/{int(t * 30)}", "person": person, "frame": int(t * 30), "time_s": t, "track": track,
            "x": 1.0, "y": 2.0, "w": 30.0, "h": 40.0, "score": 0.9, "quality": 0.8, "landmarks": [[0, 0]] * 5, **base}


def test_analysis_lifecycle(db_url):
    s = Store(db_url)
    aid = s.create_analysis("clip.mp4", {"fps": 2}, {"emotion": "x"}, {"duration_s": 1})
    s.add_observations(aid, [_obs(t=0.0, happiness=90, neutral=10), _obs(t=0.5, happiness=50, neutral=50)])
    with pytest.raises(NotFoundError, match="running"):
        s.complete_analysis(aid)  # a running analysis is never exported as if complete
    s.finish(aid, frames=2, timings={"total": 0.1})
    row = s.complete_analysis(aid)
    assert row.status == COMPLETE and row.observations == 2
    # a second analysis of the same video is a new analysis, not duplicated rows
    aid2 = s.create_analysis("clip.mp4", {"fps": 2}, {}, {})
    assert aid2 != aid and len(s.observations(aid)) == 2 and s.observations(aid2) == []


def test_failed_and_unknown_analyses(db_url):
    s = Store(db_url)
    aid = s.create_analysis("bad.mp4", {}, {}, {})
    s.fail(aid, "bad.mp4: not a video")
    assert s.analysis(aid).status == FAILED
    with pytest.raises(NotFoundError, match="failed"):
        s.complete_analysis(aid)
    with pytest.raises(NotFoundError, match="no such analysis"):
        s.analysis(999)


def test_killed_writer_shows_as_interrupted(db_url, tmp_path):
    code = ("from moodlens.store import Store; import os; s = Store(%r); "
            "a = s.create_analysis('v.mp4', {}, {}, {}); s.add_observations(a, []); os._exit(9)") % db_url
    subprocess.run([sys.executable, "-c", code], check=False)
    s = Store(db_url)
    (row,) = s.analyses()
    assert row.status == INTERRUPTED and "stopped" in row.error


def test_tables_keep_seed_columns_and_totals(tmp_path):
    obs = [_obs("unknown-1", 0, 0.0, happiness=80, neutral=20), _obs("unknown-1", 0, 0.5, happiness=40, neutral=60),
           _obs("unknown-2", 1, 0.5, anger=100)]
    paths = export_tables(tmp_path, obs, {"emotion": "m"}, sample_fps=2.0)
    header = paths["records.csv"].read_text().splitlines()[0].split(",")
    assert tuple(header[: len(SEED_COLUMNS)]) == SEED_COLUMNS and tuple(header) == RECORD_COLUMNS
    rows = {r["id"]: r for r in summary(obs, 2.0)}
    assert rows["unknown-1"]["observations"] == 2 and rows["unknown-1"]["seconds"] == 1.0
    assert rows["unknown-1"]["happy_sum"] == 120 and rows["unknown-1"]["happy_mean"] == 60
    assert rows["unknown-2"]["angry_mean"] == 100
    assert len(paths["records.jsonl"].read_text().splitlines()) == 3
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
