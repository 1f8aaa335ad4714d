"""Classification metrics shared by training, ``moodlens eval`` and the benchmarks."""

from __future__ import annotations

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """Rows are true classes, columns predictions."""
    return np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def restrict(probs: np.ndarray, classes: list[int]) -> np.ndarray:
    """Distributions over a subset of the classes, renormalised: how a set without some
    classes (a 7-class set has no contempt) is scored."""
    sub = probs[:, classes]
    return sub / np.maximum(sub.sum(1, keepdims=True), 1e-9)


def _binned_gap(conf: np.ndarray, target: np.ndarray, bins: int) -> float:
    """Mean |target - confidence| within equal-width confidence bins, weighted by bin size."""
    edges = np.linspace(0, 1, bins + 1)
    gap = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            gap += m.mean() * abs(target[m].mean() - conf[m].mean())
    return float(gap)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE over equal-width confidence bins (Guo et al. 2017)."""
    return _binned_gap(probs.max(1), (probs.argmax(1) == y_true).astype(float), bins)


def vote_calibration_error(probs: np.ndarray, shares: np.ndarray, bins: int = 15) -> float:
    """ECE against the annotators rather than the majority: the target of a prediction is
    the share of annotators who chose the predicted class. A model trained on vote
    distributions should say 0.6 where 6 of 10 annotators agree; against the majority
    label that reads as under-confidence, against the votes it is exact."""
    pred = probs.argmax(1)
    return _binned_gap(probs.max(1), shares[np.arange(len(pred)), pred], bins)


def classification_report(probs: np.ndarray, y_true: np.ndarray, classes: list[str],
                          shares: np.ndarray | None = None) -> dict:
    """Accuracy, per-class recall, confusion matrix and ECE as plain JSON-able values;
    with annotators' vote ``shares`` (rows summing to 1), also ``ece_votes``."""
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
        **({"ece_votes": vote_calibration_error(probs, shares)} if shares is not None and len(y_true) else {}),
    }
