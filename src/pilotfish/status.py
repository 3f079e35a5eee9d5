"""`pilotfish status` and `pilotfish sessions`: what sessions are doing, from their journals.

Everything is read from `session.db` (read-only), so it works from another terminal
while the session runs. The client journals a task's progress (placed, running) only for
tasks that linger in it (50 ms): one that ends sooner goes from queued to its end.
Rendering uses `rich`, the well-kept terminal library (tables, live refresh in place).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from .journal import UnreadableJournal, connect_readonly
from .metrics import Metrics, compute_metrics, load_session
from .proctree import is_running
from .states import PILOT_LIVE_STATES


@dataclass(frozen=True)
class PilotStatus:
    uid: str
    state: str
    shape: str  # "2 x 16 cores, 4 GPUs"
    partitions: str  # "flux (2 nodes, flux), builtin (2 nodes, builtin)"


@dataclass(frozen=True)
class SessionStatus:
    uid: str
    path: str
    created: str
    client_running: bool | None  # None: its client is on another host
    closed: bool  # its client closed it
    pilots: list[PilotStatus]
    counts: dict[str, int]  # queued, scheduled, running, DONE, FAILED, CANCELED
    metrics: Metrics

    @property
    def ended(self) -> bool:
        """Nothing more will happen: it was closed, or its client is gone (or on another
        host) and its pilots ended."""
        return self.closed or (not self.client_running and all(
            p.state not in PILOT_LIVE_STATES for p in self.pilots))


def read_status(session_dir: str | Path) -> SessionStatus:
    """One session's status; `UnreadableJournal` if it has no readable journal."""
    db = connect_readonly(session_dir)
    try:
        data = load_session(db)
        info = dict(db.execute("SELECT key, value FROM session").fetchall())
        parts: dict[str, list[str]] = {}
        for pilot, name, backend, nodes in db.execute(
                "SELECT pilot, name, backend, nodes FROM partitions ORDER BY first"):
            parts.setdefault(pilot, []).append(f"{name} ({nodes} nodes, {backend})")
    finally:
        db.close()
    pilots = [PilotStatus(p.uid, p.state or "?", f"{p.nodes} x {p.cores_per_node} cores, "
                          f"{p.gpus_per_node} GPUs", ", ".join(parts.get(p.uid, [])))
              for p in data.pilots]
    states = Counter(t.state for t in data.tasks)
    counts = {"queued": states["NEW"] + states["SUBMITTED"] + states[None],
              "scheduled": states["SCHEDULED"],
              "running": states["RUNNING"] + states["READY"],  # (READY: a service, up)
              **{s: states[s] for s in ("DONE", "FAILED", "CANCELED")}}
    client = info.get("client")
    created = info.get("created")
    return SessionStatus(
        uid=info.get("uid", Path(session_dir).name), path=str(session_dir),
        created=time.strftime("%Y-%m-%d %H:%M", time.localtime(float(created)))
        if created else "?",
        client_running=is_running(client) if client else False,
        closed="closed" in info, pilots=pilots,
        counts=counts, metrics=compute_metrics(data.tasks, data.pilots, data.last_event))


def find_sessions(folder: str | Path) -> list[Path]:
    """The session directories in `folder` (those with a journal), oldest first."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted((d for d in root.iterdir() if (d / "session.db").is_file()),
                  key=lambda d: d.name)


def _state(status: SessionStatus) -> str:
    if status.ended:
        return "ended"
    if status.client_running is None:
        return "running (client on another host)"
    return "running" if status.client_running else "client gone"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}/s"


def _table(*headers: str, title: str | None = None) -> Table:
    """A table that fits 80 columns: light rules, headers and cells never wrapped."""
    table = Table(*headers, title=title, title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    for column in table.columns:
        column.no_wrap = True
    return table


def render_status(status: SessionStatus) -> Group:
    """One session: its pilots and partitions, task counts, rates and utilization."""
    head = Table.grid(padding=(0, 2))
    head.add_row("session", f"{status.uid}  ({_state(status)}, created {status.created})")
    head.add_row("path", status.path)
    pilots = _table("pilot", "state", "shape", "partitions", title="pilots")
    for p in status.pilots:
        pilots.add_row(p.uid, p.state, p.shape, p.partitions or "-")
    m, c = status.metrics, status.counts
    tasks = _table("queued", "placed", "running", "done", "failed", "canceled",
                   title="tasks")
    tasks.add_row(str(c["queued"]), str(c["scheduled"]), str(c["running"]), str(c["DONE"]),
                  str(c["FAILED"]), str(c["CANCELED"]))
    rates = (f"started {_rate(m.started_per_s)}, ended {_rate(m.completed_per_s)}; busy: "
             f"cores {_pct(m.core_utilization)}, GPUs {_pct(m.gpu_utilization)}")
    return Group(head, pilots, tasks, rates)


def render_sessions(statuses: list[SessionStatus]) -> Table:
    table = _table("session (created)", "state", "pilots", "unfinished", "done", "failed",
                   "canceled")
    for s in statuses:
        c = s.counts
        table.add_row(s.uid, _state(s), str(len(s.pilots)),
                      str(c["queued"] + c["scheduled"] + c["running"]), str(c["DONE"]),
                      str(c["FAILED"]), str(c["CANCELED"]))
    return table


def watch(session_dir: str | Path, interval: float, console: Console,
          timeout: float | None = None) -> SessionStatus:
    """Refresh one session's status in place every `interval` s until it ends (or
    `timeout` s passed); returns the last status."""
    status = read_status(session_dir)
    deadline = None if timeout is None else time.monotonic() + timeout
    with Live(render_status(status), console=console, auto_refresh=False) as live:
        while not status.ended and (deadline is None or time.monotonic() < deadline):
            time.sleep(interval)
            try:
                status = read_status(session_dir)
            except UnreadableJournal:
                continue  # (caught mid-checkpoint: read it again next time)
            live.update(render_status(status), refresh=True)
    return status
