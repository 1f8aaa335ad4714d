"""Video decoding and timestamp sampling with PyAV (no ffmpeg binary needed).

Frames are sampled by presentation timestamp, not by counting frames, so variable
frame-rate phone clips give the same times as constant-rate ones. Decoding streams:
at most a few frames are alive at once whatever the video length. When sampling
sparsely the decoder is told to skip non-reference frames, which nothing else depends
on, so they are never decoded; only emitted frames are converted to BGR.

Corrupt data does not end the analysis. As FFmpeg does, a packet the decoder rejects
is skipped and decoding goes on; the stretches of time left without pictures are
reported as gaps (:class:`DecodeStats`). Decoding fails only when no frame decodes at
all, or when more than :data:`MAX_LOSS` of the video is lost. A file whose packets stop
before its stated duration is truncated, and is an error as before.

Every failure reaches the caller as one :class:`~moodlens.errors.MediaError` line that
starts with the path; PyAV's own exceptions never escape.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from .errors import MediaError
from .types import Frame

_SPARSE_RATIO = 4
"""Skip non-reference frames only when the stream has >= this many frames per sample:
at 2 fps on a 25-30 fps clip a skipped B-frame shifts a sample by a frame or two at most,
but at rates near the stream's it would make samples miss their targets."""

_EARLY_STOP_S = 1.0
"""A video whose frames stop more than this before its stated duration is truncated."""

_DECODE_THREADS = int(os.environ.get("MOODLENS_DECODE_THREADS", "0") or 0)

MAX_LOSS = 0.5
"""The largest share of a video's duration (from the start time to the stated end) that may
be lost to undecodable packets. Past it decoding fails: the results would mostly be holes."""

_AV_ERRORS = (av.FFmpegError, OSError)


@dataclass
class DecodeStats:
    """What decoding skipped, filled in by :func:`iter_frames` (``stats=``) as it runs and
    final once the iterator is exhausted.

    ``gaps`` lists the stretches of the video that could not be decoded, in time order, as
    ``{"start_s": 9.468, "end_s": 10.761, "packets": 24}``: from just after the last good
    frame to the first good frame after it (seconds from the video's start), and how many
    packets the decoder rejected there. The frames of a gap are not emitted, so sample
    targets inside it are skipped.
    """

    packets: int = 0  # video packets read from the file
    failed_packets: int = 0  # packets the decoder rejected (skipped)
    frames: int = 0  # frames decoded and kept (not those skipped on purpose, nor damaged ones in a gap)
    gaps: list[dict] = field(default_factory=list)
    first_error: str | None = None  # FFmpeg's message for the first rejected packet

    @property
    def lost_s(self) -> float:
        """Seconds of video inside the gaps."""
        return sum(g["end_s"] - g["start_s"] for g in self.gaps)


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a video without decoding it all."""

    path: Path
    width: int  # display size, after rotation
    height: int
    fps: float  # average frame rate (frames/s), best estimate
    duration_s: float  # container/stream duration; best estimate
    frame_count: int  # from the container, else duration * fps
    rotation: int  # clockwise degrees (0/90/180/270) turned for display, like the `rotate` tag
    codec: str
    container: str
    has_audio: bool


def sample_times(duration_s: float, fps: float) -> np.ndarray:
    """Target timestamps 0, 1/fps, 2/fps, ... strictly below ``duration_s``.

    Computed as ``k / fps`` (not by summing steps) so times do not drift on long videos.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    n = max(0, math.ceil(duration_s * fps - 1e-9))
    return np.arange(n, dtype=np.float64) / fps


