"""The report's pure parts: task spans, phases, rates, failures, the Chrome trace."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from pilotfish.journal import Journal
from pilotfish.metrics import PilotRecord
from pilotfish.timeline import (
    TaskSpan,
    bin_width,
    failure_reason,
    failures_by_reason,
    load_spans,
    parse_placement,
    phase_means,
    rate_series,
    runs,
    session_origin,
)
from pilotfish.trace import GPU_TID, chrome_trace, lanes, write_trace


def span(id: int, new: float | None = 0.0, scheduled: float | None = None,
         start: float | None = None, stop: float | None = None, final: float | None = None,
         state: str | None = "DONE", placement: Any = (), cores: int = 1,
         error: str | None = None, pilot: str = "p0", partition: str = "cpu") -> TaskSpan:
    return TaskSpan(id, f"task.{id:06d}", f"t{id}", "executable", pilot, partition, "builtin",
                    state, error, cores, 0.0, new, scheduled, start, stop, final,
                    tuple(placement))


def test_runs_of_consecutive_cores() -> None:
    assert runs([5, 0, 1, 2, 7, 6]) == [(0, 2), (5, 7)]
    assert runs([]) == []
    assert runs([3, 3]) == [(3, 3)]


def test_phases_need_both_ends() -> None:
    full = span(1, 0.0, 1.0, 1.5, 4.5, 4.75)
    assert full.phases() == {"queue wait": 1.0, "launch": 0.5, "run": 3.0, "end->final": 0.25}
    never_ran = span(2, 0.0, None, None, None, 2.0, state="CANCELED")
    assert never_ran.phases() == {}
    means = phase_means([full, span(3, 0.0, 3.0, 3.5, 4.0, 4.0)])
    assert means == {"queue wait": 2.0, "launch": 0.5, "run": 1.75, "end->final": 0.125}
    assert phase_means([]) == dict.fromkeys(means, 0.0)


def test_rate_series_counts_per_bin() -> None:
    # Bins [0, 1), [1, 2), [2, 3]: the last one holds t1.
    assert rate_series([0.0, 0.5, 1.2, 3.0, 7.0], 0.0, 3.0, 1.0) == [2.0, 1.0, 1.0]
    assert rate_series([0.1, 0.2], 0.0, 1.0, 0.5) == [4.0, 0.0]
    assert rate_series([], 0.0, 0.0, 1.0) == [0.0]
    assert bin_width(2.4) == 0.05 and bin_width(1000.0) == 10.0 and bin_width(0.0) == 1.0


def test_failures_group_by_the_last_line_of_the_error() -> None:
    trace = "Traceback (most recent call last):\n  File 'x', line 1\nValueError: bad input\n"
    spans = [span(1, state="FAILED", error=trace), span(2, state="FAILED", error=trace),
             span(3, state="FAILED", error="exit code 3"), span(4, state="FAILED"),
             span(5, state="DONE", error="ignored: not failed")]
    groups = failures_by_reason(spans)
    assert [(g.reason, g.tasks) for g in groups] == [
        ("ValueError: bad input", 2), ("(no reason recorded)", 1), ("exit code 3", 1)]
    assert groups[0].examples == ("task.000001", "task.000002")
    assert len(failure_reason("x" * 500)) == 120


def test_origin_is_the_first_submission() -> None:
    assert session_origin([span(1, new=5.0, start=6.0), span(2, new=None, start=4.0)]) == 4.0
    assert session_origin([]) is None


def test_load_spans_reads_columns_and_events(tmp_path: Path) -> None:
    j = Journal(tmp_path / "session.db")
    j.add_pilot("p0", "{}", 2, 4, 1, 100.0)
    j.add_partitions("p0", [("cpu", "flux", 0, 2)])
    j.add_tasks([(1, "task.000001", "p0", "a", "executable", 2, 1.0, "{}", None),
                 (2, "task.000002", "p0", "b", "function", 1, 0.0, "{}", None)])
    j.add_events([(1, "NEW", 100.0), (1, "SCHEDULED", 100.5), (1, "RUNNING", 101.0),
                  (1, "exec_stop", 103.0), (2, "NEW", 100.0)])
    j.finish_tasks([("DONE", 0, None, None, None, None, None, None, "cpu",
                     json.dumps([[1, [2, 3], [0]]]), 1)])
    j.flush()
    j.close()
    db = sqlite3.connect(tmp_path / "session.db")
    first, second = load_spans(db)
    db.close()
    assert first.placement == ((1, (2, 3), (0,)),)
    assert (first.partition, first.backend, first.state, first.cores) == ("cpu", "flux", "DONE", 2)
    assert (first.new, first.scheduled, first.start, first.stop) == (100.0, 100.5, 101.0, 103.0)
    assert second.placement == () and second.outcome == "not final" and second.final is None
    assert parse_placement(None) == ()


def test_lanes_never_overlap() -> None:
    spans = [span(1, start=0.0, stop=2.0), span(2, start=1.0, stop=3.0),
             span(3, start=2.0, stop=4.0), span(4, start=3.5, stop=4.0)]
    assert [[s.id for s in lane] for lane in lanes(spans)] == [[1, 3], [2, 4]]


def _x_events(trace: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X"]


def test_chrome_trace_has_a_track_per_node_and_core() -> None:
    pilots = [PilotRecord("p0", 2, 4, 2, 0.0, 0.5, 10.0, "DONE")]
    spans = [span(1, 0.0, 0.1, 1.0, 3.0, 3.1, placement=[(1, (2, 3), (1,))], cores=2),
             span(2, 0.0, 0.1, 2.0, 2.5, 2.6, placement=[(0, (0,), ())]),
             span(3, 0.0, 0.1, 2.0, 2.5, 2.6, state="FAILED", error="boom"),  # no placement
             span(4, 0.0, None, None, None, 1.0, state="CANCELED")]  # never ran
    trace = chrome_trace(pilots, spans)
    json.dumps(trace)  # JSON-able
    names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in trace["traceEvents"]
             if e["ph"] == "M" and e["name"] in ("process_name", "thread_name")}
    assert names[(1, None)] == "p0 node 0" and names[(2, None)] == "p0 node 1"
    assert names[(2, 3)] == "core 3" and names[(2, GPU_TID + 1)] == "gpu 1"
    assert names[(3, None)] == "(no placement)"
    xs = _x_events(trace)
    where = sorted((e["args"]["uid"], e["pid"], e["tid"]) for e in xs)
    assert where == [("task.000001", 2, 2), ("task.000001", 2, 3),
                     ("task.000001", 2, GPU_TID + 1), ("task.000002", 1, 0),
                     ("task.000003", 3, 0)]
    first = next(e for e in xs if e["args"]["uid"] == "task.000001")
    assert (first["ts"], first["dur"]) == (1e6, 2e6)  # microseconds from the first submit
    assert first["args"]["run (s)"] == 2.0
    assert next(e for e in xs if e["args"]["uid"] == "task.000003")["args"]["error"] == "boom"
    busy = [(e["ts"], e["args"]["cores busy"]) for e in trace["traceEvents"] if e["ph"] == "C"]
    assert busy == [(1e6, 2.0), (2e6, 4.0), (2.5e6, 2.0), (3e6, 0.0)]


def test_write_trace_from_a_journal(tmp_path: Path) -> None:
    from tests.unit.test_metrics import write_journal

    out = write_trace(write_journal(tmp_path / "s"), tmp_path / "out" / "trace.json")
    trace = json.loads(out.read_text())
    xs = _x_events(trace)
    assert xs and all(e["pid"] == 3 for e in xs)  # no placement journaled: lanes
    per_track: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in xs:
        per_track.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for boxes in per_track.values():
        boxes.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(boxes))


@pytest.mark.parametrize("width", [0.0, -1.0])
def test_rate_series_refuses_no_width(width: float) -> None:
    assert rate_series([1.0], 0.0, 2.0, width) == []
