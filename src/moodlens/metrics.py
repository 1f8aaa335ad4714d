"""Classification metrics shared by training, ``moodlens eval`` and the benchmarks."""

from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """Rows are true classes, columns predictions."""
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE over equal-width confidence bins (Guo et al. 2017)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def classification_report(probs: np.ndarray, y_true: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class recall, confusion matrix and ECE as plain JSON-able values."""
    n = len(classes)
    pred = probs.argmax(1)
    cm = confusion(y_true, pred, n)
    support = cm.sum(1)
    recall = {c: (float(cm[i, i] / support[i]) if support[i] else None) for i, c in enumerate(classes)}
    present = [r for r in recall.values() if r is not None]
    return {
        "n": int(len(y_true)),
        "accuracy": float((pred == y_true).mean()) if len(y_true) else 0.0,
        "balanced_accuracy": float(np.mean(present)) if present else 0.0,
        "recall": recall,
        "ece": expected_calibration_error(probs, y_true) if len(y_true) else 0.0,
        "classes": list(classes),
        "confusion": cm.tolist(),
    }
