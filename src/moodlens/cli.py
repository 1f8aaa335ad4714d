"""The ``moodlens`` command: thin wrappers that parse, call the API and print."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from moodlens.cli_common import DbOpt, FlipOpt, err_console, friendly, out_console, progress_bar
from moodlens.errors import MoodlensError
from moodlens.store import DEFAULT_DB

app = typer.Typer(
    help="Offline audience-emotion analytics: per-face, per-moment emotions from video.",
    no_args_is_help=True, rich_markup_mode="markdown", pretty_exceptions_enable=False,
)
eval_app = typer.Typer(help="Measure moodlens's models on a labelled dataset.", no_args_is_help=True)
train_app = typer.Typer(help="Train moodlens's own models (needs the `[train]` extra).", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.add_typer(train_app, name="train")

@app.command(epilog="""Examples:

  moodlens analyze talk.mp4

  moodlens analyze talk.mp4 --fps 4 --out results/talk --json

  moodlens analyze panel.mkv --db postgresql+psycopg://user@localhost/moodlens

  moodlens analyze screening.mp4 --collection panel --emoji-video --report

  moodlens analyze talk.mp4 --flip-tta     (each face also scored mirrored: a little more accurate)
""")
@friendly
def analyze(
    video: Annotated[Path, typer.Argument(help="Video file (mp4, mov, mkv, mpg, avi, gif, …).")],
    fps: Annotated[float, typer.Option(help="Frames sampled per second of video.", min=0.01)] = 2.0,
    out: Annotated[Optional[Path], typer.Option(help="Folder for records.csv, records.jsonl, summary.csv "
                                                     "[default: moodlens-out/<video>-<analysis id>].")] = None,
    db: DbOpt = DEFAULT_DB,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")] = False,
    collection: Annotated[Optional[str], typer.Option(help="Recognise people enrolled in this collection "
                                                           "(`moodlens faces enroll`).")] = None,
    match_threshold: Annotated[float, typer.Option(help="0-100 match score needed to name a person.",
                                                   min=0, max=100)] = 70.0,
    reid: Annotated[Optional[bool], typer.Option("--reid/--no-reid", help="Give an unknown person who leaves and "
                                                 "comes back one id (face embeddings) [default: on with --collection].")] = None,
    emoji_video: Annotated[bool, typer.Option("--emoji-video", help="Also write emoji.mp4 (every frame, original audio).")] = False,
    report: Annotated[bool, typer.Option("--report", help="Also write the self-contained report.html.")] = False,
    blur_unknown: Annotated[bool, typer.Option("--blur-unknown", help="In emoji.mp4, blur unknown faces instead.")] = False,
    keep_faces: Annotated[bool, typer.Option("--keep-faces", help="Put face thumbnails in report.html "
                                                                  "(off by default: faces are biometric data).")] = False,
    flip_tta: FlipOpt = False,
):
    """Find every face in sampled frames, score its emotions, track it, store and export the records."""
    from moodlens.cli_reports import write_outputs
    from moodlens.faces.emotion import EmotionClassifier
    from moodlens.pipeline import analyze as run
    from moodlens.reports.tables import export_tables

    with progress_bar() as bar:
        task = bar.add_task(video.name, total=1.0)
        result = run(video, fps=fps, db=db, collection=collection, match_threshold=match_threshold, reid=reid,
                     classifier=EmotionClassifier(flip=True) if flip_tta else None,
                     progress=lambda done, total: bar.update(task, completed=min(done / total, 1.0) if total else 0))
    out = out or Path("moodlens-out") / f"{video.stem}-{result.id}"
    result.outputs = export_tables(out, result.observations, result.models, fps)
    result.outputs.update(write_outputs(result, out, emoji_video=emoji_video, report=report,
                                        blur_unknown=blur_unknown, keep_faces=keep_faces))
    summary = result.summary
    if as_json:
        print(json.dumps({
            "analysis_id": result.id, "video": result.video, "status": result.status, "db": db,
            "frames": result.timings.get("frames", None) or len({o["frame"] for o in result.observations}),
            "observations": len(result.observations), "tracks": len(result.tracks),
            "outputs": {k: str(v) for k, v in result.outputs.items()}, "models": result.models,
            "timings": result.timings, "ids": summary,
        }, indent=2, default=str))
        return
    table = Table(title=f"analysis {result.id}: {video.name}", title_justify="left")
    table.add_column("id", no_wrap=True, min_width=10)
    for col in ("seen s", "obs", "calm", "happy", "surpr", "sad", "angry", "disg", "fear", "cont"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in summary:
        table.add_row(r["id"], f"{r['seconds']:.1f}", str(r["observations"]),
                      *(f"{r[c + '_mean']:.0f}" for c in ("calm", "happy", "surprised", "sad", "angry",
                                                           "disgusted", "fear", "contempt")))
    if summary:
        out_console.print(table)
    else:
        out_console.print(f"analysis {result.id}: no faces found in {video.name}")
    rtf = result.timings.get("realtime_factor")
    out_console.print(f"{len(result.observations)} observations, {len(result.tracks)} tracks"
                      + (f", {rtf:.1f}x real time" if rtf else ""))
    for name, p in result.outputs.items():
        out_console.print(f"  {name}: {p}")


@app.command(epilog="Examples:\n\n  moodlens analyses\n\n  moodlens analyses --db sqlite:///out/demo/moodlens.db")
@friendly
def analyses(db: DbOpt = DEFAULT_DB, limit: int = 20):
    """List recent analyses and their status (running, complete, failed, interrupted)."""
    from moodlens.store import Store

    table = Table()
    for col in ("id", "status", "video", "frames", "observations", "started"):
        table.add_column(col)
    for a in Store(db).analyses(limit):
        table.add_row(str(a.id), a.status, Path(a.video).name, str(a.frames), str(a.observations),
                      a.started_at.strftime("%Y-%m-%d %H:%M"))
    out_console.print(table)


@app.command(epilog="Examples:\n\n  moodlens export 3 --out results/3")
@friendly
def export(analysis_id: int, out: Annotated[Path, typer.Option(help="Folder to write into.")], db: DbOpt = DEFAULT_DB):
    """Write records.csv, records.jsonl and summary.csv for a complete analysis."""
    from moodlens.pipeline import load_analysis
    from moodlens.reports.tables import export_tables

    a = load_analysis(analysis_id, db)
    for name, p in export_tables(out, a.observations, a.models, a.params.get("fps")).items():
        out_console.print(f"{name}: {p}")


@eval_app.command("emotion", epilog="""Examples:

  moodlens eval emotion ../shared/data/ferplus/FER2013Valid

  moodlens eval emotion my_faces/ --json     (folders named happy/, sad/, angry/, …)

  moodlens eval emotion ../shared/data/ferplus/FER2013Valid --flip-tta     (each face averaged with its mirror)
