"""Throughput and memory of `analyze` at the default 2 fps, against decode-only time.

Prints one row per clip: duration, decode-only seconds (the same sampled
decode the pipeline does), pipeline seconds (frames in to rows stored, models
already loaded) and its x real time, the wall time of the whole process run
(imports and model loading included), overhead over decoding, peak RSS. Then the length test: a 1-minute and a 10-minute video
made by remuxing a shared clip's packets end to end (no re-encode), whose peak
RSS must not grow with length. Each measurement runs in a fresh process.

    python benchmarks/pipeline_speed.py [--fps 2] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import av
from rich.console import Console
from rich.table import Table

from _util import DATA, need, run_child

CLIPS = ["pyfeat/WolfgangLanger_Pexels.mp4", "pyfeat/single_face.mp4", "pyfeat/face_noface.mov",
         "liveportrait_driving/d0.mp4", "grid/bbaf2n.mpg", "facenet_pytorch/video.mp4"]


def concat(src: Path, dst: Path, seconds: float) -> Path:
    """Repeat ``src``'s video packets (no audio, no re-encode) until ``seconds`` long."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream_from_template(vin)
        packets = [p for p in inp.demux(vin) if p.dts is not None]
        span = max(p.pts for p in packets) - min(p.pts for p in packets) + (packets[1].pts - packets[0].pts if len(packets) > 1 else 1)
        span_s = float(span * vin.time_base)
        start = min(p.pts for p in packets)
        for k in range(int(seconds / span_s) + 1):
            for p in packets:
                q = av.Packet(bytes(p))
                q.pts, q.dts = p.pts - start + k * span, p.dts - start + k * span
                q.is_keyframe = p.is_keyframe
                q.time_base = vin.time_base
                q.stream = vout
                out.mux(q)
    return dst


def measure(path: Path, fps: float) -> dict:
    dec = run_child(f"import time; from moodlens.media import decode_only, probe\n"
                    f"i = probe({str(path)!r}); t = time.perf_counter(); n = decode_only({str(path)!r}, fps={fps})\n"
                    f"RESULT = dict(decode_s=time.perf_counter() - t, frames=n, duration=i.duration_s, size=f'{{i.width}}x{{i.height}}')")
    ana = run_child(f"import time, tempfile; import moodlens\n"
                    f"d = tempfile.mkdtemp(); t = time.perf_counter()\n"
                    f"a = moodlens.analyze({str(path)!r}, fps={fps}, db=f'sqlite:///{{d}}/b.db')\n"
                    f"RESULT = dict(wall_s=time.perf_counter() - t, total_s=a.timings['total'], obs=a.n_observations, timings=a.timings)")
    return {**dec, **ana}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fps", type=float, default=2.0)
    ap.add_argument("--quick", action="store_true", help="skip the 10-minute memory test")
    args = ap.parse_args()
    console = Console(width=200)
    t = Table(title=f"analyze at {args.fps:g} fps on a 2-core CPU")
    for c in ("clip", "size", "video s", "decode s", "pipeline s", "x real time", "wall s (with start-up)",
              "over decode", "faces", "peak RSS MB"):
        t.add_column(c, justify="left" if c in ("clip", "size") else "right")
    for clip in CLIPS:
        path = DATA / "video" / clip
        if not path.exists():
            continue
        r = measure(path, args.fps)
        t.add_row(clip, r["size"], f"{r['duration']:.1f}", f"{r['decode_s']:.2f}", f"{r['total_s']:.2f}",
                  f"{r['duration'] / r['total_s']:.1f}", f"{r['wall_s']:.2f}", f"{r['total_s'] / max(r['decode_s'], 1e-9):.1f}x",
                  str(r["obs"]), f"{r['rss_mb']:.0f}")
    console.print(t)
    if args.quick:
        return
    src = need(DATA / "video" / "pyfeat" / "WolfgangLanger_Pexels.mp4")
    m = Table(title="memory against video length (same content repeated, remuxed)")
    for c in ("video", "minutes", "pipeline s", "x real time", "faces", "peak RSS MB"):
        m.add_column(c, justify="right")
    rss = {}
    with tempfile.TemporaryDirectory() as d:
        for minutes in (1, 10):
            p = concat(src, Path(d) / f"concat_{minutes}min.mp4", minutes * 60)
            r = measure(p, args.fps)
            rss[minutes] = r["rss_mb"]
            m.add_row(p.name, f"{r['duration'] / 60:.1f}", f"{r['total_s']:.1f}", f"{r['duration'] / r['total_s']:.1f}",
                      str(r["obs"]), f"{r['rss_mb']:.0f}")
    console.print(m)
    console.print(f"RSS ratio 10 min / 1 min: {rss[10] / rss[1]:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
