"""Amazon Rekognition as an emotion engine (optional extra ``moodlens[aws]``).

Detection, alignment and tracking stay local; each face goes to DetectFaces
(``Attributes=["ALL"]``) as a padded JPEG crop (:mod:`moodlens.engines.crops`), a few calls
in flight at once. Rekognition's emotion types fill the report's columns directly,
``confused`` and ``unknown`` included; ``contempt`` stays NULL (Rekognition has none).
Credentials and region come the usual boto3 way (environment, profile, instance role)
and are never stored.

Throttling: botocore retries first (``standard`` or ``adaptive`` mode); a throttle that
survives those is backed off and retried here a few more times before the analysis fails.
"""

from __future__ import annotations

import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from moodlens.engines.base import EngineError
from moodlens.engines.crops import face_jpeg
from moodlens.types import Faces

# Rekognition's emotion type -> observations column (moodlens.engines.base.STORE_EMOTIONS)
COLUMN_OF: dict[str, str] = {
    "CALM": "neutral", "HAPPY": "happiness", "SURPRISED": "surprise", "SAD": "sadness", "ANGRY": "anger",
    "DISGUSTED": "disgust", "FEAR": "fear", "CONFUSED": "confused", "UNKNOWN": "unknown",
}
COLUMNS: tuple[str, ...] = tuple(COLUMN_OF.values())

# List price of one DetectFaces (or SearchFacesByImage / IndexFaces) image, first tier (the first
# million images a month), US East (N. Virginia), from aws.amazon.com/rekognition/pricing as last
# read for this code; other regions and higher tiers differ. --dry-run multiplies by it.
PRICE_USD_PER_IMAGE = 0.001
PRICE_REGION = "us-east-1"
PRICE_DATE = "2025-01"

THROTTLE_CODES = {"ThrottlingException", "ProvisionedThroughputExceededException", "LimitExceededException",
                  "TooManyRequestsException"}
DENIED_CODES = {"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
                "ExpiredTokenException", "InvalidClientTokenId"}


