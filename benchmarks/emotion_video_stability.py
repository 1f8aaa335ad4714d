"""Emotion models on real colour video, where no labels exist: how steady and how mirror-stable.

FER+ is 48 px grey studio-like crops; the audiences moodlens watches are colour
video. With no per-frame ground truth, two relational checks still separate a
model that generalises from one that does not:
- label changes between consecutive samples 0.2 s apart (expressions rarely
  change five times a second, so a high rate is flicker);
- flip agreement: the same label for the face and its mirror image.
Each model sees the same faces: the most confident face of each sampled frame of
every single-face clip in ../shared/data/video, landmarked by one YuNet pass.

    python benchmarks/emotion_video_stability.py [--fps 5] [--card other/emotion.json ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from _util import DATA, need
from moodlens.faces.detect import detect_faces
from moodlens.faces.emotion import EmotionClassifier
from moodlens.media import iter_frames
from moodlens.models import ModelCard, default_emotion_card
from moodlens.types import EMOTIONS

SINGLE_FACE = ("liveportrait_driving/*.mp4", "pyfeat/*.mp4", "fer/woman2.mp4", "faceapi/test_video.mp4")


def faces_by_clip(root: Path, fps: float) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per clip, a run of (frame, landmarks) samples; None marks a frame without a face (breaks a run)."""
    clips = []
    for pattern in SINGLE_FACE:
        for path in sorted(root.glob(pattern)):
            samples = []
            for frame in iter_frames(path, fps=fps):
                faces = detect_faces(frame.image)
                samples.append((frame.image, faces.landmarks[:1]) if len(faces) else None)
            clips.append(samples)
    return clips


def stability(clf: EmotionClassifier, clips) -> dict:
    changes = pairs = same_flip = n = 0
    counts = np.zeros(len(EMOTIONS), int)
    for samples in clips:
        prev = None
        for s in samples:
            if s is None:
                prev = None
                continue
            crop = clf.crops(*s)
            label, mirrored = clf.predict(np.concatenate([crop, crop[:, :, ::-1]])).argmax(1)
            same_flip += int(mirrored == label)
            counts[label] += 1
            n += 1
            if prev is not None:
                pairs += 1
                changes += int(prev != label)
            prev = label
    return dict(faces=n, change=changes / max(pairs, 1), flip=same_flip / max(n, 1), share=counts / max(n, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--card", type=Path, action="append", default=[], help="another model's card, compared beside the shipped one")
    args = ap.parse_args()
    clips = faces_by_clip(need(DATA / "video"), args.fps)
    table = Table(title=f"emotion models on {len(clips)} single-face clips, sampled at {args.fps:g} fps")
    for col in ("model", "faces", "label changes / sample", "flip agreement", *EMOTIONS):
        table.add_column(col[:10] if col in EMOTIONS else col, justify="left" if col == "model" else "right")
    for card in [default_emotion_card()] + [ModelCard.load(c) for c in args.card]:
        clf = EmotionClassifier(card, threads=2)
        r = stability(clf, clips)
        table.add_row(clf.version, str(r["faces"]), f"{r['change']:.3f}", f"{r['flip']:.3f}", *(f"{v:.3f}" for v in r["share"]))
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
