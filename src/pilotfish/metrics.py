"""Throughput, utilization, makespan and overheads computed from a session's journal.

The definitions are the ones in DESIGN.md ("Metrics"), so every benchmark and report
agrees on them. The math lives in pure functions over plain lists (unit-tested directly);
`load_session` is the only place that talks to SQLite, with one query per table, so a
100,000-task journal loads in well under a second.

Per task: submit = ts of `NEW`, start = ts of `RUNNING`, end = ts of `exec_stop`,
final = ts of the final-state event (`DONE`, `FAILED` or `CANCELED`).
"""

from __future__ import annotations

import dataclasses
import math
import sqlite3
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pilotfish.journal import connect_readonly

FINAL_STATES = ("DONE", "FAILED", "CANCELED")



class TaskRecord(NamedTuple):
    """One task with the event times the metrics need (None: event never happened)."""

    id: int
    pilot: str | None
    kind: str | None
    cores: int
    gpus: float
    state: str | None
    submit: float | None
    start: float | None
    end: float | None
    final: float | None
    partition: str | None = None
    backend: str | None = None  # of its partition


class PilotRecord(NamedTuple):
    """One pilot's shape and times (Unix seconds; None: not reached or not recorded)."""

    uid: str
    nodes: int
    cores_per_node: int
    gpus_per_node: int
    started: float | None
    ready: float | None
    stopped: float | None
    state: str | None
    backend: str | None = None  # a partition's (partition records only)

    @property
    def cores(self) -> int:
        return self.nodes * self.cores_per_node

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def lifetime(self, last_event: float | None) -> tuple[float, float] | None:
        """`ready` (else `started`) to `stopped` (else the journal's last event)."""
        begin = self.ready if self.ready is not None else self.started
        end = self.stopped if self.stopped is not None else last_event
        if begin is None or end is None or end <= begin:
            return None
        return begin, end


@dataclass(frozen=True)
class SessionData:
    """Everything the metrics read from one journal, as plain Python objects."""

    tasks: list[TaskRecord]
    pilots: list[PilotRecord]
    last_event: float | None
    # Each pilot's partitions as pilots of their own (their nodes, its node shape and
    # times), named by partition: what `by="partition"` offers each group.
    partitions: list[PilotRecord] = field(default_factory=list)



