"""5-point similarity alignment to a canonical crop.

Every model input in moodlens (emotion training, emotion inference, identity)
is made by this one function, so training and inference see the same framing.
Templates are given in unit coordinates (0..1 of the crop side).
"""

from __future__ import annotations

import cv2
import numpy as np

# ArcFace/SFace 112x112 template, YuNet landmark order: right eye, left eye (image
# left to right), nose tip, right mouth corner, left mouth corner.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
) / 112.0


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation), Umeyama 1991.

    Returns the 2x3 matrix mapping ``src`` points onto ``dst`` points.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var = (s0**2).sum() / len(src)
    scale = (sig * d).sum() / var if var > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align(image: np.ndarray, landmarks: np.ndarray, size: int, template: np.ndarray = ARCFACE_112) -> np.ndarray:
    """Warp one face to a ``size`` x ``size`` crop with its landmarks on ``template``."""
    m = similarity_matrix(landmarks, np.asarray(template) * size)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def align_batch(image: np.ndarray, landmarks: np.ndarray, size: int, template: np.ndarray = ARCFACE_112) -> np.ndarray:
    """Aligned crops for every face of an image: (N, size, size, C) uint8."""
    channels = () if image.ndim == 2 else (image.shape[2],)
    out = np.empty((len(landmarks), size, size, *channels), dtype=image.dtype)
    for i, lm in enumerate(landmarks):
        out[i] = align(image, lm, size, template)
    return out
