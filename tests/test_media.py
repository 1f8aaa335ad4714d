"""Tests for moodlens.media: sampling by timestamp, rotation, formats and error lines.

Synthetic clips are encoded with PyAV into tmp_path (64x48, a few seconds) so the
expected frame times are known exactly; real clips from ../shared/data are used where
present.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
from av.video.frame import PictureType
import numpy as np
import pytest

from moodlens import media
from moodlens.errors import MediaError

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
VIDEO = DATA / "video"
W, H, RATE = 64, 48, 10


def encode(path: Path, n: int = 30, rate: int | None = RATE, codec: str = "libx264",
           pix_fmt: str = "yuv420p", pts_ms: list[int] | None = None, rotation: float | None = None,
           options: dict | None = None, container_options: dict | None = None) -> Path:
    """Write a small clip: frame i is grey level 30*i (mod 256) with a white 8x8 top-left corner.
    ``pts_ms`` gives explicit (variable) presentation times in milliseconds."""
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=None if pts_ms else rate)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        if pts_ms:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if options:
            stream.options = options
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(len(pts_ms) if pts_ms else n):
            image = np.full((H, W, 3), (30 * i) % 256, np.uint8)
            image[:8, :8] = 255
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = pts_ms[i] if pts_ms else i
            if pts_ms:
                frame.time_base = Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


# Fixed IBBP pattern: the B-frames are non-reference, so NONREF skipping is predictable.
IBBP = {"x264-params": "bframes=2:b-pyramid=0:b-adapt=0:scenecut=0"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    return {
        "h264": encode(d / "h264.mp4", options=IBBP),  # 3 s at 10 fps, B-frames
        "simple": encode(d / "simple.avi", codec="mpeg4"),  # I/P only: every frame a reference
        "mkv": encode(d / "clip.mkv"),
        "gif": encode(d / "clip.gif", codec="gif", pix_fmt="rgb8"),
        "mpg": encode(d / "clip.mpg", codec="mpeg1video", rate=25),
        "rot": encode(d / "rot.mp4", rotation=-90),  # display matrix: 90 degrees clockwise
    }


def real(*parts: str) -> Path:
    path = VIDEO.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"../shared/data not found ({path}); real-clip test skipped")
    return path


# ---- pure helpers -------------------------------------------------------------------

def test_sample_times():
    np.testing.assert_allclose(media.sample_times(3.0, 2.0), [0, 0.5, 1.0, 1.5, 2.0, 2.5])
    np.testing.assert_allclose(media.sample_times(2.4, 2.0), [0, 0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(media.sample_times(1.0, 3.0), [0, 1 / 3, 2 / 3])
    assert media.sample_times(0.0, 2.0).size == 0
    assert media.sample_times(3600.0, 2.0)[-1] == 3599.5  # k / fps: no drift
    with pytest.raises(ValueError):
        media.sample_times(3.0, 0)


def test_rotation_helpers():
    assert [media.rotation_cw(a) for a in (0, -90, 90, 180, -180, -89.9)] == [0, 90, 270, 180, 180, 90]
    image = np.zeros((2, 3), np.uint8)
    image[0, 0] = 1  # top-left
    turned = media.upright(image, 90)
    assert turned.shape == (3, 2) and turned[0, 1] == 1 and turned.flags.c_contiguous  # -> top-right
    assert media.upright(image, 270)[2, 0] == 1  # -> bottom-left
    assert media.upright(image, 180)[1, 2] == 1
    assert media.upright(image, 0) is image


# ---- probe and sampling on synthetic clips ------------------------------------------

def test_probe(clips):
    info = media.probe(clips["h264"])
    assert (info.width, info.height, info.rotation) == (W, H, 0)
    assert info.fps == pytest.approx(RATE)
    assert info.duration_s == pytest.approx(3.0, abs=0.11)
    assert info.frame_count == 30
    assert (info.codec, info.has_audio) == ("h264", False)
    assert "mp4" in info.container and info.path == clips["h264"]


@pytest.mark.parametrize("fps", [2.0, 3.0, 7.0])
def test_sampled_times_near_targets(clips, fps):
    frames = list(media.iter_frames(clips["h264"], fps=fps, skip_nonref=False))
    times = np.array([f.time_s for f in frames])
    targets = media.sample_times(3.0, fps)
    assert len(frames) == len(targets)
    assert np.all(np.abs(times - targets) <= 0.5 / RATE + 1e-9)  # within half a frame
    assert np.all(np.diff(times) > 0)  # monotonic, never the same frame twice
    assert [f.index for f in frames] == [round(t * RATE) for t in times]
    assert all(f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 for f in frames)


def test_fps_none_gives_every_frame(clips):
    frames = list(media.iter_frames(clips["h264"], fps=None))
    assert [f.index for f in frames] == list(range(30))
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(30) / RATE, atol=1e-6)
    # The picture is the right one (grey level 30*i), so time and content agree.
    assert [round(np.median(f.image[20:, 20:]) / 30) for f in frames[:8]] == list(range(8))


def test_skip_nonref_same_on_reference_only_stream(clips):
    times = lambda skip: [f.time_s for f in media.iter_frames(clips["simple"], 2.0, skip)]  # noqa: E731
    assert times(True) == times(False) == pytest.approx([0, 0.5, 1.0, 1.5, 2.0, 2.5])


def test_skip_nonref_does_not_decode_b_frames(clips):
    """With NONREF the B-frames (non-reference here) are never decoded, so never emitted;
    without it the 0.5 s target lands on a B-frame."""
    with av.open(str(clips["h264"])) as c:
        s = c.streams.video[0]
        kind = {round(float(f.pts * s.time_base), 3): PictureType(f.pict_type).name for f in c.decode(s)}
    skipped = [round(f.time_s, 3) for f in media.iter_frames(clips["h264"], 2.0, skip_nonref=True)]
    full = [round(f.time_s, 3) for f in media.iter_frames(clips["h264"], 2.0, skip_nonref=False)]
    assert all(kind[t] != "B" for t in skipped)
    assert any(kind[t] == "B" for t in full)
    assert all(0 <= a - b <= 0.2 + 1e-6 for a, b in zip(skipped, full))  # at most 2 frames late
    assert media.decode_only(clips["h264"], 2.0) == len(skipped)


def test_variable_frame_rate_and_gaps(tmp_path):
    """25 fps for 1 s, nothing until 2 s, 25 fps again: the targets 1.0 and 1.5 fall in
    the gap; the frame at 2.0 is emitted once, not three times."""
    pts = [40 * i for i in range(25)] + [2000 + 40 * i for i in range(25)]
    path = encode(tmp_path / "vfr.mp4", codec="mpeg4", pts_ms=pts)
    for skip in (True, False):
        times = [f.time_s for f in media.iter_frames(path, fps=2.0, skip_nonref=skip)]
        assert times == pytest.approx([0.0, 0.48, 2.0, 2.48])
    all_times = [f.time_s for f in media.iter_frames(path, fps=None)]
    assert all_times == pytest.approx(np.array(pts) / 1000)


def test_start_s(clips):
    times = [f.time_s for f in media.iter_frames(clips["h264"], fps=2.0, skip_nonref=False, start_s=1.2)]
    assert times == pytest.approx([1.5, 2.0, 2.5])
    assert [f.time_s for f in media.iter_frames(clips["h264"], fps=None, start_s=2.78)] == pytest.approx([2.8, 2.9])


def test_rotated_clip_comes_out_upright(clips):
    info = media.probe(clips["rot"])
    assert (info.rotation, info.width, info.height) == (90, H, W)
    image = next(media.iter_frames(clips["rot"], fps=None)).image
    assert image.shape == (W, H, 3)
    assert image[:8, -8:].min() > 200 and image[:8, :8].max() < 50  # white corner now top-right


@pytest.mark.parametrize("name, codec", [("mkv", "h264"), ("gif", "gif"), ("mpg", "mpeg1video"),
                                         ("simple", "mpeg4")])
def test_containers_decode(clips, name, codec):
    assert media.probe(clips[name]).codec == codec
    frames = list(media.iter_frames(clips[name], fps=None))
    assert len(frames) == 30
    assert all(f.image.shape == (H, W, 3) for f in frames)
    assert np.all(np.diff([f.time_s for f in frames]) > 0)


# ---- errors -------------------------------------------------------------------------

def _cut(src: Path, dst: Path, n_bytes: int) -> Path:
    dst.write_bytes(src.read_bytes()[:n_bytes])
    return dst


def _bad_files(tmp: Path) -> dict[str, Path]:
    (tmp / "folder.mp4").mkdir()
    (tmp / "empty.mp4").touch()
    (tmp / "notes.mp4").write_text("not a video, just text\n" * 40)
    moov_last = encode(tmp / "moov_last.mp4", n=20)  # PyAV's mp4 muxer writes moov at the end
    with av.open(str(tmp / "audio.wav"), "w") as out:
        s = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        out.mux(s.encode(frame))
        out.mux(s.encode())
    return {
        "missing": tmp / "missing.mp4", "directory": tmp / "folder.mp4", "empty": tmp / "empty.mp4",
        "text": tmp / "notes.mp4", "audio_only": tmp / "audio.wav",
        "moov_at_end_cut": _cut(moov_last, tmp / "moov_last_cut.mp4", int(moov_last.stat().st_size * 0.4)),
    }


@pytest.mark.parametrize("case, words", [
    ("missing", "no such file"), ("directory", "directory"), ("empty", "empty file"),
    ("text", "not a video"), ("moov_at_end_cut", "truncated"), ("audio_only", "no video stream"),
])
def test_errors_are_one_line_media_errors(tmp_path, case, words):
    path = _bad_files(tmp_path)[case]
    for call in (media.probe, lambda p: list(media.iter_frames(p)), media.decode_only):
        with pytest.raises(MediaError) as err:
            call(path)
        message = str(err.value)
        assert message.startswith(str(path)) and path.name in message
        assert words in message and "\n" not in message


def _faststart_random(path: Path, n: int = 30) -> Path:
    """Noise frames (big packets) with the moov atom first, so a cut keeps the index."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        s = out.add_stream("libx264", rate=RATE)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (H, W, 3), np.uint8), format="bgr24")
            frame.pts = i
            out.mux(s.encode(frame))
        out.mux(s.encode())
    return path