@dataclass(frozen=True)
class LatencyStats:
    """Distribution of one per-task latency, in seconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float


@dataclass(frozen=True)
class Metrics:
    """Metrics of one set of tasks. Utilizations are fractions (0..1); times in seconds.

    `started_per_s` is the throughput: tasks started per second from first to last start.
    The `peak_*` rates are the most events inside any `peak_window_s` window, per second,
    and never below the average (docs/metrics.md).
    `groups` holds the same metrics per group when computed with `by=...`.
    """

    n_tasks: int
    n_done: int
    n_failed: int
    n_canceled: int
    n_not_final: int
    n_started: int
    started_per_s: float | None
    peak_started_per_s: float | None
    completed_per_s: float | None
    peak_completed_per_s: float | None
    peak_window_s: float
    exec_window_start: float | None
    exec_window_end: float | None
    core_seconds: float
    gpu_seconds: float
    offered_cores: int
    offered_gpus: int
    core_utilization: float | None
    gpu_utilization: float | None
    core_utilization_lifetime: float | None
    gpu_utilization_lifetime: float | None
    backlog_window_end: float | None  # the last task start
    core_utilization_backlog: float | None  # first to last start: while tasks waited
    gpu_utilization_backlog: float | None
    makespan_s: float | None
    submit_to_start: LatencyStats | None
    end_to_final: LatencyStats | None
    group_by: str | None = None
    groups: dict[str, Metrics] = field(default_factory=dict, hash=False)

    @property
    def exec_window_s(self) -> float | None:
        if self.exec_window_start is None or self.exec_window_end is None:
            return None
        return self.exec_window_end - self.exec_window_start

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (nested dataclasses become dicts)."""
        out = dataclasses.asdict(self)
        out["exec_window_s"] = self.exec_window_s
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def rows(self) -> list[tuple[str, str]]:
        """(label, value with unit) pairs: the text and HTML reports both use these."""
        window = self.exec_window_s
        return [
            ("tasks", f"{self.n_tasks}  (done {self.n_done}, failed {self.n_failed}, "
                      f"canceled {self.n_canceled}, not final {self.n_not_final}, "
                      f"started {self.n_started})"),
            ("throughput", f"{_num(self.started_per_s)} tasks/s  "
                           "(tasks started per second, first to last start)"),
            ("peak throughput", f"{_num(self.peak_started_per_s)} tasks/s  (most tasks "
                                f"started in any {self.peak_window_s:g} s window, at "
                                "least the average)"),
            ("completion rate", f"{_num(self.completed_per_s)} tasks/s  "
                                "(final states per second, first to last)"),
            ("peak completion rate", f"{_num(self.peak_completed_per_s)} tasks/s  "
                                     f"(in any {self.peak_window_s:g} s window)"),
            ("core utilization", f"{_pct(self.core_utilization)}  (execution window "
                                 f"{_num(window, 3)} s, {self.offered_cores} cores offered)"),
            ("gpu utilization", f"{_pct(self.gpu_utilization)}  "
                                f"({self.offered_gpus} GPUs offered)"),
            ("core util. (pilot life)", _pct(self.core_utilization_lifetime)),
            ("gpu util. (pilot life)", _pct(self.gpu_utilization_lifetime)),
            ("core util. (backlog)", f"{_pct(self.core_utilization_backlog)}  (first to last "
                                     "start: while tasks were waiting)"),
            ("gpu util. (backlog)", _pct(self.gpu_utilization_backlog)),
            ("makespan", f"{_num(self.makespan_s, 3)} s  (first submit to last final state)"),
            ("submit->start", _latency(self.submit_to_start)),
            ("end->final", _latency(self.end_to_final)),
        ]

    def lines(self, indent: str = "") -> list[str]:
        """The human-readable form: aligned `label  value` lines, then each group indented."""
        rows = self.rows()
        width = max(len(label) for label, _ in rows)
        out = [f"{indent}{label:<{width}}  {value}" for label, value in rows]
        for key, sub in self.groups.items():
            out.append(f"{indent}[{self.group_by} = {key}]")
            out.extend(sub.lines(indent + "    "))
        return out


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f} %"


def _latency(stats: LatencyStats | None) -> str:
    if stats is None:
        return "n/a"
    parts = (("p50", stats.p50), ("p90", stats.p90), ("p99", stats.p99),
             ("max", stats.max), ("mean", stats.mean))
    return "  ".join(f"{name} {1000.0 * v:.1f}" for name, v in parts) + f" ms  (n={stats.count})"



def mean_rate(times: Sequence[float]) -> float | None:
    """Events per second from the first to the last event; None for <2 events or no span."""
    if len(times) < 2:
        return None
    span = max(times) - min(times)
    return len(times) / span if span > 0 else None


def peak_rate(times: Sequence[float], window: float = 1.0) -> float | None:
    """Most events inside any half-open window [t, t + window), divided by `window`."""
    if window <= 0:
        raise ValueError("window must be positive")
    if not times:
        return None
    ordered = sorted(times)
    # Some best window starts at an event: count events in [t, t + window) for each t.
    best = max(bisect_left(ordered, t + window, i) - i for i, t in enumerate(ordered))
    return best / window


def _peak(times: Sequence[float], window: float) -> float | None:
    """The peak rate as reported: the densest `window`, but never below the average (a
    run shorter than the window, a burst split by the window's edges): a peak under the
    mean would read as a contradiction."""
    peak, mean = peak_rate(times, window), mean_rate(times)
    return peak if mean is None or peak is None else max(peak, mean)


