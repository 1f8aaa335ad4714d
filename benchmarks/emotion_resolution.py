"""Detail in the emotion model's input: FER+ crops against video faces, and what matching them changes.

A FER+ face has 48 px across the alignment template's frame; a face in a video
has several times that, so its 80 px crop is sharper (and, warped bilinearly from
far larger, aliased) than anything the model trained on. This measures the gap
(high-frequency energy: mean |Laplacian| / std of each crop) and two ways to
close it, each as the shipped model's input:
- ``direct``: what moodlens does, one bilinear warp to 80 px;
- ``area80``: anti-aliased, the face reduced to 80 px by area averaging first;
- ``match48``: the face reduced to FER+'s 48 px by area averaging, then enlarged
  to 80 px bilinearly, as training enlarges FER+ crops.
On the single-face video clips (no labels): label changes between samples,
flip agreement, and agreement with ``direct``; on FER2013Valid: accuracy.

    python benchmarks/emotion_resolution.py [--fps 5]
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from _util import DATA, need
from emotion_video_stability import faces_by_clip, stability
from moodlens.faces.align import align, similarity_matrix
from moodlens.faces.emotion import EmotionClassifier
from moodlens.training.ferplus import aligned_images, load_splits

FER_DETAIL = 48  # px across the template frame in a FER+ crop


def reduced(grey: np.ndarray, lm: np.ndarray, size: int, template: np.ndarray, detail: int) -> np.ndarray:
    """The face at ``detail`` px (area-averaged when larger), then warped up to ``size`` px."""
    m = similarity_matrix(lm, template * detail)
    shrink = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))  # output px per source px
    if shrink >= 1:  # no larger than ``detail``: the plain warp loses nothing
        return align(grey, lm, size, template)
    f = int(np.ceil(1 / shrink))
    # warp to f x detail (no reduction, so no aliasing), offset so that area-averaging f x f blocks
    # puts the landmarks on template x detail, then enlarge as `align` maps pixel indices
    big = cv2.warpAffine(grey, similarity_matrix(lm, template * detail * f + (f - 1) / 2), (detail * f, detail * f),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    small = cv2.resize(big, (detail, detail), interpolation=cv2.INTER_AREA)
    if detail == size:
        return small
    s = size / detail
    return cv2.warpAffine(small, np.array([[s, 0, 0], [0, s, 0]]), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


class Reduced(EmotionClassifier):
    """The shipped model fed faces reduced to ``detail`` px first."""

    def __init__(self, detail: int, **kw):
        super().__init__(**kw)
        self.detail = detail

    def crops(self, image, landmarks):
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return np.stack([reduced(grey, lm, self.size, self.template, self.detail) for lm in landmarks])


def high_frequency(crops: np.ndarray) -> float:
    c = crops.astype(np.float32)
    return float(np.mean([np.abs(cv2.Laplacian(x, cv2.CV_32F)).mean() / (x.std() + 1e-3) for x in c]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fps", type=float, default=5.0)
    args = ap.parse_args()
    splits, template, _ = load_splits(need(DATA / "ferplus"), DATA, log=lambda m: None)
    valid = splits["FER2013Valid"]
    keep, y = valid.usable, valid.majority[valid.usable]
    clips = faces_by_clip(need(DATA / "video"), args.fps)
    models = {"direct": EmotionClassifier(threads=2), "area80": Reduced(80, threads=2),
              "match48": Reduced(FER_DETAIL, threads=2)}
    size = models["direct"].size
    train_style = aligned_images(valid, template, size)[keep]
    faces = [s for samples in clips for s in samples if s is not None]
    across = [FER_DETAIL / np.sqrt(abs(np.linalg.det(similarity_matrix(lm[0], models["direct"].template * FER_DETAIL)[:, :2])))
              for _, lm in faces]
    console = Console(width=200)
    console.print(f"video faces: {len(faces)}, px across the template frame: median {np.median(across):.0f}, "
                  f"p10 {np.percentile(across, 10):.0f}, p90 {np.percentile(across, 90):.0f} (FER+: {FER_DETAIL}); "
                  f"FER+ valid crops aligned as in training: high-frequency energy {high_frequency(train_style):.3f}")
    table = Table(title=f"the shipped model's input, {len(clips)} single-face clips at {args.fps:g} fps and FER2013Valid")
    for col in ("input", "video high-freq energy", "label changes / sample", "flip agreement", "labels as direct",
                "FER+ valid acc"):
        table.add_column(col, justify="left" if col == "input" else "right")
    labels = {}
    for name, clf in models.items():
        crops = np.concatenate([clf.crops(img, lm) for img, lm in faces])
        labels[name] = clf.predict(crops).argmax(1)
        r = stability(clf, clips)
        fer = np.stack([clf.crops(img, lm[None])[0] if not np.isnan(lm).any() else train_style_i
                        for img, lm, train_style_i in zip(valid.images[keep], valid.landmarks[keep], train_style)])
        acc = float((clf.predict(fer).argmax(1) == y).mean())
        table.add_row(name, f"{high_frequency(crops):.3f}", f"{r['change']:.3f}", f"{r['flip']:.3f}",
                      f"{(labels[name] == labels['direct']).mean():.3f}", f"{acc:.4f}")
    console.print(table)


if __name__ == "__main__":
    main()
