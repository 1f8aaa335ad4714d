"""The small typed values that flow between stages.

``Faces`` is the one batch type of the pipeline, in the spirit of supervision's
``Detections``: parallel NumPy arrays, one row a face, so every stage is a
vectorised function of the batch rather than a loop over objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

EMOTIONS: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
)
"""The FER+ eight classes, in the order of every probability vector."""


@dataclass(frozen=True)
class Frame:
    """One decoded, sampled video frame (BGR, upright)."""

    index: int
    time_s: float
    image: np.ndarray


def _empty(*shape: int, dtype=np.float32) -> np.ndarray:
    return np.zeros((0, *shape), dtype=dtype)


@dataclass
class Faces:
    """A batch of faces found in one image; every array has one row per face."""

    boxes: np.ndarray = field(default_factory=lambda: _empty(4))  # x, y, w, h in pixels
    landmarks: np.ndarray = field(default_factory=lambda: _empty(5, 2))  # eyes, nose, mouth corners
    scores: np.ndarray = field(default_factory=lambda: _empty())
    crops: np.ndarray | None = None  # aligned crops (N, S, S, 3) uint8 BGR
    quality: np.ndarray | None = None  # 0..1 usability score
    emotions: np.ndarray | None = None  # (N, 8) probabilities in EMOTIONS order
    track_ids: np.ndarray | None = None  # int, -1 until tracked
    embeddings: np.ndarray | None = None  # (N, D) L2-normalised, when identity is on

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index) -> "Faces":
        """Select rows with an int, a slice, an index array or a boolean mask."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return Faces(
            boxes=self.boxes[index], landmarks=self.landmarks[index], scores=self.scores[index],
            crops=pick(self.crops), quality=pick(self.quality), emotions=pick(self.emotions),
            track_ids=pick(self.track_ids), embeddings=pick(self.embeddings),
        )

    def with_(self, **changes) -> "Faces":
        return replace(self, **changes)

    @property
    def areas(self) -> np.ndarray:
        return self.boxes[:, 2] * self.boxes[:, 3]
