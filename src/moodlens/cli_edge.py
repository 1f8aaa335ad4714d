"""``moodlens edge``: the camera-side agent of a live session."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from moodlens.cli_common import err_console, finite, friendly, out_console

EDGE_EPILOG = """Examples:

  moodlens edge /dev/video0 --server http://10.0.0.5:8000 --token $TOKEN --device room-1

  moodlens edge rtsp://user:pw@cam.local/stream --server http://10.0.0.5:8000 --token $TOKEN --scores-only

  moodlens edge talk.mp4 --server http://127.0.0.1:8000 --realtime --session rehearsal

  moodlens edge /dev/video0 --server http://10.0.0.5:8000 --token $TOKEN --collection panel

Crops mode (the default) sends each face as a small aligned grey crop with its box and
landmarks; --scores-only runs the emotion model here and sends numbers only. Whole
frames are never sent. Batches wait in --buffer until the server has them, so the
server may be away for minutes; run again with the same --buffer to send what is left.
The token needs the ingest role: moodlens tokens create camera-1 --role ingest
"""


def edge(
    source: Annotated[str, typer.Argument(help="A video file, a V4L2 camera (/dev/video0) or an RTSP/HTTP/HLS URL.")],
    server: Annotated[str, typer.Option(help="The moodlens server, e.g. http://10.0.0.5:8000.")],
    token: Annotated[Optional[str], typer.Option(help="An ingest token [env MOODLENS_TOKEN].",
                                                 envvar="MOODLENS_TOKEN")] = None,
    fps: Annotated[float, typer.Option(help="Frames sampled per second.", min=0.01, max=60, callback=finite)] = 2.0,
    device_id: Annotated[Optional[str], typer.Option("--device-id", help="This camera's name [default: hostname].")]
    = None,
    session: Annotated[Optional[str], typer.Option(help="The session's name [default: DEVICE-date-time; an "
                                                        "unclosed session in --buffer is resumed].")] = None,
    scores_only: Annotated[bool, typer.Option("--scores-only", help="Score emotions here; send numbers, no face "
                                                                    "images.")] = False,
    collection: Annotated[Optional[str], typer.Option(help="Name faces from this collection on the server (crops "
                                                           "mode sends a 112 px face crop for it; with --scores-only "
                                                           "a face embedding).")] = None,
    buffer: Annotated[Optional[Path], typer.Option(help="The outbox folder [default: "
                                                        "~/.local/state/moodlens/edge/DEVICE].")] = None,
    buffer_max_mb: Annotated[float, typer.Option(help="Largest outbox; past it new batches are dropped and "
                                                      "counted.", min=1, callback=finite)] = 1024,
    realtime: Annotated[bool, typer.Option("--realtime", help="Read a file at its own pace, like a camera.")] = False,
    crop_format: Annotated[str, typer.Option(help="jpeg or webp.")] = "jpeg",
    crop_quality: Annotated[int, typer.Option(help="Crop encoding quality (1-100).", min=1, max=100)] = 90,
    batch_s: Annotated[float, typer.Option(help="Seconds of video a batch holds at most (latency against "
                                               "per-request overhead).", min=0.05, max=10, callback=finite)] = 0.5,
    flush_timeout: Annotated[float, typer.Option(help="At the end or on Ctrl-C, seconds to wait for the "
                                                      "server to take the backlog.", min=0, callback=finite)] = 60.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
):
    """Send a camera's faces to a moodlens server: detect and align here, score there (or here)."""
    from moodlens.edge.agent import EdgeAgent, EdgeConfig, install_signals

    def log(msg: str) -> None:
        err_console.print(f"[dim]edge:[/] {escape(msg)}", highlight=False)

    config = EdgeConfig(source=source, server=server, token=token, fps=fps, device=device_id or os.uname().nodename,
                        session=session, scores_only=scores_only, collection=collection, buffer=buffer,
                        buffer_max_mb=buffer_max_mb, realtime=realtime, crop_format=crop_format,
                        crop_quality=crop_quality, flush_timeout_s=flush_timeout,
                        batch_interval_s=batch_s)
    agent = EdgeAgent(config, log=log)
    install_signals(agent)
    done = threading.Event()
    status_thread = None
    if err_console.is_terminal:
        status_thread = threading.Thread(target=_status_line, args=(agent, done), daemon=True)
        status_thread.start()
    try:
        summary = agent.run()
    finally:
        done.set()
        if status_thread is not None:
            status_thread.join(2)
    if json_out:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    if summary["backlog_batches"]:
        err_console.print(f"[bold yellow]warning:[/] the server did not take {summary['backlog_batches']} batch(es) "
                          f"within {flush_timeout:g} s; they stay in {escape(str(config.buffer))}: run again with "
                          "the same --buffer to send them", highlight=False)
        raise typer.Exit(3)


def _status_line(agent, done: threading.Event) -> None:
    from rich.live import Live

    with Live(console=err_console, refresh_per_second=2, transient=True) as live:
        while not done.wait(0.5):
            s = agent.status
            n, size = agent.outbox.backlog()
            live.update(f"[bold]edge[/] {escape(agent.config.device)}  frames {s.frames}  faces {s.faces}  "
                        f"sent {s.sent_batches} ({s.sent_bytes / 1e6:.2f} MB)  backlog {n} ({size / 1e6:.2f} MB)  "
                        f"server {escape(s.server)}" + ("  [yellow]flushing[/]" if s.capture_done else ""))


def _print_summary(s: dict) -> None:
    secs = max(s["source_seconds"], 1e-9)
    t = Table(title=f"edge session {escape(str(s['session']))} ({s['mode']} mode)", title_justify="left")
    t.add_column("")
    t.add_column("value", justify="right")
    t.add_row("frames sampled / faces", f"{s['frames']} / {s['faces']}")
    t.add_row("batches sent (duplicates)", f"{s['sent_batches']} ({s['duplicates']})")
    t.add_row("bytes sent", f"{s['sent_bytes']:,} ({s['sent_bytes'] * 8 / secs / 1e3:,.1f} kbit/s)")
    naive = s["naive_bytes"]
    ratio = f", {naive / s['sent_bytes']:.1f}x more" if s["sent_bytes"] and naive else ""
    t.add_row("whole frames as JPEG would be (estimated)", f"{naive:,} ({naive * 8 / secs / 1e3:,.1f} kbit/s{ratio})")
    if s["source_bitrate"]:
        t.add_row("the source's own bitrate", f"{s['source_bitrate'] / 1e3:,.1f} kbit/s")
    t.add_row("dropped (buffer full): batches / frames", f"{s['dropped_batches']} / {s['dropped_frames']}")
    t.add_row("left in the buffer", f"{s['backlog_batches']} batches ({s['backlog_bytes']:,} bytes)")
    t.add_row("CPU time / frame", f"{1000 * s['cpu_s'] / max(s['frames'], 1):.1f} ms")
    out_console.print(t)


def register(main_app: typer.Typer) -> None:
    main_app.command("edge", epilog=EDGE_EPILOG)(friendly(edge))


__all__ = ["edge", "register"]
