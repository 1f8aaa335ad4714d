"""Reading user-supplied photos: one place, with the checks done before decoding.

Every photo a user gives moodlens (enrolment, ``faces search``, evaluation datasets)
is read through :func:`read_image` or :func:`decode_image`. A small file can declare a
huge picture: an 875 KB PNG of 30,000 x 30,000 pixels decodes to 2.7 GB of BGR pixels.
So the width and height are read from the file's header first (with Pillow, which reads
only the header when opening), and a picture over :data:`MAX_IMAGE_PIXELS` is refused
before any pixel is decoded. Then OpenCV decodes it (EXIF orientation applied).

Every failure is one :class:`~moodlens.errors.MediaError` line that starts with the path.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from moodlens.errors import MediaError

MAX_IMAGE_PIXELS = 100_000_000
"""The largest photo accepted, in pixels (width x height): 100 megapixels, about 300 MB
once decoded. More than a full-frame camera gives (24-61 MP) and far more than a face
needs; a larger photo (a phone's 200 MP mode) must be scaled down first."""

_PIL_LOCK = threading.Lock()


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of an image file, after checking that it is a non-empty readable file
    whose header declares at most :data:`MAX_IMAGE_PIXELS` pixels."""
    path = Path(path)
    image_size(path)
    try:
        return path.read_bytes()
    except OSError as e:
        raise MediaError(f"{path}: cannot read ({e.strerror or e})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the file's header, without decoding it; refuses missing,
    empty and unrecognised files, and pictures over :data:`MAX_IMAGE_PIXELS`."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    if path.is_dir():
        raise MediaError(f"{path}: is a directory, not an image")
    try:
        if path.stat().st_size == 0:
            raise MediaError(f"{path}: empty file (0 bytes), not an image")
        with _PIL_LOCK:
            # Pillow's own decompression-bomb check would raise before giving the size, at
            # about 179 MP; ours, below, names the size and applies our limit instead.
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(path) as im:
                        width, height = im.size
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except MediaError:
        raise
    except UnidentifiedImageError:
        raise MediaError(f"{path}: not a readable image (not an image format moodlens knows, "
                         "or the header is corrupt)") from None
    except OSError as e:
        raise MediaError(f"{path}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # a malformed header can raise anything in a format plugin
        raise MediaError(f"{path}: not a readable image ({type(e).__name__}: {' '.join(str(e).split())})") from None
    check_size(path, width, height)
    return width, height


def check_size(path: str | Path, width: int, height: int) -> None:
    """Refuse a picture of more than :data:`MAX_IMAGE_PIXELS` pixels (or of no pixels)."""
    if width <= 0 or height <= 0:
        raise MediaError(f"{path}: not a readable image (its header says {width} x {height} pixels)")
    if width * height > MAX_IMAGE_PIXELS:
        raise MediaError(f"{path}: {width} x {height} pixels ({width * height / 1e6:.0f} MP) is over the "
                         f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP limit for a photo; scale it down first")


def decode_image(data: bytes, path: str | Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """Decode bytes already checked by :func:`read_image_bytes` (``path`` names them in
    errors). ``flags`` as for ``cv2.imdecode``: BGR by default, EXIF orientation applied."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # no "[ WARN ...]" line: ours says it
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    except cv2.error:
        image = None
    finally:
        cv2.utils.logging.setLogLevel(level)
    if image is None:
        raise MediaError(f"{path}: not a readable image (corrupt or truncated data, or a format OpenCV cannot decode)")
    return image


def read_image(path: str | Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """A user's photo as a BGR ``uint8`` array (``flags`` as for ``cv2.imread``), after
    the checks of :func:`read_image_bytes`; errors are one-line ``MediaError``s."""
    return decode_image(read_image_bytes(path), path, flags)


__all__ = ["MAX_IMAGE_PIXELS", "check_size", "decode_image", "image_size", "read_image", "read_image_bytes"]