def client(region: str | None = None, profile: str | None = None, retry_mode: str = "adaptive",
           max_attempts: int = 8, pool: int = 10):
    """A Rekognition client from the usual boto3 chain; one line if there are no credentials or region."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise EngineError("--engine rekognition needs boto3: pip install 'moodlens[aws]'") from None
    from botocore.exceptions import BotoCoreError

    try:
        session = boto3.session.Session(profile_name=profile, region_name=region)
    except BotoCoreError as e:  # an unknown profile
        raise EngineError(f"Amazon Rekognition: {e}") from None
    if session.get_credentials() is None:
        raise EngineError("Amazon Rekognition: no AWS credentials found (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY, or run on a machine with a role); moodlens never stores them")
    if not session.region_name:
        raise EngineError("Amazon Rekognition: no AWS region (set AWS_REGION or AWS_DEFAULT_REGION, or --region)")
    cfg = Config(retries={"mode": retry_mode, "max_attempts": max_attempts}, max_pool_connections=pool,
                 user_agent_extra="moodlens")
    return session.client("rekognition", config=cfg)


class RekognitionEngine:
    """DetectFaces per face crop; also SearchFacesByImage and IndexFaces for collections."""

    name = "rekognition"
    columns = COLUMNS
    remote = True

    def __init__(self, rekognition=None, *, region: str | None = None, profile: str | None = None,
                 max_in_flight: int = 4, max_calls: int | None = None, retry_mode: str = "adaptive",
                 throttle_retries: int = 4, backoff_s: float = 1.0, sleep: Callable[[float], None] = time.sleep):
        if retry_mode not in ("standard", "adaptive"):
            raise EngineError(f"retry mode {retry_mode!r}: standard or adaptive")
        self.client = rekognition or client(region, profile, retry_mode, pool=max_in_flight + 2)
        self.region = self.client.meta.region_name
        self.max_calls = max_calls
        self.throttle_retries = throttle_retries
        self.backoff_s = backoff_s
        self.sleep = sleep
        self.pool = ThreadPoolExecutor(max(1, max_in_flight), thread_name_prefix="moodlens-rekognition")
        self._lock = threading.Lock()
        self.calls = 0
        self.bytes_sent = 0
        self.throttled = 0
        self.unscored = 0  # faces Rekognition did not find again, or returned without emotions

    @property
    def version(self) -> str:
        return f"amazon-rekognition:DetectFaces@{self.client.meta.service_model.api_version}/{self.region}"

    def stats(self) -> dict[str, int]:
        return {"engine_calls": self.calls, "engine_bytes": self.bytes_sent, "engine_throttled": self.throttled,
                "engine_unscored": self.unscored}

    # -- calls ------------------------------------------------------------------------------
    def call(self, operation: str, what: str = "", **params) -> dict[str, Any]:
        """One API call with moodlens's own backoff on throttling, errors as one line."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

        with self._lock:
            if self.max_calls is not None and self.calls >= self.max_calls:
                raise EngineError(f"Amazon Rekognition: --max-calls {self.max_calls} reached; stopped before "
                                  "calling again")
            self.calls += 1
            self.bytes_sent += len(params.get("Image", {}).get("Bytes", b""))
        method = getattr(self.client, operation)
        for attempt in range(self.throttle_retries + 1):
            try:
                return method(**params)
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code", "")
                if code in THROTTLE_CODES and attempt < self.throttle_retries:
                    with self._lock:
                        self.throttled += 1
                    self.sleep(self.backoff_s * (2 ** attempt) * (0.5 + random.random() / 2))
                    continue
                raise self._error(operation, code, e, what, attempt) from None
            except (NoCredentialsError, PartialCredentialsError):
                raise EngineError("Amazon Rekognition: no AWS credentials found (set AWS_PROFILE, or "
                                  "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); moodlens never stores them") from None
            except BotoCoreError as e:  # no endpoint, connection lost after botocore's retries
                raise EngineError(f"Amazon Rekognition {operation}: {e}") from None
        raise AssertionError("unreachable")

    def _error(self, operation: str, code: str, e, what: str, attempt: int) -> EngineError:
        msg = e.response.get("Error", {}).get("Message", "") or str(e)
        if code in THROTTLE_CODES:
            return EngineError(f"Amazon Rekognition throttled {operation} after botocore's retries and {attempt} "
                               "more; try later, lower --max-in-flight, or ask AWS for a higher TPS quota")
        if code == "ImageTooLargeException":
            return EngineError(f"Amazon Rekognition {operation}: {what or 'the image'} is over its image size "
                               f"limit ({msg})")
        if code == "ResourceNotFoundException":
            return EngineError(f"Amazon Rekognition: {what or 'the resource'} not found in {self.region} ({msg})")
        if code in DENIED_CODES:
            return EngineError(f"Amazon Rekognition refused the AWS credentials ({code}: {msg})")
        return EngineError(f"Amazon Rekognition {operation}: {code}: {msg}")

    # -- emotions ---------------------------------------------------------------------------
    def detect(self, image_bytes: bytes, centre: tuple[float, float] = (0.5, 0.5), what: str = "") -> np.ndarray:
        """Scores (len(COLUMNS),), 0-1, of the face nearest ``centre`` in a JPEG; NaN if none or no emotions."""
        resp = self.call("detect_faces", what or f"a face crop of {len(image_bytes)} bytes",
                         Image={"Bytes": image_bytes}, Attributes=["ALL"])
        row = emotions_of(resp, centre)
        if np.isnan(row).all():
            with self._lock:
                self.unscored += 1
        return row

    def score(self, image: np.ndarray, faces: Faces) -> np.ndarray:
        if not len(faces):
            return np.zeros((0, len(COLUMNS)), np.float32)
        jobs = []
        for box in faces.boxes:
            data, centre = face_jpeg(image, box)  # encoded here: the pool threads only wait on the network
            what = f"a face crop of {len(data)} bytes at box {[round(float(v)) for v in box]}"
            jobs.append(self.pool.submit(self.detect, data, centre, what))
        return np.stack([j.result() for j in jobs]).astype(np.float32)

    # -- collections ------------------------------------------------------------------------
    def check_collection(self, collection: str) -> None:
        """Raise the one-line error for a collection that does not exist, before any work."""
        self.call("describe_collection", f"collection {collection!r}", CollectionId=collection)

    def search(self, collection: str, image_bytes: bytes, threshold: float) -> tuple[str, float] | None:
        """(person, similarity 0-100) of the best match at or above ``threshold``, or None."""
        try:
            resp = self.call("search_faces_by_image", f"collection {collection!r}", CollectionId=collection,
                             Image={"Bytes": image_bytes}, FaceMatchThreshold=float(threshold), MaxFaces=1)
        except EngineError as e:
            if "InvalidParameterException" in str(e):  # Rekognition found no face in the crop: no match
                return None
            raise
        matches = resp.get("FaceMatches") or []
        if not matches:
            return None
        best = max(matches, key=lambda m: m.get("Similarity", 0.0))
        person = best.get("Face", {}).get("ExternalImageId")
        return (person, float(best.get("Similarity", 0.0))) if person else None

    def index(self, collection: str, image_bytes: bytes, person: str) -> str:
        """IndexFaces one face as ``person`` (ExternalImageId); its FaceId. Refuses a photo with no face."""
        from moodlens.errors import EnrolmentError

        resp = self.call("index_faces", f"collection {collection!r}", CollectionId=collection,
                         Image={"Bytes": image_bytes}, ExternalImageId=person, MaxFaces=1, QualityFilter="AUTO",
                         DetectionAttributes=["DEFAULT"])
        records = resp.get("FaceRecords") or []
        if not records:
            reasons = sorted({r for u in resp.get("UnindexedFaces") or [] for r in u.get("Reasons", [])})
            raise EnrolmentError(f"Amazon Rekognition indexed no face for {person!r}"
                                 + (f" ({', '.join(reasons)})" if reasons else " (no face found)"))
        return records[0]["Face"]["FaceId"]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def emotions_of(resp: dict, centre: tuple[float, float]) -> np.ndarray:
    """A DetectFaces response as scores 0-1 in :data:`COLUMNS` order, for the face whose box
    is nearest ``centre``; NaN for every column when there is no face or it has no Emotions."""
    row = np.full(len(COLUMNS), np.nan, np.float32)
    details = resp.get("FaceDetails") or []
    if not details:
        return row

    def distance(d: dict) -> float:
        b = d.get("BoundingBox") or {}
        cx = b.get("Left", 0.0) + b.get("Width", 1.0) / 2
        cy = b.get("Top", 0.0) + b.get("Height", 1.0) / 2
        return (cx - centre[0]) ** 2 + (cy - centre[1]) ** 2

    emotions = min(details, key=distance).get("Emotions") or []
    if not emotions:
        return row
    row[:] = 0.0  # a type Rekognition did not list scored 0 for this face
    for e in emotions:
        col = COLUMN_OF.get(e.get("Type", ""))
        if col is not None:
            row[COLUMNS.index(col)] = float(e.get("Confidence", 0.0)) / 100.0
    return row


EXTERNAL_ID = re.compile(r"^[a-zA-Z0-9_.\-:]{1,255}$")  # IndexFaces' ExternalImageId pattern


def enroll(engine: RekognitionEngine, collection: str, person: str, images: list, largest: bool = False) -> list[dict]:
    """IndexFaces each photo's face into a Rekognition collection as ``person``.

    All photos are checked locally first (one face, or ``largest``), so a bad photo is refused
    before anything is indexed. Only the padded face crop is sent, never the whole photo.
    """
    from moodlens.collections import enrolment_faces, expand_images, read_image
    from moodlens.errors import EnrolmentError

    if not EXTERNAL_ID.match(person):
        raise EnrolmentError(f"person {person!r}: Rekognition's ExternalImageId allows letters, digits and _.-: only")
    prepared = []
    for path in expand_images(images):
        image, _ = read_image(path)
        faces = enrolment_faces(image, path, person, largest)
        prepared.append((path, face_jpeg(image, faces.boxes[0])[0]))
    if not prepared:
        raise EnrolmentError("no photos given")
    engine.check_collection(collection)
    return [{"path": str(path), "person": person, "face_id": engine.index(collection, data, person)}
            for path, data in prepared]