def test_truncated_mid_packet_raises_after_good_frames(tmp_path):
    src = _faststart_random(tmp_path / "full.mp4")
    cut = _cut(src, tmp_path / "cut.mp4", int(src.stat().st_size * 0.4))
    assert media.probe(cut).duration_s == pytest.approx(3.0, abs=0.11)  # the index is intact
    got = []
    with pytest.raises(MediaError, match=r"cut\.mp4: truncated or corrupt at \d+\.\d\d s"):
        got.extend(media.iter_frames(cut, fps=None))
    assert 0 < len(got) < 30


def test_truncated_at_packet_boundary_raises(tmp_path):
    """FFmpeg stops silently at EOF when the cut falls between packets; the stated
    duration still gives the truncation away."""
    src = _faststart_random(tmp_path / "full.mp4")
    with av.open(str(src)) as c:
        positions = [p.pos for p in c.demux(c.streams.video[0]) if p.pos is not None and p.pos > 0]
    cut = _cut(src, tmp_path / "cut.mp4", sorted(positions)[12])
    got = []
    with pytest.raises(MediaError, match=r"cut\.mp4: truncated or corrupt at 1\.\d\d s .*stated duration"):
        got.extend(media.iter_frames(cut, fps=None))
    assert 8 <= len(got) <= 12


