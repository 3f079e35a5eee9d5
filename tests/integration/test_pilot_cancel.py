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
