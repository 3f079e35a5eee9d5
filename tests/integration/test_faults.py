"""Faults a session survives, each ending every task with a reason and losing nothing
silently."""

from __future__ import annotations

from pathlib import Path

import pilotfish as pf

TD = pf.TaskDescription


def test_a_full_disk_under_the_session_is_raised_to_the_user(tiny_disk: Path) -> None:
    session = pf.Session(path=tiny_disk)
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=8))
    tasks = session.submit([TD(executable="/bin/echo", arguments=["x" * 100])
                            for _ in range(2000)])
    errors = []  # the writes fail as the journal's thread gets to them: at this wait or
    for step in (lambda: session.wait(timeout=60), session.journal.flush):  # at the next
        try:
            step()
        except pf.JournalError as exc:
            errors.append(exc)
    assert errors and "database or disk is full" in str(errors[0])
    assert session.outstanding == 0  # the tasks all ended, with their reasons
    assert all(t.state.final and (t.state is pf.TaskState.DONE or t.error) for t in tasks)
    try:
        session.close()  # (raises again if writes failed since: e.g. the pilot's end)
    except pf.JournalError as exc:
        assert "write(s) lost" in str(exc)
    assert session.journal.lost > 0


def test_the_agents_log_on_a_full_disk_never_stops_it(tiny_disk: Path) -> None:
    from pilotfish.agent.__main__ import LogStream

    f = open(tiny_disk / "agent.log", "w", buffering=1)  # noqa: SIM115
    log = LogStream(f)
    for _ in range(10_000):  # far more than the disk holds
        print("x" * 100, file=log)
    log.flush()
    try:
        f.close()  # (what it still holds cannot be written either)
    except OSError:
        pass
