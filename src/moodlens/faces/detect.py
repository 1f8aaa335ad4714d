"""Face detection with YuNet (OpenCV Zoo, 2023mar) through ONNX Runtime.

Small faces need resolution and large faces need context, so a big frame is
searched twice: at (up to) native resolution, where YuNet's stride-8 head finds
faces of about 12-20 px, and once shrunk to 640 px for close-ups; the two are
merged by non-maximum suppression.
"""

from __future__ import annotations

import cv2
import numpy as np

from moodlens.models import yunet_session
from moodlens.types import Faces

STRIDES = (8, 16, 32)


def _pad32(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    ph, pw = (-h) % 32, (-w) % 32
    if ph or pw:
        image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=0)
    return image


def _decode(outputs: list[np.ndarray], names: list[str], shape: tuple[int, int], threshold: float):
    """Turn YuNet's per-stride grids into boxes, landmarks and scores (input pixels)."""
    out = dict(zip(names, outputs))
    h, w = shape
    boxes, kps, scores = [], [], []
    for s in STRIDES:
        rows, cols = h // s, w // s
        cls = out[f"cls_{s}"][0, :, 0]
        obj = out[f"obj_{s}"][0, :, 0]
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        keep = np.flatnonzero(score >= threshold)
        if keep.size == 0:
            continue
        r, c = np.divmod(keep, cols)
        bb = out[f"bbox_{s}"][0, keep]
        cx, cy = (c + bb[:, 0]) * s, (r + bb[:, 1]) * s
        bw, bh = np.exp(bb[:, 2]) * s, np.exp(bb[:, 3]) * s
        boxes.append(np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1))
        k = out[f"kps_{s}"][0, keep].reshape(-1, 5, 2)
        kps.append(np.stack([(c[:, None] + k[..., 0]) * s, (r[:, None] + k[..., 1]) * s], axis=2))
        scores.append(score[keep])
        del rows
    if not scores:
        return np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32)
    return (np.concatenate(boxes).astype(np.float32), np.concatenate(kps).astype(np.float32),
            np.concatenate(scores).astype(np.float32))


def _run(image: np.ndarray, threshold: float):
    sess = yunet_session()
    padded = _pad32(image)
    blob = padded.transpose(2, 0, 1)[None].astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    return _decode(sess.run(names, {"input": blob}), names, padded.shape[:2], threshold)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    keep = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), 0.0, iou)
    return np.asarray(keep, dtype=np.int64).reshape(-1)


def scales_for(shape: tuple[int, int], max_side: int = 1920, context_side: int = 640) -> list[float]:
    """Pyramid scales for a frame: fine (<= max_side) first, then a coarse pass for big faces."""
    longest = max(shape[:2])
    fine = min(1.0, max_side / longest)
    scales = [fine]
    if longest * fine > context_side * 1.5:
        scales.append(context_side / longest)
    return scales


def detect_faces(
    image: np.ndarray,
    threshold: float = 0.75,
    nms_iou: float = 0.3,
    min_size: float = 0.0,
    max_side: int = 1920,
    upscale: float = 1.0,
) -> Faces:
    """Find faces in a BGR image: boxes (x, y, w, h), 5 landmarks and a confidence.

    ``upscale`` > 1 enlarges a small image first (tight crops such as FER+'s 48 px);
    it is an addition to, not a replacement for, the scale pyramid.
    """
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.size == 0:
        return Faces()
    all_boxes, all_kps, all_scores = [], [], []
    scales = [upscale] if upscale != 1.0 else scales_for(image.shape, max_side)
    for s in scales:
        resized = image if s == 1.0 else cv2.resize(
            image, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        b, k, sc = _run(resized, threshold)
        all_boxes.append(b / s)
        all_kps.append(k / s)
        all_scores.append(sc)
    boxes, kps, scores = (np.concatenate(a) for a in (all_boxes, all_kps, all_scores))
    keep = nms(boxes, scores, nms_iou)
    faces = Faces(boxes=boxes[keep], landmarks=kps[keep], scores=scores[keep])
    if min_size > 0 and len(faces):
        faces = faces[np.minimum(faces.boxes[:, 2], faces.boxes[:, 3]) >= min_size]
    order = np.argsort(-faces.scores, kind="stable")
    return faces[order]


def landmarks_in_crop(crop: np.ndarray) -> np.ndarray | None:
    """YuNet landmarks of the face filling a tight crop, in the crop's pixels.

    A tight crop has no margin and may be tiny (FER+: 48 px), so it is padded
    by a third of its side and enlarged to about 144 px, where YuNet is
    reliable. Among several finds, the most confident central one wins.
    """
    if crop.ndim == 2:
        crop = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
    side = max(crop.shape[:2])
    pad = int(round(side / 3))
    padded = cv2.copyMakeBorder(crop, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    faces = detect_faces(padded, threshold=0.3, upscale=max(1.0, 144.0 / side))
    if len(faces) == 0:
        return None
    centre = np.array([padded.shape[1] / 2, padded.shape[0] / 2])
    centres = faces.boxes[:, :2] + faces.boxes[:, 2:] / 2
    best = int(np.argmin(((centres - centre) ** 2).sum(1) / side**2 - faces.scores))
    return faces.landmarks[best] - pad
