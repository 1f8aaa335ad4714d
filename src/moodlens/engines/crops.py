"""What a remote engine is sent: a padded face crop as JPEG bytes (no boto3 needed here).

Rekognition must *find* the face again in what it is sent, so a tight box is not enough:
the box is widened by :data:`PAD` of its side on every edge (forehead, chin and some
background, as in a portrait), and a small face is enlarged so that it is at least
:data:`MIN_FACE_PX` wide (Rekognition's documented minimum is 40 px in a 1920x1080 image;
twice that leaves a margin). The rest of the frame never leaves the machine. A face larger than :data:`MAX_FACE_PX` is scaled down to it.
"""

from __future__ import annotations

import cv2
import numpy as np

PAD = 0.5  # of the box's longer side, on each edge
MIN_FACE_PX = 80
MAX_FACE_PX = 320  # a bigger face is sent scaled down to this: detail Rekognition does not need, bytes it bills in time
MAX_UPSCALE = 4.0
JPEG_QUALITY = 90
MAX_IMAGE_BYTES = 5 * 1024 * 1024  # Rekognition's limit for image bytes in a request


def padded_region(box, shape: tuple[int, ...], pad: float = PAD) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a square around ``box`` (x, y, w, h) grown by ``pad`` of its side, inside the image."""
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1 + 2 * pad)
    cx, cy = x + w / 2, y + h / 2
    height, width = shape[:2]
    x0, y0 = max(0, int(round(cx - side / 2))), max(0, int(round(cy - side / 2)))
    x1, y1 = min(width, int(round(cx + side / 2))), min(height, int(round(cy + side / 2)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def face_crop(image: np.ndarray, box) -> tuple[np.ndarray, tuple[float, float]]:
    """The padded (and, for a small face, enlarged) crop, and the face centre in it (0-1, as
    Rekognition's BoundingBox) to pick the right face when the padding shows a neighbour."""
    x0, y0, x1, y1 = padded_region(box, image.shape)
    crop = image[y0:y1, x0:x1]
    x, y, w, h = (float(v) for v in box)
    centre = ((x + w / 2 - x0) / (x1 - x0), (y + h / 2 - y0) / (y1 - y0))
    face_side = max(w, h, 1.0)
    f = min(MAX_UPSCALE, MIN_FACE_PX / face_side) if face_side < MIN_FACE_PX else min(1.0, MAX_FACE_PX / face_side)
    if f != 1.0:
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f))),
                          interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)
    return crop, centre


def jpeg(image: np.ndarray, quality: int = JPEG_QUALITY, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """JPEG bytes, halved in size until under ``max_bytes`` (only a huge face in a huge frame gets there)."""
    while True:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError(f"cannot encode a {image.shape} image as JPEG")
        if buf.size <= max_bytes or min(image.shape[:2]) < 2 * MIN_FACE_PX:
            return buf.tobytes()
        image = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)


def face_jpeg(image: np.ndarray, box) -> tuple[bytes, tuple[float, float]]:
    """What one DetectFaces call sends for the face at ``box``, and the face centre in it."""
    crop, centre = face_crop(image, box)
    return jpeg(crop), centre
