"""Shot boundaries between sampled frames, from the frames the pipeline already decoded.

A cut ends every track (:meth:`moodlens.faces.track.Tracker.cut`): no face is ever
associated across one, so a performer's track cannot run on into an audience member's
face at the same place after the editor cuts away. Each observation records its shot.

The detector compares each sampled frame with the previous sample (at 2 fps, half a
second apart) on two cheap signatures of a 64x64 downscale (of a
128x128 grid of its pixels, letterbox and pillarbox bars cropped away):

* colour: a 16x4 hue-saturation histogram (brightness left out), compared by the
  Hellinger distance;
* layout: a 16x16 luma thumbnail standardised to zero mean and unit variance,
  compared by correlation, ``(1 - r) / 2``.

Both are blind to a change of exposure or a fade in brightness (the thumbnail is
standardised, the histogram has no value axis), and a person moving in the same
scene changes the layout but hardly the colours. The score is the mean of the two
distances. A cut is declared when it passes ``threshold`` (a change no shot makes in
half a second), or when it passes ``low`` and stands out from the recent within-shot
scores (``ratio`` times their median, with at least ``min_history`` of them): a cut
between two shots of one studio (same background, same framing, another person)
moves the score far less than a cut between places, but far more than that studio's
own shots move between samples; a shaky or fast-moving shot raises its own baseline
instead of cutting at every sample. The first frame starts
shot 0. See ``benchmarks/shot_cuts.py`` for precision, recall and cost against
PySceneDetect on clips with known cuts.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np

_SIDE = 64  # downscale before anything else: the cost does not grow with the frame


def _without_bars(grid: np.ndarray, dark: int = 24) -> np.ndarray:
    """``grid`` without letterbox or pillarbox bars (whole rows or columns whose luma stays under ``dark``):
    bars are the same in every shot, and would dominate the standardised layout of both sides."""
    bright = cv2.cvtColor(grid, cv2.COLOR_BGR2GRAY) > dark  # (numpy's max over 3 channels is slower)
    rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
    if len(rows) < 16 or len(cols) < 16:
        return grid  # (almost) black frame: nothing to crop to
    return grid[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def signature(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sqrt of the normalised 16x4 H-S histogram, standardised 16x16 luma thumbnail) of a BGR frame."""
    # pick a 128x128 grid of pixels first (area-averaging all of 1080p costs ms), drop black bars
    h, w = image.shape[:2]  # numpy indexing, not cv2.resize: no OpenCV thread pool shared with the pipeline
    grid = image.take(((np.arange(2 * _SIDE) + 0.5) * h / (2 * _SIDE)).astype(np.intp), axis=0).take(
        ((np.arange(2 * _SIDE) + 0.5) * w / (2 * _SIDE)).astype(np.intp), axis=1)
    if grid.ndim == 2:
        grid = cv2.cvtColor(grid, cv2.COLOR_GRAY2BGR)
    grid = _without_bars(grid)
    small = cv2.resize(grid, (_SIDE, _SIDE), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [16, 4], [0, 180, 0, 256]).ravel()
    hist = np.sqrt(hist / max(float(hist.sum()), 1.0))
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    thumb = cv2.resize(grey, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    thumb = (thumb - thumb.mean()) / (thumb.std() + 1e-6)
    return hist.astype(np.float64), thumb


def distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """(colour, layout) distances of two signatures, each in [0, 1]."""
    colour = float(np.sqrt(max(0.0, 1.0 - float(a[0] @ b[0]))))  # Hellinger
    layout = float((1.0 - float(a[1] @ b[1]) / a[1].size) / 2.0)
    return colour, max(0.0, layout)


class ShotDetector:
    """Feed sampled frames in order; ``update`` says whether a frame starts a new shot.

    ``shot`` is the index of the current shot (0 for the first frame's). State is a
    signature and a short history of distances: bounded memory, streaming.
    """

    def __init__(self, threshold: float = 0.3, low: float = 0.12, ratio: float = 5.0, history: int = 8,
                 min_history: int = 2):
        self.threshold = threshold
        self.low = low
        self.ratio = ratio
        self.min_history = min_history
        self.shot = -1
        self._last: tuple[np.ndarray, np.ndarray] | None = None
        self._recent: deque[float] = deque(maxlen=history)
        self.last_score = 0.0

    def score(self, image: np.ndarray) -> float:
        """Distance of this frame from the previous sample (0 for the first); updates the state."""
        return self.score_signature(signature(image))

    def score_signature(self, sig: tuple[np.ndarray, np.ndarray]) -> float:
        """As :meth:`score`, from the frame's :func:`signature` (made where the frame is, e.g. a Ray worker)."""
        prev, self._last = self._last, sig
        if prev is None:
            return 0.0
        return float(np.mean(distance(prev, sig)))

    def update(self, image: np.ndarray) -> bool:
        """True when ``image`` (the next sampled frame, BGR) starts a new shot after the first."""
        return self.update_signature(signature(image))

    def update_signature(self, sig: tuple[np.ndarray, np.ndarray]) -> bool:
        """As :meth:`update`, from the frame's :func:`signature`."""
        first = self._last is None
        s = self.last_score = self.score_signature(sig)
        if first:
            self.shot = 0
            return False
        cut = s > self.threshold or (s > self.low and len(self._recent) >= self.min_history
                                     and s > self.ratio * float(np.median(self._recent)))
        if cut:
            self.shot += 1
            self._recent.clear()
        else:
            self._recent.append(s)
        return cut

    def __call__(self, image: np.ndarray) -> int:
        """The shot index of ``image``."""
        self.update(image)
        return self.shot
