"""Speed of the emoji video (``render_emoji_video``): render time against clip duration.

For each clip, faces are found with YuNet every 0.5 s (not timed, as an analysis would
have stored them), then the clip is rendered three ways: emoji on every face, unknown
faces blurred, and no faces at all (decode + re-encode + audio copy only). A
decode-only pass (every frame, no colour conversion) is the floor. "x real time" is
clip duration / render time; the target is >= 2x for 640x360 on 2 cores.

Numbers depend on what else runs on the machine: the load average is printed with them,
and CPU seconds (all threads of this process) beside wall seconds, which are steadier
on a busy machine.

    python benchmarks/render_speed.py [--clips pyfeat/WolfgangLanger_Pexels.mp4 ...] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import av
from rich.console import Console
from rich.table import Table

from _util import DATA, need


CLIPS = ["pyfeat/WolfgangLanger_Pexels.mp4", "pyfeat/single_face.mp4", "pyfeat/no_face.mp4",
         "pyfeat/face_noface.mov", "pyfeat/noface_face.mov"]


def detected(path: Path, every_s: float = 0.5) -> list[dict]:
    from moodlens.faces.detect import detect_faces
    from moodlens.types import EMOTIONS

    rows = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        origin, tb, k = s.start_time or 0, s.time_base, 0
        for frame in c.decode(s):
            t = float((frame.pts - origin) * tb)
            if t < k * every_s - 0.02:
                continue
            k = int(t / every_s + 0.5) + 1
            faces = detect_faces(frame.to_ndarray(format="bgr24"))
            for i in range(len(faces)):
                x, y, w, h = (float(v) for v in faces.boxes[i])
                row = {"time_s": t, "track": 0, "person": "unknown-1", "x": x, "y": y, "w": w, "h": h}
                row.update({e: (70.0 if j == len(rows) % 8 else 30.0 / 7) for j, e in enumerate(EMOTIONS)})
                rows.append(row)
    return rows


def decode_only(path: Path) -> tuple[float, int, float]:
    t, c0 = time.perf_counter(), time.process_time()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        n = sum(1 for _ in c.decode(s))
    return time.perf_counter() - t, n, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", nargs="+", default=CLIPS, help="paths under ../shared/data/video")
    p.add_argument("--repeat", type=int, default=1, help="runs per measurement; the best is kept")
    args = p.parse_args()

    from moodlens.reports.emoji import load_emoji, render_emoji_video

    for size in (256, 512):
        load_emoji(size)  # rasterising the artwork is a one-off cost at load, not per video
    console = Console()
    load0 = os.getloadavg()
    table = Table(title=f"emoji.mp4 render speed ({os.cpu_count()} CPUs, load average {load0[0]:.1f} at start)")
    for col in ("clip", "size", "duration s", "frames", "faces drawn", "mode", "seconds", "x real time", "frames/s",
                "CPU s", "x real time per CPU s"):
        table.add_column(col, justify="left" if col in ("clip", "mode") else "right")
    with tempfile.TemporaryDirectory() as tmp:
        for rel in args.clips:
            path = need(DATA / "video" / rel)
            with av.open(str(path)) as c:
                v = c.streams.video[0]
                duration = float(v.duration * v.time_base) if v.duration else c.duration / av.time_base
                size = f"{v.codec_context.width}x{v.codec_context.height}"
            rows = detected(path)
            dec, frames, dec_cpu = min(decode_only(path) for _ in range(args.repeat))
            table.add_row(rel, size, f"{duration:.1f}", str(frames), "", "decode only", f"{dec:.2f}",
                          f"{duration / dec:.1f}", f"{frames / dec:.0f}", f"{dec_cpu:.2f}", f"{duration / dec_cpu:.1f}")
            for mode, obs, blur in (("emoji", rows, False), ("blur unknown", rows, True), ("no faces", [], False)):
                best, cpu = float("inf"), float("inf")
                for _ in range(args.repeat):
                    t, c0 = time.perf_counter(), time.process_time()
                    render_emoji_video(path, obs, Path(tmp) / "emoji.mp4", blur_unknown=blur, sample_interval_s=0.5)
                    best, cpu = min(best, time.perf_counter() - t), min(cpu, time.process_time() - c0)
                table.add_row("", "", "", "", str(len(obs)) + " samples" if obs else "-", mode, f"{best:.2f}",
                              f"{duration / best:.1f}", f"{frames / best:.0f}", f"{cpu:.2f}", f"{duration / cpu:.1f}")
    console.print(table)
    load1 = os.getloadavg()
    console.print(f"load average {load0[0]:.1f} -> {load1[0]:.1f} on {os.cpu_count()} CPUs: anything else running "
                  "(e.g. model training) makes these numbers pessimistic.")


if __name__ == "__main__":
    main()
