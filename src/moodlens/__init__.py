"""moodlens: offline audience-emotion analytics.

A tiny verb-like API::

    import moodlens
    result = moodlens.analyze("talk.mp4")          # -> Analysis (records, tracks, summary)
    faces = moodlens.detect_faces(image)            # -> Faces (boxes, landmarks, scores)
    moodlens.classify_emotions([crop1, crop2])      # -> [{"happiness": 0.91, ...}, ...]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moodlens.errors import MediaError, ModelError, MoodlensError, NotFoundError
from moodlens.faces.detect import detect_faces
from moodlens.types import EMOTIONS, Faces, Frame

__version__ = "0.1.0"


def analyze(path, **options):
    """Analyse a video file; see ``moodlens.pipeline.analyze`` for the options."""
    from moodlens.pipeline import analyze as _analyze
    return _analyze(path, **options)


def classify_emotions(crops: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """Emotion probabilities for face crops (H x W x 3 uint8 BGR, or H x W grey).

    Tight crops such as FER+ images are valid input: each crop is landmarked
    and aligned exactly as the model's training data was. Returns one
    ``{class_name: probability}`` dict per crop, with the FER+ class names.
    """
    from moodlens.faces.emotion import default_classifier, tight_crop_input, to_dicts

    clf = default_classifier()
    if len(crops) == 0:
        return []
    batch = np.stack([tight_crop_input(np.asarray(c), clf.size, clf.template) for c in crops])
    return to_dicts(clf.predict(batch))


__all__ = ["EMOTIONS", "Faces", "Frame", "MediaError", "ModelError", "MoodlensError", "NotFoundError",
           "analyze", "classify_emotions", "detect_faces"]
