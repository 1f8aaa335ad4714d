"""Read FER+ (FER2013 images + Microsoft's 10-annotator votes) and align it.

FER+ crops are 48x48 greyscale, framed by the original FER2013 face finder.
moodlens aligns every face with YuNet's 5 landmarks, so training images are
landmarked the same way: each crop is padded, enlarged 3x, run through YuNet (``landmarks_in_crop``)
and warped onto the emotion template. Where YuNet finds no face in a crop
(about 1-2 %), the crop is used as it is, since FER framing is close to the
template by construction (the template is the mean FER+ landmark layout).

``pack`` writes both splits, landmarks included, into one file about half the
size of the folders (a lossless WebP mosaic a split): what a GPU machine that
cannot read ``../shared`` is sent. ``load_packed`` gives back the very same
``FerSplit``s, hashes included, so a run there records the same provenance.
"""

from __future__ import annotations

import csv
import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from moodlens.atomic import atomic_write
from moodlens.errors import MoodlensError
from moodlens.faces.align import align
from moodlens.faces.detect import landmarks_in_crop

VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF")


@dataclass
class FerSplit:
    files: list[str]
    images: np.ndarray  # (N, 48, 48) uint8, as shipped
    votes: np.ndarray  # (N, 10) int
    landmarks: np.ndarray  # (N, 5, 2) float32 in 48-px coords, NaN where none found
    data_sha256: str

    @property
    def usable(self) -> np.ndarray:
        """Rows whose majority vote is one of the eight emotions (not unknown / not a face)."""
        return self.votes.argmax(1) < 8

    @property
    def majority(self) -> np.ndarray:
        return self.votes[:, :8].argmax(1)

    @property
    def distribution(self) -> np.ndarray:
        return vote_shares(self.votes)


def vote_shares(votes: np.ndarray) -> np.ndarray:
    """Each row's votes for the eight emotions as shares summing to 1 (unknown and
    not-a-face votes dropped)."""
    v = votes[:, :8].astype(np.float32)
    return v / np.maximum(v.sum(1, keepdims=True), 1)


def read_labels(folder: Path) -> tuple[list[str], np.ndarray]:
    files, votes = [], []
    with open(folder / "label.csv", newline="") as f:
        for row in csv.reader(f):
            if not row or not row[0].endswith(".png"):
                continue
            files.append(row[0])
            votes.append([int(v) for v in row[2:12]])
    return files, np.asarray(votes, dtype=np.int64)


def load_split(folder: Path, cache_dir: Path | None = None, progress=None) -> FerSplit:
    """Load one FER+ folder, landmarking every image (cached by content hash)."""
    files, votes = read_labels(folder)
    h = hashlib.sha256((folder / "label.csv").read_bytes())
    images = np.empty((len(files), 48, 48), np.uint8)
    for i, name in enumerate(files):
        raw = (folder / name).read_bytes()
        h.update(raw)
        images[i] = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_GRAYSCALE)
    digest = h.hexdigest()
    cache = cache_dir / f"{folder.name}-{digest[:16]}.npz" if cache_dir else None
    if cache and cache.exists():
        lm = np.load(cache)["landmarks"]
    else:
        lm = np.full((len(files), 5, 2), np.nan, np.float32)
        for i in range(len(files)):
            found = landmarks_in_crop(images[i])
            if found is not None:
                lm[i] = found
            if progress:
                progress(i + 1, len(files))
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(cache, landmarks=lm)
    return FerSplit(files, images, votes, lm, digest)


def mean_template(split: FerSplit) -> np.ndarray:
    """The canonical template: FER+'s median landmark layout, in unit coordinates."""
    ok = ~np.isnan(split.landmarks).any(axis=(1, 2))
    t = np.median(split.landmarks[ok], axis=0) / 48.0
    # Mirror-average (swap eyes and mouth corners, x -> 1 - x) so that aligning a
    # flipped face gives the flipped crop: flip-equivariant by construction.
    mirrored = t[[1, 0, 2, 4, 3]] * [-1, 1] + [1, 0]
    return ((t + mirrored) / 2).astype(np.float32)


def aligned_images(split: FerSplit, template: np.ndarray, size: int) -> np.ndarray:
    """Every crop warped onto ``template`` at ``size`` px (unlandmarked crops only resized)."""
    out = np.empty((len(split.files), size, size), np.uint8)
    for i, img in enumerate(split.images):
        lm = split.landmarks[i]
        if np.isnan(lm).any():
            out[i] = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
        else:
            out[i] = align(img, lm, size, template)
    return out


SPLITS = ("FER2013Train", "FER2013Valid")
_MOSAIC_COLUMNS = 160  # 160 x 48 = 7,680 px wide: inside WebP's 16,383 px limit for FER+'s 28,558 crops


