"""A one-line progress bar for a session's tasks (the CLI's and the simulator's)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .session import Session


def wait_with_progress(session: Session, total: int, started: float, stream: TextIO) -> None:
    """Redraw a one-line progress bar until every task is final (waits, never sleeps).

    On a terminal the line is redrawn five times a second; otherwise (a log file) a new
    line is written every five seconds.
    """
    width = 30
    tty = stream.isatty()
    while True:
        finished = session.wait(timeout=0.2 if tty else 5.0)
        done = total - session.outstanding
        filled = int(width * done / total) if total else width
        rate = done / max(time.monotonic() - started, 1e-9)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} tasks  {rate:,.0f}/s"
        if tty:
            print("\r" + line, end="\n" if finished else "", file=stream, flush=True)
        else:
            print(line, file=stream, flush=True)
        if finished:
            return
