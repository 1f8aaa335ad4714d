"""The ``moodlens`` command: thin wrappers that parse, call the API and print."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from moodlens.cli_common import (DbOpt, EmotionModelOpt, FlipOpt, check_engine, emotion_classifier, err_console,
                                 finite, friendly, out_console, progress_bar)
from moodlens.errors import MoodlensError
from moodlens.store import DEFAULT_DB

app = typer.Typer(
    help="Offline audience-emotion analytics: per-face, per-moment emotions from video.",
    no_args_is_help=True, rich_markup_mode="markdown", pretty_exceptions_enable=False,
)
eval_app = typer.Typer(help="Measure moodlens's models on a labelled dataset.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

@app.command(epilog="""Examples:

  moodlens analyze talk.mp4

  moodlens analyze talk.mp4 --fps 4 --out results/talk --json

  moodlens analyze panel.mkv --db postgresql+psycopg://user@localhost/moodlens

  moodlens analyze screening.mp4 --collection panel --emoji-video --report

  moodlens analyze talk.mp4 --flip-tta     (each face also scored mirrored: a little more accurate)

  moodlens analyze talk.mp4 --emotion-model runs/emotion/emotion.json     (a model you trained)

  moodlens analyze lectures/ day2.mp4 --out results      (many videos: one analysis each, in results/NAME/)

  moodlens analyze event.mp4 --executor ray --ray-address auto --segment-s 60     (on a Ray cluster)

  moodlens analyze talk.mp4 --engine rekognition --dry-run     (DetectFaces calls and their cost; nothing sent)

  moodlens analyze talk.mp4 --engine rekognition --max-calls 2000     (Amazon Rekognition: pip install 'moodlens[aws]')
