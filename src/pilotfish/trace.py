"""`pilotfish report --trace`: a session's tasks in the Chrome trace-event format.

Perfetto (ui.perfetto.dev) and chrome://tracing open it: a process per pilot node, a
thread per core and GPU (as Ray's timeline has one per worker), each task a complete
event ("X") on every core and GPU it held (the first with its phases and outcome as
arguments, the others with its uid); counters of tasks
running and cores busy on a track of their own. Tasks without a journaled placement go
on lanes of a "(no placement)" process. Times are microseconds since the first submission.
The format: https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pilotfish.journal import connect_readonly
from pilotfish.metrics import PilotRecord, load_session
from pilotfish.timeline import TaskSpan, load_spans, session_origin

GPU_TID = 10_000  # thread ids of GPUs start here, after any node's cores
_US = 1e6


def write_trace(session_dir: str | Path, out_path: str | Path) -> Path:
    """Write one session's trace as JSON; return its path."""
    db = connect_readonly(session_dir)
    try:
        pilots, spans = load_session(db).pilots, load_spans(db)
    finally:
        db.close()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(chrome_trace(pilots, spans), separators=(",", ":")),
                   encoding="utf-8")
    return out


def chrome_trace(pilots: Sequence[PilotRecord], spans: Sequence[TaskSpan]) -> dict[str, Any]:
    """The trace as a JSON-able dict (no I/O)."""
    origin = session_origin(spans) or 0.0
    events: list[dict[str, Any]] = _process(0, "session")
    pid_of: dict[tuple[str | None, int], int] = {}
    for pilot in pilots:
        for node in range(pilot.nodes):
            pid = pid_of[(pilot.uid, node)] = len(pid_of) + 1
            events += _process(pid, f"{pilot.uid} node {node}")
            events += [_thread(pid, c, f"core {c}") for c in range(pilot.cores_per_node)]
            events += [_thread(pid, GPU_TID + g, f"gpu {g}") for g in range(pilot.gpus_per_node)]
    ran = [s for s in spans if s.start is not None]
    unplaced: list[TaskSpan] = []
    for span in ran:
        where = [(pid_of[(span.pilot, node)], cores, gpus)
                 for node, cores, gpus in span.placement if (span.pilot, node) in pid_of]
        if not where:
            unplaced.append(span)
        tracks = [(pid, tid) for pid, cores, gpus in where
                  for tid in (*cores, *(GPU_TID + g for g in gpus))]
        if tracks:  # the first event holds the task's details, the others refer to it
            first = _task(span, origin, *tracks[0])
            events.append(first)
            events += [{**first, "pid": pid, "tid": tid, "args": {"uid": span.uid}}
                       for pid, tid in tracks[1:]]
    if unplaced:
        pid = len(pid_of) + 1
        events += _process(pid, "(no placement)")
        for lane, members in enumerate(lanes(unplaced)):
            events.append(_thread(pid, lane, f"lane {lane}"))
            events += [_task(span, origin, pid, lane) for span in members]
    events += _counters(ran, origin)
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"origin_unix_s": origin, "tasks": len(spans), "started": len(ran)}}


def lanes(spans: Iterable[TaskSpan]) -> list[list[TaskSpan]]:
    """Spans packed onto as few lanes as let none overlap (first lane free, by start)."""
    out: list[list[TaskSpan]] = []
    ends: list[float] = []
    for span in sorted(spans, key=lambda s: s.start or 0.0):
        start, end = span.start or 0.0, _end(span)
        lane = next((i for i, free in enumerate(ends) if free <= start), len(ends))
        if lane == len(ends):
            out.append([])
            ends.append(end)
        out[lane].append(span)
        ends[lane] = end
    return out


def _end(span: TaskSpan) -> float:
    """Where its box ends: its processes' end, else its final state, else its start."""
    for t in (span.stop, span.final, span.start):
        if t is not None:
            return t
    return 0.0


def _task(span: TaskSpan, origin: float, pid: int, tid: int) -> dict[str, Any]:
    start = span.start or 0.0
    args: dict[str, Any] = {"uid": span.uid, "state": span.state, "kind": span.kind,
                            "partition": span.partition, "cores": span.cores,
                            "gpus": span.gpus}
    args.update({f"{phase} (s)": round(s, 6) for phase, s in span.phases().items()})
    if span.error:
        args["error"] = span.error[:500]
    return {"name": span.name or span.uid, "cat": span.kind or "task", "ph": "X",
            "ts": round((start - origin) * _US, 1),
            "dur": round(max(0.0, _end(span) - start) * _US, 1),
            "pid": pid, "tid": tid, "args": args}


def _counters(ran: Sequence[TaskSpan], origin: float) -> list[dict[str, Any]]:
    """Tasks running and cores busy, as counter events at every change."""
    changes: dict[float, list[float]] = {}
    for span in ran:
        for t, sign in ((span.start or 0.0, 1), (_end(span), -1)):
            delta = changes.setdefault(t, [0.0, 0.0])
            delta[0] += sign
            delta[1] += sign * span.cores
    out, tasks, cores = [], 0.0, 0.0
    for t in sorted(changes):
        tasks += changes[t][0]
        cores += changes[t][1]
        out.append({"name": "busy", "ph": "C", "pid": 0, "tid": 0,
                    "ts": round((t - origin) * _US, 1),
                    "args": {"tasks running": tasks, "cores busy": cores}})
    return out


def _process(pid: int, name: str) -> list[dict[str, Any]]:
    """A process's name, and its place in the list: in pid order (nodes in order)."""
    return [{"name": "process_name", "ph": "M", "pid": pid, "args": {"name": name}},
            {"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": pid}}]


def _thread(pid: int, tid: int, name: str) -> dict[str, Any]:
    return {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}
