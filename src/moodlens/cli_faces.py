"""``moodlens faces ...`` (enrol, list, remove, search) and ``moodlens eval identity``.

Registered by ``moodlens.cli``: ``app.add_typer(faces_app, name="faces")`` and
``eval_app.command("identity")(eval_identity)``. Shared pieces come from ``cli_common``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from moodlens.cli_common import DbOpt, check_engine, err_console, friendly, out_console
from moodlens.faces.identity import DEFAULT_MATCH_THRESHOLD
from moodlens.store import DEFAULT_DB, Store

faces_app = typer.Typer(
    help="Face collections: enrol known people from photos, list, remove, search.",
    no_args_is_help=True, rich_markup_mode="markdown", pretty_exceptions_enable=False,
)

CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="Collection name (e.g. a class or a panel).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


@faces_app.command("enroll", epilog="""Examples:

  moodlens faces enroll --collection class-3b --person alice alice1.jpg alice2.jpg

  moodlens faces enroll -c class-3b --person bob photos/bob/       (every image in the folder)

  moodlens faces enroll -c panel --person chair group.jpg --largest     (take the largest face)

  moodlens faces enroll -c panel --person alice alice.jpg --engine rekognition     (IndexFaces into a Rekognition collection)
""")
@friendly
def enroll_cmd(
    images: Annotated[list[Path], typer.Argument(help="Photos or folders of photos of this one person.")],
    collection: CollectionOpt,
    person: Annotated[str, typer.Option("--person", "-p", help="The person's id, as it will appear in reports.")],
    largest: Annotated[bool, typer.Option("--largest", help="Enrol the largest face of a photo with several.")] = False,
    keep_faces: Annotated[bool, typer.Option("--keep-faces", help="Also store the aligned face as JPEG "
                                                                  "(by default only its embedding and the photo's hash).")] = False,
    db: DbOpt = DEFAULT_DB,
    as_json: JsonOpt = False,
    engine: Annotated[str, typer.Option(help="own (this database) or rekognition (IndexFaces into an existing "
                                             "Amazon Rekognition collection, ExternalImageId = person).")] = "own",
    region: Annotated[Optional[str], typer.Option(help="With --engine rekognition: the AWS region.")] = None,
):
    """Enrol photos of one person into a collection (created if new). All or nothing: a photo
    with no face, or several faces (without `--largest`), is refused and nothing is written."""
    from moodlens.collections import enroll

    check_engine(engine)
    if engine == "rekognition":
        from moodlens.engines import rekognition as rk

        done = rk.enroll(rk.RekognitionEngine(region=region), collection, person, images, largest=largest)
        if as_json:
            print(json.dumps(done, indent=2))
        for d in [] if as_json else done:
            out_console.print(f"indexed {escape(d['path'])} as {escape(person)} in Rekognition collection "
                              f"{escape(collection)} (face {d['face_id']})", highlight=False, soft_wrap=True)
        return

    results = enroll(Store(db), collection, person, images, largest=largest, keep_faces=keep_faces)
    if as_json:
        print(json.dumps([{"path": str(r.path), "person": r.person, "face_id": r.face_id, "quality": round(r.quality, 3),
                           "box": [round(v, 1) for v in r.box], "warnings": r.warnings, "skipped": r.skipped}
                          for r in results], indent=2))
        return
    for r in results:
        verb = "skipped" if r.skipped else "enrolled"
        out_console.print(f"{verb} {escape(str(r.path))} as {escape(r.person)} in {escape(collection)} "
                          f"(quality {r.quality:.2f})", highlight=False, soft_wrap=True)
        for w in r.warnings:
            err_console.print(f"[yellow]warning:[/] {escape(str(r.path))}: {escape(w)}", highlight=False,
                              soft_wrap=True)


@faces_app.command("list", epilog="""Examples:

  moodlens faces list

  moodlens faces list --collection class-3b --json
