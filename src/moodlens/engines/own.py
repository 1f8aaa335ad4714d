"""The shipped ONNX emotion model (or a card you trained) as an engine."""

from __future__ import annotations

import numpy as np

from moodlens.types import EMOTIONS, Faces


class OwnEngine:
    """:class:`moodlens.faces.emotion.EmotionClassifier` on the pipeline's aligned crops:
    exactly what ``FaceStage`` always ran, so the rows are bit-identical."""

    name = "own"
    columns = EMOTIONS
    remote = False

    def __init__(self, classifier):
        self.classifier = classifier

    @property
    def version(self) -> str:
        return self.classifier.version

    def score(self, image: np.ndarray, faces: Faces) -> np.ndarray:
        from moodlens.pipeline import grey_crops

        if not len(faces):
            return np.zeros((0, len(self.columns)), np.float32)
        return self.classifier.predict(grey_crops(faces.crops))
