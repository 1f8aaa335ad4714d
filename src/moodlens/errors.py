"""Errors that reach the user as one line: what went wrong, and where."""


class MoodlensError(Exception):
    """Base class: the CLI prints ``str(err)`` and exits non-zero, no traceback."""


class MediaError(MoodlensError):
    """The input is missing, not a video, or cannot be decoded."""


class ModelError(MoodlensError):
    """A model file is missing or fails its hash check."""


class EnrolmentError(MoodlensError):
    """A photo cannot be enrolled (no face, several faces)."""


class NotFoundError(MoodlensError):
    """An analysis, collection or person does not exist."""


class OptionError(MoodlensError, ValueError):
    """A parameter is out of its range (an fps of inf or nan, a negative count)."""


class Cancelled(MoodlensError):
    """Work stopped because someone asked it to (a cancelled service job)."""
