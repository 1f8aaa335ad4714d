"""``moodlens serve``, ``moodlens tokens`` and ``moodlens submit``: the service and its client."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from moodlens.cli_common import err_console, friendly, out_console, progress_bar
from moodlens.errors import MoodlensError

tokens_app = typer.Typer(help="API tokens for `moodlens serve` (only their hashes are stored).",
                         no_args_is_help=True, rich_markup_mode="markdown")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


SERVE_EPILOG = """Examples:

  moodlens serve                                        (http://127.0.0.1:8000, SQLite in ./moodlens-data)

  moodlens serve --workers 2 --watch ~/incoming         (videos dropped in ~/incoming are analysed)

  moodlens tokens create alice --role admin && moodlens serve --host 0.0.0.0

  moodlens serve --db postgresql+psycopg://moodlens@db/moodlens --data-dir /srv/moodlens

The console is at /, the API's docs at /docs, Prometheus metrics at /metrics.
"""


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on; not loopback needs a token (or --insecure).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port, printed at start).", min=0, max=65535)] = 8000,
    db: Annotated[Optional[str], typer.Option("--db", help="Database URL [default: sqlite in --data-dir]")] = None,
    data_dir: Annotated[Path, typer.Option(help="Uploads and results live here.")] = Path("moodlens-data"),
    watch: Annotated[Optional[Path], typer.Option(help="Queue every video that lands in this folder.")] = None,
    workers: Annotated[int, typer.Option(help="Videos analysed at once (worker processes).", min=1, max=64)] = 1,
    max_upload_mb: Annotated[int, typer.Option(help="Largest upload accepted (MB); larger ones get 413.",
                                               min=1)] = 4096,
    grace: Annotated[float, typer.Option(help="On SIGTERM, seconds a running job may take to finish before "
                                              "it is queued again.", min=0)] = 10.0,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without tokens "
                                                              "(anyone who can reach it can do anything).")] = False,
    live_idle: Annotated[float, typer.Option(help="Close a live session (its analysis complete) after this many "
                                                  "seconds without a batch.", min=1)] = 300.0,
    executor: Annotated[str, typer.Option(help="Where jobs run: local (worker processes) or ray (their "
                                               "segments on a Ray cluster; pip install 'moodlens[ray]').")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="With --executor ray: auto, HOST:PORT or "
                                                            "ray://HOST:10001 [default: RAY_ADDRESS, else a running "
                                                            "local cluster, else a new one].")] = None,
    segment_s: Annotated[float, typer.Option(help="With --executor ray, seconds of video per task.", min=1)] = 60.0,
    ship_video: Annotated[bool, typer.Option("--ship-video", help="With --executor ray, send each video through "
                                                                  "Ray's object store (workers without a shared "
                                                                  "--data-dir).")] = False,
):
    """Run the service: upload or drop videos, jobs analyse them, a console and an API show them."""
    import uvicorn

    from moodlens.service import auth
    from moodlens.service.app import ServeConfig, create_app
    from moodlens.store import Store, safe_url

    data_dir = data_dir.expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    db = db or f"sqlite:///{(data_dir / 'moodlens.db').resolve()}"
    loopback = is_loopback(host)
    if not loopback:
        if not auth.any_tokens(Store(db)) and not insecure:
            raise MoodlensError(f"--host {host} is reachable from other machines and no token exists: create one "
                                f"first (moodlens tokens create NAME --role admin --db '{safe_url(db)}'), or pass "
                                "--insecure")
        if insecure and not auth.any_tokens(Store(db)):
            err_console.print(f"[bold yellow]warning:[/] --insecure: anyone who can reach {escape(host)}:{port} "
                              "can upload, read and delete analyses", highlight=False)
    if executor not in ("local", "ray"):
        raise MoodlensError(f"--executor {executor!r}: local or ray")
    if executor == "ray":
        from moodlens.executors.ray import connect
        connect(ray_address)  # one line now rather than a traceback from the app's start-up
        if ray_address not in (None, "local") and not ship_video:
            err_console.print("[bold yellow]note:[/] with a Ray cluster the workers read the videos, not the "
                              "database; uploads must be on a path every node sees (--data-dir), or pass --ship-video",
                              highlight=False)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _Server = _uvicorn_server()
    config = ServeConfig(db=db, data_dir=data_dir.resolve(), workers=workers, max_upload_mb=max_upload_mb,
                         watch=watch.expanduser().resolve() if watch else None, grace_s=grace, loopback=loopback,
                         insecure=insecure, live_idle_s=live_idle, executor=executor, ray_address=ray_address,
                         segment_s=segment_s, ship_video=ship_video)
    app = create_app(config)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        raise MoodlensError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    bound = sock.getsockname()[1]
    err_console.print(f"moodlens serving on http://{escape(host)}:{bound}  (console /, API docs /docs, "
                      f"metrics /metrics; database {escape(safe_url(db))})", highlight=False)
    _Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=int(grace) + 5,
                           h11_max_incomplete_event_size=64 * 1024)).run(sockets=[sock])


def _uvicorn_server():
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, except that a SIGTERM it shut down cleanly for ends with exit 0 (uvicorn re-raises
        the signal once stopped, so the process would die of it); Ctrl-C still exits 130."""

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    return Server


@tokens_app.command("create", epilog="Examples:\n\n  moodlens tokens create alice --role admin\n\n"
                                     "  moodlens tokens create camera-3 --role ingest --db sqlite:///srv/moodlens.db")
@friendly
def tokens_create(
    name: Annotated[str, typer.Argument(help="Who or what uses it (a person, a script, a camera).")],
    role: Annotated[str, typer.Option(help="admin, upload, viewer or ingest.")] = "viewer",
    db: Annotated[Optional[str], typer.Option("--db", help="The server's database [default: moodlens-data/moodlens.db]")]
    = None,
):
    """Create a token and print it once (the last line of stdout); only its hash is stored."""
    from moodlens.service.auth import create_token
    from moodlens.store import Store

    token = create_token(Store(db or _default_db()), name, role)
    err_console.print(f"token for {escape(name)} ({role}); shown once, keep it safe:", highlight=False)
    print(token)


@tokens_app.command("list", epilog="Examples:\n\n  moodlens tokens list")
@friendly
def tokens_list(db: Annotated[Optional[str], typer.Option("--db", help="The server's database.")] = None):
    """List tokens: name, role, created, last used, revoked (never the tokens themselves)."""
    from moodlens.service.auth import list_tokens
    from moodlens.store import Store

    t = Table()
    for c in ("id", "name", "role", "created", "last used", "revoked"):
        t.add_column(c)
    for r in list_tokens(Store(db or _default_db())):
        t.add_row(str(r.id), escape(r.name), r.role, r.created_at.strftime("%Y-%m-%d %H:%M"),
                  r.last_used_at.strftime("%Y-%m-%d %H:%M") if r.last_used_at else "",
                  r.revoked_at.strftime("%Y-%m-%d %H:%M") if r.revoked_at else "")
    out_console.print(t)


@tokens_app.command("revoke", epilog="Examples:\n\n  moodlens tokens revoke alice\n\n  moodlens tokens revoke 3")
@friendly
def tokens_revoke(name: Annotated[str, typer.Argument(help="A token's name or id.")],
                  db: Annotated[Optional[str], typer.Option("--db", help="The server's database.")] = None):
    """Revoke a token at once: requests with it get 401 from then on."""
    from moodlens.service.auth import revoke
    from moodlens.store import Store

    n = revoke(Store(db or _default_db()), name)
    out_console.print(f"revoked {n} token(s) named {escape(name)}")


def _default_db() -> str:
    return f"sqlite:///{(Path('moodlens-data') / 'moodlens.db').resolve()}"


SUBMIT_EPILOG = """Examples:

  moodlens submit talk.mp4 --server http://127.0.0.1:8000

  moodlens submit talk.mp4 --server https://moodlens.example --token $MOODLENS_TOKEN --wait --emoji-video
"""


def submit(
    video: Annotated[Path, typer.Argument(help="The video to upload.")],
    server: Annotated[str, typer.Option(help="The server's URL.", envvar="MOODLENS_SERVER")] = "http://127.0.0.1:8000",
    token: Annotated[Optional[str], typer.Option(help="An upload or admin token.", envvar="MOODLENS_TOKEN")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until the job ends; exit 1 if it fails.")]
    = False,
    fps: Annotated[float, typer.Option(help="Frames sampled per second of video.", min=0.01, max=60)] = 2.0,
    collection: Annotated[Optional[str], typer.Option(help="Recognise people enrolled in this collection.")] = None,
    emoji_video: Annotated[bool, typer.Option("--emoji-video", help="Also make emoji.mp4.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON when it ends (with --wait).")]
    = False,
):
    """Upload a video to a moodlens server; prints the job id (and with --wait, follows it)."""
    import httpx

    from moodlens.service.client import follow, upload

    if not video.is_file():
        raise MoodlensError(f"{video}: no such file")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    fields = {"fps": str(fps), "emoji_video": str(emoji_video).lower()} | ({"collection": collection}
                                                                            if collection else {})
    try:
        with httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=httpx.Timeout(60, read=600)) as c:
            job_id = upload(c, video, fields)
            print(job_id)
            if not wait:
                return
            with progress_bar() as bar:
                task = bar.add_task(f"job {job_id}", total=1.0)
                job = follow(c, job_id, lambda j: bar.update(task, completed=j["progress"],
                                                             description=f"job {job_id}: {j['stage'] or j['status']}"))
    except httpx.HTTPError as e:
        raise MoodlensError(f"{server}: {type(e).__name__}: {e}") from None
    if as_json:
        print(json.dumps(job, indent=2))
    else:
        err_console.print(f"job {job_id}: {job['status']}" + (f" (analysis {job['analysis_id']})"
                                                               if job.get("analysis_id") else "")
                          + (f": {job['error']}" if job.get("error") else ""), highlight=False, markup=False)
    if job["status"] != "complete":
        raise typer.Exit(1)


def register(main_app: typer.Typer) -> None:
    main_app.command("serve", epilog=SERVE_EPILOG)(friendly(serve))
    main_app.command("submit", epilog=SUBMIT_EPILOG)(friendly(submit))
    main_app.add_typer(tokens_app, name="tokens")


__all__ = ["is_loopback", "register", "serve", "submit", "tokens_app"]
