"""A pilot outlives a crashed client for `detach_grace`, and a new one takes it over."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import pilotfish as pf
from pilotfish import TaskState
from pilotfish.journal import connect_readonly
from pilotfish.report import render_report

from ..conftest import process_gone

# A client that submits, sees one task end, and dies without closing its session.
CLIENT = """
import os, sys, time, pilotfish as pf
TD = pf.TaskDescription

def slow(x, runs):
    with open(runs, "a") as f:
        print(f"function {x}", file=f)
    time.sleep(1.5)
    return x * 10

path, runs, grace = sys.argv[1], sys.argv[2], float(sys.argv[3])
session = pf.Session(path=path)
pilot = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=4,
                                                detach_grace=grace))
assert session.submit(TD(function=pow, args=(2, 8))).result(timeout=30) == 256
shell = f"echo exe $PILOTFISH_TASK_ID >> {runs}; sleep 1.5"
tasks = session.submit([TD(executable="/bin/sh", arguments=["-c", shell]) for _ in range(3)]
                       + [TD(function=slow, args=(i, runs)) for i in range(3)])
session.wait_for(tasks[:3], pf.TaskState.RUNNING, timeout=30)
session.journal.flush()  # (a client may die at any time; this one, once these are in)
print(session.path, pilot.process.pid, flush=True)
os._exit(0)  # the client dies: no close, no goodbye
"""


def _crashed_client(tmp_path: Path, grace: float) -> tuple[Path, int, Path]:
    runs = tmp_path / "runs"
    out = subprocess.run([sys.executable, "-c", CLIENT, str(tmp_path), str(runs), str(grace)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    path, agent = out.stdout.split()
    return Path(path), int(agent), runs


def test_a_new_client_takes_over_a_pilot_whose_client_died(tmp_path: Path) -> None:
    path, agent, runs = _crashed_client(tmp_path, grace=60)
    assert not process_gone(agent, 1)  # it runs on, without a client
    session = pf.Session.attach(path, timeout=30)
    try:
        attached = session.attached
        assert len(attached) == 6  # all but the task that ended before the crash
        assert session.wait(timeout=60)
        assert [t.state for t in attached] == [TaskState.DONE] * 6, [t.error for t in attached]
        functions = [t for t in attached if t.kind == "function"]
        assert sorted(t.result() for t in functions) == [0, 10, 20]  # results came back
        assert session.submit(pf.TaskDescription(function=pow, args=(3, 3))).result(
            timeout=30) == 27  # and it takes new tasks
    finally:
        session.close()
    assert process_gone(agent, 10)
    ran = Counter(runs.read_text().splitlines())
    assert len(ran) == 6 and set(ran.values()) == {1}  # none ran twice
    db = connect_readonly(path)
    states = Counter(state for (state,) in db.execute("SELECT state FROM tasks"))
    pilot_state = db.execute("SELECT state FROM pilots").fetchone()[0]
    db.close()
    assert states == {"DONE": 8} and pilot_state == "DONE"  # the journal is up to date


def test_a_pilot_that_did_not_wait_is_ended_with_its_tasks(tmp_path: Path) -> None:
    path, agent, _ = _crashed_client(tmp_path, grace=0)
    assert process_gone(agent, 10)  # no grace: it stopped with its client
    # Its journal still says ACTIVE (no client was there to write the end); a report
    # says what is known.
    assert "LOST (ACTIVE when its client ended)" in render_report(path)
    session = pf.Session.attach(path, timeout=5)
    try:
        pilot = session.pilots["pilot.0000"]
        assert pilot.state == "FAILED" and "did not wait" in (pilot.reason or "")
        assert session.wait(timeout=5)
        assert {t.state for t in session.attached} == {TaskState.FAILED}
    finally:
        session.close()
    db = connect_readonly(path)
    assert {s for (s,) in db.execute("SELECT state FROM tasks")} <= {"DONE", "FAILED"}
    db.close()
    assert "LOST" not in render_report(path)  # brought up to date: the pilot FAILED


def test_a_pilot_stops_waiting_after_its_grace(tmp_path: Path) -> None:
    path, agent, _ = _crashed_client(tmp_path, grace=2)
    assert process_gone(agent, 15)  # it waited 2 s, then stopped its tasks and exited
    started = time.monotonic()
    session = pf.Session.attach(path, timeout=5)
    try:
        assert session.pilots["pilot.0000"].state == "FAILED"
        assert session.wait(timeout=5)
        assert all(t.state.final for t in session.attached)
    finally:
        session.close()
    assert time.monotonic() - started < 10


def test_attaching_to_what_is_not_a_session_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no pilotfish session at"):
        pf.Session.attach(tmp_path)
