"""Shot cuts (issue 21): cut detection against known cuts, ID switches per cut, and what it costs.

Clips with known cuts are made by concatenating shared clips of different people with PyAV
(re-encoded at 25 fps, letterboxed to 640x360, about 3.2 s from each; the cut times are
recorded). Hard cases on purpose: two studios with the same background and framing (GRID's
speakers; LivePortrait's grey and green screens), every face at the centre of the frame.

1. Cut detection. moodlens's detector (``moodlens.shots``) runs on the 2 fps samples the
   pipeline decodes anyway; PySceneDetect (ContentDetector, AdaptiveDetector) decodes every
   frame itself, a second pass. A detected cut counts when a known cut lies between it and
   the sample before (0.55 s before to 0.1 s after it). Shared clips without cuts give the
   false cuts; ``pyfeat/face_noface.mov`` and ``noface_face.mov`` have a cut of their own each.
   ms a frame: detector time over the 2 fps samples (moodlens: decoded frames given; the
   PySceneDetect figure includes its own decoding, since that is what it costs to run it).
2. ID switches: ``analyze`` on the concatenations, without and with cut detection, without
   and with the tracker's re-acquisition check (``check_tracks``), and at some appearance
   gates (``Tracker.max_appearance_dist``). A track whose faces come from two people is one
   switch per extra person (GRID's id2_vcd_swwp2s and pwij3p are one speaker). The same
   sequences with a second of no face between the parts stand for occlusions: the track is
   missed twice, kept, and offered the next person at the same place. Track counts on shared
   single-shot clips show whether a gate or the check fragments tracks.
3. What the re-acquisition check costs: checks, refusals and seconds per face and frame.
4. ``analyze`` speed on shared clips without and with cut detection, and without and with
   the check (models loaded, best and median of 6 alternating runs; a 2-core machine shared
   with other work is noisy: the step's own busy time, ``timings['shots']`` and
   ``timings['track_check']``, bounds what it can cost).

    python benchmarks/shot_cuts.py [--quick]

PySceneDetect is not a dependency: ``pip install scenedetect`` (or put it on PYTHONPATH)
to measure it; otherwise its rows are skipped.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from _util import DATA, need
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_shots import concat_clips  # noqa: E402  (one copy, shared with the tests)

LP = "liveportrait_driving"
SEQUENCES = {  # each a clip with known cuts: one person per part
    "grey+green screens": [f"{LP}/d18.mp4", f"{LP}/d19.mp4", f"{LP}/d0.mp4", f"{LP}/d11.mp4"],
    "liveportrait A": [f"{LP}/d3.mp4", f"{LP}/d6.mp4", f"{LP}/d9.mp4", f"{LP}/d13.mp4"],
    "liveportrait B": [f"{LP}/d10.mp4", f"{LP}/d14.mp4", f"{LP}/d12.mp4", f"{LP}/d20.mp4"],
    "liveportrait C": [f"{LP}/s18.mp4", f"{LP}/s32.mp4", f"{LP}/s13.mp4", f"{LP}/s20.mp4", f"{LP}/s29.mp4"],
    "pexels+fer+pyfeat": ["pyfeat/WolfgangLanger_Pexels.mp4", "fer/woman2.mp4", "pyfeat/single_face.mp4",
                          f"{LP}/d3.mp4"],
    "GRID studio": ["grid/bbaf2n.mpg", "grid/sbwe5n.mpg", "grid/id2_vcd_swwp2s.mpg", "grid/pwij3p.mpg",
                    "grid/brbk7n.mpg", "grid/lbax4n.mpg"],
}
NO_CUTS = ([f"{LP}/{n}" for n in ("d0", "d3", "d6", "d9", "d10", "d11", "d12", "d13", "d14", "d18", "d19", "d20",
                                  "s13", "s18", "s20", "s29", "s32")]
           + ["pyfeat/WolfgangLanger_Pexels.mp4", "pyfeat/single_face.mp4", "pyfeat/no_face.mp4", "fer/woman2.mp4",
              "facenet_pytorch/video.mp4"] + [f"grid/{n}.mpg" for n in ("bbaf2n", "brbk7n", "id2_vcd_swwp2s",
                                                                      "lbax4n", "pwij3p", "sbwe5n")])
OWN_CUTS = ["pyfeat/face_noface.mov", "pyfeat/noface_face.mov"]
SAME_PERSON = {"grid/pwij3p.mpg": "grid/id2_vcd_swwp2s.mpg"}  # SFace cosine 0.95 between the clips' means
GAP = "pyfeat/no_face.mp4"
APP_JUMP = 0.3  # the check's optional second trigger (Tracker.check_app_dist), measured as a variant
GAP_S = 1.0
SPEED = ["pyfeat/WolfgangLanger_Pexels.mp4", "facenet_pytorch/video.mp4", f"{LP}/d6.mp4"]
SEGMENT_S = 3.2


def moodlens_cuts(path: Path) -> tuple[list[float], float, int]:
    """Cut times (first sample of each new shot), detector seconds, samples."""
    from moodlens import media
    from moodlens.shots import ShotDetector

    d, cuts, busy, n = ShotDetector(), [], 0.0, 0
    for frame in media.iter_frames(path, fps=2.0):
        t = time.perf_counter()
        cut = d.update(frame.image)
        busy += time.perf_counter() - t
        n += 1
        if cut:
            cuts.append(frame.time_s)
    return cuts, busy, n


def scenedetect_cuts(path: Path, kind: str) -> tuple[list[float], float] | None:
    try:
        import scenedetect
    except ImportError:
        return None
    detector = {"content": scenedetect.ContentDetector, "adaptive": scenedetect.AdaptiveDetector}[kind]()
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scenes = scenedetect.detect(str(path), detector)
    busy = time.perf_counter() - t
    return [float(s[0].seconds) for s in scenes[1:]], busy


def match(found: list[float], known: list[float]) -> int:
    """Known cuts found (each at most once): a cut at c is found by a detection at t when
    c lies in [t - 0.55, t + 0.1] (between the sample before and the detection)."""
    left, hits = list(found), 0
    for c in known:
        for t in left:
            if t - 0.55 <= c <= t + 0.1:
                left.remove(t)
                hits += 1
                break
    return hits


def detection_table(console: Console, made: dict[str, tuple[Path, list[float]]], quick: bool) -> None:
    from moodlens import media

    tab = Table(title="shot cut detection: known cuts in concatenated shared clips, false cuts on shared clips without")
    for c in ("detector", "runs on", "known cuts", "found", "false cuts (concat)", "false cuts (uncut clips)",
              "precision", "recall", "ms a 2 fps sample", "own cuts found (face_noface, noface_face)"):
        tab.add_column(c, justify="left" if c in ("detector", "runs on") else "right")
    no_cuts = [DATA / "video" / c for c in (NO_CUTS[:8] if quick else NO_CUTS) if (DATA / "video" / c).exists()]
    own = [DATA / "video" / c for c in OWN_CUTS if (DATA / "video" / c).exists()]
    samples = {p: sum(1 for _ in media.iter_frames(p, fps=2.0)) for p in [m[0] for m in made.values()] + no_cuts + own}
    for name, runs_on, fn in [
        ("moodlens.shots", "2 fps samples", lambda p: moodlens_cuts(p)[:2]),
        ("PySceneDetect ContentDetector", "every frame (own decode)", lambda p: scenedetect_cuts(p, "content")),
        ("PySceneDetect AdaptiveDetector", "every frame (own decode)", lambda p: scenedetect_cuts(p, "adaptive")),
    ]:
        known = hits = false_concat = false_uncut = 0
        busy, n = 0.0, 0
        skipped = False
        for path, cuts in made.values():
            r = fn(path)
            if r is None:
                skipped = True
                break
            found, b = r
            h = match(found, cuts)
            known, hits, false_concat = known + len(cuts), hits + h, false_concat + len(found) - h
            busy, n = busy + b, n + samples[path]
        if skipped:
            tab.add_row(name, runs_on, *["not installed"] + [""] * 7)
            continue
        for path in no_cuts:
            found, b = fn(path)
            false_uncut += len(found)
            busy, n = busy + b, n + samples[path]
        own_found = []
        for path in own:
            found, _ = fn(path)
            own_found.append(", ".join(f"{t:.2f}" for t in found) or "none")
        detections = hits + false_concat + false_uncut
        tab.add_row(name, runs_on, str(known), str(hits), str(false_concat), str(false_uncut),
                    f"{hits / detections:.3f}" if detections else "-", f"{hits / known:.3f}",
                    f"{busy / n * 1000:.2f}", " | ".join(own_found))
    console.print(tab)


def switches(analysis, cuts: list[float], people: list[str]) -> tuple[int, int]:
    """(ID switches, tracks): a track with faces of k people counts k - 1 (``people``: each
    part's person; parts between ``cuts``)."""
    bounds = np.array(cuts)
    n = 0
    tracks = analysis.tracks
    for obs in tracks.values():
        who = {people[int(np.searchsorted(bounds, o["time_s"], side="right"))] for o in obs}
        n += len(who) - 1
    return n, len(tracks)


def _analyze(path: Path, db: str, gate: float, shot_cuts: bool, check: bool | float = True):
    """``check``: False, True (the default check: re-acquisitions), or a float: also check
    appearance jumps above it (``Tracker.check_app_dist``)."""
    import moodlens
    from moodlens import pipeline
    from moodlens.faces.track import Tracker

    extra = {} if isinstance(check, bool) else {"check_app_dist": check}
    pipeline.Tracker = functools.partial(Tracker, max_appearance_dist=gate, **extra)
    try:
        return moodlens.analyze(path, db=db, shot_cuts=shot_cuts, check_tracks=bool(check))
    finally:
        pipeline.Tracker = Tracker


def _config_name(c: tuple) -> str:
    g, sc, v = c
    check = "off" if v is False else "on" if v is True else f"on + jumps > {v:g}"
    return f"cuts {'on' if sc else 'off'}, gate {g:g}, check {check}"


def switch_table(console: Console, made: dict[str, tuple[Path, list[float], list[str]]], db: str,
                 gates: list[float], title: str) -> list:
    """Switches per config; returns the analyses of the default config (for the cost table)."""
    tab = Table(title=title)
    tab.add_column("clip", justify="left")
    tab.add_column("cuts", justify="right")
    configs = [(g, False, False) for g in gates] + [(gates[0], False, True), (gates[0], False, APP_JUMP),
                                                     (gates[0], True, False), (gates[0], True, True)]
    for c in configs:
        tab.add_column(f"{_config_name(c)}: switches / tracks", justify="right")
    totals = {c: [0, 0] for c in configs}
    n_cuts = 0
    default = []
    for name, (path, cuts, people) in made.items():
        row = [name, str(len(cuts))]
        n_cuts += len(cuts)
        for c in configs:
            a = _analyze(path, db, *c)
            if c == configs[-1]:
                default.append((name, a))
            s, t = switches(a, cuts, people)
            totals[c][0] += s
            totals[c][1] += t
            row.append(f"{s} / {t}")
        tab.add_row(*row)
    tab.add_row("all", str(n_cuts), *[f"{s} / {t} ({s / n_cuts:.2f} a cut)" for s, t in totals.values()])
    console.print(tab)
    return default


def fragment_table(console: Console, db: str, gates: list[float]) -> list:
    configs = [(g, False, False) for g in gates] + [(gates[0], True, False), (gates[0], True, APP_JUMP),
                                                     (gates[0], True, True)]
    frag = Table(title="tracks on shared single-shot clips (a stricter gate or the check must not fragment them)")
    frag.add_column("clip", justify="left")
    for c in configs:
        frag.add_column(f"{_config_name(c)}: tracks", justify="right")
    default = []
    for clip in ["pyfeat/WolfgangLanger_Pexels.mp4", "facenet_pytorch/video.mp4", "fer/woman2.mp4", f"{LP}/d3.mp4",
                 f"{LP}/d6.mp4", f"{LP}/d12.mp4", "faceapi/test_video.mp4"]:
        path = DATA / "video" / clip
        if path.exists():
            row = [clip]
            for c in configs:
                a = _analyze(path, db, *c)
                row.append(str(a.n_tracks))
            default.append((clip, a))
            frag.add_row(*row)
    console.print(frag)
    return default


def check_cost_table(console: Console, analyses: list) -> None:
    tab = Table(title="the re-acquisition check in the default analyses above (cuts on, check on)")
    for c in ("clip", "frames", "faces", "checks", "refused", "check s", "ms a face", "ms a frame",
              "share of analyze"):
        tab.add_column(c, justify="left" if c == "clip" else "right")
    tot = [0, 0, 0, 0, 0.0, 0.0]
    for name, a in analyses:
        t = a.timings
        c, r, s = t.get("track_checks", 0), t.get("track_refused", 0), t.get("track_check", 0.0)
        n = a.n_observations
        tot = [tot[0] + a.frames, tot[1] + n, tot[2] + c, tot[3] + r, tot[4] + s, tot[5] + t["total"]]
        tab.add_row(name, str(a.frames), str(n), str(c), str(r), f"{s:.3f}", f"{s / max(n, 1) * 1000:.2f}",
                    f"{s / max(a.frames, 1) * 1000:.2f}", f"{s / t['total'] * 100:.1f} %")
    f, n, c, r, s, total = tot
    tab.add_row("all", str(f), str(n), str(c), str(r), f"{s:.3f}", f"{s / max(n, 1) * 1000:.2f}",
                f"{s / max(f, 1) * 1000:.2f}", f"{s / total * 100:.1f} %")
    console.print(tab)
    console.print("  (check s includes loading SFace once per process when the first check needs it, ~0.5 s)")


def speed_table(console: Console, db: str, runs: int, option: str = "shot_cuts", busy_key: str = "shots",
                what: str = "cut detection", clips: list[str] = SPEED) -> None:
    import moodlens

    tab = Table(title=f"analyze speed without and with {what} (best / median of {runs}, models loaded)")
    for c in ("clip", "frames", "off s", "on s", "change", "its own busy s", "CPU time change (median, all threads)"):
        tab.add_column(c, justify="left" if c == "clip" else "right")
    for clip in clips:
        path = DATA / "video" / clip
        if not path.exists():
            continue
        moodlens.analyze(path, db=db)  # warm caches (and load SFace once, should a check need it)
        off, on, shots, cpu = [], [], [], {False: [], True: []}
        for k in range(runs):
            for cuts in ((False, True) if k % 2 == 0 else (True, False)):  # alternate: drift hits both
                t = time.process_time()
                a = moodlens.analyze(path, db=db, **{option: cuts})
                cpu[cuts].append(time.process_time() - t)
                (on if cuts else off).append(a.timings["total"])
                if cuts:
                    shots.append(a.timings.get(busy_key, 0.0))
        m_off, m_on = statistics.median(off), statistics.median(on)
        tab.add_row(clip, str(a.frames), f"{min(off):.2f} / {m_off:.2f}", f"{min(on):.2f} / {m_on:.2f}",
                    f"{(min(on) / min(off) - 1) * 100:+.1f} % / {(m_on / m_off - 1) * 100:+.1f} %",
                    f"{statistics.median(shots):.3f} ({statistics.median(shots) / max(a.frames, 1) * 1000:.2f} ms a frame)",
                    f"{(statistics.median(cpu[True]) / statistics.median(cpu[False]) - 1) * 100:+.1f} %")
    console.print(tab)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer uncut clips, one gate, one speed run")
    ap.add_argument("--gates", default="0.45,0.6", help="appearance gates to compare (the first is the default)")
    args = ap.parse_args()
    need(DATA / "video")
    console = Console(width=220)
    gates = [float(g) for g in args.gates.split(",")]
    with tempfile.TemporaryDirectory() as d:
        made, gapped = {}, {}
        for name, clips in SEQUENCES.items():
            paths = [DATA / "video" / c for c in clips]
            if all(p.exists() for p in paths):
                people = [SAME_PERSON.get(c, c) for c in clips]
                dst = Path(d) / (name.replace(" ", "_").replace("+", "_") + ".mp4")
                made[name] = (dst, concat_clips([(p, SEGMENT_S) for p in paths], dst), people)
                if (DATA / "video" / GAP).exists():  # A, no face for GAP_S, B, ...: the gaps' "person" is none
                    parts = [x for p in paths for x in ((DATA / "video" / GAP, GAP_S), (p, SEGMENT_S))][1:]
                    dst = dst.with_name(dst.stem + "_gaps.mp4")
                    gapped[name] = (dst, concat_clips(parts, dst),
                                    [x for c in people for x in ("(gap)", c)][1:])
        db = f"sqlite:///{d}/bench.db"
        detection_table(console, {k: v[:2] for k, v in made.items()}, args.quick)
        g = gates[:1] if args.quick else gates
        default = switch_table(console, made, db, g, "ID switches on the concatenations (a track with faces of two "
                               "people = one switch)")
        default += switch_table(console, gapped, db, g, f"ID switches with {GAP_S:g} s of no face between the people "
                                "(an occlusion: the track is missed, kept, and offered the next person)")
        default += fragment_table(console, db, g)
        check_cost_table(console, default)
        speed_table(console, db, 1 if args.quick else 6)
        speed_table(console, db, 1 if args.quick else 6, "check_tracks", "track_check", "the re-acquisition check",
                    SPEED + ["facenet_pytorch/video.mp4"])


if __name__ == "__main__":
    main()