def quantile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, linear between closest ranks (numpy's default)."""
    if not ordered:
        raise ValueError("quantile of no values")
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_stats(values: Iterable[float]) -> LatencyStats | None:
    """p50/p90/p99/max/mean of a latency sample; None when there is none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return LatencyStats(count=len(ordered), mean=math.fsum(ordered) / len(ordered),
                        p50=quantile(ordered, 0.50), p90=quantile(ordered, 0.90),
                        p99=quantile(ordered, 0.99), max=ordered[-1])


def busy_seconds(intervals: Iterable[tuple[float, float, float]],
                 lo: float = -math.inf, hi: float = math.inf) -> float:
    """Sum of amount * duration over (start, end, amount) intervals, clipped to [lo, hi]."""
    if lo == -math.inf and hi == math.inf:
        return math.fsum([amount * (end - start) for start, end, amount in intervals
                          if end > start])
    parts = []
    for start, end, amount in intervals:
        if start < lo:
            start = lo
        if end > hi:
            end = hi
        if end > start:
            parts.append(amount * (end - start))
    return math.fsum(parts)


def ratio(used: float, offered: float) -> float | None:
    """used / offered, or None when nothing was offered."""
    return used / offered if offered > 0 else None


def time_series(intervals: Iterable[tuple[float, float, float]], t0: float, t1: float,
                buckets: int = 60) -> list[float]:
    """Time-averaged sum of `amount` over the intervals, in `buckets` equal slices of [t0, t1].

    With amount 1 this is the number of tasks executing; with amount = cores, busy cores.
    """
    if buckets <= 0 or t1 <= t0:
        return []
    width = (t1 - t0) / buckets
    area = [0.0] * buckets
    full = [0.0] * (buckets + 1)  # difference array for buckets an interval covers whole
    for start, end, amount in intervals:
        start, end = max(start, t0), min(end, t1)
        if end <= start:
            continue
        first = min(int((start - t0) / width), buckets - 1)
        last = min(int((end - t0) / width), buckets - 1)
        if first == last:
            area[first] += amount * (end - start)
            continue
        area[first] += amount * (t0 + (first + 1) * width - start)
        area[last] += amount * (end - (t0 + last * width))
        full[first + 1] += amount
        full[last] -= amount
    running, out = 0.0, []
    for i in range(buckets):
        running += full[i]
        out.append(running + area[i] / width)
    return out


def compute_metrics(tasks: Sequence[TaskRecord], pilots: Sequence[PilotRecord],
                    last_event: float | None, peak_window: float = 1.0) -> Metrics:
    """All metrics of `tasks`, offered capacity from `pilots` (no I/O)."""
    states = [t.state for t in tasks]
    starts = [t.start for t in tasks if t.start is not None]
    finals = [t.final for t in tasks if t.final is not None]
    submits = [t.submit for t in tasks if t.submit is not None]
    ran = [(t.start, t.end, t.cores, t.gpus) for t in tasks
           if t.start is not None and t.end is not None]
    core_iv = [(start, end, float(cores)) for start, end, cores, _ in ran]
    gpu_iv = [(start, end, float(gpus)) for start, end, _, gpus in ran]
    core_s, gpu_s = busy_seconds(core_iv), busy_seconds(gpu_iv)

    w0 = min((start for start, _, _, _ in ran), default=None)
    w1 = max((end for _, end, _, _ in ran), default=None)
    offered_cores = offered_gpus = 0
    core_u = gpu_u = None
    if w0 is not None and w1 is not None:
        overlapping = [p for p in pilots if _overlaps(p.lifetime(last_event), w0, w1)]
        offered_cores = sum(p.cores for p in overlapping)
        offered_gpus = sum(p.gpus for p in overlapping)
        if w1 > w0:
            core_u = ratio(core_s, offered_cores * (w1 - w0))
            gpu_u = ratio(gpu_s, offered_gpus * (w1 - w0))

    lives = [(p, life) for p in pilots if (life := p.lifetime(last_event)) is not None]
    core_life = gpu_life = None
    if lives:
        lo = min(life[0] for _, life in lives)
        hi = max(life[1] for _, life in lives)
        inside = w0 is not None and w1 is not None and lo <= w0 and w1 <= hi  # no clipping
        core_life = ratio(core_s if inside else busy_seconds(core_iv, lo, hi),
                          sum(p.cores * (b - a) for p, (a, b) in lives))
        gpu_life = ratio(gpu_s if inside else busy_seconds(gpu_iv, lo, hi),
                         sum(p.gpus * (b - a) for p, (a, b) in lives))

    last_start = max(starts, default=None)
    core_b = gpu_b = None
    if w0 is not None and last_start is not None and last_start > w0:
        core_b = ratio(busy_seconds(core_iv, w0, last_start), offered_cores * (last_start - w0))
        gpu_b = ratio(busy_seconds(gpu_iv, w0, last_start), offered_gpus * (last_start - w0))

    makespan = max(finals) - min(submits) if finals and submits else None
    return Metrics(
        n_tasks=len(tasks), n_done=states.count("DONE"), n_failed=states.count("FAILED"),
        n_canceled=states.count("CANCELED"),
        n_not_final=sum(1 for s in states if s not in FINAL_STATES), n_started=len(starts),
        started_per_s=mean_rate(starts), peak_started_per_s=_peak(starts, peak_window),
        completed_per_s=mean_rate(finals), peak_completed_per_s=_peak(finals, peak_window),
        peak_window_s=peak_window, exec_window_start=w0, exec_window_end=w1,
        core_seconds=core_s, gpu_seconds=gpu_s,
        offered_cores=offered_cores, offered_gpus=offered_gpus,
        core_utilization=core_u, gpu_utilization=gpu_u,
        core_utilization_lifetime=core_life, gpu_utilization_lifetime=gpu_life,
        backlog_window_end=last_start, core_utilization_backlog=core_b,
        gpu_utilization_backlog=gpu_b,
        makespan_s=makespan,
        submit_to_start=latency_stats(
            t.start - t.submit for t in tasks if t.start is not None and t.submit is not None),
        end_to_final=latency_stats(
            t.final - t.end for t in tasks if t.final is not None and t.end is not None),
    )


def _overlaps(life: tuple[float, float] | None, lo: float, hi: float) -> bool:
    """Whether a pilot's life shares time with [lo, hi] (a point window: contains it)."""
    if life is None:
        return False
    if hi <= lo:
        return life[0] <= lo <= life[1]
    return life[0] < hi and life[1] > lo



@dataclass(frozen=True)
class Grouping:
    """How to split a session: a key per task and, optionally, per pilot.

    With `pilot_key`, a group is offered only the pilots whose key equals the group's
    (by pilot: the pilot itself); without it, every pilot of the session.
    """

    task_key: Callable[[TaskRecord], str | None]
    pilot_key: Callable[[PilotRecord], str | None] | None = None
    by_partition: bool = False  # offer the partitions' capacity, not the pilots'


GROUPINGS: dict[str, Grouping] = {
    "pilot": Grouping(task_key=lambda t: t.pilot, pilot_key=lambda p: p.uid),
    "kind": Grouping(task_key=lambda t: t.kind),
    "partition": Grouping(task_key=lambda t: t.partition, pilot_key=lambda p: p.uid,
                          by_partition=True),
    "backend": Grouping(task_key=lambda t: t.backend, pilot_key=lambda p: p.backend,
                        by_partition=True),
}

NO_KEY = "(none)"


def grouped_metrics(data: SessionData, by: str, peak_window: float = 1.0
                    ) -> dict[str, Metrics]:
    """Metrics per group of `GROUPINGS[by]`, in key order."""
    try:
        grouping = GROUPINGS[by]
    except KeyError:
        raise ValueError(f"unknown grouping {by!r}; known: {sorted(GROUPINGS)}") from None
    groups: dict[str, list[TaskRecord]] = {}
    for task in data.tasks:
        groups.setdefault(grouping.task_key(task) or NO_KEY, []).append(task)
    out = {}
    for key in sorted(groups):
        pilots = data.partitions if grouping.by_partition else data.pilots
        if grouping.pilot_key is not None:
            pick = grouping.pilot_key
            pilots = [p for p in pilots if (pick(p) or NO_KEY) == key]
        out[key] = compute_metrics(groups[key], pilots, data.last_event, peak_window)
    return out


_EVENTS_SQL = """
SELECT task,
       MIN(CASE WHEN event = 'NEW' THEN ts END),
       MIN(CASE WHEN event = 'RUNNING' THEN ts END),
       MAX(CASE WHEN event = 'exec_stop' THEN ts END),
       MAX(CASE WHEN event IN ('DONE', 'FAILED', 'CANCELED') THEN ts END),
       MAX(ts)
FROM all_events GROUP BY task
"""


def load_session(db: sqlite3.Connection) -> SessionData:
    """Read pilots, tasks and their key event times: one query per table, no per-task query.

    A repeated event keeps the earliest NEW/RUNNING and the latest exec_stop/final state.
    """
    cur = db.cursor()
    cur.row_factory = None  # plain tuples: much faster than sqlite3.Row for 100k rows
    times: dict[int, tuple[float | None, float | None, float | None, float | None]] = {}
    last_event: float | None = None
    for task, submit, start, end, final, latest in cur.execute(_EVENTS_SQL):
        times[task] = (submit, start, end, final)
        if last_event is None or latest > last_event:
            last_event = latest
    none4 = (None, None, None, None)
    columns = {row[1] for row in cur.execute("PRAGMA table_info(tasks)")}
    partition = "partition" if "partition" in columns else "NULL"  # older journals: none
    tables = {row[0] for row in cur.execute("SELECT name FROM sqlite_master")}
    rows = [] if "partitions" not in tables else list(cur.execute(
        "SELECT pilot, name, backend, nodes FROM partitions"))
    backend_of = {(pilot, name): backend for pilot, name, backend, _ in rows}
    tasks = [TaskRecord(tid, pilot, kind, cores, gpus, state, *times.get(tid, none4), part,
                        backend_of.get((pilot, part)))
             for tid, pilot, kind, cores, gpus, state, part in cur.execute(
                 "SELECT id, pilot, kind, IFNULL(cores, 0), IFNULL(gpus, 0.0), state,"
                 f" {partition} FROM tasks ORDER BY id")]
    pilots = [PilotRecord(*row) for row in cur.execute(
        "SELECT uid, IFNULL(nodes, 0), IFNULL(cores_per_node, 0), IFNULL(gpus_per_node, 0),"
        " started, ready, stopped, state FROM pilots ORDER BY started, uid")]
    by_uid = {p.uid: p for p in pilots}
    partitions = [by_uid[pilot]._replace(uid=name, nodes=nodes, backend=backend)
                  for pilot, name, backend, nodes in rows if pilot in by_uid]
    return SessionData(tasks=tasks, pilots=pilots, last_event=last_event,
                       partitions=partitions)


def load(source: str | Path | sqlite3.Connection) -> SessionData:
    """`load_session` from a session dir, a session.db path, or an open connection."""
    if isinstance(source, sqlite3.Connection):
        return load_session(source)
    db = connect_readonly(source)
    try:
        return load_session(db)
    finally:
        db.close()


def session_metrics(source: str | Path | sqlite3.Connection, by: str | None = None,
                    peak_window: float = 1.0) -> Metrics:
    """Metrics of a whole session; with `by` ("pilot", "kind", "partition", "backend"),
    also per group in `.groups`."""
    data = load(source)
    whole = compute_metrics(data.tasks, data.pilots, data.last_event, peak_window)
    if by is None:
        return whole
    return dataclasses.replace(whole, group_by=by,
                               groups=grouped_metrics(data, by, peak_window))

