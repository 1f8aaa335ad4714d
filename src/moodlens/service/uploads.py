"""Uploads streamed to disk: the size limit and the SHA-256 are applied while the bytes arrive.

A multipart body is parsed incrementally (python-multipart's callback parser): the part
named ``file`` goes to ``DATA_DIR/uploads/.incoming-<random>.part`` and is hashed on the
way; small text fields are kept (at most 64 KB in all). Past ``max_bytes`` the upload stops
with 413 and the partial file is removed, as it is when the client goes away mid-body or
the body is malformed. Only a complete, probed upload is renamed to
``uploads/<random>.<ext>``: the client's filename is shown to people, never used as a path.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELDS_BYTES = 64 * 1024
_EXT = re.compile(r"^[a-z0-9]{1,5}$")


class UploadError(Exception):
    """A rejected upload: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """A received upload: the stored file, its hash and size, and the form's text fields."""

    path: Path | None = None
    filename: str = ""
    sha256: str = ""
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def safe_suffix(filename: str) -> str:
    """The file's extension if it is plain (letters and digits, up to 5), else ``bin``."""
    ext = Path(filename.replace("\\", "/")).suffix.lower().lstrip(".")
    return ext if _EXT.match(ext) else "bin"


def display_name(filename: str) -> str:
    """What the client called the file, cut to its last path component and 255 characters."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = "".join(c for c in name if c.isprintable())[:255].strip()
    return name if name.strip(".") else "upload"  # not "", "." or ".."


class _Receiver:
    """Collects one multipart body into an :class:`Upload`, writing the file part to disk."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.upload = Upload()
        self._hash = hashlib.sha256()
        self._file = None
        self._header_name = b""
        self._headers: dict[bytes, bytes] = {}
        self._field: str | None = None
        self._value = bytearray()
        self._fields_bytes = 0
        self.error: UploadError | None = None
        self.ended = False  # the closing boundary was seen (python-multipart's finalize() does not check)

    def on_end(self) -> None:
        self.ended = True

    # python-multipart callbacks (data arrives as buffer slices)
    def on_part_begin(self) -> None:
        self._headers, self._field, self._value = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._headers[self._header_name.lower()] = self._headers.get(self._header_name.lower(), b"") + data[start:end]

    def on_header_end(self) -> None:
        self._header_name = b""

    def on_headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if name == "file":
            if self._file is not None:
                raise UploadError(400, "one file per upload (field 'file' appears twice)")
            self.upload.filename = display_name(opts.get(b"filename", b"upload").decode("utf-8", "replace"))
            self.folder.mkdir(parents=True, exist_ok=True)
            self.upload.path = self.folder / f".incoming-{uuid.uuid4().hex}.part"
            self._file = open(self.upload.path, "wb")
            self._field = "file"
        else:
            self._field = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._field == "file":
            self.upload.size += len(chunk)
            if self.upload.size > self.max_bytes:
                raise UploadError(413, f"upload larger than the server's limit of {self.max_bytes // 2**20} MB "
                                       "(moodlens serve --max-upload-mb)")
            self._hash.update(chunk)
            self._file.write(chunk)
        else:
            self._fields_bytes += len(chunk)
            if self._fields_bytes > MAX_FIELDS_BYTES:
                raise UploadError(413, "form fields larger than 64 KB")
            self._value += chunk

    def on_part_end(self) -> None:
        if self._field == "file":
            self._file.close()
        elif self._field:
            self.upload.fields[self._field] = self._value.decode("utf-8", "replace")
        self._field = None

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()


async def receive(request, folder: Path, max_bytes: int) -> Upload:
    """Read a ``multipart/form-data`` request body into ``folder``; raises :class:`UploadError`.

    Nothing is left on disk unless it returns: a partial file is removed on every error,
    including the client disconnecting mid-body.
    """
    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not opts.get(b"boundary"):
        raise UploadError(415, "send the video as multipart/form-data with a field named 'file'")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MAX_FIELDS_BYTES + 65536:
        raise UploadError(413, f"upload larger than the server's limit of {max_bytes // 2**20} MB "
                               "(moodlens serve --max-upload-mb)")
    rx = _Receiver(folder, max_bytes)
    parser = MultipartParser(opts[b"boundary"], callbacks={
        "on_part_begin": rx.on_part_begin, "on_header_field": rx.on_header_field,
        "on_header_value": rx.on_header_value, "on_header_end": rx.on_header_end,
        "on_headers_finished": rx.on_headers_finished, "on_part_data": rx.on_part_data,
        "on_part_end": rx.on_part_end, "on_end": rx.on_end})
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            parser.write(chunk)
        parser.finalize()
        rx.close()
        if received == 0:
            raise UploadError(422, "empty request body: send the video as multipart/form-data with a field "
                                   "named 'file'")
        if not rx.ended:
            raise UploadError(400, "malformed multipart body (it ends before the closing boundary: truncated)")
        if rx.upload.path is None:
            raise UploadError(422, "no file in the upload (a multipart field named 'file' is needed)")
        if rx.upload.size == 0:
            raise UploadError(422, f"{rx.upload.filename}: empty file (0 bytes)")
        rx.upload.sha256 = rx._hash.hexdigest()
        return rx.upload
    except UploadError:
        rx.close()
        rx.upload.discard()
        raise
    except Exception as e:  # malformed multipart, the client went away (ClientDisconnect), a full disk
        rx.close()
        rx.upload.discard()
        if type(e).__name__ == "ClientDisconnect":
            raise
        if isinstance(e, OSError):
            raise UploadError(507, f"cannot store the upload ({e.strerror or e})") from None
        raise UploadError(400, f"malformed multipart body ({' '.join(str(e).split())[:200]})") from None


def keep(upload: Upload, folder: Path) -> Path:
    """Give a received, checked upload its final name ``<random>.<ext>`` in ``folder``."""
    final = folder / f"{uuid.uuid4().hex}.{safe_suffix(upload.filename)}"
    os.replace(upload.path, final)
    upload.path = final
    return final


__all__ = ["Upload", "UploadError", "display_name", "keep", "receive", "safe_suffix"]
