"""Face-detection accuracy on FDDB (and any box-annotated set).

FDDB annotates each face with an ellipse covering forehead to chin; YuNet's
boxes are shorter (brows to chin), so the two never coincide. We compare the
ellipse's axis-aligned bounding box with the detector's box at IoU >= 0.4, a
looser criterion than the usual 0.5 precisely to absorb that framing
difference. Matching is one-to-one (Hungarian), so a duplicate detection of
a face counts as a false positive, not a second hit.
"""

from __future__ import annotations

import csv
import inspect
import json
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from moodlens.faces.detect import detect_faces
from moodlens.images import read_image


def ellipse_to_box(ellipse) -> tuple[float, float, float, float]:
    """Axis-aligned bounding box (x, y, w, h) of an FDDB ellipse.

    ``ellipse`` is ``[major_radius, minor_radius, angle_rad, center_x, center_y, ...]``;
    the angle is that of the major axis against the image x axis.
    """
    a, b, t, cx, cy = (float(v) for v in ellipse[:5])
    hw = np.sqrt((a * np.cos(t)) ** 2 + (b * np.sin(t)) ** 2)
    hh = np.sqrt((a * np.sin(t)) ** 2 + (b * np.cos(t)) ** 2)
    return (cx - hw, cy - hh, 2 * hw, 2 * hh)


def load_fddb(root: str | Path) -> list[tuple[Path, np.ndarray]]:
    """(image path, ground-truth boxes (N, 4) x,y,w,h) for every image of ``ellipses.csv``."""
    root = Path(root)
    out = []
    with open(root / "ellipses.csv", newline="") as f:
        for row in csv.DictReader(f):
            boxes = [ellipse_to_box(e) for e in json.loads(row["ellipses"])]
            out.append((root / row["image"], np.asarray(boxes, np.float64).reshape(-1, 4)))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of x,y,w,h boxes: (len(a), len(b))."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2) - np.maximum(a[:, None, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2) - np.maximum(a[:, None, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def match(gt_boxes: np.ndarray, pred_boxes: np.ndarray, iou: float = 0.4) -> tuple[int, int, int]:
    """One-to-one matching of predictions to ground truth: (tp, fp, fn).

    Hungarian assignment that first maximises the number of pairs with IoU >= ``iou``
    (weight K > any count) and then their total IoU, so no crowd ordering artefact
    of greedy matching can cost a true positive.
    """
    gt = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    pred = np.asarray(pred_boxes, np.float64).reshape(-1, 4)
    if len(gt) == 0 or len(pred) == 0:
        return 0, len(pred), len(gt)
    m = box_iou(gt, pred)
    ok = m >= iou
    k = min(m.shape) + 1.0
    rows, cols = linear_sum_assignment(-(ok * (k + m)))
    tp = int(ok[rows, cols].sum())
    return tp, len(pred) - tp, len(gt) - tp


def predict_fddb(root: str | Path, threshold: float = 0.3, **detect_kwargs) -> list[dict]:
    """Run the detector once over the set at a low ``threshold``.

    Raising the threshold afterwards by filtering the scores gives exactly what a
    run at that threshold would (greedy NMS never lets a lower-scored box suppress a
    higher one), so one pass serves a whole threshold sweep.
    """
    rows = []
    for path, gt in load_fddb(root):
        image = read_image(path)  # one-line MediaError for a missing, unreadable or oversized photo
        t0 = time.perf_counter()
        faces = detect_faces(image, threshold=threshold, **detect_kwargs)
        ms = (time.perf_counter() - t0) * 1e3
        rows.append(dict(path=path, gt=gt, boxes=faces.boxes, scores=faces.scores, ms=ms))
    return rows


def summarise(rows: list[dict], threshold: float, iou: float = 0.4) -> dict:
    """Recall and false positives per image at ``threshold`` over ``predict_fddb`` rows."""
    tp = fp = fn = 0
    for r in rows:
        t, f, n = match(r["gt"], r["boxes"][r["scores"] >= threshold], iou)
        tp, fp, fn = tp + t, fp + f, fn + n
    n_img = len(rows)
    return dict(
        threshold=threshold,
        recall=tp / max(tp + fn, 1),
        fp_per_image=fp / max(n_img, 1),
        images=n_img,
        faces=tp + fn,
        ms_per_image=float(np.mean([r["ms"] for r in rows])) if rows else 0.0,
    )


def default_threshold() -> float:
    """``detect_faces``' own default score threshold, so evaluation follows any change to it."""
    return float(inspect.signature(detect_faces).parameters["threshold"].default)


def evaluate_fddb(root: str | Path, threshold: float | None = None, iou: float = 0.4,
                  **detect_kwargs) -> dict:
    """Recall, FP/image, image and face counts and mean detector time at one threshold
    (``None``: the detector's default)."""
    threshold = default_threshold() if threshold is None else threshold
    return summarise(predict_fddb(root, threshold=threshold, **detect_kwargs), threshold, iou)
