"""Corrupt regions inside a video are skipped, counted and reported (issue 22, item 5).

FFmpeg skips a packet its decoder rejects and goes on; so does moodlens. The stretches
left without pictures are recorded as the analysis's ``decode_gaps`` and shown in the
report; decoding fails only when nothing decodes or more than ``media.MAX_LOSS`` of the
video is lost. Synthetic clips (noise frames, whose packets can be spoiled one by one)
run everywhere; real clips from ../shared/data are used where present.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

import moodlens
from conftest import shared
from moodlens import media
from moodlens.errors import MediaError
from moodlens.store import Store

RATE, N = 10, 60  # synthetic clip: 6 s at 10 fps, a key frame every second


def _noise_clip(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        s = out.add_stream("libx264", rate=RATE)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"g": "10", "keyint_min": "10", "x264-params": "scenecut=0"}
        for i in range(N):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), np.uint8), format="bgr24")
            frame.pts = i
            out.mux(s.encode(frame))
        out.mux(s.encode())
    return path


@pytest.fixture(scope="module")
def noise(tmp_path_factory) -> Path:
    return _noise_clip(tmp_path_factory.mktemp("noise") / "noise.mp4")


def _spoil_packets(src: Path, dst: Path, which: range) -> Path:
    """Overwrite the bytes of the video packets ``which`` (decode order) with random bytes."""
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(0)
    for i in which:
        pos, size = packets[i]
        data[pos:pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def _randomise(src: Path, dst: Path, start: float, n_bytes: int | None = None, end: float | None = None) -> Path:
    """A copy of ``src`` with the bytes from ``start`` (a share of the size) replaced by
    random ones (fixed seed): ``n_bytes`` of them, or up to the share ``end``."""
    data = bytearray(src.read_bytes())
    lo = int(len(data) * start)
    hi = lo + n_bytes if n_bytes is not None else int(len(data) * end)
    data[lo:hi] = np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def _pyav_count(path: Path) -> int:
    """Frames PyAV itself decodes when it skips the packets its decoder rejects (threaded as
    moodlens decodes: after corrupt data the output can depend on the threading)."""
    n = 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for packet in c.demux(s):
            try:
                n += len(s.decode(packet))
            except av.FFmpegError:
                pass
    return n


# ---- media, synthetic ---------------------------------------------------------------

def test_intact_clip_has_no_gaps(noise):
    stats = media.DecodeStats()
    assert media.decode_only(noise, None, stats=stats) == N
    assert (stats.packets, stats.failed_packets, stats.frames, stats.gaps) == (N, 0, N, [])


@pytest.mark.parametrize("fps", [None, 2.0])
def test_corrupt_packets_are_skipped_and_reported(noise, tmp_path, fps):
    bad = _spoil_packets(noise, tmp_path / "bad.mp4", range(20, 26))  # the key frame at 2 s and 5 after it
    stats = media.DecodeStats()
    times = [f.time_s for f in media.iter_frames(bad, fps=fps, stats=stats)]
    assert stats.failed_packets == 6 and stats.packets == N
    assert len(stats.gaps) == 1
    gap = stats.gaps[0]
    assert gap["packets"] == 6 and 1.9 <= gap["start_s"] <= 2.1 and 2.5 <= gap["end_s"] <= 3.1
    assert any(t < gap["start_s"] for t in times) and any(t >= gap["end_s"] for t in times)
    assert not any(gap["start_s"] <= t < gap["end_s"] for t in times)  # nothing emitted inside the gap
    if fps is None:  # all but a damaged picture decoded among the rejected packets, if any
        assert len(times) == stats.frames and _pyav_count(bad) - 2 <= stats.frames <= _pyav_count(bad)
    else:  # the 2.0 s target is lost; the first frame after the gap serves 2.5 (and 3.0 if it is late)
        assert np.all(np.diff(times) > 0) and 9 <= len(times) <= 11
        assert times[:4] == pytest.approx([0, 0.5, 1.0, 1.5], abs=0.21) and times[-1] >= 5.5


def test_corrupt_tail_is_a_gap_to_the_end_not_a_truncation(noise, tmp_path):
    bad = _spoil_packets(noise, tmp_path / "tail.mp4", range(50, N))
    stats = media.DecodeStats()
    assert media.decode_only(bad, None, stats=stats) == stats.frames == _pyav_count(bad)
    assert len(stats.gaps) == 1 and stats.gaps[0]["end_s"] == pytest.approx(N / RATE)
    assert 4.6 <= stats.gaps[0]["start_s"] <= 5.0  # the spoiled packets and the B-frames that need them


def test_more_than_max_loss_fails_with_one_line(noise, tmp_path):
    bad = _spoil_packets(noise, tmp_path / "most.mp4", range(5, N))
    with pytest.raises(MediaError) as err:
        media.decode_only(bad, 2.0)
    message = str(err.value)
    assert message.startswith(f"{bad}: over ") and "\n" not in message
    assert "% of the video could not be decoded" in message and message.endswith("more than the 50 % allowed")


def test_loss_share_is_the_module_constant(noise, tmp_path, monkeypatch):
    bad = _spoil_packets(noise, tmp_path / "bad.mp4", range(20, 26))  # about 15 % lost
    monkeypatch.setattr(media, "MAX_LOSS", 0.1)
    with pytest.raises(MediaError, match=r"bad\.mp4: (over )?\d+ % of the video could not be decoded .*"
                                         r"more than the 10 % allowed"):
        list(media.iter_frames(bad, fps=None))


def test_nothing_decodable_fails(noise, tmp_path):
    bad = _spoil_packets(noise, tmp_path / "none.mp4", range(N))
    with pytest.raises(MediaError, match=r"none\.mp4: no decodable video frames \(Invalid data"):
        media.probe(bad)  # what analyze calls first
    with pytest.raises(MediaError, match=r"none\.mp4: over \d+ % of the video could not be decoded"):
        media.decode_only(bad)  # stops as soon as the loss is past the limit, not at the end


# ---- real clip, through the pipeline ----------------------------------------------

CLIP = ("video", "pyfeat", "WolfgangLanger_Pexels.mp4")  # 19.7 s, 472 frames, one face throughout
INTACT_OBSERVATIONS = 40  # measured before decoding skipped corrupt packets: one face in each of 40 samples


@pytest.fixture(scope="module")
def corrupt_clip(tmp_path_factory) -> Path:
    src = shared(*CLIP)
    d = tmp_path_factory.mktemp("corrupt")
    return _randomise(src, d / "wolfgang_corrupt.mp4", 0.5, n_bytes=64 * 1024)


def test_real_clip_decodes_as_pyav_does(corrupt_clip):
    stats = media.DecodeStats()
    n = media.decode_only(corrupt_clip, None, stats=stats)
    assert n == stats.frames and _pyav_count(corrupt_clip) - 2 <= n <= _pyav_count(corrupt_clip)  # 442 of 472
    assert 0 < n < 472 and stats.failed_packets > 0
    assert len(stats.gaps) == 1 and 0 < stats.gaps[0]["start_s"] < stats.gaps[0]["end_s"] < 19.7


@pytest.mark.slow
def test_analysis_of_a_corrupt_clip_completes_with_its_gaps(corrupt_clip, tmp_path):
    db = f"sqlite:///{tmp_path / 'm.db'}"
    a = moodlens.analyze(corrupt_clip, db=db)
    assert a.status == "complete"
    gaps = a.decode_gaps
    assert gaps and all(0 <= g["start_s"] < g["end_s"] <= a.info["duration_s"] for g in gaps)
    times = [o["time_s"] for o in a.iter_observations()]
    assert any(t < gaps[0]["start_s"] for t in times) and any(t >= gaps[-1]["end_s"] for t in times)
    assert INTACT_OBSERVATIONS - 4 <= len(times) < INTACT_OBSERVATIONS
    assert Store(db).analysis(a.id).decode_gaps == gaps
    from moodlens.pipeline import load_analysis
    assert load_analysis(a.id, db=db).decode_gaps == gaps

    from moodlens.reports.html import write_report
    page = write_report(a, tmp_path / "report.html").read_text()
    g = gaps[0]
    assert "1 stretch of the video could not be decoded" in page
    assert f"{g['start_s']:.1f}–{g['end_s']:.1f} s" in page


@pytest.mark.slow
def test_emoji_video_of_a_corrupt_clip_keeps_its_duration(corrupt_clip, tmp_path):
    import av

    from moodlens.reports.emoji import render_emoji_video

    a = moodlens.analyze(corrupt_clip, db=f"sqlite:///{tmp_path / 'm.db'}")
    out = render_emoji_video(corrupt_clip, a.iter_observations(), tmp_path / "emoji.mp4", sample_interval_s=0.5)
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        duration = float(s.duration * s.time_base)
    assert duration == pytest.approx(a.info["duration_s"], abs=0.2)  # the gap shows the last good frame


@pytest.mark.slow
def test_intact_clip_unchanged(tmp_path):
    db = f"sqlite:///{tmp_path / 'm.db'}"
    a = moodlens.analyze(shared(*CLIP), db=db)
    assert a.status == "complete" and a.decode_gaps == []
    assert len(list(a.iter_observations())) == INTACT_OBSERVATIONS
    from moodlens.reports.html import write_report
    assert "could not be decoded" not in write_report(a, tmp_path / "report.html").read_text()


@pytest.mark.slow
def test_mostly_random_clip_fails_and_is_marked_failed(tmp_path):
    bad = _randomise(shared(*CLIP), tmp_path / "mostly_random.mp4", 0.2, end=0.95)  # the index (moov) is first
    db = f"sqlite:///{tmp_path / 'm.db'}"
    with pytest.raises(MediaError) as err:
        moodlens.analyze(bad, db=db)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(bad))
    assert "% of the video could not be decoded" in message and "more than the 50 % allowed" in message
    (row,) = Store(db).analyses()
    assert row.status == "failed" and "could not be decoded" in row.error


def test_gaps_notice_text():
    from moodlens.reports.html import decode_gaps_notice
    assert decode_gaps_notice(None, 20.0) == decode_gaps_notice([], 20.0) == ""
    text = decode_gaps_notice([{"start_s": 9.3, "end_s": 10.1, "packets": 3},
                               {"start_s": 12.0, "end_s": 13.2, "packets": 5}], 20.0)
    assert "2 stretches of the video could not be decoded" in text
    assert "9.3–10.1 s, 12.0–13.2 s; 10 % of the video" in text
    long = decode_gaps_notice([{"start_s": 3725.3, "end_s": 3726.0, "packets": 1}], 7200.0)
    assert "1:02:05.3–1:02:06.0" in long and "0 % of the video" in long
