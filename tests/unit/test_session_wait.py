"""`Session.wait_for`: woken by the updates the channel thread applies, not by polling."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pilotfish as pf
from pilotfish import messages as m
from pilotfish.session import Pilot
from pilotfish.task import Task

TaskState = pf.TaskState


@pytest.fixture
def session(tmp_path: Path) -> Iterator[pf.Session]:
    with pf.Session(path=tmp_path) as s:
        yield s


def tasks_of(session: pf.Session, n: int) -> list[Task]:
    """Tasks as `submit` leaves them, for a pilot that is never started."""
    desc = pf.PilotDescription(nodes=1, cores_per_node=1)
    pilot = session.pilots["p"] = Pilot("p", desc, session.path / "p")
    pilot.stopped.set()  # nothing for `close` to stop
    tasks = [Task(f"t{i}", i, pf.TaskDescription(executable="/bin/true"), "p", session)
             for i in range(n)]
    for t in tasks:
        session._live[t.uid] = t
    pilot.outstanding = n
    return tasks


def later(seconds: float, update: object) -> threading.Thread:
    """Apply updates from another thread (as the channel thread does) after `seconds`."""
    def run() -> None:
        time.sleep(seconds)
        update()  # type: ignore[operator]
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_state_change_wakes_the_waiter_at_once(session: pf.Session) -> None:
    a, b = tasks_of(session, 2)
    thread = later(0.2, lambda: session._apply_updates([m.TaskUpdate("t0", "RUNNING"),
                                                        m.TaskUpdate("t1", "SCHEDULED")]))
    started = time.monotonic()
    assert session.wait_for([a], TaskState.RUNNING, timeout=30)
    assert time.monotonic() - started < 5  # woken, not timed out
    assert a.state is TaskState.RUNNING and b.state is TaskState.SCHEDULED
    thread.join()
    assert session._state_waiters == 0


def test_acceptance_wakes_a_wait_for_submitted(session: pf.Session) -> None:
    (a,) = tasks_of(session, 1)
    assert session.wait_for([a], TaskState.SUBMITTED, timeout=0.05) is False
    thread = later(0.2, lambda: session._accept(["t0"], time.time()))
    started = time.monotonic()
    assert session.wait_for([a], TaskState.SUBMITTED, timeout=30)
    assert time.monotonic() - started < 5
    thread.join()


def test_every_task_must_arrive_and_final_ones_count(session: pf.Session) -> None:
    a, b = tasks_of(session, 2)
    session._apply_updates([m.TaskUpdate("t0", "RUNNING")])
    assert session.wait_for([a], TaskState.RUNNING, timeout=0)
    assert session.wait_for([a, b], TaskState.RUNNING, timeout=0.05) is False
    thread = later(0.2, lambda: session._apply_updates(
        [m.TaskUpdate("t1", "CANCELED", error="canceled")]))
    started = time.monotonic()
    assert session.wait_for([a, b], TaskState.RUNNING, timeout=30)
    assert time.monotonic() - started < 5
    assert b.state is TaskState.CANCELED
    thread.join()
    assert session.wait_for([], TaskState.DONE, timeout=0)
