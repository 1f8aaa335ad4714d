"""Open-set identification as the collection grows (issue 21), and the cost of the new steps.

On a labelled identity set (default ../shared/data/identity/pins105: 105 people x 12
photos), for gallery sizes 10/50/105 people, a quarter of them held out as strangers and
``--enrol`` photos enrolled per remaining person (1 and 2 by default), pooled over
``--repeats`` random splits (seeded):

- before: nearest enrolled face, per-pair 0-100 score (``Gallery.search``);
- after:  person templates and the open-set score (``Gallery.identify``, ``open_set_score``).

Columns: rank-1 (known probes), strangers' photos named at ``--match-threshold`` (70),
known probes named correctly at 70, and TAR at FAR 1e-3 (before: probe vs every enrolled
face; after: probe vs every person's template). Then the cost of each new step: the
open-set search per query, ``two_groups`` per track, and the extra SFace passes the
TrackBank's samples add (one face in ``sample_every``, at the measured ms a face).

    python benchmarks/identity_open_set.py [DATASET] [--enrol 1 2] [--sizes 10 50 105] [--repeats 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from _util import DATA, need
from moodlens.evaluation.identity import embed_photos, evaluate_identity, read_identity_set
from moodlens.faces.identity import Gallery, TrackBank, default_embedder, score_to_similarity, two_groups


def _unit(rng, n):
    x = rng.normal(size=(n, 128)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _per_call_us(fn, n: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", nargs="?", default=str(DATA / "identity" / "pins105"))
    ap.add_argument("--enrol", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 105])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--match-threshold", type=float, default=70.0)
    args = ap.parse_args()
    root = need(Path(args.dataset))
    con = Console(width=max(Console().width, 140))

    _, paths, _ = read_identity_set(root)
    t = time.perf_counter()
    embedded = embed_photos(paths)
    con.print(f"{root}: {len(paths)} photos embedded in {time.perf_counter() - t:.1f} s", highlight=False)
    th = args.match_threshold
    table = Table(title=f"identification, {args.repeats} splits, a quarter of the people strangers, "
                        f"threshold {th:g}", title_justify="left")
    for col in ("enrol", "people", "strangers", "method", "rank-1", f"strangers named at {th:g}",
                f"known named at {th:g}", "TAR at FAR 1e-3"):
        table.add_column(col, justify="right")
    for k in args.enrol:
        r = evaluate_identity(root, enrol_k=k, strangers=0.25, repeats=args.repeats, threshold=th,
                              gallery_sizes=args.sizes, embedded=embedded)
        for s in r["sizes"]:
            pw = s["pairwise"]
            table.add_row(str(k), str(s["gallery_size"]), str(s["strangers_per_split"]), "before",
                          f"{pw['rank1']:.4f}", f"{pw['strangers_named']:.4f}",
                          f"{pw['known_accept_at_threshold']:.4f}", f"{s['tar_at_far_1e-3']:.4f}")
            table.add_row("", "", "", "after", f"{s['rank1']:.4f}", f"{s['strangers_named']:.4f}",
                          f"{s['known_accept_at_threshold']:.4f}", f"{s['template_tar_at_far_1e-3']:.4f}")
    con.print(table)

    # -- cost of the new steps ----------------------------------------------------------------
    rng = np.random.default_rng(0)
    cost = Table(title="cost of the new steps (wall-clock, this machine)", title_justify="left")
    for col in ("step", "size", "per call", "note"):
        cost.add_column(col, justify="right")
    for people in (105, 1000):
        g = Gallery(_unit(rng, people * 2), [f"p{i // 2}" for i in range(people * 2)])
        q = _unit(rng, 1)
        g.identify(q)
        cost.add_row("Gallery.search (before)", f"{people} people x 2",
                     f"{_per_call_us(lambda: g.search(q, 1), 300):.0f} us", "one track")
        cost.add_row("Gallery.identify (after)", f"{people} people x 2",
                      f"{_per_call_us(lambda: g.identify(q), 300):.0f} us", "one track")
    min_cos = score_to_similarity(70)
    for n in (8, 20, 60):
        e = _unit(rng, n)
        cost.add_row("two_groups", f"{n} faces", f"{_per_call_us(lambda: two_groups(e, min_cos), 200):.0f} us",
                     "one track, at the end")
    emb = default_embedder()
    crops = rng.integers(0, 255, (16, 112, 112, 3), np.uint8)
    emb(crops[:1])
    t = time.perf_counter()
    for c in crops:
        emb(c[None])
    ms = (time.perf_counter() - t) / len(crops) * 1e3
    bank = TrackBank()
    cost.add_row("TrackBank samples", f"1 face in {bank.sample_every}", f"{ms / bank.sample_every:.2f} ms",
                 f"a tracked face, on average (SFace {ms:.1f} ms a face)")
    con.print(cost)


if __name__ == "__main__":
    main()
