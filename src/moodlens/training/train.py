"""Train the emotion model on FER+: seeded, resumable, exported to ONNX with a card.

Targets are the annotators' vote distributions (8 emotions, unknown/not-a-face
votes dropped), not the majority label: FER+ was labelled by 10 people
precisely because expressions are ambiguous, and soft targets both raise
majority accuracy (Barsoum et al. 2016) and give calibrated probabilities,
which the reports average over faces and time.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from moodlens.atomic import atomic_write
from moodlens.errors import MoodlensError
from moodlens.models import sha256_file
from moodlens.training.augment import augment
from moodlens.training.ferplus import aligned_images, load_splits
from moodlens.training.net import EmotionNet


SFACE_ARCHS = {"sface": "prelu", "sface-leaky": "leaky"}  # SFace backbones by their activation
ARCHS = ("resnet", *SFACE_ARCHS)


@dataclass
class TrainConfig:
    size: int = 48
    arch: str = "resnet"  # "resnet" (EmotionNet, from scratch), "sface" (SFace's face-pretrained backbone)
    # or "sface-leaky" (the same with one slope per layer: 3x faster in ONNX Runtime)
    widths: tuple[int, ...] = (32, 64, 128, 192)
    depths: tuple[int, ...] = (2, 2, 2)
    dropout: float = 0.3
    epochs: int = 60
    batch: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True  # the decay ramps up over the first updates (runs 1-11 trained without)
    seed: int = 20261122
    threads: int = 2
    bf16: bool = True  # bfloat16 autocast: about 2.5x faster on CPUs with AMX / AVX512-BF16
    device: str = "auto"  # "cpu", "cuda" or "auto" (a GPU when PyTorch sees one)
    init: str | None = None  # warm start: a finished run's checkpoint (EMA weights), then a fresh schedule
    init_sha256: str | None = None  # recorded hash of that checkpoint, for provenance
    teachers: tuple[str, ...] = ()  # finished runs' checkpoints whose averaged predictions soften the targets
    teacher_sha256: tuple[str, ...] = ()  # recorded hashes of those checkpoints
    teacher_weight: float = 0.5  # target = (1 - w) * votes + w * teachers
    online_teachers: bool = False  # teachers judge each augmented batch, not the clean crops once
    teacher_file: str | None = None  # teachers' probabilities saved by save_teacher_file (no networks needed)
    teacher_file_sha256: str | None = None
    aug_strength: float = 1.0  # scales every augmentation's range and rate (flips excepted)
    time_budget_s: float | None = None  # the epochs' wall time: the schedule is fitted to it (fit_epochs)
    extra: dict = field(default_factory=dict)


def _lr(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    t = step / steps_per_epoch
    if t < cfg.warmup_epochs:
        return cfg.lr * t / cfg.warmup_epochs
    p = (t - cfg.warmup_epochs) / max(cfg.epochs - cfg.warmup_epochs, 1e-9)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


def warmup_ema(decay: float):
    """An exponential moving average whose decay after n updates is min(decay, (1 + n) / (10 + n)),
    as TensorFlow's ExponentialMovingAverage with ``num_updates``.

    With a fixed 0.999 the average forgets its starting point only after a few
    thousand steps: a 6-epoch run (1,326 steps) still holds 0.999 ** 1326 = 26 % of
    the random initial weights, and scored 0.40 on FER+ valid where its live weights
    scored 0.79. The ramp makes the average usable however short the schedule
    (a time budget can shorten one to a few epochs) and leaves long runs as they
    were: past 9,000 steps the decay is the fixed one.
    """
    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = float(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(ema[0]):
            torch._foreach_lerp_(ema, current, 1 - d)  # as torch.optim.swa_utils.get_ema_multi_avg_fn does
        else:  # BatchNorm's batch counters
            for e, c in zip(ema, current):
                e.copy_(e * d + c * (1 - d))
    return update


def fit_epochs(asked: int, current: int, history: list[dict], budget_s: float | None) -> int:
    """The schedule's length in epochs so that the epochs run so far plus the rest fit in
    ``budget_s``, at most ``asked``.

    A schedule fitted this way still ends with its low learning rates, where a run
    cut off at a deadline would stop mid-schedule, before its weights settle. The
    rest is timed by the epochs after the first, whose time includes one-off costs
    (a GPU's kernel autotuning, caches). While the schedule is in its first tenth,
    where the cosine has barely left its peak, a fit may lengthen it again (up to
    ``asked``); later it only shortens.
    """
    if budget_s is None or not history:
        return current
    spent = sum(h["seconds"] for h in history)
    steady = history[1:] or history
    per_epoch = sum(h["seconds"] for h in steady) / len(steady)
    fit = max(len(history), min(asked, len(history) + int((budget_s - spent) // per_epoch)))
    return fit if len(history) <= 0.1 * current else min(fit, current)


def split_arrays(split, template: np.ndarray, size: int) -> dict:
    """A split's usable rows, aligned at ``size`` px, with their vote distributions and majority labels."""
    keep = split.usable
    return dict(x=aligned_images(split, template, size)[keep], dist=split.distribution[keep], y=split.majority[keep],
                files=[f for f, k in zip(split.files, keep) if k])


def prepare(data: Path, out: Path, size: int, log=print):
    """Landmark, align and cache both splits; returns arrays, template and provenance."""
    splits, template, provenance = load_splits(data, out, log)
    return {name: split_arrays(s, template, size) for name, s in splits.items()}, template, provenance


def resolve_device(name: str) -> torch.device:
    """cpu, cuda, cuda:N or auto (a GPU when PyTorch sees one); ValueError for anything else."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"--device {name}: expected cpu, cuda, cuda:N or auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: PyTorch sees no CUDA GPU here (torch {torch.__version__}); use --device cpu")
    return torch.device(name)


def _bf16_ok(device: torch.device) -> bool:
    """bfloat16 autocast only pays off where the hardware computes it natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "amx_bf16" in flags or "avx512_bf16" in flags


def ema_weights(ckpt: dict) -> dict:
    """The EMA model's state dict from a training checkpoint (AveragedModel keys unwrapped)."""
    return {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}


def build_net(cfg: TrainConfig, pretrained: bool = True) -> torch.nn.Module:
    """The network ``cfg.arch`` names (SFace's pretrained weights only for a fresh run)."""
    if cfg.arch in SFACE_ARCHS:
        from moodlens.training.sface_net import SFaceExpressionNet

        return SFaceExpressionNet(dropout=cfg.dropout, pretrained=pretrained, activation=SFACE_ARCHS[cfg.arch])
    if cfg.arch not in ARCHS:
        raise ValueError(f"--arch {cfg.arch}: expected one of {', '.join(ARCHS)}")
    return EmotionNet(tuple(cfg.widths), tuple(cfg.depths), dropout=cfg.dropout)


def load_ema(ckpt: dict) -> torch.nn.Module:
    """The network a checkpoint describes, with its EMA weights, in eval mode on the CPU."""
    cfg = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in TrainConfig.__dataclass_fields__})
    net = build_net(cfg, pretrained=False)
    net.load_state_dict(ema_weights(ckpt))
    return net.eval()


