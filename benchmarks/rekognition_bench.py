"""Amazon Rekognition engine: --dry-run figures for the sample clips, and the local overhead per crop.

No AWS account and no network: the dry run only detects faces locally, and the overhead
(padding, JPEG encoding, response mapping, the thread pool) is timed against a client
whose DetectFaces answers come from botocore's Stubber. Prints two tables.

    .venv/bin/python benchmarks/rekognition_bench.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import boto3
from botocore.stub import Stubber

from moodlens import media
from moodlens.engines.plan import plan
from moodlens.engines.rekognition import RekognitionEngine
from moodlens.faces.detect import detect_faces

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "video"
CLIPS = [DATA / "pyfeat" / "WolfgangLanger_Pexels.mp4", DATA / "facenet_pytorch" / "video.mp4"]
RESPONSE = {"FaceDetails": [{"BoundingBox": {"Width": 0.5, "Height": 0.5, "Left": 0.25, "Top": 0.25},
                             "Emotions": [{"Type": t, "Confidence": c} for t, c in
                                          (("HAPPY", 80.0), ("CALM", 10.0), ("CONFUSED", 5.0), ("UNKNOWN", 5.0))]}]}


def overhead(clip: Path, fps: float = 2.0) -> tuple[int, float]:
    """(faces, ms per face) of RekognitionEngine.score with a stubbed client (the network excluded)."""
    frames = [(f, detect_faces(f.image)) for f in media.iter_frames(clip, fps=fps)]
    n = sum(len(faces) for _, faces in frames)
    client = boto3.client("rekognition", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    times = []
    for _ in range(3):
        with Stubber(client) as stub:
            for _ in range(n):
                stub.add_response("detect_faces", RESPONSE)
            engine = RekognitionEngine(client, max_in_flight=4)
            t = time.perf_counter()
            for frame, faces in frames:
                if len(faces):
                    engine.score(frame.image, faces)
            times.append((time.perf_counter() - t) / n * 1e3)
            engine.close()
    return n, statistics.median(times)


def main() -> None:
    print("| clip | sampled frames | DetectFaces calls | USD (list price) | crops sent | whole frames (JPEG) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for clip in CLIPS:
        p = plan(clip, 2.0)
        print(f"| {clip.name} | {p.frames} | {p.calls} | {p.usd:.3f} | {p.crop_bytes / 1e3:.0f} kB "
              f"| {p.frame_bytes / 1e3:.0f} kB | {p.frame_bytes / p.crop_bytes:.1f}x |")
    print()
    print("| clip | faces | local overhead per crop (ms, stubbed client, median of 3) |")
    print("|---|---|---|")
    for clip in CLIPS:
        n, ms = overhead(clip)
        print(f"| {clip.name} | {n} | {ms:.2f} |")


if __name__ == "__main__":
    main()
