"""Export a training run to ONNX and write its model card, with metrics measured on the export.

Metrics are computed by ONNX Runtime on the exported file (the exact bytes
that ship), on FER2013Valid aligned by the same code as inference.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from moodlens.metrics import classification_report
from moodlens.models import session, sha256_file
from moodlens.models.onnx_utils import quantize_int8, store_weights_float16
from moodlens.atomic import atomic_write
from moodlens.training.train import SFACE_ARCHS, load_ema, prepare
from moodlens.types import EMOTIONS

PRECISIONS = ("int8", "float16")
WEIGHTS_STORAGE = {
    "int8": "int8 per output channel (7 bits used), activations uint8 with ranges calibrated on 512 clean "
            "training faces (99.99th percentile); ONNX Runtime runs the convolutions in integer arithmetic",
    "float16": "float16 in the file (weight tensors of 1,024+ elements), cast to float32 at load; computation is float32",
}


class _MeanProbabilities(torch.nn.Module):
    """The members' softmax outputs, averaged: an ensemble folded into one graph and one session.

    The graph takes faces aligned at the largest member size; a member trained at
    a smaller size gets them resized in the graph (bilinear). Alignment is in unit
    coordinates, so that is the same crop: run 3 scores 0.857 on 64 px faces resized
    to 48 against 0.855 on faces aligned at 48 (FER+ valid).
    """

    def __init__(self, nets: list[torch.nn.Module], sizes: list[int] | None = None):
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)
        sizes = sizes or [0] * len(nets)
        self.resize_to = [None if s == max(sizes) else s for s in sizes]  # None: the input as it is

    def forward(self, x):
        probs = [torch.softmax(net(x if s is None else F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)),
                               dim=1) for net, s in zip(self.nets, self.resize_to)]
        return probs[0] if len(probs) == 1 else torch.stack(probs).mean(0)


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


def _architecture(cfg: dict) -> tuple[str, str]:
    """(how the graph scales its input, what the network is) for a member's config."""
    if cfg.get("arch") in SFACE_ARCHS:
        return ("scales it as SFace was trained, (255 x - 127.5) / 128",
                "SFace (OpenCV Zoo 2021dec) backbone, face-recognition pretrained, fine-tuned; "
                + ("its PReLUs replaced by one leaky-ReLU slope per layer; " if cfg["arch"] == "sface-leaky" else "")
                + "global average pooling and a new 8-way head")
    widths = "-".join(map(str, cfg.get("widths", ())))
    return "standardises each image (mean/std) itself", f"moodlens EmotionNet (small ResNet, widths {widths}, from scratch)"


def _training_record(path: Path, ckpt: dict) -> dict:
    """What a member's card entry says of its run: config, history, warm start and teachers, by hash."""
    cfg = ckpt["config"]
    warm_start = None
    if cfg.get("init"):  # a second cycle: keep the first run's record in the card
        warm_start = {"checkpoint": cfg["init"], "checkpoint_sha256": cfg.get("init_sha256")}
        if Path(cfg["init"]).is_file():
            parent = torch.load(cfg["init"], weights_only=False, map_location="cpu")
            warm_start.update(config=parent["config"], epochs_completed=parent["epoch"] + 1,
                              history=parent["history"])
    return {
        "checkpoint": str(path),
        "checkpoint_sha256": sha256_file(path),
        "config": cfg,
        "epochs_completed": ckpt["epoch"] + 1,
        "history": ckpt["history"],
        "warm_start_from": warm_start,
        "distilled_from": [{"checkpoint": t, "checkpoint_sha256": h} for t, h in
                           zip(cfg.get("teachers") or (), cfg.get("teacher_sha256") or ())]
                          + ([{"probabilities": cfg["teacher_file"], "sha256": cfg.get("teacher_file_sha256")}]
                             if cfg.get("teacher_file") else []),
    }


def _version(records: list[dict], precision: str, blob: bytes) -> str:
    """Date, epochs (first+second cycle) or ensemble size, "kd" when distilled, precision and the
    file's hash: unique per file, since analyses record the model version they ran with."""
    r = records[0]
    if len(records) > 1:
        body = f"ens{len(records)}"
    else:
        ws = r["warm_start_from"]
        body = "e" + (f"{ws.get('epochs_completed', '?')}+{r['epochs_completed']}" if ws else f"{r['epochs_completed']}")
        body += "-kd" if r["distilled_from"] else ""
    return (f"{dt.date.today().isoformat()}-{body}" + ("-int8" if precision == "int8" else "")
            + f"-{hashlib.sha256(blob).hexdigest()[:8]}")


