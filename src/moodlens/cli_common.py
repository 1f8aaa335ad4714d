"""What every ``moodlens`` sub-command shares: consoles, the error wrapper, the progress bar."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from moodlens.errors import MoodlensError

out_console = Console()
err_console = Console(stderr=True)

DbOpt = Annotated[str, typer.Option("--db", help="Database URL: SQLite file (default) or postgresql+psycopg://…")]
EmotionModelOpt = Annotated[Optional[Path], typer.Option(
    "--emotion-model", help="A model card (emotion.json, beside its emotion.onnx) written by `moodlens train emotion`, "
                            "used instead of the shipped model; its version is what the records name.")]
FlipOpt = Annotated[bool, typer.Option("--flip-tta", help="Average each face's emotions with its mirror image's: "
                                                          "a little more accurate, twice the emotion model's time.")]


def check_engine(name: str) -> None:
    """Refuse an ``--engine`` moodlens does not have, in one line."""
    from moodlens.engines import ENGINES

    if name not in ENGINES:
        raise MoodlensError(f"--engine {name!r}: {' or '.join(ENGINES)}")


def finite(value: float | None) -> float | None:
    """Typer callback for float options: refuse inf and nan, which click's ranges let through."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def _error_line(e: BaseException) -> str:
    """The environment's errors that no command foresaw (a full disk, a database that went
    away) as one line: what failed and where."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    text = " ".join(str(getattr(e, "orig", None) or e).split())
    return f"{'database error: ' if type(e).__module__.startswith('sqlalchemy') else ''}{text[:500]}"


def friendly(fn):
    """Print a MoodlensError as one line on stderr and exit 2: no traceback for bad input.

    OSError and SQLAlchemy's errors (the disk, the database) get one line too."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MoodlensError as e:
            # the message is text, not markup: a person's name like "[bold red]x[/]" prints as written
            err_console.print(Text.assemble(("error:", "bold red"), " ", str(e)), highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None
        except Exception as e:
            # SQLAlchemy is matched by module so that commands which never load it (train) stay light
            if not (isinstance(e, OSError) or type(e).__module__.startswith("sqlalchemy")):
                raise
            err_console.print(Text.assemble(("error:", "bold red"), " ", _error_line(e)), highlight=False,
                              soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


def progress_bar() -> Progress:
    """A Rich bar on a terminal; silent when stderr is piped or redirected."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                    disable=not err_console.is_terminal, transient=True)


def emotion_classifier(card: Path | None, flip: bool):
    """The emotion classifier a command asked for; None for the shipped model as it is."""
    if card is None and not flip:
        return None
    from moodlens.faces.emotion import EmotionClassifier
    from moodlens.models import ModelCard

    try:
        return EmotionClassifier(ModelCard.load(card) if card else None, flip=flip)
    except ValueError as e:  # a card whose classes are not the FER+ eight
        raise MoodlensError(str(e)) from e
