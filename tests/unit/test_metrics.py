"""Metrics and reports: pure math with hand-computed values, then journal end to end."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from pilotfish.journal import Journal, connect_readonly
from pilotfish.metrics import (
    PilotRecord,
    TaskRecord,
    busy_seconds,
    compute_metrics,
    latency_stats,
    load_session,
    mean_rate,
    peak_rate,
    quantile,
    session_metrics,
    time_series,
)
from pilotfish.report import ascii_chart, render_report

T0 = 1_700_000_000.0  # realistic Unix times in the journal tests


def task(tid: int, submit: float | None, start: float | None, end: float | None,
         final: float | None, state: str = "DONE", cores: int = 1, gpus: float = 0.0,
         pilot: str | None = "p0", kind: str = "exe") -> TaskRecord:
    return TaskRecord(tid, pilot, kind, cores, gpus, state, submit, start, end, final)


def pilot(uid: str = "p0", nodes: int = 1, cores: int = 2, gpus: int = 0,
          started: float | None = 0.0, ready: float | None = 10.0,
          stopped: float | None = 30.0) -> PilotRecord:
    return PilotRecord(uid, nodes, cores, gpus, started, ready, stopped, "DONE")


# Four 1-core tasks on one 2-core pilot (ready 10, stopped 30), by hand:
#   t1 runs 10-14, t2 10-12, t3 12-18, t4 14-20: 4+2+6+6 = 18 core-seconds.
#   Execution window 10-20 offers 2 cores x 10 s = 20 -> 90 %; lifetime 2 x 20 s -> 45 %.
# Plus one task that failed before running, one canceled in the queue, one never final.
SCENARIO = [
    task(1, 9.0, 10.0, 14.0, 14.5),
    task(2, 9.0, 10.0, 12.0, 12.5),
    task(3, 9.0, 12.0, 18.0, 18.5),
    task(4, 9.0, 14.0, 20.0, 21.0),
    task(5, 9.0, None, None, 9.5, state="FAILED"),
    task(6, 9.0, None, None, 15.0, state="CANCELED"),
    task(7, 9.0, None, None, None, state="NEW"),
]


# ---- pure functions -------------------------------------------------------------------


def test_mean_rate_needs_two_events_and_a_span() -> None:
    assert mean_rate([]) is None
    assert mean_rate([5.0]) is None
    assert mean_rate([3.0, 3.0]) is None
    assert mean_rate([10.0, 14.0, 10.0, 12.0]) == pytest.approx(1.0)  # 4 starts over 4 s


def test_peak_rate_sliding_window_is_half_open() -> None:
    assert peak_rate([]) is None
    assert peak_rate([7.0]) == 1.0
    assert peak_rate([0.0, 1.0, 2.0], window=1.0) == 1.0  # exactly W apart: never together
    assert peak_rate([0.0, 0.999, 1.0], window=1.0) == 2.0
    assert peak_rate([12.0, 10.0, 14.0, 10.0], window=1.0) == 2.0  # unsorted input
    assert peak_rate([10.0, 10.0, 12.0, 14.0], window=5.0) == pytest.approx(4 / 5)
    # The densest window is in the middle, not at either end.
    burst = [0.0, 5.0, 5.1, 5.2, 5.3, 9.0]
    assert peak_rate(burst, window=0.5) == pytest.approx(4 / 0.5)
    with pytest.raises(ValueError):
        peak_rate([1.0], window=0.0)


def test_quantile_interpolates_between_ranks() -> None:
    xs = [1.0, 1.0, 3.0, 5.0]
    assert quantile(xs, 0.5) == pytest.approx(2.0)
    assert quantile(xs, 0.9) == pytest.approx(4.4)
    assert quantile(xs, 0.99) == pytest.approx(4.94)
    assert quantile(xs, 0.0) == 1.0
    assert quantile(xs, 1.0) == 5.0
    assert quantile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_latency_stats() -> None:
    assert latency_stats([]) is None
    stats = latency_stats([5.0, 1.0, 3.0, 1.0])
    assert stats is not None
    assert (stats.count, stats.p50, stats.max, stats.mean) == (4, 2.0, 5.0, 2.5)
    assert stats.p90 == pytest.approx(4.4)
    assert stats.p99 == pytest.approx(4.94)


def test_busy_seconds_clips_and_ignores_empty_intervals() -> None:
    intervals = [(10.0, 14.0, 1.0), (10.0, 12.0, 2.0), (5.0, 5.0, 8.0), (9.0, 8.0, 1.0)]
    assert busy_seconds(intervals) == pytest.approx(4 + 4)
    assert busy_seconds(intervals, lo=11.0, hi=13.0) == pytest.approx(2 + 2)
    assert busy_seconds([], 0.0, 1.0) == 0.0


def test_time_series_averages_over_buckets() -> None:
    runs = [(10.0, 14.0, 1.0), (10.0, 12.0, 1.0), (12.0, 18.0, 1.0), (14.0, 20.0, 1.0)]
    assert time_series(runs, 10.0, 20.0, 5) == pytest.approx([2, 2, 2, 2, 1])
    assert time_series([(11.0, 13.0, 1.0)], 10.0, 14.0, 2) == pytest.approx([0.5, 0.5])
    # Spans three buckets of 2 s: partial, whole, partial; weighted by amount.
    assert time_series([(1.0, 5.5, 2.0)], 0.0, 6.0, 3) == pytest.approx([1.0, 2.0, 1.5])
    assert time_series(runs, 10.0, 10.0, 5) == []


def test_scenario_hand_computed() -> None:
    m = compute_metrics(SCENARIO, [pilot()], last_event=21.0)
    assert (m.n_tasks, m.n_done, m.n_failed, m.n_canceled, m.n_not_final, m.n_started) == (
        7, 4, 1, 1, 1, 4)
    assert m.started_per_s == pytest.approx(1.0)  # starts 10, 10, 12, 14
    assert m.peak_started_per_s == pytest.approx(2.0)
    assert m.completed_per_s == pytest.approx(6 / 11.5)  # 6 final events, 9.5 .. 21
    assert m.peak_completed_per_s == pytest.approx(2.0)  # 14.5 and 15.0
    assert (m.exec_window_start, m.exec_window_end, m.exec_window_s) == (10.0, 20.0, 10.0)
    assert m.core_seconds == pytest.approx(18.0)
    assert m.offered_cores == 2
    assert m.core_utilization == pytest.approx(0.9)
    assert m.core_utilization_lifetime == pytest.approx(0.45)
    assert m.gpu_utilization is None and m.gpu_utilization_lifetime is None  # none offered
    # While tasks waited (first start 10 to last start 14): 4 + 2 + 2 + 0 of 2 x 4 s.
    assert m.backlog_window_end == 14.0
    assert m.core_utilization_backlog == pytest.approx(1.0)
    assert m.gpu_utilization_backlog is None
    assert m.makespan_s == pytest.approx(12.0)  # NEW at 9 to the last final at 21
    assert m.submit_to_start is not None and m.end_to_final is not None
    assert (m.submit_to_start.count, m.submit_to_start.p50, m.submit_to_start.max) == (4, 2, 5)
    assert m.end_to_final.count == 4
    assert m.end_to_final.mean == pytest.approx(0.625)


def test_peak_window_is_configurable_and_the_peak_never_below_the_average() -> None:
    m = compute_metrics(SCENARIO, [pilot()], last_event=21.0, peak_window=0.5)
    assert m.peak_started_per_s == pytest.approx(2 / 0.5)  # the two starts at 10
    # A window longer than the run (4 starts over 4 s): the densest 5 s hold 4 starts,
    # 0.8/s, under the 1.0/s average over the run: the peak is the average then.
    m = compute_metrics(SCENARIO, [pilot()], last_event=21.0, peak_window=5.0)
    assert m.peak_window_s == 5.0
    assert m.peak_started_per_s == m.started_per_s == pytest.approx(1.0)


def test_no_tasks() -> None:
    m = compute_metrics([], [pilot()], last_event=None)
    assert m.n_tasks == 0 and m.n_started == 0
    for value in (m.started_per_s, m.peak_started_per_s, m.completed_per_s,
                  m.core_utilization, m.makespan_s, m.submit_to_start, m.end_to_final,
                  m.exec_window_s):
        assert value is None
    assert m.core_utilization_lifetime == 0.0  # the pilot lived 20 s and ran nothing
    assert "n/a" in str(m)


def test_one_task() -> None:
    m = compute_metrics([task(1, 9.0, 10.0, 14.0, 15.0)], [pilot()], last_event=15.0)
    assert m.started_per_s is None  # one start: no span
    assert m.peak_started_per_s == 1.0
    assert m.core_utilization == pytest.approx(0.5)  # 1 of 2 cores over its own 4 s
    assert m.makespan_s == pytest.approx(6.0)


def test_tasks_that_never_ran_have_no_window() -> None:
    never = [task(5, 9.0, None, None, 9.5, state="FAILED"),
             task(6, 9.0, None, None, 15.0, state="CANCELED")]
    m = compute_metrics(never, [pilot()], last_event=15.0)
    assert (m.n_failed, m.n_canceled, m.n_started) == (1, 1, 0)
    assert m.core_utilization is None and m.exec_window_s is None
    assert m.completed_per_s == pytest.approx(2 / 5.5)
    assert m.makespan_s == pytest.approx(6.0)
    assert m.submit_to_start is None


def test_task_canceled_while_running_is_not_busy_time() -> None:
    tasks = [task(1, 9.0, 10.0, 14.0, 14.5),
             task(2, 9.0, 10.0, None, 30.0, state="CANCELED")]  # no exec_stop
    m = compute_metrics(tasks, [pilot()], last_event=30.0)
    assert m.n_started == 2
    assert m.core_seconds == pytest.approx(4.0)
    assert m.core_utilization == pytest.approx(0.5)  # window 10-14 from task 1 alone


def test_only_overlapping_pilots_offer_capacity() -> None:
    pilots = [pilot(),
              pilot("old", cores=8, started=0.0, ready=1.0, stopped=5.0),  # gone before 10
              pilot("late", cores=8, started=20.0, ready=25.0, stopped=None)]  # after 20
    m = compute_metrics(SCENARIO, pilots, last_event=40.0)
    assert m.offered_cores == 2
    assert m.core_utilization == pytest.approx(0.9)
    # Lifetime: 2 x 20 + 8 x 4 + 8 x 15 (no stop: up to the last event) core-seconds.
    assert m.core_utilization_lifetime == pytest.approx(18 / (40 + 32 + 120))


def test_gpu_utilization() -> None:
    tasks = [task(1, 0.0, 10.0, 20.0, 21.0, cores=1, gpus=1.0),
             task(2, 0.0, 10.0, 15.0, 16.0, cores=1, gpus=0.5)]
    m = compute_metrics(tasks, [pilot(cores=4, gpus=2)], last_event=21.0)
    assert m.offered_gpus == 2
    assert m.gpu_seconds == pytest.approx(12.5)
    assert m.gpu_utilization == pytest.approx(12.5 / 20)
    assert m.core_utilization == pytest.approx(15 / 40)


def test_str_and_dict() -> None:
    m = compute_metrics(SCENARIO, [pilot()], last_event=21.0)
    text = str(m)
    assert "tasks started per second" in text
    assert "1.0 tasks/s" in text and "90.0 %" in text and "45.0 %" in text
    assert "12.000 s" in text  # makespan
    assert "p50 2000.0" in text and "ms" in text  # submit->start in milliseconds
    data = json.loads(json.dumps(m.to_dict()))
    assert data["core_utilization"] == pytest.approx(0.9)
    assert data["submit_to_start"]["p50"] == pytest.approx(2.0)
    assert data["exec_window_s"] == 10.0


def test_ascii_chart_shape() -> None:
    lines = ascii_chart([2, 2, 2, 2, 1], span=10.0, height=2)
    assert lines[0].endswith("|####")  # the top row: only values >= 1.5
    assert lines[1].endswith("|#####")
    assert lines[2].endswith("+-----")


# ---- journal end to end ---------------------------------------------------------------


def write_journal(session_dir: Path) -> Path:
    """SCENARIO on pilot p0 (2 cores), plus one 4-core 'fn' task on pilot p1 (4 cores)."""
    j = Journal(session_dir / "session.db")
    j.set_session(id="sess-42", created=T0)
    j.add_pilot("p0", "{}", 1, 2, 0, T0 + 0.0)
    j.update_pilot("p0", ready=T0 + 10.0, stopped=T0 + 30.0, state="DONE")
    j.add_pilot("p1", "{}", 1, 4, 0, T0 + 0.0)
    j.update_pilot("p1", ready=T0 + 10.0, stopped=T0 + 30.0, state="DONE")
    rows, events, finals = [], [], []
    for t in [*SCENARIO, task(8, 9.0, 10.0, 15.0, 16.0, cores=4, pilot="p1", kind="fn")]:
        rows.append((t.id, f"task.{t.id:06d}", t.pilot or "", None, t.kind or "exe",
                     t.cores, t.gpus, "{}", None))  # times as rows of `events` instead
        for name, ts in (("NEW", t.submit), ("SUBMITTED", t.submit), ("RUNNING", t.start),
                         ("exec_stop", t.end), (t.state, t.final)):
            if ts is not None:
                events.append((t.id, str(name), T0 + ts))
        if t.final is not None:
            finals.append((str(t.state), 0, None, None, None, None, None, None,
                           "cpu" if t.pilot == "p0" else "big", None, t.id))
    j.add_partitions("p0", [("cpu", "builtin", 0, 1)])
    j.add_partitions("p1", [("big", "builtin", 0, 1)])
    j.add_tasks(rows)
    j.add_events(events)
    j.finish_tasks(finals)
    j.flush()
    j.close()
    return session_dir


def test_metrics_by_partition_offer_each_partition_its_own_nodes(tmp_path: Path) -> None:
    m = session_metrics(write_journal(tmp_path / "s"), by="partition")
    assert m.group_by == "partition"
    # Task 7 never ended: no partition. The rest ran in "cpu" (p0's) or "big" (p1's).
    assert sorted(m.groups) == ["(none)", "big", "cpu"]
    cpu, big = m.groups["cpu"], m.groups["big"]
    assert (cpu.n_tasks, cpu.offered_cores, big.n_tasks, big.offered_cores) == (6, 2, 1, 4)
    assert cpu.core_utilization == pytest.approx(0.9)  # the scenario's 18 of 2 x 10 s


def test_session_metrics_end_to_end(tmp_path: Path) -> None:
    session = write_journal(tmp_path / "s")
    m = session_metrics(session)
    assert (m.n_tasks, m.n_done, m.n_failed, m.n_canceled, m.n_not_final) == (8, 5, 1, 1, 1)
    assert m.offered_cores == 6
    assert m.core_seconds == pytest.approx(18.0 + 20.0)
    assert m.core_utilization == pytest.approx(38 / 60)
    assert m.makespan_s == pytest.approx(12.0)
    # The same from a path to session.db and from an open connection.
    assert session_metrics(session / "session.db") == m
    db = connect_readonly(session)
    try:
        assert session_metrics(db) == m
    finally:
        db.close()


def test_session_metrics_by_pilot_and_kind(tmp_path: Path) -> None:
    session = write_journal(tmp_path / "s")
    by_pilot = session_metrics(session, by="pilot")
    assert set(by_pilot.groups) == {"p0", "p1"}
    p0, p1 = by_pilot.groups["p0"], by_pilot.groups["p1"]
    assert (p0.n_tasks, p0.offered_cores) == (7, 2)
    assert p0.core_utilization == pytest.approx(0.9)  # same as the pure scenario
    assert (p1.n_tasks, p1.offered_cores) == (1, 4)
    assert p1.core_utilization == pytest.approx(1.0)
    assert p1.core_utilization_lifetime == pytest.approx(20 / 80)
    by_kind = session_metrics(session, by="kind")
    assert set(by_kind.groups) == {"exe", "fn"}
    assert by_kind.groups["fn"].offered_cores == 6  # any pilot could have run it
    assert "[kind = fn]" in str(by_kind)
    with pytest.raises(ValueError, match="unknown grouping"):
        session_metrics(session, by="colour")


def test_load_session_reads_rows_once(tmp_path: Path) -> None:
    session = write_journal(tmp_path / "s")
    db = sqlite3.connect(session / "session.db")
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    data = load_session(db)
    db.close()
    # events, tasks, pilots, partitions, and two looks at the schema: no per-task query
    assert len(statements) == 6
    assert data.last_event == pytest.approx(T0 + 21.0)
    by_id = {t.id: t for t in data.tasks}
    assert by_id[4].start == pytest.approx(T0 + 14.0) and by_id[7].start is None


def test_render_report(tmp_path: Path) -> None:
    session = write_journal(tmp_path / "s")
    text = render_report(session)
    assert "sess-42" in text
    assert "1 x 4 cores" in text and "+10.000 s" in text  # pilot shape and ready time
    assert "tasks started per second" in text
    assert "63.3 %" in text  # core utilization 38/60
    assert "12.000 s" in text  # makespan
    assert "tasks executing over time" in text and "#" in text


def test_report_without_executions(tmp_path: Path) -> None:
    j = Journal(tmp_path / "s" / "session.db")
    j.add_pilot("p0", "{}", 1, 2, 0, T0)
    j.close()
    text = render_report(tmp_path / "s")
    assert "no task execution recorded" in text


def test_lifetime_utilization_clips_to_pilot_lifetime() -> None:
    # The pilot reports ready at 12 but the task ran 10-14: only 12-14 counts.
    m = compute_metrics([task(1, 9.0, 10.0, 14.0, 15.0)], [pilot(ready=12.0)], last_event=15.0)
    assert m.core_utilization_lifetime == pytest.approx(2 / (2 * 18))
    assert m.core_utilization == pytest.approx(0.5)