def export(run_dir: Path, data: Path, log=print, name: str = "moodlens-emotion", precision: str = "int8",
           members: list[Path] | None = None) -> Path:
    """Export ``run_dir``'s checkpoint, or the mean of several runs' checkpoints (``members``), to
    ``run_dir/emotion.onnx`` and its card."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision}: expected one of {', '.join(PRECISIONS)}")
    paths = list(members or [run_dir / "checkpoint.pt"])
    ckpts = [torch.load(p, weights_only=False, map_location="cpu") for p in paths]
    sizes = [c["config"]["size"] for c in ckpts]
    size = max(sizes)
    run_dir.mkdir(parents=True, exist_ok=True)
    arrays, template, provenance = prepare(data, run_dir, size, log)
    nets = [load_ema(c) for c in ckpts]
    train_x = {s: (arrays if s == size else prepare(data, run_dir, s, log)[0])["FER2013Train"]["x"] for s in set(sizes)}
    for net, s in zip(nets, sizes):  # each member's statistics on faces aligned at its own size
        recalibrate_bn(net, train_x[s])
    model = _MeanProbabilities(nets, sizes).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 1, size, size), buf, input_names=["face"],
                      output_names=["probabilities"], dynamic_axes={"face": {0: "batch"}, "probabilities": {0: "batch"}},
                      opset_version=17, dynamo=False)
    graph = onnx.load_from_string(buf.getvalue())
    va = arrays["FER2013Valid"]
    float_acc = float((onnx_probs(session(graph.SerializeToString(), threads=2), va["x"]).argmax(1) == va["y"]).mean())
    if precision == "int8":
        blob = quantize_int8(graph, arrays["FER2013Train"]["x"])
    else:
        blob = store_weights_float16(graph).SerializeToString()
    sess = session(blob, threads=2)
    probs = onnx_probs(sess, va["x"])
    flipped = onnx_probs(sess, va["x"][:, :, ::-1].copy())
    report = classification_report(probs, va["y"], list(EMOTIONS), va["dist"])
    report["flip_agreement"] = float((probs.argmax(1) == flipped.argmax(1)).mean())
    # soft-label agreement: expected accuracy against one random annotator
    report["annotator_agreement"] = float((va["dist"][np.arange(len(probs)), probs.argmax(1)]).mean())
    report["float32_accuracy"] = float_acc  # the same weights before int8 / float16 storage
    speed = ms_per_face(sess, size)
    records = [_training_record(p, c) for p, c in zip(paths, ckpts)]
    scalings, architectures = zip(*(_architecture(c["config"]) for c in ckpts))
    if len(set(scalings)) == 1:
        scaling = scalings[0]
    else:
        scaling = "scales it for each member as that member was trained"
    architecture = architectures[0] if len(nets) == 1 else (
        f"ensemble of {len(nets)} networks in one graph, their probabilities averaged: " + "; ".join(architectures))
    training = {
        "data": "FER+ (Microsoft FER+ votes, MIT) on FER2013 images (research use); FER2013Train only",
        "provenance": provenance,
        "targets": "annotator vote distribution over the 8 emotions (unknown / not-a-face votes dropped); "
                   "rows whose majority is unknown or not-a-face excluded",
        "augmentation": "rotation +-15 deg, scale +-15 %, shift +-8 %, horizontal flip, low resolution (16-36 px), "
                        "Gaussian blur, gamma/contrast/brightness, sensor noise, random occlusion",
        "weights": "exponential moving average of the weights (decay in config), BatchNorm statistics "
                   "recomputed on 64 x 256 clean training images",
        **(records[0] if len(records) == 1 else {"members": records}),
        "torch": torch.__version__,
        "code": "moodlens train emotion (src/moodlens/training)",
    }
    card = {
        "name": name,
        "version": _version(records, precision, blob),
        "file": "emotion.onnx",
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        "parameters": int(sum(p.numel() for p in model.parameters())),
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
        "weights_storage": WEIGHTS_STORAGE[precision],
        "training": training,
        "metrics": {
            "ferplus_valid_majority": report,
            "ms_per_face_batch32": round(speed, 3),
            "measured_on": f"{platform.machine()} {platform.processor() or ''} ONNX Runtime, 2 threads".strip(),
        },
        "licence": "MIT (weights trained by moodlens); FER2013 images are research-use, see README",
        "intended_use": "aggregate audience emotion over time; not for decisions about individuals; "
                        "see README on EU AI Act Art. 5(1)(f)",
    }
    # each file is replaced atomically; were the export killed between the two, the card's SHA-256
    # would refuse the new model at load rather than describe it wrongly
    atomic_write(run_dir / "emotion.onnx", lambda f: f.write(blob), binary=True)
    card_path = atomic_write(run_dir / "emotion.json", lambda f: json.dump(card, f, indent=2))
    log(f"FER+ valid accuracy {report['accuracy']:.4f}, ECE {report['ece']:.4f} (against the votes "
        f"{report['ece_votes']:.4f}), "
        f"flip agreement {report['flip_agreement']:.4f} ({precision}; float32 {float_acc:.4f}), {speed:.2f} ms/face, {len(blob) / 1e6:.2f} MB")
    return card_path
