"""Where and when each task ran, read from a journal: what the HTML report and the trace draw.

`load_spans` is the one place that reads SQLite; the rest is pure (unit-tested directly):
each task's phases (queue wait, launch, run, end->final), its boxes on the pilot's cores
(from `tasks.placement`), start and completion rates over time, failures by reason.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from pilotfish.metrics import FINAL_STATES

# (pilot node index, its cores, its GPUs): one entry per node the task used.
NodePlacement = tuple[int, tuple[int, ...], tuple[int, ...]]

PHASES = ("queue wait", "launch", "run", "end->final")
PHASE_HELP = {
    "queue wait": "submitted (NEW) to placed on cores (SCHEDULED)",
    "launch": "placed to running (RUNNING): the launcher, or a free function worker",
    "run": "running to its processes or call ending (exec_stop)",
    "end->final": "ended to its final state at the client",
}


class TaskSpan(NamedTuple):
    """One task's identity, outcome, times (None: never happened) and placement."""

    id: int
    uid: str
    name: str | None
    kind: str | None
    pilot: str | None
    partition: str | None
    backend: str | None
    state: str | None
    error: str | None
    cores: int
    gpus: float
    new: float | None
    scheduled: float | None
    start: float | None
    stop: float | None
    final: float | None
    placement: tuple[NodePlacement, ...]

    @property
    def outcome(self) -> str:
        return self.state if self.state in FINAL_STATES else "not final"

    def phases(self) -> dict[str, float]:
        """Seconds in each phase that both its ends were recorded for."""
        marks = (self.new, self.scheduled, self.start, self.stop, self.final)
        return {name: b - a for name, a, b in zip(PHASES, marks[:-1], marks[1:], strict=True)
                if a is not None and b is not None and b >= a}


_TIMES_SQL = """
SELECT task,
       MIN(CASE WHEN event = 'NEW' THEN ts END),
       MIN(CASE WHEN event = 'SCHEDULED' THEN ts END),
       MIN(CASE WHEN event = 'RUNNING' THEN ts END),
       MAX(CASE WHEN event = 'exec_stop' THEN ts END),
       MAX(CASE WHEN event IN ('DONE', 'FAILED', 'CANCELED') THEN ts END)
FROM all_events GROUP BY task
"""
_TASKS_SQL = """
SELECT t.id, t.uid, t.name, t.kind, t.pilot, {partition}, {backend}, t.state, t.error,
       IFNULL(t.cores, 0), IFNULL(t.gpus, 0.0), {placement}
FROM tasks AS t {join} ORDER BY t.id
"""
_JOIN = "LEFT JOIN partitions AS p ON p.pilot = t.pilot AND p.name = t.partition"


def load_spans(db: sqlite3.Connection) -> list[TaskSpan]:
    """Every task of a journal as a `TaskSpan`: two queries, none per task. Times as the
    metrics take them (the first NEW, SCHEDULED and RUNNING, the last end and final state);
    older journals have no partition and no placement."""
    cur = db.cursor()
    cur.row_factory = None
    columns = {row[1] for row in cur.execute("PRAGMA table_info(tasks)")}
    tables = {row[0] for row in cur.execute("SELECT name FROM sqlite_master")}
    joined = "partition" in columns and "partitions" in tables
    sql = _TASKS_SQL.format(
        partition="t.partition" if "partition" in columns else "NULL",
        placement="t.placement" if "placement" in columns else "NULL",
        backend="p.backend" if joined else "NULL", join=_JOIN if joined else "")
    times = {row[0]: row[1:] for row in cur.execute(_TIMES_SQL)}
    none = (None,) * 5
    return [TaskSpan._make((*row[:-1], *times.get(row[0], none), parse_placement(row[-1])))
            for row in cur.execute(sql)]


def parse_placement(text: str | None) -> tuple[NodePlacement, ...]:
    """`tasks.placement` JSON ([[node, [cores], [gpus]], ...]) as tuples; () when absent."""
    if not text:
        return ()
    return tuple((int(node), tuple(cores), tuple(gpus)) for node, cores, gpus in json.loads(text))


def runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive runs of indices as (first, last): cores 0,1,2,5 -> (0, 2), (5, 5)."""
    out: list[tuple[int, int]] = []
    for i in sorted(set(indices)):
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def session_origin(spans: Sequence[TaskSpan]) -> float | None:
    """Time zero of the report's axes: the first submission (else the first start)."""
    firsts = [t for s in spans for t in (s.new, s.start) if t is not None]
    return min(firsts, default=None)


def rate_series(times: Iterable[float], t0: float, t1: float, width: float) -> list[float]:
    """Events per second in consecutive `width`-second bins from t0 (the last holds t1)."""
    if width <= 0 or t1 < t0:
        return []
    bins = max(1, math.ceil((t1 - t0) / width))
    counts = [0] * bins
    for t in times:
        if t0 <= t <= t1:
            counts[min(int((t - t0) / width), bins - 1)] += 1
    return [c / width for c in counts]


def bin_width(span: float, target: int = 100) -> float:
    """A round bin width (1, 2 or 5 x 10^k s) giving about `target` bins over `span`."""
    if span <= 0:
        return 1.0
    raw = span / target
    scale = 10.0 ** math.floor(math.log10(raw))
    return next(m * scale for m in (1.0, 2.0, 5.0, 10.0) if m * scale >= raw)


def failure_reason(error: str | None) -> str:
    """A failure's reason as grouped in reports: the error's last non-empty line (where a
    traceback names the exception), cut at 120 characters."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    if not lines:
        return "(no reason recorded)"
    reason = lines[-1]
    return reason if len(reason) <= 120 else reason[:117] + "..."


class Failures(NamedTuple):
    reason: str
    tasks: int
    examples: tuple[str, ...]  # a few task uids


def failures_by_reason(spans: Iterable[TaskSpan], examples: int = 3) -> list[Failures]:
    """FAILED tasks grouped by `failure_reason`, most frequent first."""
    groups: dict[str, list[str]] = {}
    for span in spans:
        if span.state == "FAILED":
            groups.setdefault(failure_reason(span.error), []).append(span.uid)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return [Failures(reason, len(uids), tuple(uids[:examples])) for reason, uids in ordered]


def phase_means(spans: Iterable[TaskSpan]) -> dict[str, float]:
    """Mean seconds per phase over the tasks that went through it (0 for none)."""
    sums = dict.fromkeys(PHASES, 0.0)
    counts = dict.fromkeys(PHASES, 0)
    for span in spans:
        for name, seconds in span.phases().items():
            sums[name] += seconds
            counts[name] += 1
    return {name: sums[name] / counts[name] if counts[name] else 0.0 for name in PHASES}
