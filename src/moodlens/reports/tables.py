"""records.csv, records.jsonl and summary.csv from an analysis's observation rows.

The CSV keeps the seed workflow's column order first, so existing spreadsheets
and scripts keep working; model classes map to seed columns as in DESIGN.md.
Files are written to a temporary name and renamed, so a crash never leaves a
half-written export that looks complete.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from moodlens.atomic import atomic_write

SEED_COLUMNS = ("seq", "id", "happy", "sad", "angry", "confused", "disgusted", "surprised", "calm", "unknown")
# ``engine`` (last, so the seed's column positions hold): what scored the row, own or rekognition,
# so that rows of different engines are never averaged together unnoticed
RECORD_COLUMNS = SEED_COLUMNS + ("fear", "contempt", "time_s", "frame", "track", "x", "y", "w", "h", "quality",
                                 "engine")

# report column -> the own model's class (None: no open model predicts it; left empty)
REPORT_FROM_MODEL: dict[str, str | None] = {
    "happy": "happiness", "sad": "sadness", "angry": "anger", "confused": None, "disgusted": "disgust",
    "surprised": "surprise", "calm": "neutral", "unknown": None, "fear": "fear", "contempt": "contempt",
}
SCORED = tuple(c for c, m in REPORT_FROM_MODEL.items() if m)
# report column -> store column, whatever the engine (Rekognition fills confused and unknown)
STORE_COLUMN: dict[str, str] = {c: m or c for c, m in REPORT_FROM_MODEL.items()}
# summary.csv's columns: the model's eight, then the two only Rekognition fills (appended, so
# the earlier columns keep their places)
SUMMARIZED = SCORED + ("confused", "unknown")


def engine_of(models: dict | None) -> str:
    """The engine an analysis's models name (``own`` when they name none: every earlier analysis)."""
    return (models or {}).get("engine", "own")


def _pct(v) -> float | str:
    return "" if v is None else round(v, 2)


def record(obs: dict, engine: str = "own") -> dict:
    """One observation (store row, percentages) as a records.csv row; an empty cell where the engine gave no score."""
    row = {"seq": obs["seq"], "id": obs["person"]}
    for col, cls in STORE_COLUMN.items():
        row[col] = _pct(obs.get(cls))
    row.update(time_s=round(obs["time_s"], 3), frame=obs["frame"], track=obs["track"],
               x=round(obs["x"], 1), y=round(obs["y"], 1), w=round(obs["w"], 1), h=round(obs["h"], 1),
               quality=round(obs["quality"], 3), engine=engine)
    return {c: row[c] for c in RECORD_COLUMNS}


class SummaryAccumulator:
    """The per-id summary folded over rows one at a time: memory grows with the ids, never
    with the rows, so a two-hour recording summarises like a two-minute one."""

    def __init__(self, sample_fps: float | None):
        self.sample_fps = sample_fps
        # id -> [n, first_s, last_s, sums per SUMMARIZED column, scored rows per SUMMARIZED column]
        self._ids: dict[str, list] = {}

    def add(self, obs: dict) -> None:
        acc = self._ids.get(obs["person"])
        t = obs["time_s"]
        if acc is None:
            acc = self._ids[obs["person"]] = [0, t, t, [0.0] * len(SUMMARIZED), [0] * len(SUMMARIZED)]
        acc[0] += 1
        acc[1] = min(acc[1], t)
        acc[2] = max(acc[2], t)
        sums, counts = acc[3], acc[4]
        for i, col in enumerate(SUMMARIZED):
            v = obs.get(STORE_COLUMN[col])
            if v is not None:  # NULL: the engine gave no score; the mean is over the rows it scored
                sums[i] += v
                counts[i] += 1

    def rows(self) -> list[dict]:
        out = []
        for person, (n, first, last, sums, counts) in sorted(self._ids.items(), key=lambda kv: (-kv[1][0], kv[0])):
            row = {"id": person, "observations": n,
                   "seconds": round(n / self.sample_fps, 2) if self.sample_fps else None,
                   "first_s": round(first, 3), "last_s": round(last, 3)}
            for col, total, k in zip(SUMMARIZED, sums, counts):
                row[f"{col}_sum"] = round(total, 2) if k else None
                row[f"{col}_mean"] = round(total / k, 2) if k else None
            out.append(row)
        return out


SUMMARY_COLUMNS = ["id", "observations", "seconds", "first_s", "last_s"] + [
    f"{c}_{k}" for c in SUMMARIZED for k in ("sum", "mean")]


def summary(observations: Iterable[dict], sample_fps: float | None) -> list[dict]:
    """Per id: observations, seconds seen, first/last time, sum and mean of each emotion.

    This is the seed's class-summary SQL as an export. ``seconds`` counts each
    observation as one sampling interval (1 / sample fps). ``observations`` may be
    any iterable, such as :meth:`moodlens.store.Store.iter_observations`.
    """
    acc = SummaryAccumulator(sample_fps)
    for o in observations:
        acc.add(o)
    return acc.rows()


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> Path:
    def write(f):
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return atomic_write(path, write)


def write_jsonl(path: Path, rows: Iterable[dict]) -> Path:
    def write(f):
        for r in rows:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
    return atomic_write(path, write)


def export_tables(out: Path, observations: Iterable[dict], models: dict, sample_fps: float | None) -> dict[str, Path]:
    """Write the three tables into ``out`` in one pass over ``observations`` (a list, or
    rows streamed from the database); returns their paths by name.

    records.csv and records.jsonl are written row by row while the summary is folded, so
    memory does not grow with the number of rows. Each file is renamed into place whole.
    """
    acc = SummaryAccumulator(sample_fps)
    engine = engine_of(models)
    paths = {"records.csv": out / "records.csv", "records.jsonl": out / "records.jsonl",
             "summary.csv": out / "summary.csv"}

    def write_both(f_csv):
        w = csv.DictWriter(f_csv, fieldnames=list(RECORD_COLUMNS), extrasaction="ignore")
        w.writeheader()

        def write_jsonl_rows(f_jsonl):
            for o in observations:
                acc.add(o)
                r = record(o, engine)
                w.writerow(r)
                f_jsonl.write(json.dumps({**r, "shot": o.get("shot", 0), "landmarks": o.get("landmarks"),
                                          "score": round(o["score"], 4), "models": models},
                                         separators=(",", ":")) + "\n")
        atomic_write(paths["records.jsonl"], write_jsonl_rows)

    atomic_write(paths["records.csv"], write_both)
    write_csv(paths["summary.csv"], SUMMARY_COLUMNS, acc.rows())
    return paths
