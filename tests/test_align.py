import cv2
import numpy as np

from moodlens.faces.align import ARCFACE_112, align, similarity_matrix


def _apply(m, pts):
    return pts @ m[:, :2].T + m[:, 2]


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    ang, s, t = np.deg2rad(23), 1.7, np.array([12.0, -5.0])
    rot = s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = src @ rot.T + t
    m = similarity_matrix(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_similarity_never_reflects():
    src = np.array([[0, 0], [10, 0], [5, 5], [2, 9], [8, 9]], float)
    dst = src * [-1, 1]  # a mirror image cannot be reached by rotation + scale
    m = similarity_matrix(src, dst)
    assert np.linalg.det(m[:, :2]) > 0


def test_align_puts_landmarks_on_the_template():
    img = np.zeros((300, 300, 3), np.uint8)
    size = 112
    target = ARCFACE_112 * size
    # landmarks of a face rotated by 20 degrees, scaled 1.5x, somewhere in the image
    ang = np.deg2rad(20)
    rot = 1.5 * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    lm = target @ rot.T + [90, 40]
    for x, y in lm:
        cv2.circle(img, (int(round(x)), int(round(y))), 3, (255, 255, 255), -1)
    crop = align(img, lm, size)
    assert crop.shape == (size, size, 3)
    for x, y in target:
        assert crop[int(round(y)), int(round(x))].max() > 100  # each dot lands on its template point


def test_crop_of_a_flipped_face_is_the_flipped_crop_for_a_symmetric_template():
    """Convention: pixel centres are integers (an image flip maps x to W-1-x) while a
    template point t lands at t*S, so a mirrored template (t -> 1-t) maps x to S-x:
    the flipped face's crop is the flipped crop moved by exactly one pixel."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (120, 120), np.uint8)
    t = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.78], [0.65, 0.78]], np.float32)
    lm = t * 80 + 20
    crop = align(img, lm, 48, t)
    flipped_img = img[:, ::-1].copy()
    flm = lm.copy()
    flm[:, 0] = 119 - flm[:, 0]
    flm = flm[[1, 0, 2, 4, 3]]
    fcrop = align(flipped_img, flm, 48, t)
    mirrored = fcrop[:, ::-1].astype(int)
    shifted = np.abs(mirrored[:, :-1] - crop[:, 1:].astype(int))[4:-4, 4:-4]
    unshifted = np.abs(mirrored - crop.astype(int))[4:-4, 4:-4]
    assert shifted.max() <= 1  # identical up to rounding
    assert unshifted.mean() > 20  # the test would notice a different convention
