"""What every ``moodlens`` sub-command shares: consoles, the error wrapper, the progress bar."""

from __future__ import annotations

import functools
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from moodlens.errors import MoodlensError

out_console = Console()
err_console = Console(stderr=True)

DbOpt = Annotated[str, typer.Option("--db", help="Database URL: SQLite file (default) or postgresql+psycopg://…")]
FlipOpt = Annotated[bool, typer.Option("--flip-tta", help="Average each face's emotions with its mirror image's: "
                                                          "a little more accurate, twice the emotion model's time.")]


def friendly(fn):
    """Print a MoodlensError as one line on stderr and exit 2: no traceback for bad input."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MoodlensError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None
    return wrapper


def progress_bar() -> Progress:
    """A Rich bar on a terminal; silent when stderr is piped or redirected."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                    disable=not err_console.is_terminal, transient=True)
