"""`Pilot.cancel` and `Pilot.wait_active` on a local pilot (batch pilots: test_batch.py)."""

from __future__ import annotations

import pytest

import pilotfish as pf

from ..conftest import process_gone


def test_a_canceled_pilot_ends_canceled_with_its_tasks(session: pf.Session) -> None:
    pilot = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
    assert pilot.wait_active(0) and pilot.state == "ACTIVE" and pilot.job_id is None
    assert pilot.startup_time is not None and pilot.startup_time > 0
    running = session.submit(pf.TaskDescription(executable="/bin/sleep", arguments=["60"],
                                                cores_per_rank=2))
    queued = session.submit(pf.TaskDescription(executable="/bin/true", cores_per_rank=2))
    assert session.wait_for([running], pf.TaskState.RUNNING, timeout=30)
    pilot.cancel()
    assert pilot.state == "CANCELED" and pilot.stopped.is_set()
    assert session.wait([running, queued], timeout=10)
    for task in (running, queued):
        assert task.state is pf.TaskState.CANCELED
        assert task.error == "pilot stopped: shutdown requested (pilot canceled)"
    assert running.pid is not None and process_gone(running.pid, 5)
    pilot.cancel()  # once is enough: nothing more happens
    assert pilot.state == "CANCELED"
    with pytest.raises(RuntimeError, match="is not an active or pending pilot"):
        session.submit(pf.TaskDescription(executable="/bin/true"), pilot=pilot)


def sleeper(retries: int = 0) -> pf.TaskDescription:
    return pf.TaskDescription(executable="/bin/sleep", arguments=["60"], retries=retries)


def two_pilots_one_running(session: pf.Session
                           ) -> tuple[pf.Pilot, pf.Pilot, pf.Task, pf.Task]:
    """A pilot running a task with a retry and one without, then a second, idle pilot."""
    first = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
    again, once = session.submit([sleeper(retries=1), sleeper()])
    assert session.wait_for([again, once], pf.TaskState.RUNNING, timeout=30)
    second = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
    return first, second, again, once


def test_tasks_of_a_canceled_pilot_move_to_another_as_their_retries_allow(
        session: pf.Session) -> None:
    first, second, again, once = two_pilots_one_running(session)
    first.cancel()
    assert session.wait([once], timeout=10) and once.state is pf.TaskState.CANCELED
    assert once.error == "pilot stopped: shutdown requested (pilot canceled)"
    assert session.wait_for([again], pf.TaskState.RUNNING, timeout=30)
    assert again.pilot == second.uid and again.attempt == 2  # its one retry, used
    assert [e for e, _ in again.events].count("RUNNING") == 2
    # Lost with no retry left, it fails with its pilot's reason.
    second.cancel()
    assert session.wait([again], timeout=10) and again.state is pf.TaskState.CANCELED
    assert (first.outstanding, second.outstanding) == (0, 0)


def test_tasks_of_a_lost_pilot_move_to_another_as_their_retries_allow(
        session: pf.Session) -> None:
    doomed, spare, again, once = two_pilots_one_running(session)
    pid = again.pid
    assert doomed.process is not None and pid is not None
    doomed.process.kill()  # its agent dies: its tasks are killed, the pilot is lost
    assert session.wait([once], timeout=30) and once.state is pf.TaskState.FAILED
    assert doomed.state == "FAILED" and once.error == doomed.reason
    assert session.wait_for([again], pf.TaskState.RUNNING, timeout=30)
    assert again.pilot == spare.uid and again.attempt == 2 and process_gone(pid, 10)
    session.cancel([again])
    assert session.wait([again], timeout=10)
