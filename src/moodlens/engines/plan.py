"""What a Rekognition run would send and cost, found locally (``--dry-run``, ``--max-calls``).

The same sampling and face detection as the real run, so the count is the number of
DetectFaces calls it makes: one per face per sampled frame. Nothing is sent and boto3 is
not needed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2

from moodlens import media
from moodlens.engines.crops import JPEG_QUALITY, face_jpeg
from moodlens.faces.detect import detect_faces


@dataclass
class Plan:
    video: str
    frames: int = 0  # sampled frames
    calls: int = 0  # DetectFaces calls: one per face per sampled frame
    crop_bytes: int = 0  # JPEG face crops, as sent (0 when not measured)
    frame_bytes: int = 0  # the same frames whole, as JPEG at the same quality (0 when not measured)
    seconds: float = 0.0  # local time of this plan
    price_usd_per_call: float = 0.0
    price_region: str = ""
    price_date: str = ""

    @property
    def usd(self) -> float:
        return self.calls * self.price_usd_per_call

    def as_dict(self) -> dict:
        d = asdict(self)
        d["usd"] = round(self.usd, 4)
        d["bytes_ratio"] = round(self.frame_bytes / self.crop_bytes, 2) if self.crop_bytes else None
        return d


def plan(path: str | Path, fps: float = 2.0, detect_kwargs: dict | None = None, measure_bytes: bool = True,
         max_calls: int | None = None) -> Plan:
    """Count the calls a Rekognition analysis of ``path`` would make (and, with ``measure_bytes``,
    encode what it would send, and the whole frames for comparison). With ``max_calls``, stops
    counting once over it (the run will be refused anyway)."""
    from moodlens.engines.rekognition import PRICE_DATE, PRICE_REGION, PRICE_USD_PER_IMAGE

    path = Path(path)
    media.probe(path)  # unreadable input: the usual one-line error
    p = Plan(str(path), price_usd_per_call=PRICE_USD_PER_IMAGE, price_region=PRICE_REGION, price_date=PRICE_DATE)
    t = time.perf_counter()
    for frame in media.iter_frames(path, fps=fps):
        faces = detect_faces(frame.image, **(detect_kwargs or {}))
        p.frames += 1
        p.calls += len(faces)
        if measure_bytes:
            p.crop_bytes += sum(len(face_jpeg(frame.image, box)[0]) for box in faces.boxes)
            ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            p.frame_bytes += int(buf.size) if ok else 0
        if max_calls is not None and p.calls > max_calls:
            break
    p.seconds = time.perf_counter() - t
    return p
