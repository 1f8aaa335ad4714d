"""How usable a detected face is for emotion and identity: a 0..1 score per face.

Four factors, each a clipped ramp that reaches 1 once that aspect is "good
enough", multiplied together. A product (not a mean) because any one failure
(a 15 px face, a profile, a smear) makes the face useless whatever the others
say; saturating ramps keep the product near 1 for an ordinary good face. Every
factor is monotone in its measurement, so the score is too.

- size: short side of the box, log ramp 20 px -> 0 to 80 px -> 1 (40 px ~ 0.5);
  the emotion model was trained on 48 px FER+ faces (seen at 80 px), so below ~30 px
  there is little to see.
- sharpness: variance of the Laplacian of the grey face resampled to 64 px (between
  FER+'s 48 px and the emotion model's 80 px input), so it measures detail at one
  resolution near the one used, whatever the face size; log ramp 30 -> 0 to
  300 -> 1. On FDDB, aligned faces >= 60 px give 236 (5th percentile) / 712
  (median); the same faces blurred with sigma 1.5 px a median of 165, with sigma
  3 px 41. Not divided by the grey variance: that would make low-contrast
  patches read sharp from noise alone.
- pose: yaw from the 5 landmarks (nose-tip offset from the eye-mouth midline,
  over the eye distance; with the nose tip standing ~0.5 eye distances in front
  of the eye/mouth plane, offset/eye_distance = 0.5 tan(yaw)), ramp 25 deg -> 1 to
  60 deg -> 0; times roll (eye-line angle), ramp 30 deg -> 1 to 75 deg -> 0. Roll
  is mild because alignment undoes it; strong roll mostly means bad landmarks.
  A full profile's hidden eye collapses onto the visible one, so yaw -> 90 deg.
- detector score: linear ramp 0.3 -> 0 to 0.8 -> 1.
"""

from __future__ import annotations

import cv2
import numpy as np

from moodlens.types import Faces

SIZE_PX = (20.0, 80.0)
SHARP_SIDE = 64
SHARP_LAPVAR = (30.0, 300.0)
NOSE_DEPTH = 0.5  # nose-tip protrusion in eye distances (approximate human average)
YAW_DEG = (25.0, 60.0)
ROLL_DEG = (30.0, 75.0)
SCORE = (0.3, 0.8)


def _ramp(x: np.ndarray, lo: float, hi: float, log: bool = False) -> np.ndarray:
    """0 at ``lo`` or below, 1 at ``hi`` or above, linear (or linear in log x) between."""
    x = np.asarray(x, np.float64)
    if log:
        x, lo, hi = np.log(np.maximum(x, 1e-12)), np.log(lo), np.log(hi)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def _falling(x: np.ndarray, good: float, bad: float) -> np.ndarray:
    """1 up to ``good``, 0 from ``bad`` on."""
    return 1.0 - _ramp(x, good, bad)


def size_factor(boxes: np.ndarray) -> np.ndarray:
    return _ramp(np.minimum(boxes[:, 2], boxes[:, 3]), *SIZE_PX, log=True)


def pose_angles(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Approximate |yaw| and |roll| in degrees from YuNet's 5 landmarks (N, 5, 2)."""
    lm = np.asarray(landmarks, np.float64)
    r_eye, l_eye, nose = lm[:, 0], lm[:, 1], lm[:, 2]
    eye_mid, mouth_mid = (r_eye + l_eye) / 2, (lm[:, 3] + lm[:, 4]) / 2
    eye_vec = l_eye - r_eye
    eye_dist = np.linalg.norm(eye_vec, axis=1)
    axis = mouth_mid - eye_mid
    axis /= np.maximum(np.linalg.norm(axis, axis=1, keepdims=True), 1e-9)
    rel = nose - eye_mid
    offset = np.abs(axis[:, 0] * rel[:, 1] - axis[:, 1] * rel[:, 0])  # distance from midline
    yaw = np.degrees(np.arctan2(offset, NOSE_DEPTH * eye_dist))  # eye_dist 0 -> 90 deg
    roll = np.abs(np.degrees(np.arctan2(eye_vec[:, 1], eye_vec[:, 0])))  # eyes flipped -> ~180
    return yaw, roll


def pose_factor(landmarks: np.ndarray) -> np.ndarray:
    yaw, roll = pose_angles(landmarks)
    return _falling(yaw, *YAW_DEG) * _falling(roll, *ROLL_DEG)


def sharpness(patch: np.ndarray) -> float:
    """Variance of the Laplacian of a face patch, grey, resampled to SHARP_SIDE px."""
    if patch.size == 0:
        return 0.0
    grey = patch if patch.ndim == 2 else cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY)
    shrink = max(grey.shape[:2]) > SHARP_SIDE
    grey = cv2.resize(grey, (SHARP_SIDE, SHARP_SIDE),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR).astype(np.float32)
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def _patches(image: np.ndarray, faces: Faces):
    """Aligned crops when the batch has them (framing the model sees), else the clipped boxes."""
    if faces.crops is not None:
        yield from faces.crops
        return
    h, w = image.shape[:2]
    for x, y, bw, bh in np.asarray(faces.boxes, np.float64):
        x0, y0 = max(int(round(x)), 0), max(int(round(y)), 0)
        x1, y1 = min(int(round(x + bw)), w), min(int(round(y + bh)), h)
        yield image[y0:max(y1, y0), x0:max(x1, x0)]


def sharpness_factor(image: np.ndarray, faces: Faces) -> np.ndarray:
    values = np.array([sharpness(p) for p in _patches(image, faces)], np.float64)
    return _ramp(values, *SHARP_LAPVAR, log=True)


def quality_factors(image: np.ndarray, faces: Faces) -> dict[str, np.ndarray]:
    """The four factors separately (for reports and debugging); ``quality`` is their product."""
    if len(faces) == 0:
        return {k: np.zeros(0) for k in ("size", "sharpness", "pose", "score")}
    return {
        "size": size_factor(faces.boxes),
        "sharpness": sharpness_factor(image, faces),
        "pose": pose_factor(faces.landmarks),
        "score": _ramp(faces.scores, *SCORE),
    }


def quality(image: np.ndarray, faces: Faces) -> np.ndarray:
    """0..1 usability of each face: size x sharpness x pose x detector-score factors (float32)."""
    f = quality_factors(image, faces)
    return (f["size"] * f["sharpness"] * f["pose"] * f["score"]).astype(np.float32)


def usable(q: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """Boolean mask of faces worth classifying: quality at or above ``threshold``."""
    return np.asarray(q) >= threshold
