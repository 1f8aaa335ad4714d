"""Face collections: enrolled people and their embeddings, in the analyses' database.

Three tables on the store's ``Base``: ``collections``, ``persons`` (an id unique within
a collection) and ``face_embeddings`` (one enrolled photo: the L2-normalised SFace
vector as float32 bytes, the SHA-256 and path of the source photo, a 0..1 quality;
the aligned face as JPEG only when asked with ``keep_faces``). Never the photo itself.

Enrolment is all-or-nothing per call: every photo is checked (exactly one face, or
the largest with ``largest=True``) before anything is written, so a refused photo
leaves the collection as it was.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy import (DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint, delete,
                        func, select)
from sqlalchemy.orm import Mapped, mapped_column

from moodlens.errors import EnrolmentError, MediaError, MoodlensError, NotFoundError
from moodlens.faces.identity import (EMBED_DIM, MODEL_NAME, Embedder, Gallery, align_for_identity,
                                     default_embedder)
from moodlens.store import Base, Store
from moodlens.types import Faces

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pgm", ".ppm"}
DETECT_THRESHOLD = 0.8  # stricter than video (0.7): an enrolment photo should hold a clear face
MIN_OTHER_FACE = 0.25  # faces smaller than this fraction of the largest face's side are background
WARN_SIZE_PX = 48  # short side of the face box below which SFace sees an upscaled blur
WARN_SHARPNESS = 0.5  # moodlens.faces.quality sharpness factor (0..1)
WARN_YAW_DEG = 35.0
PHOTO_MAX_SIDE = 1280  # enrolment faces are large: no need for the video's 1920 px fine pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


MAX_NAME = 255
"""Longest collection or person id (characters): the database columns' size."""


class CollectionRow(Base):
    __tablename__ = "collections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class PersonRow(Base):
    __tablename__ = "persons"
    __table_args__ = (UniqueConstraint("collection_id", "person"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    person: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class FaceEmbeddingRow(Base):
    __tablename__ = "face_embeddings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"), index=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(64), default=MODEL_NAME)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian, L2-normalised
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    source_path: Mapped[str] = mapped_column(Text)
    quality: Mapped[float] = mapped_column(Float)
    face_jpeg: Mapped[bytes | None] = mapped_column(LargeBinary)  # aligned 112 px face, only with keep_faces
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


# The tables are created and upgraded by the schema migrations (moodlens.migrations), when Store opens.


@dataclass
class EnrolResult:
    """One enrolled photo."""

    path: Path
    person: str
    face_id: int | None
    quality: float
    box: tuple[float, float, float, float]
    warnings: list[str] = field(default_factory=list)
    skipped: bool = False  # already enrolled for this person: nothing written


@dataclass
class PersonInfo:
    collection: str
    person: str
    faces: int
    created_at: dt.datetime


@dataclass
class Match:
    person: str
    score: float


@dataclass
class FaceSearch:
    """Matches for one face of a searched photo (largest face first)."""

    box: tuple[float, float, float, float]
    matches: list[Match]  # per-pair scores: the best enrolled face of each person
    identified: Match | None = None  # the open-set decision analyze makes (Gallery.identify)


