"""Identity memory: peak RSS of `analyze` with and without --reid, and where the difference goes.

First table: `moodlens analyze` on the 1080p crowd clip, with and without `--reid`, each
in a fresh process (a new SQLite file and output folder each time); the peak is the
child's own ru_maxrss from ``os.wait4``. Target: --reid under 700 MB (it was 1,015 MB
against 535 MB without it; 1,008 against 510 on this project's 2-core machine).

Second table: the parts of SFace's memory, each measured in a fresh process from
/proc/self/status (Linux) with YuNet already loaded, so ONNX Runtime's own start-up is
not counted: the session as it used to be built (float32 fold, arena, serialised model
kept, freed heap kept) beside `moodlens.models.sface_session` today, the activations ORT
keeps after embedding 32 faces (in calls of 32 before, of `Embedder.batch_size` now), and
what the per-track bank holds on the crowd clip.

    python benchmarks/identity_memory.py [--clip video/facenet_pytorch/video.mp4] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from _util import DATA, need

TARGET_MB = 700

CLI = "import sys; from moodlens.cli import main; sys.argv[0] = 'moodlens'; sys.exit(main())"


def analyze_peak(clip: Path, reid: bool) -> dict:
    """Run `moodlens analyze` in a fresh process: its peak RSS (MB), wall and CPU seconds."""
    with tempfile.TemporaryDirectory(prefix="moodlens-idmem-") as tmp:
        cmd = [sys.executable, "-c", CLI, "analyze", str(clip), "--json", "--db", f"sqlite:///{tmp}/a.db",
               "--out", f"{tmp}/out"] + (["--reid"] if reid else [])
        with open(f"{tmp}/stdout", "wb") as out, open(f"{tmp}/stderr", "wb") as err:
            t = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=out, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            sys.exit(f"analyze failed ({proc.returncode}): {Path(tmp, 'stderr').read_text()[-2000:]}")
        try:
            timings = json.loads(Path(tmp, "stdout").read_text()).get("timings") or {}
        except ValueError:
            timings = {}
        return {"rss_mb": usage.ru_maxrss / 1024, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                "identity_s": timings.get("identity"), "total_s": timings.get("total")}


# Each breakdown child prints one JSON line of {step: MB}.
PRELUDE = """
import gc, json, sys
import numpy as np
import onnxruntime as ort
from moodlens.models import release_free_memory, sface_model, yunet_session
from moodlens.models.onnx_utils import make_dynamic_input

def rss():
    gc.collect()
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

yunet_session()  # ONNX Runtime's own start-up, paid without identity too
crops = np.random.default_rng(0).integers(0, 255, (32, 112, 112, 3), dtype=np.uint8)
blob = np.ascontiguousarray(crops[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)
R = {}
"""

BEFORE = PRELUDE + """
r0 = rss()
data = make_dynamic_input(sface_model(), {0: "batch"}).SerializeToString()
so = ort.SessionOptions(); so.log_severity_level = 3
s = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])  # as built before: arena, bytes kept
R["serialised_mb"] = len(data) / 2**20
del data
r1 = rss(); R["load_mb"] = r1 - r0
release_free_memory(); r2 = rss(); R["heap_mb"] = r1 - r2
s._model_bytes = None; release_free_memory(); r3 = rss(); R["held_bytes_mb"] = r2 - r3
R["live_mb"] = r3 - r0
s.run(None, {"data": blob}); R["arena32_mb"] = rss() - r3  # the old Embedder's batch of 32
print(json.dumps(R))
"""

AFTER = PRELUDE + """
from moodlens.faces.identity import TrackBank, default_embedder
import moodlens.pipeline
r0 = rss()
emb = default_embedder()
r1 = rss(); R["load_mb"] = r1 - r0
emb(crops)  # 32 faces, in calls of emb.batch_size
R["calls_kept_mb"] = rss() - r1
# what the per-track bank holds on the clip: aligned 112 px crops waiting for a batch,
# and 128-d embeddings of each track's best faces (never frames)
held = {"bytes": 0, "crops": 0, "embedded": 0}
flush = TrackBank.flush
def counting_flush(self):  # the bank is fullest just before it embeds its pending crops
    b = sum(c.nbytes for _, c in self._pending) + sum(e.nbytes for e in self._emb.values())
    held["bytes"] = max(held["bytes"], b); held["crops"] = max(held["crops"], len(self._pending))
    held["embedded"] += len(self._pending)
    flush(self)
