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
RECORD_COLUMNS = SEED_COLUMNS + ("fear", "contempt", "time_s", "frame", "track", "x", "y", "w", "h", "quality")

# report column -> model class (None: no open model predicts it; left empty)
REPORT_FROM_MODEL: dict[str, str | None] = {
    "happy": "happiness", "sad": "sadness", "angry": "anger", "confused": None, "disgusted": "disgust",
    "surprised": "surprise", "calm": "neutral", "unknown": None, "fear": "fear", "contempt": "contempt",
}
SCORED = tuple(c for c, m in REPORT_FROM_MODEL.items() if m)


def record(obs: dict) -> dict:
    """One observation (store row, percentages) as a records.csv row."""
    row = {"seq": obs["seq"], "id": obs["person"]}
    for col, cls in REPORT_FROM_MODEL.items():
        row[col] = "" if cls is None else round(obs[cls], 2)
    row.update(time_s=round(obs["time_s"], 3), frame=obs["frame"], track=obs["track"],
               x=round(obs["x"], 1), y=round(obs["y"], 1), w=round(obs["w"], 1), h=round(obs["h"], 1),
               quality=round(obs["quality"], 3))
    return {c: row[c] for c in RECORD_COLUMNS}


def summary(observations: Sequence[dict], sample_fps: float | None) -> list[dict]:
    """Per id: observations, seconds seen, first/last time, sum and mean of each emotion.

    This is the seed's class-summary SQL as an export. ``seconds`` counts each
    observation as one sampling interval (1 / sample fps).
    """
    groups: dict[str, list[dict]] = {}
    for o in observations:
        groups.setdefault(o["person"], []).append(o)
    rows = []
    for person, obs in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        n = len(obs)
        row = {"id": person, "observations": n,
               "seconds": round(n / sample_fps, 2) if sample_fps else None,
               "first_s": round(min(o["time_s"] for o in obs), 3), "last_s": round(max(o["time_s"] for o in obs), 3)}
        for col in SCORED:
            total = sum(o[REPORT_FROM_MODEL[col]] for o in obs)
            row[f"{col}_sum"] = round(total, 2)
            row[f"{col}_mean"] = round(total / n, 2)
        rows.append(row)
    return rows


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


def export_tables(out: Path, observations: Sequence[dict], models: dict, sample_fps: float | None) -> dict[str, Path]:
    """Write the three tables into ``out``; returns their paths by name."""
    records = [record(o) for o in observations]
    jsonl = ({**r, "landmarks": o.get("landmarks"), "score": round(o["score"], 4), "models": models}
             for r, o in zip(records, observations))
    summ = summary(observations, sample_fps)
    summary_cols = list(summ[0].keys()) if summ else ["id", "observations", "seconds", "first_s", "last_s"] + [
        f"{c}_{k}" for c in SCORED for k in ("sum", "mean")]
    return {
        "records.csv": write_csv(out / "records.csv", RECORD_COLUMNS, records),
        "records.jsonl": write_jsonl(out / "records.jsonl", jsonl),
        "summary.csv": write_csv(out / "summary.csv", summary_cols, summ),
    }