def test_bad_fps_is_a_value_error(clips):
    with pytest.raises(ValueError):
        media.iter_frames(clips["h264"], fps=0)


# ---- real clips ---------------------------------------------------------------------

@pytest.mark.parametrize("parts, size", [
    (("pyfeat", "single_face.mp4"), (640, 360)),
    (("pyfeat", "face_noface.mov"), (960, 540)),  # HEVC, variable frame rate
    (("grid", "bbaf2n.mpg"), (360, 288)),  # MPEG-1 in MPEG-PS
])
def test_real_clips(parts, size):
    path = real(*parts)
    info = media.probe(path)
    assert (info.width, info.height) == size and info.has_audio
    frames = list(media.iter_frames(path, fps=2.0))
    times = np.array([f.time_s for f in frames])
    targets = media.sample_times(info.duration_s, 2.0)
    assert abs(len(frames) - len(targets)) <= 1
    assert np.all(np.diff(times) > 0)
    assert np.all(np.abs(times - targets[: len(times)]) < 0.1)  # NONREF: a frame or two late at most
    assert frames[0].image.shape == (size[1], size[0], 3)


def test_real_truncated_mp4(tmp_path):
    src = real("pyfeat", "WolfgangLanger_Pexels.mp4")  # moov at the start
    cut = _cut(src, tmp_path / "wolfgang_cut.mp4", int(src.stat().st_size * 0.4))
    got = []
    with pytest.raises(MediaError, match="wolfgang_cut.mp4: truncated or corrupt at"):
        got.extend(media.iter_frames(cut, fps=2.0))
    assert len(got) > 5
    moov_last = real("pyfeat", "single_face.mp4")
    with pytest.raises(MediaError, match="single_face_cut.mp4: .*truncated"):
        media.probe(_cut(moov_last, tmp_path / "single_face_cut.mp4", int(moov_last.stat().st_size * 0.4)))