""")
@friendly
def analyze(
    videos: Annotated[list[Path], typer.Argument(help="Video files (mp4, mov, mkv, mpg, avi, gif, …) or folders of "
                                                      "them.", metavar="VIDEO...")],
    fps: Annotated[float, typer.Option(help="Frames sampled per second of video.", min=0.01, callback=finite)] = 2.0,
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
    check_tracks: Annotated[bool, typer.Option("--check-tracks/--no-check-tracks", help="Check with SFace that a "
                                               "face coming back after a miss is the track's person before it "
                                               "joins the track.")] = True,
    emoji_video: Annotated[bool, typer.Option("--emoji-video", help="Also write emoji.mp4 (every frame, original audio).")] = False,
    report: Annotated[bool, typer.Option("--report", help="Also write the self-contained report.html.")] = False,
    blur_unknown: Annotated[bool, typer.Option("--blur-unknown", help="In emoji.mp4, blur unknown faces instead.")] = False,
    keep_faces: Annotated[bool, typer.Option("--keep-faces", help="Put face thumbnails in report.html "
                                                                  "(off by default: faces are biometric data).")] = False,
    flip_tta: FlipOpt = False,
    emotion_model: EmotionModelOpt = None,
    executor: Annotated[str, typer.Option(help="local (this machine) or ray (a Ray cluster: "
                                               "pip install 'moodlens[ray]').")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="The Ray cluster: auto, ray://HOST:10001 [default: "
                                                            "RAY_ADDRESS, else a running local cluster, else a "
                                                            "new local Ray instance].")] = None,
    segment_s: Annotated[float, typer.Option(help="With --executor ray, seconds of video per task.", min=1,
                                             callback=finite)] = 60.0,
    ship_video: Annotated[bool, typer.Option("--ship-video", help="With --executor ray, send the video through "
                                                                  "Ray's object store (workers that do not see "
                                                                  "this machine's files).")] = False,
    engine: Annotated[str, typer.Option(help="What scores emotions: own (the shipped model, offline) or rekognition "
                                             "(Amazon Rekognition DetectFaces per face crop; detection and tracking "
                                             "stay local; AWS credentials the usual boto3 way).")] = "own",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --engine rekognition: detect faces locally and "
                                                            "print the calls, their cost and the bytes they would "
                                                            "send; call nothing.")] = False,
    max_calls: Annotated[Optional[int], typer.Option(help="With --engine rekognition: refuse to start a run that "
                                                          "needs more DetectFaces calls than this.", min=0)] = None,
    region: Annotated[Optional[str], typer.Option(help="With --engine rekognition: the AWS region "
                                                       "[default: AWS_REGION or the profile's].")] = None,
    max_in_flight: Annotated[int, typer.Option(help="With --engine rekognition: calls in flight at once.",
                                               min=1, max=64)] = 4,
):
    """Find every face in sampled frames, score its emotions, track it, store and export the records."""
    from moodlens.outputs import check_out_folder

    if executor not in ("local", "ray"):
        raise MoodlensError(f"--executor {executor!r}: local or ray")
    check_engine(engine)
    paths = expand_videos(videos)
    if engine == "rekognition":
        if executor != "local":
            raise MoodlensError("--engine rekognition runs with --executor local only, for now")
        if emotion_model or flip_tta:
            raise MoodlensError("--emotion-model and --flip-tta choose the own model; not with --engine rekognition")
        if dry_run:
            return _print_plans(paths, fps, as_json)
    elif dry_run or max_calls is not None:
        raise MoodlensError("--dry-run and --max-calls are for --engine rekognition (the own model calls nothing)")
    if out is not None:
        check_out_folder(out)  # before minutes of work, not after
    run_kw = dict(fps=fps, db=db, collection=collection, match_threshold=match_threshold, reid=reid,
                  check_tracks=check_tracks, classifier=emotion_classifier(emotion_model, flip_tta), executor=executor,
                  ray_address=ray_address, segment_s=segment_s, ship_video=ship_video)
    if engine == "rekognition":
        run_kw["engine"] = _rekognition_engine(paths, fps, max_calls, region, max_in_flight)
    write_kw = dict(emoji_video=emoji_video, report=report, blur_unknown=blur_unknown, keep_faces=keep_faces)
    if len(paths) > 1:
        return _analyze_many(paths, out, run_kw, write_kw, as_json)
    video = paths[0]
    from moodlens.pipeline import analyze as run

    if executor == "ray":
        from moodlens.executors.ray import connect
        connect(ray_address)  # a missing install or an unreachable cluster: one line, before the bar
    with progress_bar() as bar:
        task = bar.add_task(video.name, total=1.0)
        result = run(video, **run_kw,
                     progress=lambda done, total: bar.update(task, completed=min(done / total, 1.0) if total else 0))
    out = out or Path("moodlens-out") / f"{video.stem}-{result.id}"
    result.outputs = _write_analysis_outputs(result, out, db, **write_kw)
    _print_result(result, video, db, as_json)


def _print_plans(paths: list[Path], fps: float, as_json: bool) -> None:
    """``--dry-run``: per video, the DetectFaces calls, their list price and the bytes they would send."""
    from moodlens.engines.plan import plan
    from moodlens.pipeline import Options

    plans = [plan(p, fps, Options(fps=fps).detect_kwargs()) for p in paths]
    if as_json:
        print(json.dumps([p.as_dict() for p in plans], indent=2))
        return
    t = Table(title="Amazon Rekognition dry run (nothing sent)", title_justify="left")
    for c in ("video", "frames", "calls", "USD", "crops sent", "whole frames", "ratio"):
        t.add_column(c, justify="left" if c == "video" else "right")
    for p in plans:
        ratio = f"{p.frame_bytes / p.crop_bytes:.1f}x" if p.crop_bytes else "-"
        t.add_row(Path(p.video).name, str(p.frames), str(p.calls), f"{p.usd:.4f}", f"{p.crop_bytes / 1e3:.0f} kB",
                  f"{p.frame_bytes / 1e3:.0f} kB", ratio)
    out_console.print(t)
    if plans:
        out_console.print(f"at {plans[0].price_usd_per_call} USD per image: the list price of the first million "
                          f"images a month in {plans[0].price_region} (as of {plans[0].price_date}); "
                          "other regions and tiers differ", highlight=False)


def _rekognition_engine(paths: list[Path], fps: float, max_calls: int | None, region: str | None,
                        max_in_flight: int):
    """The Rekognition engine, after refusing a run over ``--max-calls`` (counted by a local dry pass)."""
    from moodlens.engines.rekognition import RekognitionEngine

    if max_calls is not None:
        from moodlens.engines.plan import plan
        from moodlens.pipeline import Options

        need = 0
        for p in paths:
            need += plan(p, fps, Options(fps=fps).detect_kwargs(), measure_bytes=False,
                         max_calls=max_calls - need).calls
            if need > max_calls:
                raise MoodlensError(f"the run needs more than --max-calls {max_calls} DetectFaces calls "
                                    f"(at least {need}); nothing was sent (see --dry-run)")
    return RekognitionEngine(region=region, max_in_flight=max_in_flight, max_calls=max_calls)


def expand_videos(items: list[Path]) -> list[Path]:
    """The videos named: files as given, folders as their video files (sorted, not recursive)."""
    from moodlens.service.watch import VIDEO_SUFFIXES

    out: list[Path] = []
    for item in items:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in VIDEO_SUFFIXES)
            if not found:
                raise MoodlensError(f"{item}: a folder with no video files ({', '.join(sorted(VIDEO_SUFFIXES))})")
            out.extend(found)
        else:
            out.append(item)
    return list(dict.fromkeys(out))


def _analyze_many(paths: list[Path], out: Path | None, run_kw: dict, write_kw: dict, as_json: bool) -> None:
    """One analysis per video: in turn on this machine, several at once on Ray (its tasks share the
    cluster). A video that fails is reported and the others go on; exit 2 if any failed."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from rich.markup import escape

    from moodlens.errors import Cancelled
    from moodlens.pipeline import analyze as run

    stop = threading.Event()
    results: dict[Path, object] = {}
    parallel = 1
    if run_kw["executor"] == "ray":
        from moodlens.executors.ray import connect
        ray = connect(run_kw["ray_address"])
        parallel = max(1, min(len(paths), int(ray.cluster_resources().get("CPU", 1))))
    stems = [p.stem for p in paths]
    with progress_bar() as bar:
        def one(video: Path):
            task = bar.add_task(video.name, total=1.0)

            def progress(done, total):
                if stop.is_set():
                    raise Cancelled("interrupted by the user")
                bar.update(task, completed=min(done / total, 1.0) if total else 0)

            try:
                result = run(video, **run_kw, progress=progress)
                name = video.stem if stems.count(video.stem) == 1 else f"{video.stem}-{result.id}"
                folder = (out / name) if out is not None else Path("moodlens-out") / f"{video.stem}-{result.id}"
                result.outputs = _write_analysis_outputs(result, folder, run_kw["db"], **write_kw)
                results[video] = result
            except MoodlensError as e:
                results[video] = e
            finally:
                bar.update(task, completed=1.0)

        pool = ThreadPoolExecutor(parallel, thread_name_prefix="moodlens-video")
        try:
            for f in [pool.submit(one, v) for v in paths]:
                f.result()
        except KeyboardInterrupt:
            stop.set()  # each analysis stops at its next frame (and cancels its Ray tasks), marked interrupted
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
    failed = [v for v in paths if isinstance(results.get(v), MoodlensError)]
    if as_json:
        print(json.dumps([{"video": str(v), "error": str(r)} if isinstance(r, MoodlensError) else
                          {"video": str(v), "analysis_id": r.id, "frames": r.frames,
                           "observations": r.n_observations, "tracks": r.n_tracks,
                           "outputs": {k: str(p) for k, p in r.outputs.items()}, "timings": r.timings}
                          for v, r in ((v, results.get(v)) for v in paths) if r is not None], indent=2, default=str))
    else:
        t = Table(title=f"{len(paths)} videos", title_justify="left")
        for c in ("video", "analysis", "frames", "observations", "tracks", "outputs / error"):
            t.add_column(c)
        for v in paths:
            r = results.get(v)
            if isinstance(r, MoodlensError) or r is None:
                t.add_row(escape(v.name), "-", "-", "-", "-", f"[red]{escape(str(r))}[/]")
            else:
                folder = next(iter(r.outputs.values())).parent if r.outputs else ""
                t.add_row(escape(v.name), str(r.id), str(r.frames), str(r.n_observations), str(r.n_tracks),
                          escape(str(folder)))
        out_console.print(t)
    if failed:
        raise MoodlensError(f"{len(failed)} of {len(paths)} videos failed: " + ", ".join(v.name for v in failed))