""")
@friendly
def list_cmd(
    collection: Annotated[Optional[str], typer.Option("--collection", "-c", help="Only this collection.")] = None,
    db: DbOpt = DEFAULT_DB,
    as_json: JsonOpt = False,
):
    """List enrolled people and how many photos each has."""
    from moodlens.collections import list_people

    people = list_people(Store(db), collection)
    if as_json:
        print(json.dumps([{"collection": p.collection, "person": p.person, "faces": p.faces,
                           "created_at": p.created_at.isoformat()} for p in people], indent=2))
        return
    if not people:
        out_console.print("no one enrolled" + (f" in {collection}" if collection else ""), markup=False)
        return
    table = Table()
    for col in ("collection", "person", "faces", "enrolled"):
        table.add_column(col, justify="right" if col == "faces" else "left")
    for p in people:
        table.add_row(escape(p.collection), escape(p.person), str(p.faces), p.created_at.strftime("%Y-%m-%d %H:%M"))
    out_console.print(table)


@faces_app.command("remove", epilog="""Examples:

  moodlens faces remove --collection class-3b --person alice
""")
@friendly
def remove_cmd(
    collection: CollectionOpt,
    person: Annotated[str, typer.Option("--person", "-p", help="The person's id.")],
    db: DbOpt = DEFAULT_DB,
):
    """Remove a person and every face enrolled for them."""
    from moodlens.collections import remove_person

    n = remove_person(Store(db), collection, person)
    out_console.print(f"removed {person} from {collection} ({n} face{'s' if n != 1 else ''})", highlight=False,
                      soft_wrap=True, markup=False)


@faces_app.command("search", epilog="""Examples:

  moodlens faces search snapshot.jpg --collection class-3b

  moodlens faces search group.jpg -c class-3b -k 3 --json
