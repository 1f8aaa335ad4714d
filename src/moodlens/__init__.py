"""moodlens: offline audience-emotion analytics."""

__version__ = "0.1.0"