def evaluate(model: torch.nn.Module, x: np.ndarray, batch: int = 512, bf16: bool = False) -> np.ndarray:
    """Softmax probabilities of ``model`` on uint8 images ``x`` (N, S, S); channels-last, which
    PyTorch's CPU convolutions run 1.5x faster, and bfloat16 autocast where asked."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i : i + batch]).to(dev).float().div_(255).unsqueeze(1)
            out.append(torch.softmax(model(xb.contiguous(memory_format=torch.channels_last)).float(), 1).cpu().numpy())
    return np.concatenate(out)


def load_teacher(path: str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, int]:
    """A finished run's EMA network (eval mode, channels-last on ``device``) and its input size."""
    ckpt = torch.load(path, weights_only=False, map_location="cpu")
    return load_ema(ckpt).to(device, memory_format=torch.channels_last), ckpt["config"].get("size", 48)


def teacher_targets(paths: tuple[str, ...], x: np.ndarray, device: str | torch.device = "cpu",
                    images_at=None, bf16: bool = False) -> np.ndarray:
    """Mean probabilities of finished runs (EMA weights, each image and its mirror) on ``x``.

    Knowledge distillation (Hinton et al. 2015; "born-again" students, Furlanello
    et al. 2018): the teachers' soft judgement says which expressions look alike
    to a network, beyond what ten annotators' votes say; computed once on the clean
    aligned crops, since the augmentations do not change the expression. A teacher
    trained at another input size sees the same faces aligned at its own size,
    ``images_at(size)``, rather than a resampled student crop.
    """
    total = np.zeros((len(x), 8), np.float32)
    for path in paths:
        net, size = load_teacher(path, device)
        xs = x if size == x.shape[-1] else images_at(size)
        total += evaluate(net, xs, bf16=bf16) + evaluate(net, np.ascontiguousarray(xs[:, :, ::-1]), bf16=bf16)
    return total / (2 * len(paths))