""")
@friendly
def search_cmd(
    image: Annotated[Path, typer.Argument(help="A photo; every face in it is searched, largest first.")],
    collection: CollectionOpt,
    k: Annotated[int, typer.Option("-k", help="Best matches to show per face.", min=1)] = 5,
    threshold: Annotated[float, typer.Option("--match-threshold", help="Score (0-100) from which a match counts.",
                                             min=0, max=100)] = DEFAULT_MATCH_THRESHOLD,
    db: DbOpt = DEFAULT_DB,
    as_json: JsonOpt = False,
):
    """Print the best-matching enrolled people, with per-pair 0-100 scores, for each face of a photo, and
    whether analyze would name it (the open-set score among all enrolled people)."""
    from moodlens.collections import search_image

    found = search_image(Store(db), image, collection, k=k)
    if as_json:
        print(json.dumps([{"box": [round(v, 1) for v in f.box],
                           "matches": [{"person": m.person, "score": round(m.score, 2),
                                        "match": m.score >= threshold} for m in f.matches],
                           "identified": None if f.identified is None or f.identified.score < threshold else
                           f.identified.person,
                           "identified_score": None if f.identified is None else round(f.identified.score, 2)}
                          for f in found], indent=2))
        return
    for i, f in enumerate(found, 1):
        x, y, w, h = f.box
        out_console.print(f"face {i} at x={x:.0f} y={y:.0f} ({w:.0f}x{h:.0f} px)", highlight=False, soft_wrap=True)
        table = Table()
        for col in ("person", "score", f"≥ {threshold:g}"):
            table.add_column(col, justify="left" if col == "person" else "right")
        for m in f.matches:
            table.add_row(escape(m.person), f"{m.score:.1f}", "match" if m.score >= threshold else "")
        out_console.print(table)
        if f.identified is not None and f.identified.score >= threshold:
            out_console.print(f"  analyze would name this face {escape(f.identified.person)} (open-set score "
                              f"{f.identified.score:.1f} among all enrolled people)", highlight=False)
        else:
            out_console.print("  no enrolled person reaches the threshold among all enrolled people "
                              f"(open-set score {f.identified.score if f.identified else 0:.1f}): unknown",
                              highlight=False)


EVAL_IDENTITY_EPILOG = """Examples:

  moodlens eval identity ../shared/data/identity/bbt --enrol 4

  moodlens eval identity ../shared/data/identity/deepface_unit --json

  moodlens eval identity people/ --enrol 1 --strangers 5     (people/<person>/*.jpg; 5 people held out)

  moodlens eval identity ../shared/data/identity/pins105 --gallery-sizes 10,50,105
"""


@friendly
def eval_identity(
    data: Annotated[Path, typer.Argument(help="Folder of person folders, or a folder with identity_clusters.csv "
                                              "(image, identity).")],
    enrol: Annotated[int, typer.Option("--enrol", help="Photos enrolled per person (the rest are probes).", min=1)] = 2,
    as_json: JsonOpt = False,
    strangers: Annotated[float, typer.Option(help="People held out as strangers: a fraction (< 1) or a count.",
                                             min=0)] = 0.25,
    repeats: Annotated[int, typer.Option(help="Random splits pooled.", min=1)] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the splits.")] = 0,
    threshold: Annotated[float, typer.Option("--match-threshold", help="Score (0-100) for stranger rejection.",
                                             min=0, max=100)] = DEFAULT_MATCH_THRESHOLD,
    gallery_sizes: Annotated[Optional[str], typer.Option(
        "--gallery-sizes", help="Also evaluate on random subsets of this many people (strangers included), "
                                "comma-separated, e.g. 10,50,105.")] = None,
):
    """Rank-1 accuracy, TAR at FAR = 1e-3 and stranger rejection of face identification on a labelled set."""
    from moodlens.evaluation.identity import evaluate_identity

    n_strangers: float | int = strangers if strangers < 1 else int(strangers)
    try:
        sizes = [int(x) for x in gallery_sizes.split(",") if x.strip()] if gallery_sizes else None
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated whole numbers, got {gallery_sizes!r}",
                                 param_hint="--gallery-sizes") from None
    report = evaluate_identity(data, enrol_k=enrol, strangers=n_strangers, seed=seed, threshold=threshold,
                               repeats=repeats, gallery_sizes=sizes)
    if as_json:
        print(json.dumps(report, indent=2))
        return
    fmt = lambda v: "n/a" if v is None or v != v else f"{v:.4f}"  # noqa: E731
    out_console.print(f"[bold]{escape(str(data))}[/] ({report['layout']}): {report['people']} people, "
                      f"{report['images']} photos"
                      f"{', ' + str(len(report['no_face'])) + ' without a face' if report['no_face'] else ''}; "
                      f"enrol {enrol}, {report['strangers_per_split']} strangers a split, {report['repeats']} splits",
                      highlight=False, soft_wrap=True)
    table = Table(title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("over", justify="right")
    table.add_row("rank-1 accuracy", fmt(report["rank1"]), f"{report['probes_known']} known probes")
    table.add_row("TAR at FAR=1e-3", fmt(report["tar_at_far_1e-3"]),
                  f"{report['genuine_pairs']} genuine / {report['impostor_pairs']} impostor pairs "
                  f"(score > {report['far_1e-3_score']:.1f})")
    table.add_row(f"stranger rejection at {threshold:g}", fmt(report["stranger_rejection"]),
                  f"{report['probes_stranger']} stranger probes")
    table.add_row(f"known accepted at {threshold:g}", fmt(report["known_accept_at_threshold"]),
                  f"{report['probes_known']} known probes")
    table.add_row(f"pairwise FMR at {threshold:g}", fmt(report["fmr_at_threshold"]), "impostor pairs")
    table.add_row(f"pairwise FNMR at {threshold:g}", fmt(report["fnmr_at_threshold"]), "genuine pairs")
    out_console.print(table)
    if report.get("sizes"):
        sizes_t = Table(title=f"by gallery size (open-set score; nearest-face pairwise score in brackets), "
                              f"threshold {threshold:g}", title_justify="left")
        for col in ("people", "strangers", "rank-1", "strangers named", "known accepted", "TAR at FAR=1e-3"):
            sizes_t.add_column(col, justify="right")
        for r in report["sizes"]:
            pw = r["pairwise"]
            sizes_t.add_row(str(r["gallery_size"]), str(r["strangers_per_split"]),
                            f"{fmt(r['rank1'])} ({fmt(pw['rank1'])})",
                            f"{fmt(r['strangers_named'])} ({fmt(pw['strangers_named'])})",
                            f"{fmt(r['known_accept_at_threshold'])} ({fmt(pw['known_accept_at_threshold'])})",
                            f"{fmt(r['template_tar_at_far_1e-3'])} ({fmt(r['tar_at_far_1e-3'])})")
        out_console.print(sizes_t)
