"""Detection accuracy floors on real data, plus the evaluation helpers themselves."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import shared

from moodlens.evaluation.detection import box_iou, ellipse_to_box, evaluate_fddb, load_fddb, match
from moodlens.faces.detect import detect_faces



def test_ellipse_to_box_axis_aligned_and_rotated():
    # Major axis vertical (angle pi/2): 2*minor wide, 2*major tall.
    x, y, w, h = ellipse_to_box([30, 20, math.pi / 2, 100, 50, 1])
    assert np.allclose([x, y, w, h], [80, 20, 40, 60])
    # A circle is rotation invariant; a 45-degree ellipse has a square box.
    assert np.allclose(ellipse_to_box([10, 10, 0.7, 0, 0]), [-10, -10, 20, 20])
    _, _, w, h = ellipse_to_box([30, 20, math.pi / 4, 0, 0])
    assert np.isclose(w, h) and np.isclose(w, 2 * math.sqrt((30**2 + 20**2) / 2))


def test_match_is_one_to_one():
    gt = np.array([[0, 0, 10, 10], [100, 100, 10, 10]], float)
    pred = np.array([[1, 1, 10, 10], [0, 0, 10, 10], [300, 300, 5, 5]], float)
    assert match(gt, pred) == (1, 2, 1)  # duplicate and stray are both false positives
    assert match(gt, np.zeros((0, 4))) == (0, 0, 2)
    assert match(np.zeros((0, 4)), pred) == (0, 3, 0)
    assert np.isclose(box_iou(gt[:1], pred[:1])[0, 0], 81 / 119)


@pytest.fixture(scope="module")
def fddb():
    return evaluate_fddb(shared("fddb_public"))  # at detect_faces' default threshold


def test_fddb_loader():
    items = load_fddb(shared("fddb_public"))
    assert len(items) > 100 and all(p.is_file() for p, _ in items[:5])
    assert all(b.shape[1] == 4 and (b[:, 2:] > 0).all() for _, b in items)


def test_fddb_recall_and_false_positives_at_default_threshold(fddb):
    assert fddb["recall"] >= 0.85, fddb
    assert fddb["fp_per_image"] <= 0.1, fddb


def _dlib_boxes(xml: Path):
    for image in ET.parse(xml).getroot().iter("image"):
        boxes = [[float(b.get(k)) for k in ("left", "top", "width", "height")]
                 for b in image.iter("box") if b.get("ignore", "0") != "1"]
        yield xml.parent / image.get("file"), np.asarray(boxes, float).reshape(-1, 4)


@pytest.mark.parametrize("split", ["training.xml", "testing.xml"])
def test_dlib_faces_found(split):
    tp = n = 0
    for path, gt in _dlib_boxes(shared("dlib_faces", split)):
        faces = detect_faces(cv2.imread(str(path)))
        t, _, f = match(gt, faces.boxes, iou=0.4)
        tp, n = tp + t, n + t + f
    assert n > 0 and tp / n >= 0.8, f"{tp}/{n} dlib boxes found in {split}"
