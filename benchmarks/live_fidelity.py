"""How far an edge session's emotion scores may sit from ``analyze``'s: the crop's encoding.

In crops mode the only difference between ``moodlens edge`` and ``moodlens analyze`` on the
same clip is that the emotion model's grey 80 px input crossed the network as a JPEG (or
WebP): boxes, landmarks, quality and shots are computed on the device by the same code and
sent as numbers. This measures that difference on every face of the shared clips at 2 fps:
each face's crop is encoded, decoded and scored again, and the largest change over the 8
classes (in points, 0-100) is taken per face. The tolerance in ``tests/test_live.py`` is
the maximum here, rounded up. ``--scores-only`` has no such difference (the device scores
the crop itself).

    python benchmarks/live_fidelity.py [--max-frames 60]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import DATA, need  # noqa: E402

from moodlens import media  # noqa: E402
from moodlens.faces.emotion import default_classifier  # noqa: E402
from moodlens.pipeline import FaceStage, Options, grey_crops  # noqa: E402

ENCODINGS = {"jpeg q90 (default)": (".jpg", cv2.IMWRITE_JPEG_QUALITY, 90),
             "jpeg q75": (".jpg", cv2.IMWRITE_JPEG_QUALITY, 75),
             "webp q90": (".webp", cv2.IMWRITE_WEBP_QUALITY, 90)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-frames", type=int, default=60, help="sampled frames per clip (2 fps)")
    args = ap.parse_args()
    clips = sorted(need(DATA / "video").rglob("*.mp4")) + sorted((DATA / "video").rglob("*.mpg"))
    clf = default_classifier()
    stage = FaceStage(clf, Options())
    diffs = {k: [] for k in ENCODINGS}
    sizes = {k: [] for k in ENCODINGS}
    faces_n = 0
    for clip in clips:
        for k, frame in enumerate(media.iter_frames(clip, fps=2.0)):
            if k >= args.max_frames:
                break
            faces = stage(frame)
            if not len(faces):
                continue
            faces_n += len(faces)
            grey = grey_crops(faces.crops)
            for name, (ext, flag, q) in ENCODINGS.items():
                enc = [cv2.imencode(ext, g, [flag, q])[1] for g in grey]
                dec = np.stack([cv2.imdecode(e, cv2.IMREAD_GRAYSCALE) for e in enc])
                diffs[name].append(np.abs(clf.predict(dec) - faces.emotions).max(1) * 100)
                sizes[name].extend(len(e) for e in enc)
    print(f"{len(clips)} clips, {faces_n} faces (at most {args.max_frames} sampled frames each, 2 fps)\n")
    print("| crop encoding | bytes/face (mean) | p50 | p95 | p99 | max (points, largest class change) |")
    print("|---|---|---|---|---|---|")
    for name in ENCODINGS:
        d = np.concatenate(diffs[name])
        print(f"| {name} | {np.mean(sizes[name]):.0f} | {np.median(d):.2f} | {np.percentile(d, 95):.2f} | "
              f"{np.percentile(d, 99):.2f} | {d.max():.2f} |")


if __name__ == "__main__":
    main()
