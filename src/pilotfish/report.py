"""The text report of one session, read from its journal, and what every report gathers.

A report is what a person reads after a run: which pilots there were, the headline
metrics (see `pilotfish.metrics`), and whether the pilot was kept busy over time
(concurrency and core utilization per time bucket). The HTML report (`htmlreport`) and
the trace (`trace`) start from the same `gather`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pilotfish.journal import connect_readonly
from pilotfish.metrics import Metrics, SessionData, compute_metrics, load_session, time_series
from pilotfish.proctree import is_running

_ID_KEYS = ("id", "uid", "session_id", "sid")
_TIME_KEYS = ("created", "started", "time", "ts")


@dataclass(frozen=True)
class OverTime:
    """Per-bucket averages over the execution window [t0, t1]."""

    t0: float
    t1: float
    tasks: list[float]  # tasks executing (time-averaged within the bucket)
    utilization: list[float]  # busy cores / cores offered by live pilots, 0..1


@dataclass(frozen=True)
class SessionReport:
    """Everything a report shows, gathered once from the journal."""

    path: Path
    info: list[tuple[str, str]]
    data: SessionData
    metrics: Metrics

    @property
    def session_id(self) -> str:
        found = dict(self.info)
        return next((found[k] for k in _ID_KEYS if k in found), self.path.name)


def gather(session_dir: str | Path) -> SessionReport:
    """Read the `session` table and the metrics' inputs from one read-only connection."""
    db = connect_readonly(session_dir)
    try:
        info = [(str(k), str(v)) for k, v in db.execute(
            "SELECT key, value FROM session ORDER BY key")]
        data = load_session(db)
    finally:
        db.close()
    client = dict(info).get("client")
    if client and is_running(client) is False:  # it ended without closing the session
        data.pilots[:] = [p._replace(state=f"LOST ({p.state} when its client ended)")
                          if p.state in ("STARTING", "PENDING", "ACTIVE") else p
                          for p in data.pilots]
    metrics = compute_metrics(data.tasks, data.pilots, data.last_event)
    return SessionReport(Path(session_dir), info, data, metrics)


def over_time(data: SessionData, metrics: Metrics, buckets: int = 60) -> OverTime | None:
    """Concurrency and utilization per bucket; None without a positive execution window."""
    t0, t1 = metrics.exec_window_start, metrics.exec_window_end
    if t0 is None or t1 is None or t1 <= t0:
        return None
    ran = [(t.start, t.end, float(t.cores)) for t in data.tasks
           if t.start is not None and t.end is not None]
    lives = [(life, float(p.cores)) for p in data.pilots
             if (life := p.lifetime(data.last_event)) is not None]
    tasks = time_series([(s, e, 1.0) for s, e, _ in ran], t0, t1, buckets)
    busy = time_series(ran, t0, t1, buckets)
    offered = time_series([(a, b, cores) for (a, b), cores in lives], t0, t1, buckets)
    util = [min(1.0, b / o) if o > 0 else 0.0 for b, o in zip(busy, offered, strict=True)]
    return OverTime(t0, t1, tasks, util)


# ---- text ---------------------------------------------------------------------------


def render_report(session_dir: str | Path) -> str:
    """The whole report as plain text (fits an 80-column terminal)."""
    rep = gather(session_dir)
    out = [f"pilotfish session {rep.session_id}", ""]
    out += _table(["key", "value"], [(k, maybe_time(k, v)) for k, v in rep.info])
    out += ["", f"pilots ({len(rep.data.pilots)})"]
    out += _table(["uid", "shape", "state", "started", "ready", "stopped"], pilot_rows(rep))
    out += ["", "metrics", *rep.metrics.lines("  ")]
    series = over_time(rep.data, rep.metrics)
    if series is None:
        out += ["", "no task execution recorded: no charts"]
    else:
        span = series.t1 - series.t0
        out += ["", f"tasks executing over time ({len(series.tasks)} buckets of "
                    f"{span / len(series.tasks):.3g} s, from the first start)"]
        out += ascii_chart(series.tasks, span, height=10)
        out += ["", "core utilization over time (%, busy cores / cores of live pilots)"]
        out += ascii_chart([100.0 * u for u in series.utilization], span, height=5, top=100.0)
    return "\n".join(out) + "\n"


def ascii_chart(values: Sequence[float], span: float, height: int = 8,
                top: float | None = None) -> list[str]:
    """Column chart, one column per value; a cell is filled when the value reaches its middle."""
    top = top if top is not None else max(values, default=0.0)
    top = top if top > 0 else 1.0
    labels = {height: _short(top), (height + 1) // 2: _short(top * ((height + 1) // 2) / height)}
    width = max(len(s) for s in labels.values())
    lines = []
    for row in range(height, 0, -1):
        level = top * (row - 0.5) / height
        cells = "".join("#" if v >= level else " " for v in values)
        lines.append(f"  {labels.get(row, ''):>{width}} |{cells}".rstrip())
    lines.append(f"  {'0':>{width}} +{'-' * len(values)}")
    right = f"{span:.3g} s"
    gap = max(1, len(values) - len("0 s") - len(right))
    lines.append(f"  {'':>{width}}  0 s{' ' * gap}{right}")
    return lines


def _short(value: float) -> str:
    return f"{value:.0f}" if value >= 100 or value == int(value) else f"{value:.3g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return ["  (none)"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(f"{c!s:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]


def pilot_rows(rep: SessionReport) -> list[list[str]]:
    rows = []
    for p in rep.data.pilots:
        shape = f"{p.nodes} x {p.cores_per_node} cores"
        if p.gpus_per_node:
            shape += f", {p.gpus_per_node} GPUs/node"
        rows.append([p.uid, shape, p.state or "-", _when(p.started),
                     _offset(p.ready, p.started), _offset(p.stopped, p.started)])
    return rows


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d} UTC"


def _offset(ts: float | None, ref: float | None) -> str:
    if ts is None:
        return "-"
    return f"+{ts - ref:.3f} s" if ref is not None else _when(ts)


def maybe_time(key: str, value: str) -> str:
    """Session values that are Unix times get a readable date beside them."""
    try:
        ts = float(value)
    except ValueError:
        return value
    if key in _TIME_KEYS or 1e9 <= ts <= 1e10:
        return f"{value} ({_when(ts)})"
    return value
