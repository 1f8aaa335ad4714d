"""``moodlens train``: train, pack and slim moodlens's own models (the ``[train]`` extra).

It imports neither the database nor the video stack, so ``python -m
moodlens.cli_train`` runs on a machine that has only PyTorch, ONNX Runtime,
OpenCV, Typer and Rich, such as a borrowed GPU machine (docs/training.md, "Training on a GPU").
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from moodlens.cli_common import err_console, friendly, out_console, progress_bar
from moodlens.errors import MoodlensError

train_app = typer.Typer(help="Train moodlens's own models (needs the `[train]` extra).", no_args_is_help=True)


def _torch_part(module: str, *names: str):
    """``names`` from a training module, or a clear error where PyTorch is missing."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise MoodlensError(f"training needs PyTorch: pip install -e '.[train]' ({e})") from e
    return [getattr(mod, n) for n in names]


def _bar_progress(bar):
    """``progress(what, done, total)`` drawn on one Rich bar (silent when stderr is piped)."""
    task = bar.add_task("", total=None)
    return lambda what, done, total: bar.update(task, description=what, completed=done, total=total)


@train_app.command("emotion", epilog="""Examples:

  moodlens train emotion --data ../shared/data/ferplus --out runs/emotion

  moodlens train emotion --data ../shared/data/ferplus --out runs/emotion --epochs 40   (resumes if a checkpoint exists)

  moodlens train emotion --data ../shared/data/ferplus --out runs/emotion2 --init runs/emotion/checkpoint.pt --lr 0.03 --epochs 30   (a second cycle from a finished run)

  moodlens train emotion --data ../shared/data/ferplus --out runs/emotion3 --widths 32,64,128,256 --teacher runs/emotion/checkpoint.pt --teacher runs/emotion2/checkpoint.pt   (a wider student distilled from finished runs)

  moodlens train emotion --data ../shared/data/ferplus --out runs/sface --arch sface --size 64 --lr 0.02 --epochs 10   (a face-pretrained teacher)

  moodlens train emotion --data ../shared/data/ferplus --out runs/sfleaky --arch sface-leaky --size 64 --init runs/sface/checkpoint.pt --lr 0.02 --epochs 12 --teacher runs/sface/checkpoint.pt   (its fast variant)

  moodlens train emotion --data ../shared/data/ferplus --out runs/r80o --size 80 --widths 32,64,128,256 --init runs/r80/checkpoint.pt --lr 0.02 --epochs 12 --teacher runs/r80/checkpoint.pt --teacher runs/s64c2/checkpoint.pt --online-teachers   (teachers judge every augmented batch)

  moodlens train emotion --data ../shared/data/ferplus --out runs/ens --member runs/wide/checkpoint.pt --member runs/emotion3/checkpoint.pt   (two finished runs averaged in one exported model)

  moodlens train emotion --data ../shared/data/ferplus --out runs/gpu --device cuda   (on a GPU; checkpoints load on a CPU machine too)

  moodlens train emotion --data ferplus.npz --out runs/t1 --time-budget 300 --no-export   (a pack; the schedule fitted into 5 minutes)

  moodlens train emotion --data ../shared/data/ferplus --out runs/s80 --size 80 --widths 32,64,128,256 --teacher-file teachers_train.npz   (distilled from a GPU run's teachers)
""")
@friendly
def train_emotion(
    data: Annotated[Path, typer.Option(help="FER+ root with FER2013Train/ and FER2013Valid/, or a pack of it "
                                            "(moodlens train pack).")],
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, logs, exported ONNX and card.")],
    epochs: Annotated[int, typer.Option(help="Total epochs of the cosine schedule.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed (data order, augmentation, init).")] = 20261122,
    export_only: Annotated[bool, typer.Option("--export-only", help="Only export the latest checkpoint.")] = False,
    init: Annotated[Optional[Path], typer.Option(help="Warm start from a finished run's checkpoint.pt (its EMA weights), "
                                                      "then a fresh schedule.")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate (SGD, cosine schedule).")] = 0.1,
    arch: Annotated[str, typer.Option(help="resnet: moodlens's small net from scratch; sface: SFace's face-pretrained "
                                           "backbone, fine-tuned (a teacher, ~10x slower); sface-leaky: the same with one "
                                           "leaky-ReLU slope per layer, 3x faster in ONNX Runtime (warm-start it from an "
                                           "sface run).")] = "resnet",
    size: Annotated[int, typer.Option(help="Input side in px (faces are aligned to it).")] = 48,
    widths: Annotated[str, typer.Option(help="Channels of the stem and the three residual stages.")] = "32,64,128,192",
    depths: Annotated[str, typer.Option(help="Residual blocks per stage.")] = "2,2,2",
    teacher: Annotated[Optional[list[Path]], typer.Option(help="A finished run's checkpoint.pt whose predictions "
                                                                "soften the targets (repeat for an ensemble).")] = None,
    teacher_weight: Annotated[float, typer.Option(help="Share of the teachers in the targets (the rest: votes).")] = 0.5,
    teacher_file: Annotated[Optional[Path], typer.Option(help="Teachers' probabilities on the training faces, as "
                                                              "scripts/gpu_train.sh brings back (teachers_train.npz): "
                                                              "distil from teachers without their networks.")] = None,
    online_teachers: Annotated[bool, typer.Option("--online-teachers", help="The teachers judge every augmented batch "
                                                  "the student sees (consistent targets; slower) instead of the clean "
                                                  "crops once.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda (cuda:N) or auto: a GPU when PyTorch sees one.")] = "auto",
    aug_strength: Annotated[float, typer.Option(help="Scales every augmentation's range and rate (flips excepted).")] = 1.0,
    member: Annotated[Optional[list[Path]], typer.Option(help="A finished run's checkpoint.pt: export the mean of these "
                                                               "(repeat) as one model into --out; no training.")] = None,
    precision: Annotated[str, typer.Option(help="Exported weights: int8 (calibrated on training faces; ~3x faster on "
                                                "CPUs) or float16 (stored; computed in float32).")] = "int8",
    time_budget: Annotated[Optional[float], typer.Option(help="Seconds the epochs may take: after each epoch the "
                                                               "schedule is fitted to it (shortened; lengthened again "
                                                               "only in its first tenth, never past --epochs). Data "
                                                               "preparation is not counted.")] = None,
    no_export: Annotated[bool, typer.Option("--no-export", help="Train only; export later with --export-only.")] = False,
):
    """Train the FER+ emotion model (seeded, resumable), then export ONNX + model card."""
    PRECISIONS, export = _torch_part("moodlens.training.export", "PRECISIONS", "export")
    ARCHS, TrainConfig, resolve_device, train = _torch_part("moodlens.training.train", "ARCHS", "TrainConfig",
                                                            "resolve_device", "train")
    if not data.is_file() and not (data / "FER2013Train" / "label.csv").is_file():
        raise MoodlensError(f"{data}: not a FER+ root (expected FER2013Train/label.csv) nor a pack of it")
    if time_budget is not None and time_budget <= 0:
        raise MoodlensError(f"--time-budget {time_budget}: expected a positive number of seconds")
    if precision not in PRECISIONS:
        raise MoodlensError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    log = lambda m: err_console.print(m, highlight=False)  # noqa: E731
    for m in member or []:
        if not m.is_file():
            raise MoodlensError(f"{m}: no such checkpoint")
    if not export_only and not member:
        try:
            shape = dict(widths=tuple(int(v) for v in widths.split(",")), depths=tuple(int(v) for v in depths.split(",")))
        except ValueError as e:
            raise MoodlensError(f"--widths / --depths: comma-separated integers expected ({e})") from e
        if len(shape["widths"]) != len(shape["depths"]) + 1:
            raise MoodlensError("--widths needs one more entry than --depths (the stem)")
        if online_teachers and not teacher:
            raise MoodlensError("--online-teachers needs at least one --teacher")
        if teacher and teacher_file:
            raise MoodlensError("--teacher-file holds teachers' probabilities already: give it or --teacher, not both")
        for t in (teacher or []) + ([init] if init else []) + ([teacher_file] if teacher_file else []):
            if not t.is_file():
                raise MoodlensError(f"{t}: no such file")
        try:
            resolve_device(device)  # fail now, not after the data is prepared
        except ValueError as e:
            raise MoodlensError(str(e)) from e
        if arch not in ARCHS:
            raise MoodlensError(f"--arch {arch}: expected one of {', '.join(ARCHS)}")
        with progress_bar() as bar:
            train(data, out, TrainConfig(epochs=epochs, seed=seed, lr=lr, init=str(init) if init else None, **shape,
                                         arch=arch, size=size,
                                         device=device, aug_strength=aug_strength,
                                         teachers=tuple(map(str, teacher or ())), teacher_weight=teacher_weight,
                                         online_teachers=online_teachers, time_budget_s=time_budget,
                                         teacher_file=str(teacher_file) if teacher_file else None),
                  log=log, progress=_bar_progress(bar))
    if no_export:
        return
    try:
        card = export(out, data, log=log, precision=precision, members=member)
    except ValueError as e:
        raise MoodlensError(str(e)) from e
    out_console.print(f"exported {card}")



@train_app.command("pack", epilog="""Examples:

  moodlens train pack --data ../shared/data/ferplus --out .device/ferplus.npz
""")
@friendly
def train_pack(
    data: Annotated[Path, typer.Option(help="FER+ root with FER2013Train/ and FER2013Valid/.")],
    out: Annotated[Path, typer.Option(help="The pack to write (.npz).")],
):
    """Pack FER+ (images, votes, YuNet landmarks, hashes) into one file for a machine without ../shared.

    Needs no PyTorch.

    Lossless and about half the size of the folders; `train emotion --data PACK` reads it
    and records the same data hashes as a run on the folders.
    """
    from moodlens.training.ferplus import load_splits, pack

    if not (data / "FER2013Train" / "label.csv").is_file():
        raise MoodlensError(f"{data}: not a FER+ root (expected FER2013Train/label.csv)")
    with progress_bar() as bar:
        splits, _, _ = load_splits(data, out.parent, log=lambda m: err_console.print(m, highlight=False),
                                   progress=_bar_progress(bar))
    size = pack(splits, out)
    out_console.print(f"packed {sum(len(s.files) for s in splits.values())} faces into {out} ({size / 2**20:.1f} MiB)")


@train_app.command("slim", epilog="""Examples:

  moodlens train slim runs/emotion/checkpoint.pt runs/emotion/slim.pt
""")
@friendly
def train_slim(
    checkpoint: Annotated[Path, typer.Argument(help="A run's checkpoint.pt.")],
    out: Annotated[Path, typer.Argument(help="Where to write the slim copy.")],
):
    """Keep a checkpoint's averaged weights, config and history: what export, --init and --teacher read.

    A third of the size (no live weights, no optimiser state: 11 MB instead of 33 for the shipped shape);
    a slim copy cannot resume training.
    """
    (slim,) = _torch_part("moodlens.training.train", "slim_checkpoint")
    if not checkpoint.is_file():
        raise MoodlensError(f"{checkpoint}: no such checkpoint")
    try:
        size = slim(checkpoint, out)
    except ValueError as e:
        raise MoodlensError(str(e)) from e
    out_console.print(f"wrote {out} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":  # pragma: no cover
    train_app()
