"""User photos are checked before decoding (issue 22, item 4): a small file that declares a
huge picture is refused from its header, and bad files give one-line errors, never a
traceback. Every place a user's photo is decoded goes through moodlens.images."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import shared
from moodlens import images
from moodlens.errors import MediaError

MOODLENS = [sys.executable, "-m", "moodlens.cli"]


def _png_of_zeros(path: Path, width: int, height: int, rows_per_block: int = 500) -> Path:
    """A valid greyscale PNG of zeros, made without holding its pixels: the deflate stream is
    one compressed block of rows repeated (each block ends in a full flush, which resets the
    compressor, so every copy is byte-identical), then an empty final block and the Adler-32
    of all the rows. 30,000 x 30,000 gives the issue's 875 KB file in well under a second."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    assert height % rows_per_block == 0
    block = bytes(width + 1) * rows_per_block  # each row: filter type 0, then the zero pixels
    z = zlib.compressobj(9)
    first = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)  # starts with the zlib header
    again = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(height // rows_per_block):
        adler = zlib.adler32(block, adler)
    idat = first + again * (height // rows_per_block - 1) + b"\x03\x00" + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return _png_of_zeros(tmp_path_factory.mktemp("bomb") / "bomb.png", 30_000, 30_000)


def _cli_with_peak_rss(*args) -> tuple[subprocess.CompletedProcess, float]:
    """Run the moodlens CLI in a fresh wrapper process; return its result and the CLI's peak
    RSS in MB (the wrapper's only child, so RUSAGE_CHILDREN is the CLI's own peak)."""
    code = ("import json, resource, subprocess, sys\n"
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
            "print(json.dumps([r.returncode, r.stdout, r.stderr, peak]))")
    out = subprocess.run([sys.executable, "-c", code, *MOODLENS, *map(str, args)], capture_output=True, text=True,
                         timeout=300, check=True)
    rc, stdout, stderr, maxrss_kb = json.loads(out.stdout)
    return subprocess.CompletedProcess(args, rc, stdout, stderr), maxrss_kb / 1024


def _one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    text = (r.stdout + r.stderr).strip()
    assert r.returncode == 2, text
    assert "Traceback" not in text and "\n" not in text, text
    for w in words:
        assert w in text, text
    return text


def test_the_bomb_is_a_real_png_declaring_900_megapixels(bomb):
    assert 800_000 < bomb.stat().st_size < 1_000_000
    with pytest.raises(MediaError) as err:
        images.image_size(bomb)
    assert str(err.value) == (f"{bomb}: 30000 x 30000 pixels (900 MP) is over the 100 MP limit for a photo; "
                              "scale it down first")
    # The stream is valid: a window of it inflates to rows of zeros with filter bytes.
    data = bomb.read_bytes()
    idat = data[8 + 25 + 8:]
    head = zlib.decompressobj().decompress(idat[:4096], 100_000)
    assert len(head) == 100_000 and not head.strip(b"\0")


def test_enroll_refuses_the_bomb_from_its_header_with_little_memory(bomb, tmp_path):
    r, peak_mb = _cli_with_peak_rss("faces", "enroll", "-c", "c", "-p", "bob", bomb, "--db",
                                    f"sqlite:///{tmp_path / 'm.db'}")
    _one_line_error(r, "bomb.png: 30000 x 30000 pixels (900 MP) is over the 100 MP limit")
    assert peak_mb < 500, f"peak RSS {peak_mb:.0f} MB"  # decoding it would take 2.7 GB (5.6 GB measured before)


def test_search_refuses_the_bomb(bomb, tmp_path):
    db = f"sqlite:///{tmp_path / 'm.db'}"
    raj = shared("identity", "bbt", "raj", "raj1.png")
    assert subprocess.run([*MOODLENS, "faces", "enroll", "-c", "c", "-p", "raj", str(raj), "--db", db],
                          capture_output=True, timeout=300).returncode == 0
    r = subprocess.run([*MOODLENS, "faces", "search", str(bomb), "-c", "c", "--db", db],
                       capture_output=True, text=True, timeout=300)
    _one_line_error(r, "bomb.png: 30000 x 30000 pixels (900 MP) is over the 100 MP limit")


@pytest.mark.parametrize("name, content, words", [
    ("empty.jpg", b"", "empty.jpg: empty file (0 bytes)"),
    ("notes.jpg", b"not a photo, just some text\n" * 20, "notes.jpg: not a readable image"),
    ("cut.png", None, "cut.png: not a readable image"),  # a real PNG cut after its header
])
def test_bad_photos_are_one_line_errors(tmp_path, name, content, words):
    path = tmp_path / name
    if content is None:
        ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
        content = png.tobytes()[:120]
    path.write_bytes(content)
    with pytest.raises(MediaError) as err:
        images.read_image(path)
    assert str(err.value).startswith(f"{tmp_path}/{words}") and "\n" not in str(err.value)
    r = subprocess.run([*MOODLENS, "faces", "enroll", "-c", "c", "-p", "bob", str(path), "--db",
                        f"sqlite:///{tmp_path / 'm.db'}"], capture_output=True, text=True, timeout=300)
    _one_line_error(r, words)


def test_missing_and_folder(tmp_path):
    with pytest.raises(MediaError, match=r"nothere\.jpg: no such file"):
        images.read_image(tmp_path / "nothere.jpg")
    with pytest.raises(MediaError, match="is a directory"):
        images.read_image(tmp_path)


def test_limit_is_the_module_constant(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), np.zeros((300, 400, 3), np.uint8))
    assert images.read_image(path).shape == (300, 400, 3)
    assert images.image_size(path) == (400, 300)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.raises(MediaError, match=r"photo\.png: 400 x 300 pixels \(0 MP\) is over the 0 MP limit"):
        images.read_image(path)


def test_pillow_limit_left_as_it_was(bomb):
    from PIL import Image
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(MediaError):
        images.image_size(bomb)
    assert Image.MAX_IMAGE_PIXELS == before


def test_decoding_matches_opencv(tmp_path):
    photo = shared("identity", "bbt", "raj", "raj1.png")
    np.testing.assert_array_equal(images.read_image(photo), cv2.imread(str(photo), cv2.IMREAD_COLOR))
    jpg = shared("identity", "deepface_unit", "img1.jpg")
    np.testing.assert_array_equal(images.read_image(jpg), cv2.imread(str(jpg), cv2.IMREAD_COLOR))


def test_a_normal_photo_still_enrols(tmp_path):
    root = shared("identity", "bbt")
    r = subprocess.run([*MOODLENS, "faces", "enroll", "-c", "tv", "-p", "raj", str(root / "raj" / "raj1.png"),
                        "--db", f"sqlite:///{tmp_path / 'm.db'}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "enrolled" in r.stdout and "Traceback" not in r.stderr, r.stdout + r.stderr