def _mosaic(images: np.ndarray) -> np.ndarray:
    """(N, 48, 48) crops laid out row by row in a grid of ``_MOSAIC_COLUMNS`` (zero-padded)."""
    rows = -(-len(images) // _MOSAIC_COLUMNS)
    grid = np.zeros((rows * _MOSAIC_COLUMNS, 48, 48), np.uint8)
    grid[: len(images)] = images
    return grid.reshape(rows, _MOSAIC_COLUMNS, 48, 48).transpose(0, 2, 1, 3).reshape(rows * 48, _MOSAIC_COLUMNS * 48)


def _unmosaic(mosaic: np.ndarray, n: int) -> np.ndarray:
    rows = mosaic.shape[0] // 48
    return mosaic.reshape(rows, 48, _MOSAIC_COLUMNS, 48).transpose(0, 2, 1, 3).reshape(-1, 48, 48)[:n].copy()


def pack(splits: dict[str, FerSplit], path: Path) -> int:
    """Write ``splits`` (images, votes, landmarks, hashes) to one ``.npz``; returns its size in bytes."""
    arrays = {}
    for name, s in splits.items():
        mosaic = _mosaic(s.images)
        ok, webp = cv2.imencode(".webp", mosaic, [cv2.IMWRITE_WEBP_QUALITY, 101])  # >100: lossless
        if not ok:
            raise MoodlensError(f"{name}: WebP encoding of its {mosaic.shape[1]} x {mosaic.shape[0]} px mosaic failed "
                                "(WebP's limit is 16,383 px a side)")
        arrays.update({f"{name}/images_webp": webp.ravel(), f"{name}/votes": s.votes, f"{name}/landmarks": s.landmarks,
                       f"{name}/files": np.asarray(s.files), f"{name}/sha256": np.asarray(s.data_sha256),
                       f"{name}/pixels_sha256": np.asarray(hashlib.sha256(s.images.tobytes()).hexdigest())})
    atomic_write(path, lambda f: np.savez(f, **arrays), binary=True)  # the WebP mosaics are compressed already
    return path.stat().st_size


def load_packed(path: Path) -> dict[str, FerSplit]:
    """The splits ``pack`` wrote, each checked against the hash of its pixels."""
    try:
        with np.load(path) as z:
            names = sorted({k.split("/")[0] for k in z.files})
            splits = {}
            for name in names:
                files = [str(f) for f in z[f"{name}/files"]]
                mosaic = cv2.imdecode(z[f"{name}/images_webp"], cv2.IMREAD_GRAYSCALE)
                images = None if mosaic is None else _unmosaic(mosaic, len(files))
                if images is None or hashlib.sha256(images.tobytes()).hexdigest() != str(z[f"{name}/pixels_sha256"]):
                    raise MoodlensError(f"{path}: the {name} images do not match the hash recorded when packing")
                splits[name] = FerSplit(files, images, z[f"{name}/votes"], z[f"{name}/landmarks"],
                                        str(z[f"{name}/sha256"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise MoodlensError(f"{path}: not a readable FER+ pack ({e})") from e
    return splits


def load_splits(data: Path, out: Path, log=print, progress=None):
    """Both FER+ splits, landmarked (cached), and the template; returns (splits, template, provenance).

    ``data`` is a FER+ root or a pack of it (``ferplus.pack``). ``progress(what, done, total)``
    follows the landmarking, where the cache misses (about a minute on 2 cores).

    The landmark cache is shared by every run (files are named by the data's
    hash), so a new run folder does not landmark FER+ again; a run folder's own
    ``cache/`` from earlier versions is still read first.
    """
    if data.is_file():  # a pack (``moodlens train pack``): landmarked already
        log(f"reading packed FER+ from {data}")
        splits = load_packed(data)
        if set(splits) != set(SPLITS):
            raise MoodlensError(f"{data}: a FER+ pack holds {', '.join(SPLITS)}; this one holds {', '.join(splits)}")
    else:
        cache = out / "cache"
        if not cache.is_dir():
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "moodlens" / "ferplus-landmarks"
        splits = {}
        for name in SPLITS:
            log(f"landmarking {name} (cached after the first run)")
            step = (lambda i, n, what=f"landmarking {name}": progress(what, i, n)) if progress else None
            splits[name] = load_split(data / name, cache, progress=step)
    provenance = {
        name: {"sha256": s.data_sha256, "rows": len(s.files), "used": int(s.usable.sum()),
               "landmarked": float((~np.isnan(s.landmarks).any(axis=(1, 2))).mean())}
        for name, s in splits.items()
    }
    return splits, mean_template(splits["FER2013Train"]), provenance