""")
@friendly
def eval_emotion(
    data: Annotated[Path, typer.Argument(help="FER+ folder (label.csv with votes) or one folder per class.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    limit: Annotated[Optional[int], typer.Option(help="Score only the first N images.")] = None,
    flip_tta: FlipOpt = False,
):
    """Accuracy, per-class recall, confusion matrix and calibration error (ECE) of the emotion model;
    with FER+ votes, also the ECE against the votes (the share of annotators who chose each prediction)."""
    from moodlens.evaluation.emotion import evaluate_dataset
    from moodlens.faces.emotion import EmotionClassifier

    with progress_bar() as bar:
        task = bar.add_task(data.name, total=None)
        report = evaluate_dataset(data, classifier=EmotionClassifier(flip=True) if flip_tta else None, limit=limit,
                                  progress=lambda i, n: bar.update(task, completed=i, total=n))
    if as_json:
        print(json.dumps(report, indent=2))
        return
    out_console.print(f"[bold]{report['model']}[/] on {data} ({report['layout']} layout): "
                      f"{report['n']} faces, scored over {len(report['classes'])} classes")
    out_console.print(f"accuracy {report['accuracy']:.4f}   balanced {report['balanced_accuracy']:.4f}   "
                      f"ECE {report['ece']:.4f}"
                      + (f" (against the votes {report['ece_votes']:.4f})" if "ece_votes" in report else "")
                      + f"   flip agreement {report['flip_agreement']:.4f}   "
                      f"{report['ms_per_face']:.2f} ms/face")
    cm = Table(title="confusion (rows: true, columns: predicted)", title_justify="left")
    cm.add_column("true \\ pred")
    for c in report["classes"]:
        cm.add_column(c[:8], justify="right")
    cm.add_column("recall", justify="right")
    for c, row in zip(report["classes"], report["confusion"]):
        r = report["recall"][c]
        cm.add_row(c, *map(str, row), "-" if r is None else f"{r:.3f}")
    out_console.print(cm)


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
""")
@friendly
def train_emotion(
    data: Annotated[Path, typer.Option(help="FER+ root with FER2013Train/ and FER2013Valid/.")],
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
    online_teachers: Annotated[bool, typer.Option("--online-teachers", help="The teachers judge every augmented batch "
                                                  "the student sees (consistent targets; slower) instead of the clean "
                                                  "crops once.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda (cuda:N) or auto: a GPU when PyTorch sees one.")] = "auto",
    aug_strength: Annotated[float, typer.Option(help="Scales every augmentation's range and rate (flips excepted).")] = 1.0,
    member: Annotated[Optional[list[Path]], typer.Option(help="A finished run's checkpoint.pt: export the mean of these "
                                                               "(repeat) as one model into --out; no training.")] = None,
    precision: Annotated[str, typer.Option(help="Exported weights: int8 (calibrated on training faces; ~3x faster on "
                                                "CPUs) or float16 (stored; computed in float32).")] = "int8",
):
    """Train the FER+ emotion model (seeded, resumable), then export ONNX + model card."""
    try:
        from moodlens.training.export import PRECISIONS, export
        from moodlens.training.train import ARCHS, TrainConfig, resolve_device, train
    except ImportError as e:
        raise MoodlensError(f"training needs PyTorch: pip install -e '.[train]' ({e})") from e
    if not (data / "FER2013Train" / "label.csv").is_file():
        raise MoodlensError(f"{data}: not a FER+ root (expected FER2013Train/label.csv)")
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
        for t in (teacher or []) + ([init] if init else []):
            if not t.is_file():
                raise MoodlensError(f"{t}: no such checkpoint")
        try:
            resolve_device(device)  # fail now, not after the data is prepared
        except ValueError as e:
            raise MoodlensError(str(e)) from e
        if arch not in ARCHS:
            raise MoodlensError(f"--arch {arch}: expected one of {', '.join(ARCHS)}")
        train(data, out, TrainConfig(epochs=epochs, seed=seed, lr=lr, init=str(init) if init else None, **shape,
                                     arch=arch, size=size,
                                     device=device, aug_strength=aug_strength,
                                     teachers=tuple(map(str, teacher or ())), teacher_weight=teacher_weight,
                                     online_teachers=online_teachers), log=log)
    try:
        card = export(out, data, log=log, precision=precision, members=member)
    except ValueError as e:
        raise MoodlensError(str(e)) from e
    out_console.print(f"exported {card}")


from moodlens.cli_faces import EVAL_IDENTITY_EPILOG, eval_identity, faces_app  # noqa: E402
from moodlens.cli_reports import register as _register_reports  # noqa: E402

app.add_typer(faces_app, name="faces")
eval_app.command("identity", epilog=EVAL_IDENTITY_EPILOG)(eval_identity)
_register_reports(app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