def rotation_cw(ccw_degrees: float) -> int:
    """Convert a display-matrix angle (counter-clockwise, as PyAV's ``frame.rotation``
    reports it) to the clockwise quarter turn needed for display, in {0, 90, 180, 270}.
    Phone clips shot upright usually say -90 here, i.e. 90 clockwise."""
    return int(round(-ccw_degrees / 90.0)) % 4 * 90


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a stored image clockwise by ``rotation`` degrees so it displays upright.

    Returns a contiguous array (OpenCV rejects the negative strides of ``np.rot90``).
    """
    k = (rotation // 90) % 4
    return image if k == 0 else np.ascontiguousarray(np.rot90(image, -k))


def probe(path: str | Path) -> VideoInfo:
    """Read a video's size, rate, duration and rotation.

    Decodes the first frame, because PyAV exposes the display matrix only on frames,
    and because a file that cannot yield one frame is better rejected here.
    """
    path = _check_path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        fps = _average_fps(stream)
        duration, _ = _duration(container, stream, fps)
        first, error = None, None
        try:
            for packet in container.demux(stream):
                try:
                    frames = stream.decode(packet)
                except _AV_ERRORS as err:  # a corrupt packet: skipped, as when decoding
                    error = error or _reason(err)
                    continue
                if frames:
                    first = frames[0]
                    break
        except _AV_ERRORS as err:
            raise MediaError(f"{path}: cannot decode the first video frame ({_reason(err)})") from None
        if first is None:
            raise MediaError(f"{path}: no decodable video frames" + (f" ({error})" if error else ""))
        rotation = rotation_cw(first.rotation)
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(
            path=path, width=width, height=height, fps=fps, duration_s=duration,
            frame_count=stream.frames or round(duration * fps), rotation=rotation,
            codec=stream.codec_context.name, container=container.format.name,
            has_audio=bool(container.streams.audio),
        )


def iter_frames(
    path: str | Path, fps: float | None = 2.0, skip_nonref: bool = True, start_s: float = 0.0,
    stats: DecodeStats | None = None, end_s: float | None = None,
) -> Iterator[Frame]:
    """Yield upright BGR frames sampled at ``fps`` by timestamp (``None``: every frame).

    For each target time ``k / fps`` the first decoded frame whose time is at least the
    target less half a frame is emitted; a frame is never emitted twice, and targets
    that fall in a gap of the stream are skipped. ``Frame.index`` is
    ``round(time_s * average_fps)``, so indices stay meaningful when frames are skipped.
    With ``skip_nonref`` and a sparse ``fps`` a sample may land a frame or two after its
    target (the nearest reference frame); ``time_s`` is always the frame's true time.

    Packets the decoder rejects are skipped; pass a :class:`DecodeStats` as ``stats`` to
    learn what was lost (its ``gaps``). Raises ``MediaError`` when nothing decodes, when
    more than :data:`MAX_LOSS` of the video is lost, or when the file is truncated.

    ``start_s`` and ``end_s`` make a segment: the targets ``k / fps`` in ``[start_s, end_s)``,
    sampled exactly as a whole decode samples them, so consecutive segments together give
    the whole decode's frames (``moodlens.segments``; the end checks are the last segment's).
    """
    samples = _sample(_check_args(path, fps), fps, skip_nonref, start_s, stats, end_s)  # path errors now
    return (
        Frame(index, time_s, upright(frame.to_ndarray(format="bgr24"), rotation_cw(frame.rotation)))
        for frame, time_s, index in samples
    )


def decode_only(path: str | Path, fps: float | None = 2.0, skip_nonref: bool = True,
                stats: DecodeStats | None = None) -> int:
    """Decode and sample exactly as :func:`iter_frames` does, without the BGR
    conversion; return the number of frames that would be emitted (for benchmarks)."""
    return sum(1 for _ in _sample(_check_args(path, fps), fps, skip_nonref, 0.0, stats))


def _sample(path, fps, skip_nonref, start_s, stats=None, end_s=None) -> Iterator[tuple[av.VideoFrame, float, int]]:
    """The decode loop shared by :func:`iter_frames` and :func:`decode_only`: yields
    ``(av frame, time_s, index)`` for the frames to emit, skips the packets the decoder
    rejects (recording the gaps in ``stats``), and checks for truncation and loss."""
    stats = stats if stats is not None else DecodeStats()
    with _open(path) as container:
        stream = _video_stream(container, path)
        avg_fps = _average_fps(stream)
        duration, duration_known = _duration(container, stream, fps=avg_fps)
        tb = float(stream.time_base)
        origin = stream.start_time or 0
        # Half a nominal frame: the tolerance of a target. Not frame.duration: in MP4 it is
        # the decode-order (DTS) step, meaningless for presentation once B-frames reorder.
        half = 0.5 / avg_fps
        step = 2 * half
        stream.thread_type = "AUTO"
        stream.thread_count = _DECODE_THREADS  # 0: FFmpeg's choice (a thread a core); Ray workers set 1
        if fps is not None and skip_nonref and fps * _SPARSE_RATIO <= avg_fps:
            stream.codec_context.skip_frame = "NONREF"
        if start_s > 0:
            try:
                container.seek(origin + int(start_s / tb), stream=stream)  # key frame at or before
            except _AV_ERRORS:
                pass  # unseekable input: decode from the start and drop early frames
        k = 0 if fps is None else math.ceil(start_s * fps - 1e-9)  # next target index
        last_t: float | None = None
        last_end = -math.inf
        last_pts = None  # the largest packet timestamp read: how far the file's data goes
        # The open gap while packets fail: [start_s, first and last failed packet time, packets].
        # It closes at the first good frame after the last failure (frames come out in
        # presentation order, after every packet presented before them has been sent).
        gap: list | None = None
        lost_closed = 0.0  # seconds in the closed gaps
        span = duration - start_s if duration_known else 0.0  # what the loss share is of
        packets = container.demux(stream)
        decode = stream.decode
        while True:
            try:
                packet = next(packets, None)
            except _AV_ERRORS as err:  # the demuxer, not the decoder: the data ends here
                at = 0.0 if last_t is None else last_t
                raise MediaError(f"{path}: truncated or corrupt at {at:.2f} s ({_reason(err)})") from None
            if packet is None:
                break
            pts = packet.pts
            if pts is None:
                pts = packet.dts
            if packet.size:  # not the empty flush packet at the end
                stats.packets += 1
                if pts is not None and (last_pts is None or pts > last_pts):
                    last_pts = pts
            try:
                frames = decode(packet)
            except _AV_ERRORS as err:  # corrupt data: skip the packet, as FFmpeg does
                stats.failed_packets += 1
                if stats.first_error is None:
                    stats.first_error = _reason(err)
                tp = (pts - origin) * tb if pts is not None else (0.0 if last_t is None else last_t + step)
                if gap is None:
                    gap = [0.0 if last_t is None else min(last_t + step, tp), tp, tp, 0]
                gap[1], gap[2], gap[3] = min(gap[1], tp), max(gap[2], tp), gap[3] + 1
                gap[0] = min(gap[0], gap[1])
                lost = lost_closed + gap[2] + step - max(gap[0], start_s)  # at least, so far
                if span > 0 and lost > MAX_LOSS * span:
                    raise _loss_error(path, stats, lost, span, len(stats.gaps) + 1, early=True)
                continue
            for frame in frames:
                t = (frame.pts - origin) * tb if frame.pts is not None else (
                    0.0 if last_t is None else last_t + step)
                if gap is not None:
                    if t < gap[1]:  # a frame presented before the failures, output late
                        gap[0] = max(gap[0], min(t + step, gap[1]))
                    elif t > gap[2]:  # the first good frame after them
                        lost_closed += _close_gap(stats, gap, t, start_s)
                        gap = None
                    else:  # among the rejected packets: it may reference them (a concealed picture)
                        continue
                if last_t is not None and t < last_t:
                    continue  # out of order (a decoder reset by corrupt data): never go back in time
                stats.frames += 1
                last_t = t
                last_end = max(last_end, t + step)
                if t < start_s - half:
                    continue
                if fps is not None:
                    if t < k / fps - half:
                        continue
                    if end_s is not None and k / fps >= end_s - 1e-9:
                        return  # the next target is the next segment's
                    # Consume every target this frame satisfies so it is emitted once only.
                    k = max(k + 1, math.floor((t + half) * fps) + 1)
                elif end_s is not None and t >= end_s - half:
                    return
                yield frame, t, round(t * avg_fps)
        data_end = -math.inf if last_pts is None else (last_pts - origin) * tb + step
        if gap is not None and (not duration_known or data_end >= duration - _EARLY_STOP_S):
            # Packets go on to the end but none decoded after the failures: a corrupt tail.
            _close_gap(stats, gap, max(gap[2] + step, duration if duration_known else 0.0), start_s)
            gap = None
        if last_t is None:
            if start_s <= 0:
                raise MediaError(f"{path}: no decodable video frames" + (
                    f" ({stats.failed_packets} of {stats.packets} packets rejected: {stats.first_error})"
                    if stats.failed_packets else ""))
            return
        corrupt_tail = bool(stats.gaps) and stats.gaps[-1]["end_s"] >= duration - _EARLY_STOP_S
        if duration_known and start_s < duration and last_end < duration - _EARLY_STOP_S and not corrupt_tail:
            # The frames stop early, and so do the packets (or nothing failed): truncated.
            raise MediaError(
                f"{path}: truncated or corrupt at {last_end:.2f} s (frames stop before the "
                f"stated duration of {duration:.2f} s)"
            )
        if span <= 0:
            span = max(last_end, data_end) - start_s
        if span > 0 and stats.lost_s > MAX_LOSS * span:
            raise _loss_error(path, stats, stats.lost_s, span, len(stats.gaps), early=False)


def _close_gap(stats: DecodeStats, gap: list, end: float, start_s: float) -> float:
    """Record an open gap ``[start, lo, hi, packets]`` as ending at ``end`` (the part
    before ``start_s`` is not part of this decode; one that overlaps the last recorded gap
    extends it). Returns the seconds added to the gaps."""
    start, end = round(max(gap[0], start_s), 3), round(end, 3)
    if end <= start:
        return 0.0
    if stats.gaps and start <= stats.gaps[-1]["end_s"]:
        last = stats.gaps[-1]
        before = last["end_s"] - last["start_s"]
        last["start_s"], last["end_s"] = min(last["start_s"], start), max(last["end_s"], end)
        last["packets"] += gap[3]
        return last["end_s"] - last["start_s"] - before
    stats.gaps.append({"start_s": start, "end_s": end, "packets": gap[3]})
    return end - start


def _loss_error(path: Path, stats: DecodeStats, lost_s: float, span: float, n_gaps: int,
                early: bool) -> MediaError:
    share = f"{'over ' if early else ''}{100 * lost_s / span:.0f} %"
    return MediaError(
        f"{path}: {share} of the video could not be decoded ({lost_s:.1f} s in {n_gaps} "
        f"stretch{'es' if n_gaps != 1 else ''}, {stats.failed_packets} packets rejected: "
        f"{stats.first_error}); more than the {100 * MAX_LOSS:.0f} % allowed"
    )


def _check_args(path: str | Path, fps: float | None) -> Path:
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive or None, got {fps}")
    return _check_path(path)


def _check_path(path: str | Path) -> Path:
    """Reject the common non-video cases with a plain message before FFmpeg sees them."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    if path.is_dir():
        raise MediaError(f"{path}: is a directory, not a video file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise MediaError(f"{path}: permission denied")
    return path


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except _AV_ERRORS as err:
        raise MediaError(
            f"{path}: not a readable video; not a video file, or truncated/corrupt ({_reason(err)})"
        ) from None


def _video_stream(container, path: Path) -> av.VideoStream:
    """The first real video stream; cover art (an attached picture) does not count."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise MediaError(f"{path}: no video stream (format {container.format.name})")


def _average_fps(stream) -> float:
    """Average frame rate, falling back through FFmpeg's guesses to 25 fps."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) < 1000:
            return float(rate)
    if stream.frames and stream.duration:
        return stream.frames / float(stream.duration * stream.time_base)
    return 25.0


def _duration(container, stream, fps: float) -> tuple[float, bool]:
    """Duration in seconds, and whether it is the video stream's own (trusted for the
    truncation check; the container's may include a longer audio track)."""
    if stream.duration:
        return float(stream.duration * stream.time_base), True
    if container.duration:
        return container.duration / av.time_base, len(container.streams) == 1
    return (stream.frames / fps if stream.frames else 0.0), False


def _reason(err: BaseException) -> str:
    """FFmpeg's message on one line, without the errno and the file name it repeats."""
    text = getattr(err, "strerror", None) or str(err)
    return " ".join(str(text).split())