TrackBank.flush = counting_flush
import tempfile
with tempfile.TemporaryDirectory() as tmp:
    moodlens.pipeline.analyze(sys.argv[1], db=f"sqlite:///{tmp}/b.db", reid=True)
R["bank_mb"] = held["bytes"] / 2**20; R["bank_crops"] = held["crops"]; R["embedded"] = held["embedded"]
R["batch"] = emb.batch_size
print(json.dumps(R))
"""


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"breakdown child failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip", default="video/facenet_pytorch/video.mp4", help="video under the shared data folder")
    p.add_argument("--repeat", type=int, default=1, help="runs of each analyze (the median is shown)")
    p.add_argument("--no-breakdown", action="store_true", help="only the analyze table")
    args = p.parse_args()
    if not Path("/proc/self/status").exists():
        sys.exit("needs Linux (/proc and ru_maxrss in KiB)")
    clip = need(DATA / args.clip)
    con = Console()
    con.print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; {clip.name}")

    runs = {False: [], True: []}
    for _ in range(args.repeat):
        for reid in (False, True):  # sequential: one measurement at a time
            runs[reid].append(analyze_peak(clip, reid))

    def med(rows, key):
        vals = [r[key] for r in rows if r[key] is not None]
        return statistics.median(vals) if vals else None

    t = Table(title=f"moodlens analyze, peak RSS (target: --reid under {TARGET_MB} MB)", title_justify="left")
    for c in ("run", "peak MB", "wall s", "CPU s", "pipeline s", "identity s"):
        t.add_column(c, justify="right")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for reid in (False, True):
        rows = runs[reid]
        t.add_row("--reid" if reid else "plain", f"{med(rows, 'rss_mb'):.0f}", f"{med(rows, 'wall_s'):.1f}",
                  f"{med(rows, 'cpu_s'):.1f}", fmt(med(rows, "total_s"), ".1f"), fmt(med(rows, "identity_s"), ".2f"))
    t.add_row("difference", f"{med(runs[True], 'rss_mb') - med(runs[False], 'rss_mb'):+.0f}", "", "", "", "")
    con.print(t)
    if args.no_breakdown:
        return

    before = child(BEFORE)
    after = child(AFTER, str(clip))
    t = Table(title="Where SFace's memory goes, MB", title_justify="left")
    t.add_column("part")
    t.add_column("as built before", justify="right")
    t.add_column("now", justify="right")
    t.add_row("model loaded (fold + session)", f"{before['load_mb']:.0f}", f"{after['load_mb']:.0f}")
    t.add_row("  session: float32 weights", f"{before['live_mb']:.0f}", f"{after['load_mb']:.0f}")
    t.add_row("  freed heap glibc keeps", f"{before['heap_mb']:.0f}", "0 (trimmed)")
    t.add_row("  serialised model ORT keeps", f"{before['held_bytes_mb']:.0f}", "0 (dropped)")
    t.add_row(f"activations kept (calls of 32 / {after['batch']})", f"{before['arena32_mb']:.0f}",
              f"{after['calls_kept_mb']:.0f}")
    t.add_row("per-track bank (crops, vectors)", f"{after['bank_mb']:.1f}", f"{after['bank_mb']:.1f}")
    con.print(t)
    con.print(f"Fresh process per column, YuNet loaded first (ONNX Runtime's start-up not counted). The bank "
              f"holds at most {after['bank_crops']} aligned 112 px crops awaiting a batch plus a 128-d vector "
              f"per kept face ({after['embedded']} embedded on the clip), never frames.")


if __name__ == "__main__":
    main()
