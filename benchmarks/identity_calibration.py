"""Calibration of the 0-100 match score: genuine / impostor SFace cosines on the shared identity data.

Every labelled photo of ``identity/bbt`` (8 people x 5 greyscale TV crops) and
``identity/deepface_unit`` (13 people, 61 web photos) is embedded once (largest face,
as at enrolment). Genuine pairs: two photos of one person within a set. Impostor
pairs: different people within a set, plus every bbt x deepface pair (TV characters vs
celebrities; no one is in both). ``identity/facenet_pytorch`` is left out of the
cross pairs (its Angelina Jolie is also in deepface_unit).

Prints the distributions, the FMR / FNMR at several score thresholds (with the cosine
each stands for) and the cosines at target FMRs, i.e. the numbers behind the constants
in ``moodlens.faces.identity``.

    python benchmarks/identity_calibration.py [--data ../shared/data/identity]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from moodlens.evaluation.identity import embed_photos, read_identity_set
from moodlens.faces.identity import SCORE_COS_70, SCORE_COS_98, score_to_similarity, similarity_to_score

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "identity"
SETS = ("bbt", "deepface_unit")


def pairs(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = emb @ emb.T
    iu = np.triu_indices(len(emb), 1)
    same = (labels[:, None] == labels[None, :])[iu]
    return s[iu][same], s[iu][~same]


def stats(x: np.ndarray) -> str:
    return (f"n={len(x):<5d} mean {x.mean():.3f}  sd {x.std():.3f}  min {x.min():.3f}  "
            f"p1 {np.quantile(x, .01):.3f}  p5 {np.quantile(x, .05):.3f}  median {np.median(x):.3f}  "
            f"p95 {np.quantile(x, .95):.3f}  p99 {np.quantile(x, .99):.3f}  p99.9 {np.quantile(x, .999):.3f}  "
            f"max {x.max():.3f}")


def normal_tail(x: np.ndarray, t: float) -> float:
    """P(X >= t) under a normal fitted to x (extrapolates the impostor tail beyond the data)."""
    z = (t - x.mean()) / x.std()
    return 0.5 * math.erfc(z / math.sqrt(2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = p.parse_args()
    con = Console()

    embs, labels, sets = [], [], []
    genuine, impostor = [], []
    for name in SETS:
        root = args.data / name
        if not root.is_dir():
            con.print(f"[yellow]skipping {name}: {root} not found[/]")
            continue
        _, paths, people = read_identity_set(root)
        e, found = embed_photos(paths)
        lab = np.array([f"{name}/{x}" for x in people], object)[found]
        con.print(f"{name}: {found.sum()} of {len(paths)} photos with a face, {len(set(lab))} people")
        g, i = pairs(e[found], lab)
        con.print(f"  genuine  {stats(g)}")
        con.print(f"  impostor {stats(i)}")
        genuine.append(g)
        impostor.append(i)
        embs.append(e[found])
        labels.append(lab)
        sets.append(name)
    if len(embs) == 2:
        cross = (embs[0] @ embs[1].T).ravel()
        con.print(f"cross {sets[0]} x {sets[1]} impostors {stats(cross)}")
        impostor.append(cross)
    g, i = np.concatenate(genuine), np.concatenate(impostor)
    con.print(f"\n[bold]pooled[/] genuine  {stats(g)}")
    con.print(f"[bold]pooled[/] impostor {stats(i)}")
    d_prime = (g.mean() - i.mean()) / math.sqrt((g.var() + i.var()) / 2)
    con.print(f"d' = {d_prime:.2f}")

    t = Table(title=f"score: logistic in cosine, 70 <-> cos {SCORE_COS_70}, 98 <-> cos {SCORE_COS_98}")
    for c in ("score", "cosine", "FMR (measured)", "FMR (normal fit)", "FNMR (pairwise)"):
        t.add_column(c, justify="right")
    for s in (30, 50, 60, 65, 70, 75, 80, 90, 95, 98):
        c = score_to_similarity(s)
        t.add_row(str(s), f"{c:.3f}", f"{np.mean(i >= c):.2e} ({int(np.sum(i >= c))}/{len(i)})",
                  f"{normal_tail(i, c):.1e}", f"{np.mean(g < c):.3f} ({int(np.sum(g < c))}/{len(g)})")
    con.print(t)

    t = Table(title="cosine at a target pairwise FMR (measured quantiles; normal fit beyond the data)")
    for c in ("FMR", "cosine (measured)", "cosine (normal fit)", "score", "FNMR"):
        t.add_column(c, justify="right")
    for fmr in (1e-1, 1e-2, 1e-3, 1e-4):
        measured = float(np.quantile(i, 1 - fmr)) if fmr * len(i) >= 1 else float("nan")
        fit = i.mean() + i.std() * math.sqrt(2) * _erfcinv(2 * fmr)
        use = measured if not math.isnan(measured) else fit
        t.add_row(f"{fmr:.0e}", f"{measured:.3f}", f"{fit:.3f}", f"{similarity_to_score(use):.1f}",
                  f"{np.mean(g < use):.3f}")
    con.print(t)


def _erfcinv(y: float) -> float:
    """Inverse complementary error function by bisection (no scipy.special needed here)."""
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if math.erfc(mid) > y:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


if __name__ == "__main__":
    main()
