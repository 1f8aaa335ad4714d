"""Emotion engines: what scores a face's emotions, behind one small interface.

The pipeline finds, aligns, tracks and names faces locally whatever the engine; an
engine only turns a frame's faces into scores for the report columns it knows. ``own``
(the shipped ONNX model, the default) and ``rekognition`` (Amazon Rekognition
DetectFaces, optional extra ``moodlens[aws]``) are the two today; a third (any local
ONNX model with a card) is a class with :attr:`name`, :attr:`version`,
:attr:`columns` and :meth:`score`.
"""

from __future__ import annotations

from moodlens.engines.base import EmotionEngine, EngineError
from moodlens.engines.own import OwnEngine

ENGINES = ("own", "rekognition")


def make_engine(name: str, classifier=None, **kwargs) -> EmotionEngine:
    """The engine called ``name``; ``rekognition`` imports boto3 only here."""
    if name == "own":
        from moodlens.faces.emotion import default_classifier
        return OwnEngine(classifier or default_classifier())
    if name == "rekognition":
        from moodlens.engines.rekognition import RekognitionEngine
        return RekognitionEngine(**kwargs)
    raise EngineError(f"--engine {name!r}: one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "EmotionEngine", "EngineError", "OwnEngine", "make_engine"]
