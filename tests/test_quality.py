"""Face quality: synthetic faces whose size, pose and sharpness are known by construction."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from moodlens.faces.quality import pose_angles, pose_factor, quality, quality_factors, usable
from moodlens.types import Faces

# A frontal 3D face in eye-distance units (x right, y down, z towards the camera):
# eyes, nose tip (0.5 in front of the eye/mouth plane), mouth corners.
FACE_3D = np.array([[-0.5, 0, 0], [0.5, 0, 0], [0, 0.55, 0.5], [-0.4, 1.1, 0], [0.4, 1.1, 0]])


def landmarks(yaw_deg=0.0, roll_deg=0.0, size=100.0, centre=(200.0, 200.0)) -> np.ndarray:
    """Orthographic projection of FACE_3D turned by yaw then roll, eye distance ~0.4 * size."""
    y, r = np.radians(yaw_deg), np.radians(roll_deg)
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    p = (FACE_3D - [0, 0.55, 0]) @ ry.T @ rz.T
    return (p[:, :2] * 0.4 * size + centre).astype(np.float32)


def faces(lms, sizes, scores=None) -> Faces:
    lms = np.asarray(lms, np.float32)
    sizes = np.asarray(sizes, np.float32)
    centres = lms.mean(1)
    boxes = np.concatenate([centres - sizes[:, None] / 2, np.stack([sizes, sizes], 1)], 1)
    scores = np.full(len(lms), 0.9, np.float32) if scores is None else np.asarray(scores, np.float32)
    return Faces(boxes=boxes.astype(np.float32), landmarks=lms, scores=scores)


@pytest.fixture(scope="module")
def sharp_image():
    """Textured noise: plenty of detail everywhere, so sharpness saturates."""
    return np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)


def test_frontal_large_sharp_face_is_fully_usable(sharp_image):
    q = quality(sharp_image, faces([landmarks()], [100]))
    assert q.dtype == np.float32 and q.shape == (1,)
    assert q[0] > 0.95 and usable(q).all()


def test_profile_scores_low(sharp_image):
    f = faces([landmarks(yaw_deg=80), landmarks(yaw_deg=90)], [100, 100])
    assert (pose_factor(f.landmarks) < 0.05).all()
    assert not usable(quality(sharp_image, f)).any()


def test_tiny_face_scores_zero(sharp_image):
    f = faces([landmarks(size=12), landmarks(size=20)], [12, 20])
    assert np.allclose(quality_factors(sharp_image, f)["size"], 0)
    assert np.allclose(quality(sharp_image, f), 0)


def test_yaw_is_recovered_from_landmarks():
    yaws = [0, 15, 30, 45, 60]
    est, roll = pose_angles(np.stack([landmarks(yaw_deg=a, roll_deg=10) for a in yaws]))
    assert np.allclose(est, yaws, atol=1.0)
    assert np.allclose(roll, 10, atol=1.0)


def test_factors_are_monotone(sharp_image):
    by_size = quality(sharp_image, faces([landmarks(size=s) for s in (20, 30, 40, 60, 80, 120)],
                                         [20, 30, 40, 60, 80, 120]))
    assert np.all(np.diff(by_size) >= 0) and by_size[0] == 0 and by_size[-1] > 0.95
    by_yaw = pose_factor(np.stack([landmarks(yaw_deg=a) for a in (0, 20, 35, 50, 65, 90)]))
    assert np.all(np.diff(by_yaw) <= 0) and by_yaw[0] == 1 and by_yaw[-1] == 0
    by_roll = pose_factor(np.stack([landmarks(roll_deg=a) for a in (0, 25, 50, 80, 180)]))
    assert np.all(np.diff(by_roll) <= 0) and by_roll[0] == 1 and by_roll[-1] == 0
    by_score = quality(sharp_image, faces([landmarks()] * 3, [100] * 3, scores=[0.2, 0.55, 0.9]))
    assert np.all(np.diff(by_score) > 0) and by_score[0] == 0


def test_blur_lowers_quality_on_box_and_on_crops(sharp_image):
    f = faces([landmarks()], [100])
    blurred = cv2.GaussianBlur(sharp_image, (0, 0), 6)
    assert quality(blurred, f)[0] < 0.3 < quality(sharp_image, f)[0]
    # Aligned crops, when present, are what is measured (not the box region).
    sharp_crop = np.ascontiguousarray(sharp_image[:112, :112])[None]
    blur_crop = cv2.GaussianBlur(sharp_crop[0], (0, 0), 4)[None]
    assert quality(blurred, f.with_(crops=sharp_crop))[0] > 0.95
    assert quality(sharp_image, f.with_(crops=blur_crop))[0] < 0.3


def test_edge_cases(sharp_image):
    assert quality(sharp_image, Faces()).shape == (0,)
    off = faces([landmarks(centre=(-500, -500))], [100])  # box entirely outside: no pixels, no detail
    assert quality(sharp_image, off)[0] == 0
    grey = quality(sharp_image[..., 0], faces([landmarks()], [100]))
    assert grey[0] > 0.95
    assert usable(np.array([0.1, 0.3, 0.9])).tolist() == [False, True, True]
    assert usable(np.array([0.5]), threshold=0.6).tolist() == [False]
