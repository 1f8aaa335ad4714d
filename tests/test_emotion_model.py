"""The shipped emotion model: its card, its hash check, the public API, and a measured floor."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

import moodlens
from moodlens.errors import ModelError
from moodlens.faces.emotion import EmotionClassifier, tight_crop_input
from moodlens.models import ModelCard, default_emotion_card, packaged_dir, sha256_file
from moodlens.training.ferplus import read_labels
from moodlens.types import EMOTIONS

from conftest import shared


def test_card_describes_the_shipped_file():
    card = default_emotion_card()
    assert card.classes == EMOTIONS
    assert card.path.is_file() and sha256_file(card.path) == card.sha256
    assert card.path.stat().st_size <= 10 * 1024 * 1024
    raw = card.raw
    for key in ("preprocessing", "training", "metrics"):
        assert key in raw
    assert raw["training"]["provenance"]["FER2013Train"]["sha256"]
    m = raw["metrics"]["ferplus_valid_majority"]
    assert len(m["confusion"]) == 8 and sum(map(sum, m["confusion"])) == m["n"]


def test_a_tampered_model_file_is_refused(tmp_path):
    src = packaged_dir()
    card = json.loads((src / "emotion.json").read_text())
    shutil.copy(src / "emotion.json", tmp_path / "emotion.json")
    blob = bytearray((src / card["file"]).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / card["file"]).write_bytes(bytes(blob))
    with pytest.raises(ModelError, match="SHA-256"):
        EmotionClassifier(ModelCard.load(tmp_path / "emotion.json"))


def test_classify_emotions_returns_one_distribution_per_crop():
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), rng.integers(0, 255, (120, 100), dtype=np.uint8)]
    out = moodlens.classify_emotions(crops)
    assert len(out) == 2 and moodlens.classify_emotions([]) == []
    for d in out:
        assert tuple(d) == EMOTIONS
        assert abs(sum(d.values()) - 1) < 1e-4 and min(d.values()) >= 0


def _ferplus_valid(n: int):
    root = shared("ferplus", "FER2013Valid")
    files, votes = read_labels(root)
    keep = np.flatnonzero(votes.argmax(1) < 8)[:n]  # majority unknown / not a face excluded
    crops = [cv2.imread(str(root / files[i]), cv2.IMREAD_GRAYSCALE) for i in keep]
    return crops, votes[keep, :8].argmax(1)


def test_accuracy_and_flip_stability_on_ferplus_valid():
    """A floor well under the card's full-set figure: catches a broken model or preprocessing."""
    crops, y = _ferplus_valid(800)
    names = list(EMOTIONS)
    probs = moodlens.classify_emotions(crops)
    pred = np.array([names.index(max(d, key=d.get)) for d in probs])
    flipped = moodlens.classify_emotions([c[:, ::-1].copy() for c in crops])
    pred_f = np.array([names.index(max(d, key=d.get)) for d in flipped])
    acc = float((pred == y).mean())
    assert acc >= 0.80, f"accuracy {acc:.3f} on {len(y)} FER+ valid faces"
    assert float((pred == pred_f).mean()) >= 0.9
    # every class the set contains is predicted at least sometimes (no collapsed model)
    for c in (0, 1, 2, 3, 4):
        assert (pred == c).any(), f"{EMOTIONS[c]} never predicted"


def test_flip_tta_scores_a_face_and_its_mirror_the_same():
    """Averaging with the mirror image: exactly mirror-invariant, the plain mean of both views, its own version."""
    crops, _ = _ferplus_valid(64)
    plain, tta = EmotionClassifier(), EmotionClassifier(flip=True)
    x = np.stack([tight_crop_input(c, plain.size, plain.template) for c in crops])
    mirrored = np.ascontiguousarray(x[..., ::-1])
    p, p_plain, p_plain_mirrored = tta.predict(x), plain.predict(x), plain.predict(mirrored)
    np.testing.assert_allclose(p, tta.predict(mirrored), atol=1e-5)
    np.testing.assert_allclose(p, (p_plain + p_plain_mirrored) / 2, atol=1e-5)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-4)
    assert tta.version == plain.version + "+flip"
    assert np.abs(p_plain - p_plain_mirrored).max() > 1e-3  # so the invariance is not vacuous