# ---------------------------------------------------------------------------------
# Photos
# ---------------------------------------------------------------------------------
def expand_images(items: list[Path]) -> list[Path]:
    """Files as given; folders expanded to their image files (sorted, not recursive)."""
    out: list[Path] = []
    for p in map(Path, items):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise EnrolmentError(f"{p}: folder has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise MediaError(f"{p}: no such file or folder")
    return out


def read_image(path: Path) -> tuple[np.ndarray, str]:
    """BGR image (EXIF orientation applied) and the SHA-256 of the file's bytes. The size
    is checked from the header before decoding (``moodlens.images.MAX_IMAGE_PIXELS``)."""
    from moodlens.images import decode_image, read_image_bytes

    data = read_image_bytes(path)
    return decode_image(data, path), hashlib.sha256(data).hexdigest()


def faces_in_photo(image: np.ndarray, threshold: float = DETECT_THRESHOLD) -> Faces:
    """Faces of a still photo, largest first.

    A tight face crop (no margin, e.g. a cropped headshot) is detected on a padded,
    enlarged copy as ``detect.landmarks_in_crop`` does: YuNet needs context around a
    face and its landmarks are better with it. Faces much smaller than the largest
    (background, posters) are dropped.
    """
    from moodlens.faces.detect import detect_faces

    h, w = image.shape[:2]
    faces = detect_faces(image, threshold=threshold, max_side=PHOTO_MAX_SIDE)
    tight = (len(faces) == 0 and max(h, w) <= 640) or (
        len(faces) == 1 and faces.areas[0] >= 0.4 * h * w)
    if tight:
        side = max(h, w)
        pad = int(round(side / 3))
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        found = detect_faces(padded, threshold=threshold, upscale=max(1.0, 144.0 / side))
        if len(found):
            boxes = found.boxes.copy()
            boxes[:, :2] -= pad
            faces = Faces(boxes=boxes, landmarks=found.landmarks - pad, scores=found.scores)
    if len(faces) == 0:
        return faces
    faces = faces[np.argsort(-faces.areas, kind="stable")]
    side = np.sqrt(faces.areas)
    return faces[side >= MIN_OTHER_FACE * side[0]]


def face_warnings(image: np.ndarray, faces: Faces) -> tuple[np.ndarray, list[list[str]]]:
    """0..1 quality (moodlens.faces.quality) and human-readable warnings per face."""
    from moodlens.faces import quality as fq

    factors = fq.quality_factors(image, faces)
    q = np.prod([factors[k] for k in factors], axis=0) if len(faces) else np.zeros(0)
    yaw, _ = fq.pose_angles(faces.landmarks) if len(faces) else (np.zeros(0), None)
    out = []
    for i in range(len(faces)):
        warns = []
        side = float(min(faces.boxes[i, 2], faces.boxes[i, 3]))
        if side < WARN_SIZE_PX:
            warns.append(f"tiny face ({side:.0f} px; use a photo where the face is at least {WARN_SIZE_PX} px)")
        if factors["sharpness"][i] < WARN_SHARPNESS:
            warns.append("blurry face")
        if yaw[i] > WARN_YAW_DEG:
            warns.append(f"face turned away (yaw about {yaw[i]:.0f} degrees; a frontal photo matches better)")
        out.append(warns)
    return np.asarray(q, np.float32), out


# ---------------------------------------------------------------------------------
# Collections
# ---------------------------------------------------------------------------------
def _collection_id(s, name: str, create: bool = False) -> int:
    cid = s.scalar(select(CollectionRow.id).where(CollectionRow.name == name))
    if cid is None:
        if not create:
            raise NotFoundError(f"collection {name!r}: no such collection (enrol someone first: "
                                f"moodlens faces enroll --collection {name} --person ID PHOTO)")
        row = CollectionRow(name=name)
        s.add(row)
        s.flush()
        cid = row.id
    return cid


def enrolment_faces(image: np.ndarray, path, person: str, largest: bool) -> Faces:
    """The photo's faces, largest first, once it is fit to enrol ``person`` from: one face, or
    several with ``largest``; else the one-line ``EnrolmentError`` (shared by every engine)."""
    faces = faces_in_photo(image)
    if len(faces) == 0:
        raise EnrolmentError(f"{path}: no face found; use a photo that shows {person}'s face clearly")
    if len(faces) > 1 and not largest:
        raise EnrolmentError(f"{path}: {len(faces)} faces found; use a photo of {person} alone, "
                             "or pass --largest to enrol the largest face")
    return faces


def enroll(store: Store, collection: str, person: str, images: list[Path], largest: bool = False,
           keep_faces: bool = False, embedder: Embedder | None = None) -> list[EnrolResult]:
    """Enrol photos of one person into a collection (created if new); all or nothing.

    Refuses (``EnrolmentError``, naming the file) a photo with no face, or with several
    faces unless ``largest``. Low-quality faces (tiny, blurry, turned away) are enrolled
    with warnings in the results. A photo already enrolled for this person is skipped;
    one enrolled for someone else in the collection is refused.
    """
    if not collection.strip() or not person.strip():
        raise EnrolmentError("collection and person ids must not be empty")
    for kind, name in (("collection", collection), ("person", person)):
        if len(name) > MAX_NAME:  # the columns hold 255 characters (PostgreSQL enforces it)
            raise EnrolmentError(f"{kind} id is {len(name)} characters long; at most {MAX_NAME} are allowed")
    paths = expand_images(images)
    if not paths:
        raise EnrolmentError("no photos given")
    embedder = embedder or default_embedder()
    prepared = []
    for path in paths:
        image, sha = read_image(path)
        faces = enrolment_faces(image, path, person, largest)
        face = faces[0]
        quality, warns = face_warnings(image, face)
        crop = align_for_identity(image, face.landmarks)
        warnings = list(warns[0])
        if len(faces) > 1:
            warnings.insert(0, f"{len(faces)} faces found; enrolled the largest")
        prepared.append((path, sha, face, float(quality[0]), crop, warnings))
    vectors = embedder(np.concatenate([p[4] for p in prepared]))
    results: list[EnrolResult] = []
    with store.session() as s, s.begin():
        cid = _collection_id(s, collection, create=True)
        pid = s.scalar(select(PersonRow.id).where(PersonRow.collection_id == cid, PersonRow.person == person))
        if pid is None:
            row = PersonRow(collection_id=cid, person=person)
            s.add(row)
            s.flush()
            pid = row.id
        seen: set[str] = set()
        for (path, sha, face, quality, crop, warnings), vec in zip(prepared, vectors):
            box = tuple(float(v) for v in face.boxes[0])
            owner = s.execute(select(PersonRow.person).join(FaceEmbeddingRow, FaceEmbeddingRow.person_id == PersonRow.id)
                              .where(FaceEmbeddingRow.collection_id == cid, FaceEmbeddingRow.image_sha256 == sha)
                              ).scalars().first()
            if owner is not None and owner != person:
                raise EnrolmentError(f"{path}: this photo is already enrolled as {owner!r} in collection "
                                     f"{collection!r}; remove it there first")
            if owner == person or sha in seen:
                results.append(EnrolResult(path, person, None, quality, box,
                                           warnings + ["already enrolled for this person; skipped"], skipped=True))
                continue
            seen.add(sha)
            jpeg = None
            if keep_faces:
                ok, buf = cv2.imencode(".jpg", crop[0], [cv2.IMWRITE_JPEG_QUALITY, 90])
                jpeg = buf.tobytes() if ok else None
            row = FaceEmbeddingRow(collection_id=cid, person_id=pid, model=embedder.model,
                                   embedding=np.asarray(vec, "<f4").tobytes(), image_sha256=sha,
                                   source_path=str(Path(path).resolve()), quality=quality, face_jpeg=jpeg)
            s.add(row)
            s.flush()
            results.append(EnrolResult(path, person, row.id, quality, box, warnings))
    return results


def list_people(store: Store, collection: str | None = None) -> list[PersonInfo]:
    """People (with their number of enrolled faces), of one collection or of all."""
    with store.session() as s:
        q = (select(CollectionRow.name, PersonRow.person, func.count(FaceEmbeddingRow.id), PersonRow.created_at)
             .join(PersonRow, PersonRow.collection_id == CollectionRow.id)
             .outerjoin(FaceEmbeddingRow, FaceEmbeddingRow.person_id == PersonRow.id)
             .group_by(CollectionRow.name, PersonRow.id, PersonRow.person, PersonRow.created_at)
             .order_by(CollectionRow.name, PersonRow.person))
        if collection is not None:
            _collection_id(s, collection)
            q = q.where(CollectionRow.name == collection)
        return [PersonInfo(c, p, int(n), t) for c, p, n, t in s.execute(q)]


def collections(store: Store) -> list[str]:
    with store.session() as s:
        return list(s.scalars(select(CollectionRow.name).order_by(CollectionRow.name)))


def remove_person(store: Store, collection: str, person: str) -> int:
    """Delete a person and all their enrolled faces; returns how many faces went."""
    with store.session() as s, s.begin():
        cid = _collection_id(s, collection)
        pid = s.scalar(select(PersonRow.id).where(PersonRow.collection_id == cid, PersonRow.person == person))
        if pid is None:
            raise NotFoundError(f"person {person!r}: not enrolled in collection {collection!r}")
        n = s.scalar(select(func.count()).where(FaceEmbeddingRow.person_id == pid)) or 0
        s.execute(delete(FaceEmbeddingRow).where(FaceEmbeddingRow.person_id == pid))
        s.execute(delete(PersonRow).where(PersonRow.id == pid))
        return int(n)


def load_gallery(store: Store, collection: str, model: str = MODEL_NAME) -> Gallery:
    """Every enrolled embedding of a collection as one in-memory matrix (load once per analysis)."""
    with store.session() as s:
        cid = _collection_id(s, collection)
        rows = s.execute(select(FaceEmbeddingRow.id, PersonRow.person, FaceEmbeddingRow.embedding)
                         .join(PersonRow, PersonRow.id == FaceEmbeddingRow.person_id)
                         .where(FaceEmbeddingRow.collection_id == cid, FaceEmbeddingRow.model == model)
                         .order_by(FaceEmbeddingRow.id)).all()
    if not rows:
        return Gallery(np.zeros((0, EMBED_DIM), np.float32), [], [], name=collection)
    emb = np.frombuffer(b"".join(r[2] for r in rows), "<f4").reshape(len(rows), EMBED_DIM)
    return Gallery(emb, [r[1] for r in rows], [r[0] for r in rows], name=collection)


def move_track_frames(store: Store, analysis_id: int, moves: dict[int, dict[int, int]]) -> None:
    """Give the rows of tracks split by ``TrackBank.resolve_split`` ({track: {frame: new
    track}}) their new track id (and its anonymous id until ``Store.set_person`` names it)."""
    from sqlalchemy import update

    from moodlens.store import ObservationRow

    with store.session() as s, s.begin():
        for track, move in moves.items():
            by_new: dict[int, list[int]] = {}
            for frame, new in move.items():
                by_new.setdefault(int(new), []).append(int(frame))
            for new, frames in by_new.items():
                for i in range(0, len(frames), 500):
                    s.execute(update(ObservationRow).where(
                        ObservationRow.analysis_id == analysis_id, ObservationRow.track == int(track),
                        ObservationRow.frame.in_(frames[i:i + 500])).values(track=new, person=f"unknown-{new + 1}"))


def search_image(store: Store, image_path: Path, collection: str, k: int = 5,
                 embedder: Embedder | None = None, gallery: Gallery | None = None) -> list[FaceSearch]:
    """Best ``k`` enrolled people for every face of a photo, largest face first."""
    gallery = gallery if gallery is not None else load_gallery(store, collection)
    image, _ = read_image(Path(image_path))
    faces = faces_in_photo(image, threshold=0.7)
    if len(faces) == 0:
        raise MoodlensError(f"{image_path}: no face found")
    vectors = (embedder or default_embedder())(align_for_identity(image, faces.landmarks))
    ids, scores = gallery.search(vectors, k)
    who, _, open_scores = gallery.identify(vectors)
    return [FaceSearch(tuple(float(v) for v in faces.boxes[i]),
                       [Match(str(p), float(sc)) for p, sc in zip(ids[i], scores[i])],
                       Match(str(who[i]), float(open_scores[i])) if who[i] is not None else None)
            for i in range(len(faces))]
