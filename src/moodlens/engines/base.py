"""The emotion-engine interface: faces in, one score per report column out."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from moodlens.errors import MoodlensError
from moodlens.types import Faces

STORE_EMOTIONS: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "confused", "unknown")
"""Every emotion column of ``observations`` (percentages, NULL where an engine has no score)."""


class EngineError(MoodlensError):
    """An engine cannot score: missing credentials, a refused call, a missing collection."""


@runtime_checkable
class EmotionEngine(Protocol):
    """Scores a frame's faces; the pipeline does detection, alignment and tracking itself.

    ``columns`` are store columns (:data:`STORE_EMOTIONS`) in the order of ``score``'s
    columns; the columns an engine does not fill stay NULL, so a report never shows a
    number no model produced. ``remote`` engines are called from a few threads at once.
    """

    name: str  # "own", "rekognition": written into every record
    version: str  # model and version, recorded with the analysis (models["emotion"])
    columns: tuple[str, ...]
    remote: bool

    def score(self, image: np.ndarray, faces: Faces) -> np.ndarray:
        """(N, len(columns)) float32 scores 0-1 for ``faces`` (with crops) in the BGR ``image``;
        NaN where the engine has no score for a face."""
        ...