def online_teacher_targets(teachers: list[tuple[torch.nn.Module, int]], x: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Mean probabilities of ``teachers`` on the student's own augmented batch ``x`` (B, 1, S, S in 0..1).

    "Consistent teaching" (Beyer et al. 2022): a teacher that sees the very crop
    the student sees says how much expression is left after an occluder, a blur or
    a 20 px downscale, where a target fixed on the clean crop asks the student to
    find an expression that is no longer there. A teacher trained at another size
    gets the batch resampled (antialiased) to its size.
    """
    total = torch.zeros(len(x), 8, device=x.device)
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        for net, size in teachers:
            xs = x if size == x.shape[-1] else F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                                              align_corners=False)
            total += torch.softmax(net(xs.contiguous(memory_format=torch.channels_last)).float(), 1)
    return total / len(teachers)


def save_teacher_file(path: Path, probs: np.ndarray, data_sha256: str, teachers: list[str]) -> None:
    """Teachers' probabilities on FER2013Train's usable faces, in file order, for ``--teacher-file``:
    what a GPU machine can send back when the teachers themselves are too large to."""
    atomic_write(path, lambda f: np.savez(f, probs=np.asarray(probs, np.float32), data_sha256=np.asarray(data_sha256),
                                          teachers=np.asarray(teachers)), binary=True)


def load_teacher_file(path: Path, data_sha256: str, rows: int) -> np.ndarray:
    """The probabilities ``save_teacher_file`` wrote, checked against the data they were computed on."""
    try:
        with np.load(path) as z:
            probs, made_on = z["probs"].astype(np.float32), str(z["data_sha256"])
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise MoodlensError(f"{path}: not a teachers' probabilities file ({e})") from e
    if made_on != data_sha256:
        raise MoodlensError(f"{path}: computed on FER2013Train {made_on[:12]}, not on this data ({data_sha256[:12]})")
    if probs.shape != (rows, 8) or not np.allclose(probs.sum(1), 1, atol=1e-3):
        raise MoodlensError(f"{path}: expected probabilities over 8 classes for {rows} faces, got shape {probs.shape}")
    return probs


def cached_teacher_targets(out: Path, cfg: TrainConfig, data_sha256: str, bf16: bool, compute) -> np.ndarray:
    """``compute()``'s teacher targets, kept in the run folder so that a resumed run
    does not spend the teachers' time again (22 min for five teachers on 2 cores);
    the file is named by the teachers' and the data's hashes, so any change misses."""
    key = hashlib.sha256(json.dumps([list(cfg.teacher_sha256), data_sha256, cfg.size, bf16]).encode()).hexdigest()
    path = out / f"teachers-{key[:16]}.npy"
    if path.is_file():
        return np.load(path)
    soft = compute()
    atomic_write(path, lambda f: np.save(f, soft), binary=True)
    return soft


def train(data: Path, out: Path, cfg: TrainConfig, log=print, progress=None) -> Path:
    """Train (or resume) into ``out``; returns the checkpoint path. ``progress(what, done, total)``
    follows the landmarking and each epoch's steps."""
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    if cfg.init and cfg.init_sha256 is None:
        cfg = replace(cfg, init_sha256=sha256_file(Path(cfg.init)))
    if cfg.teachers and cfg.teacher_file:
        raise MoodlensError("a teachers' probabilities file replaces teacher networks: give one or the other")
    if cfg.teachers and not cfg.teacher_sha256:
        cfg = replace(cfg, teacher_sha256=tuple(sha256_file(Path(t)) for t in cfg.teachers))
    if cfg.teacher_file and not cfg.teacher_file_sha256:
        cfg = replace(cfg, teacher_file_sha256=sha256_file(Path(cfg.teacher_file)))
    splits, template, provenance = load_splits(data, out, log, progress)
    arrays = {name: split_arrays(s, template, cfg.size) for name, s in splits.items()}
    (out / "config.json").write_text(json.dumps(
        {"config": asdict(cfg), "template": template.tolist(), "data": provenance, "torch": torch.__version__}, indent=2))
    tr, va = arrays["FER2013Train"], arrays["FER2013Valid"]
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model = build_net(cfg).to(device, memory_format=torch.channels_last)
    bf16 = cfg.bf16 and _bf16_ok(device)
    log(f"device: {device}, precision: {'bfloat16 autocast' if bf16 else 'float32'}")
    torch.backends.cudnn.benchmark = True
    average = warmup_ema(cfg.ema_decay) if cfg.ema_warmup else torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay)
    ema = torch.optim.swa_utils.AveragedModel(model, use_buffers=True, multi_avg_fn=average)
    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0}],
                          lr=cfg.lr, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    # augmentation draws its numbers where the batch lives (one generator on a CPU, as before)
    aug_gen = gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(cfg.seed)
    ckpt_path = out / "checkpoint.pt"
    start_epoch, history = 0, []
    if cfg.init and not ckpt_path.exists():
        # A second cosine cycle from a finished run (a warm restart, as in SGDR).
        # The EMA copies these weights at its first update.
        init = torch.load(cfg.init, weights_only=False, map_location=device)
        state = ema_weights(init)
        if cfg.arch == "sface-leaky" and init["config"].get("arch") == "sface":
            from moodlens.training.sface_net import layer_slopes

            state = layer_slopes(state)  # a fine-tuned PReLU SFace warm-starts the fast variant
        model.load_state_dict(state)
        log(f"warm start from {cfg.init} (epoch {init['epoch'] + 1} of its run)")
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False, map_location=device)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"].cpu())
        if aug_gen is not gen and ck.get("aug_device") == device.type:
            aug_gen.set_state(ck["aug_gen"].cpu())  # a run moved between CPU and GPU gets a fresh stream
        start_epoch, history = ck["epoch"] + 1, ck["history"]
        if cfg.time_budget_s is not None and ck["config"]["epochs"] < cfg.epochs:  # keep the schedule already fitted
            cfg = replace(cfg, epochs=ck["config"]["epochs"], extra=ck["config"].get("extra", cfg.extra))
        log(f"resuming from epoch {start_epoch}")
    x_all = torch.from_numpy(tr["x"]).to(device)
    d_all = torch.from_numpy(tr["dist"])
    online = [load_teacher(t, device) for t in cfg.teachers] if cfg.online_teachers else []
    if cfg.teachers:
        log(f"distilling from {len(cfg.teachers)} teacher(s), weight {cfg.teacher_weight}"
            + (", judging each augmented batch" if online else ""))
    if cfg.teachers and not online:
        soft = torch.from_numpy(cached_teacher_targets(out, cfg, provenance["FER2013Train"]["sha256"], bf16, lambda: teacher_targets(
            cfg.teachers, tr["x"], device, bf16=bf16,
            images_at=lambda s: split_arrays(splits["FER2013Train"], template, s)["x"])))
        d_all = (1 - cfg.teacher_weight) * d_all + cfg.teacher_weight * soft
    if cfg.teacher_file:
        log(f"distilling from the teachers' probabilities in {cfg.teacher_file}, weight {cfg.teacher_weight}")
        soft = torch.from_numpy(load_teacher_file(Path(cfg.teacher_file), provenance["FER2013Train"]["sha256"], len(tr["x"])))
        d_all = (1 - cfg.teacher_weight) * d_all + cfg.teacher_weight * soft
    d_all = d_all.to(device)
    steps = len(x_all) // cfg.batch
    epoch = start_epoch
    while epoch < cfg.epochs:  # cfg.epochs may shrink to fit a time budget
        model.train()
        t0, tot = time.time(), 0.0
        perm = torch.randperm(len(x_all), generator=gen)
        for i in range(steps):
            for g_ in opt.param_groups:
                g_["lr"] = _lr(cfg, epoch * steps + i, steps)
            idx = perm[i * cfg.batch : (i + 1) * cfg.batch].to(device)
            xb = augment(x_all[idx].float().div_(255).unsqueeze(1), aug_gen, cfg.aug_strength).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(xb)
            target = d_all[idx]
            if online:
                target = (1 - cfg.teacher_weight) * target + cfg.teacher_weight * online_teacher_targets(online, xb, bf16)
            loss = -(target * F.log_softmax(logits.float(), 1)).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update_parameters(model)
            tot += loss.item()
            if progress:
                progress(f"epoch {epoch + 1} of {cfg.epochs}", i + 1, steps)
        # The EMA lags the live weights by ~1/(1 - decay) steps, so early epochs show both.
        acc = float((evaluate(ema.module, va["x"]).argmax(1) == va["y"]).mean())
        acc_live = float((evaluate(model, va["x"]).argmax(1) == va["y"]).mean())
        history.append({"epoch": epoch, "loss": tot / steps, "valid_acc_ema": acc, "valid_acc": acc_live,
                        "seconds": time.time() - t0})
        log(json.dumps(history[-1]))
        asked = cfg.extra.get("epochs_asked", cfg.epochs)
        fitted = fit_epochs(asked, cfg.epochs, history, cfg.time_budget_s)
        if fitted != cfg.epochs:
            log(f"time budget {cfg.time_budget_s:.0f} s: the schedule is fitted from {cfg.epochs} to {fitted} epochs")
            cfg = replace(cfg, epochs=fitted, extra={**cfg.extra, "epochs_asked": asked})
        state = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                 "gen": gen.get_state(), "aug_gen": aug_gen.get_state(), "aug_device": device.type, "epoch": epoch,
                 "history": history, "config": asdict(cfg), "template": template.tolist()}
        atomic_write(ckpt_path, lambda f: torch.save(state, f), binary=True)
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(history[-1]) + "\n")
        epoch += 1
    return ckpt_path


SLIM_KEYS = ("ema", "config", "template", "epoch", "history")


def slim_checkpoint(src: Path, dst: Path) -> int:
    """Copy ``src`` without its live weights and optimiser state (what export, ``--init`` and
    ``--teacher`` read: a third of the size, 11 MB for the shipped shape); returns the bytes written."""
    try:
        ckpt = torch.load(src, weights_only=False, map_location="cpu")
    except Exception as e:  # torch.load raises whatever its unpickler meets in a file that is not a checkpoint
        raise ValueError(f"{src}: not a readable checkpoint ({type(e).__name__})") from e
    missing = [k for k in ("ema", "config", "epoch", "history") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{src}: not a moodlens training checkpoint (no {', '.join(missing)})")
    atomic_write(dst, lambda f: torch.save({k: ckpt[k] for k in SLIM_KEYS if k in ckpt}, f), binary=True)
    return dst.stat().st_size
