"""Export a training run to ONNX and write its model card, with metrics measured on the export.

Metrics are computed by ONNX Runtime on the exported file (the exact bytes
that ship), on FER2013Valid aligned by the same code as inference.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from moodlens.metrics import classification_report
from moodlens.models import session
from moodlens.models.onnx_utils import store_weights_float16
from moodlens.training.train import load_ema, prepare
from moodlens.types import EMOTIONS


class _Probabilities(torch.nn.Module):
    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


def recalibrate_bn(net: torch.nn.Module, x: np.ndarray, batches: int = 64, batch: int = 256, seed: int = 0) -> None:
    """Recompute BatchNorm statistics for averaged (EMA) weights, as SWA does.

    An EMA of weights is not matched by an EMA of batch statistics (early,
    near-initial weights leave stale variances behind), so the statistics are
    measured afresh on clean training images with the final weights.
    """
    rng = np.random.default_rng(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
    net.train()
    with torch.no_grad():
        for _ in range(batches):
            idx = rng.choice(len(x), size=min(batch, len(x)), replace=False)
            net(torch.from_numpy(x[idx]).float().div_(255).unsqueeze(1))
    net.eval()


def onnx_probs(sess, x: np.ndarray, batch: int = 256) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch, None].astype(np.float32) / 255})[0]
                           for i in range(0, len(x), batch)])


def ms_per_face(sess, size: int, batch: int = 32, repeats: int = 30) -> float:
    x = np.random.default_rng(0).random((batch, 1, size, size), dtype=np.float32)
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    t = time.perf_counter()
    for _ in range(repeats):
        sess.run(None, {name: x})
    return (time.perf_counter() - t) / repeats / batch * 1000


def export(run_dir: Path, data: Path, log=print, name: str = "moodlens-emotion") -> Path:
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=False, map_location="cpu")
    cfg = ckpt["config"]
    size = cfg["size"]
    net = load_ema(ckpt)
    arrays, template, provenance = prepare(data, run_dir, size, log)
    recalibrate_bn(net, arrays["FER2013Train"]["x"])
    onnx_path = run_dir / "emotion.onnx"
    torch.onnx.export(_Probabilities(net), torch.zeros(1, 1, size, size), str(onnx_path), input_names=["face"],
                      output_names=["probabilities"], dynamic_axes={"face": {0: "batch"}, "probabilities": {0: "batch"}},
                      opset_version=17, dynamo=False)
    blob = store_weights_float16(onnx.load(str(onnx_path))).SerializeToString()
    onnx_path.write_bytes(blob)
    sess = session(blob, threads=2)
    va = arrays["FER2013Valid"]
    probs = onnx_probs(sess, va["x"])
    flipped = onnx_probs(sess, va["x"][:, :, ::-1].copy())
    report = classification_report(probs, va["y"], list(EMOTIONS))
    report["flip_agreement"] = float((probs.argmax(1) == flipped.argmax(1)).mean())
    # soft-label agreement: expected accuracy against one random annotator
    report["annotator_agreement"] = float((va["dist"][np.arange(len(probs)), probs.argmax(1)]).mean())
    speed = ms_per_face(sess, size)
    epochs_done = ckpt["epoch"] + 1
    warm_start = None
    if cfg.get("init"):  # a second cycle: keep the first run's record in the card
        warm_start = {"checkpoint": cfg["init"], "checkpoint_sha256": cfg.get("init_sha256")}
        if Path(cfg["init"]).is_file():
            parent = torch.load(cfg["init"], weights_only=False, map_location="cpu")
            warm_start.update(config=parent["config"], epochs_completed=parent["epoch"] + 1,
                              history=parent["history"])
    if cfg.get("arch") == "sface":
        scaling = "scales it as SFace was trained, (255 x - 127.5) / 128"
        architecture = ("SFace (OpenCV Zoo 2021dec) backbone, face-recognition pretrained, fine-tuned; "
                        "global average pooling and a new 8-way head")
    else:
        scaling = "standardises each image (mean/std) itself"
        architecture = "moodlens EmotionNet (small ResNet, trained from scratch)"
    card = {
        "name": name,
        # date, epochs (first+second cycle), "kd" when distilled, and the file's hash: unique per file,
        # since analyses record the model version they ran with
        "version": f"{dt.date.today().isoformat()}-e"
                   + (f"{warm_start.get('epochs_completed', '?')}+{epochs_done}" if warm_start else f"{epochs_done}")
                   + ("-kd" if cfg.get("teachers") else "") + f"-{hashlib.sha256(blob).hexdigest()[:8]}",
        "file": "emotion.onnx",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "classes": list(EMOTIONS),
        "preprocessing": {
            "input": "float32 (N, 1, S, S), greyscale 0..1; the graph " + scaling,
            "architecture": architecture,
            "input_size": size,
            "channels": "grey",
            "grey": "ITU-R 601 luma of BGR (cv2.COLOR_BGR2GRAY)",
            "align": "5-point similarity transform (Umeyama) of YuNet landmarks onto `template` x S, bilinear, replicated border",
            "template": np.asarray(template).round(5).tolist(),
            "template_meaning": "median YuNet landmark layout of FER2013Train crops, mirror-averaged; unit coordinates",
            "ferplus_crops": "FER+ 48x48 crops are landmarked by YuNet after 16 px replicated padding and 3x "
                             "enlargement, then aligned like any face; 3.3 % with no landmarks are used as they are",
        },
        "output": "probabilities over `classes` (softmax in the graph)",
        "weights_storage": "float16 in the file (weight tensors of 1,024+ elements), cast to float32 at load; "
                           "computation is float32",
        "training": {
            "data": "FER+ (Microsoft FER+ votes, MIT) on FER2013 images (research use); FER2013Train only",
            "provenance": provenance,
            "targets": "annotator vote distribution over the 8 emotions (unknown / not-a-face votes dropped); "
                       "rows whose majority is unknown or not-a-face excluded",
            "augmentation": "rotation +-15 deg, scale +-15 %, shift +-8 %, horizontal flip, low resolution (16-36 px), "
                            "Gaussian blur, gamma/contrast/brightness, sensor noise, random occlusion",
            "config": cfg,
            "epochs_completed": epochs_done,
            "weights": "exponential moving average of the weights (decay in config), BatchNorm statistics "
                       "recomputed on 64 x 256 clean training images",
            "history": ckpt["history"],
            "warm_start_from": warm_start,
            "distilled_from": [{"checkpoint": t, "checkpoint_sha256": h} for t, h in
                               zip(cfg.get("teachers") or (), cfg.get("teacher_sha256") or ())],
            "torch": torch.__version__,
            "code": "moodlens train emotion (src/moodlens/training)",
        },
        "metrics": {
            "ferplus_valid_majority": report,
            "ms_per_face_batch32": round(speed, 3),
            "measured_on": f"{platform.machine()} {platform.processor() or ''} ONNX Runtime, 2 threads".strip(),
        },
        "licence": "MIT (weights trained by moodlens); FER2013 images are research-use, see README",
        "intended_use": "aggregate audience emotion over time; not for decisions about individuals; "
                        "see README on EU AI Act Art. 5(1)(f)",
    }
    card_path = run_dir / "emotion.json"
    card_path.write_text(json.dumps(card, indent=2))
    log(f"FER+ valid accuracy {report['accuracy']:.4f}, ECE {report['ece']:.4f}, "
        f"flip agreement {report['flip_agreement']:.4f}, {speed:.2f} ms/face, {len(blob) / 1e6:.2f} MB")
    return card_path