def _print_result(result, video: Path, db: str, as_json: bool) -> None:
    from rich.markup import escape

    summary = result.summary
    n_tracks = result.n_tracks
    if as_json:
        from moodlens.store import safe_url
        print(json.dumps({
            "analysis_id": result.id, "video": result.video, "status": result.status, "db": safe_url(db),
            "frames": result.frames,
            "observations": result.n_observations, "tracks": n_tracks,
            "outputs": {k: str(v) for k, v in result.outputs.items()}, "models": result.models,
            "timings": result.timings, "decode_gaps": result.decode_gaps, "ids": summary,
        }, indent=2, default=str))
        return
    table = Table(title=f"analysis {result.id}: {escape(video.name)}", title_justify="left")
    table.add_column("id", no_wrap=True, min_width=10)
    for col in ("seen s", "obs", "calm", "happy", "surpr", "sad", "angry", "disg", "fear", "cont"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in summary:
        table.add_row(escape(r["id"]), f"{r['seconds']:.1f}", str(r["observations"]),
                      *("-" if r[c + "_mean"] is None else f"{r[c + '_mean']:.0f}"
                        for c in ("calm", "happy", "surprised", "sad", "angry", "disgusted", "fear", "contempt")))
    if summary:
        out_console.print(table)
    else:
        out_console.print(f"analysis {result.id}: no faces found in {escape(video.name)}")
    rtf = result.timings.get("realtime_factor")
    out_console.print(f"{result.n_observations} observations, {n_tracks} tracks"
                      + (f", {rtf:.1f}x real time" if rtf else ""))
    for gap in result.decode_gaps:
        err_console.print(f"[yellow]skipped[/] {gap.get('start_s', 0):.2f}-{gap.get('end_s', 0):.2f} s: "
                          "could not be decoded", highlight=False)
    for name, p in result.outputs.items():
        out_console.print(f"  {name}: {escape(str(p))}")


def _write_analysis_outputs(result, out: Path, db: str, **what) -> dict[str, Path]:
    """Write an analysis's files; once the analysis is stored, a failure here says so and how
    to write them again, rather than ending in a traceback (exit 2, nothing in ``out`` changed)."""
    from sqlalchemy.exc import SQLAlchemyError

    from moodlens.cli_reports import write_outputs
    from moodlens.outputs import stale_outputs
    from moodlens.store import safe_url

    try:
        outputs = write_outputs(result, out, **what)
    except (MoodlensError, OSError, SQLAlchemyError) as e:
        reason = (f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror and e.filename
                  else e.strerror if isinstance(e, OSError) and e.strerror
                  else str(getattr(e, "orig", None) or e).splitlines()[0])
        db_flag = "" if db == DEFAULT_DB else f" --db '{safe_url(db)}'"
        again = [f"moodlens export {result.id} --out DIR{db_flag}"]
        if what.get("report"):
            again.append(f"moodlens report {result.id} --out DIR{db_flag}")
        if what.get("emoji_video"):
            again.append(f"moodlens render {result.id} --out DIR/emoji.mp4{db_flag}")
        raise MoodlensError(
            f"analysis {result.id} is stored and complete in {safe_url(db)}, but its files could not be written to "
            f"{out} ({reason}); nothing there was changed. Write them again with: " + " ; ".join(again)) from None
    for p in stale_outputs(out, outputs):
        err_console.print(f"note: {p} is from an earlier run (not rewritten by this one)", highlight=False,
                          markup=False)
    return outputs


@app.command(epilog="Examples:\n\n  moodlens analyses\n\n  moodlens analyses --db sqlite:///out/demo/moodlens.db")
@friendly
def analyses(db: DbOpt = DEFAULT_DB, limit: int = 20):
    """List recent analyses and their status (running, complete, failed, interrupted)."""
    from rich.markup import escape

    from moodlens.store import Store

    table = Table()
    for col in ("id", "status", "video", "frames", "observations", "started"):
        table.add_column(col)
    for a in Store(db).analyses(limit):
        table.add_row(str(a.id), a.status, escape(Path(a.video).name), str(a.frames), str(a.observations),
                      a.started_at.strftime("%Y-%m-%d %H:%M"))
    out_console.print(table)


@app.command(epilog="Examples:\n\n  moodlens export 3 --out results/3")
@friendly
def export(analysis_id: int, out: Annotated[Path, typer.Option(help="Folder to write into.")], db: DbOpt = DEFAULT_DB):
    """Write records.csv, records.jsonl and summary.csv for a complete analysis."""
    from moodlens.outputs import write_tables
    from moodlens.pipeline import load_analysis

    a = load_analysis(analysis_id, db)
    for name, p in write_tables(a, out).items():
        out_console.print(f"{name}: {p}", highlight=False, markup=False)


@eval_app.command("emotion", epilog="""Examples:

  moodlens eval emotion ../shared/data/ferplus/FER2013Valid

  moodlens eval emotion my_faces/ --json     (folders named happy/, sad/, angry/, …)

  moodlens eval emotion ../shared/data/ferplus/FER2013Valid --flip-tta     (each face averaged with its mirror)

  moodlens eval emotion my_faces/ --emotion-model runs/emotion/emotion.json     (a model you trained)

  moodlens eval emotion my_faces/ --engine rekognition --max-calls 500     (Amazon Rekognition on your faces)
""")
@friendly
def eval_emotion(
    data: Annotated[Path, typer.Argument(help="FER+ folder (label.csv with votes) or one folder per class.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    limit: Annotated[Optional[int], typer.Option(help="Score only the first N images.")] = None,
    flip_tta: FlipOpt = False,
    emotion_model: EmotionModelOpt = None,
    engine: Annotated[str, typer.Option(help="own (the shipped model) or rekognition (Amazon Rekognition "
                                             "DetectFaces, one call per image: pip install 'moodlens[aws]').")]
    = "own",
    region: Annotated[Optional[str], typer.Option(help="With --engine rekognition: the AWS region.")] = None,
    max_calls: Annotated[Optional[int], typer.Option(help="With --engine rekognition: refuse a folder that "
                                                          "needs more calls than this.", min=1)] = None,
):
    """Accuracy, per-class recall, confusion matrix and calibration error (ECE) of the emotion model;
    with FER+ votes, also the ECE against the votes (the share of annotators who chose each prediction)."""
    from moodlens.evaluation.emotion import evaluate_dataset, evaluate_engine, read_dataset

    check_engine(engine)
    with progress_bar() as bar:
        task = bar.add_task(data.name, total=None)
        if engine == "rekognition":
            from moodlens.engines.rekognition import RekognitionEngine

            n = len(read_dataset(data)[1])
            n = n if limit is None else min(limit, n)
            if max_calls is not None and n > max_calls:
                raise MoodlensError(f"{data}: {n} images need {n} DetectFaces calls, over --max-calls {max_calls}")
            rek = RekognitionEngine(region=region, max_calls=max_calls)
            try:
                report = evaluate_engine(data, rek, limit=limit,
                                         progress=lambda i, n: bar.update(task, completed=i, total=n))
            finally:
                rek.close()
        else:
            report = evaluate_dataset(data, classifier=emotion_classifier(emotion_model, flip_tta), limit=limit,
                                      progress=lambda i, n: bar.update(task, completed=i, total=n))
    if as_json:
        print(json.dumps(report, indent=2))
        return
    out_console.print(f"[bold]{report['model']}[/] on {data} ({report['layout']} layout): "
                      f"{report['n']} faces, scored over {len(report['classes'])} classes")
    out_console.print(f"accuracy {report['accuracy']:.4f}   balanced {report['balanced_accuracy']:.4f}   "
                      f"ECE {report['ece']:.4f}"
                      + (f" (against the votes {report['ece_votes']:.4f})" if "ece_votes" in report else "")
                      + (f"   flip agreement {report['flip_agreement']:.4f}" if report['flip_agreement'] ==
                         report['flip_agreement'] else "")
                      + f"   {report['ms_per_face']:.2f} ms/face")
    if "unscored" in report:
        out_console.print(f"{report['calls']} DetectFaces calls; {report['unscored']} faces got no scores "
                          f"(accuracy counting them wrong: {report['accuracy_all']:.4f}); not scored by the engine: "
                          f"{', '.join(report['left_out_classes']) or 'none'}")
    cm = Table(title="confusion (rows: true, columns: predicted)", title_justify="left")
    cm.add_column("true \\ pred")
    for c in report["classes"]:
        cm.add_column(c[:8], justify="right")
    cm.add_column("recall", justify="right")
    for c, row in zip(report["classes"], report["confusion"]):
        r = report["recall"][c]
        cm.add_row(c, *map(str, row), "-" if r is None else f"{r:.3f}")
    out_console.print(cm)


from moodlens.cli_edge import register as _register_edge  # noqa: E402
from moodlens.cli_faces import EVAL_IDENTITY_EPILOG, eval_identity, faces_app  # noqa: E402
from moodlens.cli_reports import register as _register_reports  # noqa: E402
from moodlens.cli_serve import register as _register_serve  # noqa: E402
from moodlens.cli_train import train_app  # noqa: E402

app.add_typer(faces_app, name="faces")
app.add_typer(train_app, name="train")
eval_app.command("identity", epilog=EVAL_IDENTITY_EPILOG)(eval_identity)
_register_reports(app)
_register_serve(app)
_register_edge(app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
