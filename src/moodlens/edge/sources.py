"""What an edge agent reads: a video file, a V4L2 camera or a network stream (RTSP, HTTP, HLS).

A file goes through :func:`moodlens.media.iter_frames`, exactly as ``analyze`` reads it
(so the same frames are sampled); ``realtime`` paces it at its own speed, a stand-in for
a camera. A camera or stream is sampled by its timestamps as frames arrive, and frame
times are seconds since the session began on the device's clock, so they keep rising
across agent restarts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import av
import numpy as np

from moodlens import media
from moodlens.errors import MediaError
from moodlens.types import Frame

URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)


@dataclass
class Source:
    """An opened source: its frames and what the agent reports about it."""

    name: str  # shown and stored: a file's name, a camera's device, a URL without its password
    kind: str  # file | camera | stream
    frames: Iterator[Frame]
    width: int
    height: int
    fps: float  # the source's own frame rate
    bitrate: float | None  # bits/s of the source as it arrives (file: size / duration)
    duration_s: float | None = None
    stats: dict = field(default_factory=dict)  # stream sources: packets, bytes read so far


def public_name(source: str) -> str:
    """A source as it may be shown and stored: a URL loses its user and password."""
    if not URL.match(source):
        return source
    parts = urlsplit(source)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def open_source(source: str, fps: float, realtime: bool = False, start_s: float = 0.0,
                clock_origin: float | None = None) -> Source:
    """Open SOURCE for sampling at ``fps``; ``MediaError`` naming it when it cannot be read.

    ``start_s`` resumes a file where an earlier run stopped; ``clock_origin`` (epoch s) is
    the session's start, from which a camera's frame times count."""
    if URL.match(source) or source.startswith("/dev/"):
        return _open_stream(source, fps, clock_origin or time.time())
    path = Path(source)
    info = media.probe(path)  # MediaError: not a file, not a video, ...
    bitrate = path.stat().st_size * 8 / info.duration_s if info.duration_s > 0 else None
    frames = media.iter_frames(path, fps=fps, start_s=start_s)
    if realtime:
        frames = _paced(frames, start_s)
    return Source(name=path.name, kind="file", frames=frames, width=info.width, height=info.height, fps=info.fps,
                  bitrate=bitrate, duration_s=info.duration_s)


def _paced(frames: Iterator[Frame], start_s: float) -> Iterator[Frame]:
    """A file's frames no faster than their own timestamps (as a camera would deliver them)."""
    t0 = time.monotonic() - start_s
    for frame in frames:
        wait = t0 + frame.time_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        yield frame


def _open_stream(source: str, fps: float, origin: float) -> Source:
    name = public_name(source)
    options = {}
    fmt = None
    if source.startswith("/dev/"):
        fmt = "v4l2"
        if not Path(source).exists():
            raise MediaError(f"{source}: no such camera (is it plugged in? `v4l2-ctl --list-devices` lists them)")
    elif source.lower().startswith("rtsp"):
        options = {"rtsp_transport": "tcp", "timeout": "10000000"}  # microseconds
    else:
        options = {"rw_timeout": "10000000"}
    try:
        container = av.open(source, format=fmt, options=options, timeout=10)
    except (av.FFmpegError, OSError) as e:
        raise MediaError(f"{name}: cannot open the {'camera' if fmt else 'stream'} ({media._reason(e)})") from None
    streams = [s for s in container.streams.video]
    if not streams:
        container.close()
        raise MediaError(f"{name}: no video stream")
    stream = streams[0]
    stream.thread_type = "AUTO"
    width, height = stream.codec_context.width, stream.codec_context.height
    src = Source(name=name, kind="camera" if fmt else "stream", frames=iter(()), width=width, height=height,
                 fps=media._average_fps(stream), bitrate=None, stats={"packets": 0, "bytes": 0})
    src.frames = _sample_stream(container, stream, fps, origin, src)
    return src


def _sample_stream(container, stream, fps: float, origin: float, src: Source) -> Iterator[Frame]:
    """Frames at ``fps`` by the stream's own timestamps (a file served over HTTP arrives faster
    than real time; a camera's timestamps follow the clock). A frame's time is the session
    clock at the first frame plus its timestamp since then, so times keep rising across restarts."""
    step = 1.0 / fps
    half = 0.5 / max(src.fps, 1.0)
    next_t = first_pts = offset = None
    started = time.monotonic()
    try:
        for packet in container.demux(stream):
            src.stats["packets"] += 1
            src.stats["bytes"] += packet.size
            elapsed = time.monotonic() - started
            if elapsed > 0:
                src.bitrate = src.stats["bytes"] * 8 / elapsed
            try:
                decoded = stream.decode(packet)
            except (av.FFmpegError, OSError):
                continue  # a damaged packet: the next keyframe recovers
            for frame in decoded:
                if frame.time is None:
                    continue
                if first_pts is None:
                    first_pts, offset = frame.time, time.time() - origin
                t = offset + frame.time - first_pts
                if next_t is None:
                    next_t = t
                if t + half < next_t:
                    continue
                next_t += step
                if next_t < t:  # a gap in the stream: the next sample is a step from now
                    next_t = t + step
                image = media.upright(frame.to_ndarray(format="bgr24"), media.rotation_cw(frame.rotation))
                yield Frame(int(round(t * src.fps)), t, np.ascontiguousarray(image))
    except (av.FFmpegError, OSError) as e:
        raise MediaError(f"{src.name}: the stream stopped ({media._reason(e)})") from None
    finally:
        container.close()


__all__ = ["Source", "open_source", "public_name"]
