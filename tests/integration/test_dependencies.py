"""Task dependencies: `after=[tasks]`, and tasks among a function's arguments standing
for their results; resolved in the agent on one pilot, through the client across pilots."""

from __future__ import annotations

import itertools
import time
from concurrent.futures import Future

import pytest

import pilotfish as pf
from pilotfish.channel import MAX_TASKS_PER_MESSAGE
from pilotfish.journal import connect_readonly

TD = pf.TaskDescription
DONE, FAILED, CANCELED = pf.TaskState.DONE, pf.TaskState.FAILED, pf.TaskState.CANCELED


def inc(x: int) -> int:
    return x + 1


def add(*xs: int, offset: int = 0) -> int:
    return sum(xs) + offset


def boom(x: int) -> int:
    raise ValueError("bad input")


def times(task: pf.Task) -> dict[str, float]:
    return dict(task.events)


def test_a_chain_of_functions_passes_results_in_the_agent(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=4))
    chain = [session.submit(TD(function=inc, args=(0,)))]
    for _ in range(99):
        chain.append(session.submit(TD(function=inc, args=(chain[-1],))))
    assert chain[-1].result(timeout=60) == 100
    for before, after in itertools.pairwise(chain):
        assert times(before)["exec_stop"] <= times(after)["RUNNING"]
    # Several inputs, in args and kwargs, and one named twice.
    total = session.submit(TD(function=add, args=(chain[0], chain[1], chain[1]),
                              kwargs={"offset": chain[2]}))
    assert total.result(timeout=30) == 1 + 2 + 2 + 3


def test_after_orders_executables_and_an_exit_code_is_a_result(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=4))
    first = session.submit(TD(executable="/bin/sleep", arguments=["0.3"]))
    second = session.submit(TD(executable="/bin/echo", arguments=["next"], after=[first]))
    code = session.submit(TD(function=inc, args=(first,)))  # its exit code, 0
    assert second.result(timeout=30) == 0 and second.stdout == "next\n"
    assert times(first)["exec_stop"] <= times(second)["RUNNING"]
    assert code.result(timeout=30) == 1


def test_a_failed_or_canceled_input_ends_what_waits_for_it(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
    bad = session.submit(TD(function=boom, args=(1,)))
    child = session.submit(TD(function=inc, args=(bad,)))
    grandchild = session.submit(TD(executable="/bin/true", after=[child]))
    slow = session.submit(TD(executable="/bin/sleep", arguments=["30"]))
    waiter = session.submit(TD(executable="/bin/true", after=[slow]))
    assert session.wait([bad, child, grandchild], timeout=30)
    assert child.state is FAILED and child.error == f"input {bad.uid} failed: ValueError: bad input"
    assert grandchild.state is FAILED and grandchild.error.startswith(f"input {child.uid} failed")
    assert "RUNNING" not in times(child) and "RUNNING" not in times(grandchild)
    slow.cancel()
    assert session.wait([waiter], timeout=30)
    assert waiter.state is CANCELED and waiter.error == f"input {slow.uid} was canceled"
    # Inputs that ended before: resolved by the client, at once.
    late = session.submit(TD(function=inc, args=(bad,)))
    assert session.wait([late], timeout=10) and late.state is FAILED
    done = session.submit(TD(function=inc, args=(41,)))
    assert done.result(timeout=30) == 42
    again = session.submit(TD(function=inc, args=(done,)))  # its result from the client
    assert again.result(timeout=30) == 43


def test_a_stage_after_a_stage_sends_their_inputs_once(session: pf.Session) -> None:
    """Every task of a stage after every task of the one before (a campaign's fan-in):
    the shared `after` goes to the agent and into the journal once, as a group; the
    stage starts once all of it ended, and a failed input ends the stage naming it."""
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=8))
    first = session.submit([TD(function=inc, args=(k,)) for k in range(200)])
    second = session.submit([TD(executable="/bin/true", after=first) for _ in range(40)])
    bad = session.submit([TD(function=inc, args=(0,)) for _ in range(30)]
                         + [TD(function=boom, args=(0,))])
    third = session.submit([TD(executable="/bin/true", after=bad) for _ in range(20)])
    assert session.wait(timeout=60)
    assert {t.state for t in second} == {DONE}
    assert max(times(t)["exec_stop"] for t in first) <= min(times(t)["RUNNING"]
                                                            for t in second)
    assert {t.state for t in third} == {FAILED}
    assert {t.error for t in third} == {f"input {bad[-1].uid} failed: ValueError: bad input"}
    session.journal.flush()
    db = connect_readonly(session.path)
    rows = db.execute("SELECT name, tasks FROM input_groups").fetchall()
    assert [name for name, _ in rows] == [f"{second[0].uid}+after", f"{third[0].uid}+after"]
    assert rows[0][1].count("task.") == 200
    described = db.execute("SELECT description FROM tasks WHERE uid = ?",
                           (second[-1].uid,)).fetchone()[0]
    assert f"{second[0].uid}+after" in described and first[0].uid not in described


def test_a_group_reaches_tasks_sent_in_a_later_message(session: pf.Session) -> None:
    """A big submit goes in several messages, its groups in the first: tasks of a later
    one still find theirs."""
    session.start_pilot(pf.PilotDescription(nodes=4, cores_per_node=64, backend="simulated"))
    first = session.submit([TD(executable="sleep", arguments=["10"]) for _ in range(20)])
    filler = [TD(executable="sleep", arguments=["1"])] * MAX_TASKS_PER_MESSAGE
    later = session.submit([*filler, *[TD(executable="sleep", arguments=["1"], after=first)
                                       for _ in range(10)]])[-10:]
    assert session.wait(timeout=60)
    assert {t.state for t in later} == {DONE}, {t.error for t in later}
    assert min(times(t)["RUNNING"] for t in later) >= max(times(t)["exec_stop"] for t in first)


def test_an_argument_that_ended_long_before_the_last_input_still_passes_its_result(
        session: pf.Session) -> None:
    """The agent forgets outcomes the client has seen (a heartbeat later); a task still
    waiting for another input keeps the results it takes (the agent crashed here)."""
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=4))
    a = session.submit(TD(function=add, args=(1, 2)))
    slow = session.submit(TD(function=time.sleep, args=(3.5,)))
    c = session.submit(TD(function=add, args=(a, 10), after=[slow]))
    assert c.result(timeout=30) == 13


def test_inputs_on_another_pilot_are_waited_for_by_the_client(session: pf.Session) -> None:
    here = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
    there = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
    first = session.submit(TD(function=time.sleep, args=(0.5,)), pilot=here)
    value = session.submit(TD(function=inc, args=(1,)), pilot=here)
    later = session.submit(TD(function=add, args=(value, value), after=[first]), pilot=there)
    held = session.submit(TD(executable="/bin/true", after=[first]), pilot=there)
    held.cancel()  # held by the client: it ends there, never sent
    assert later.result(timeout=30) == 4 and later.pilot == there.uid
    assert times(first)["exec_stop"] <= times(later)["RUNNING"]
    assert session.wait([held], timeout=10) and held.state is CANCELED
    assert "SUBMITTED" not in times(held)
    # Unpinned, a task goes where its inputs are.
    near = session.submit(TD(function=inc, args=(value,)))
    assert near.result(timeout=30) == 3 and near.pilot == here.uid


def test_bad_dependencies_are_refused_before_anything_runs(session: pf.Session,
                                                          tmp_path: object) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
    with pytest.raises(TypeError, match="after must be a list of tasks"):
        TD(executable="/bin/true", after=[1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="after must be a list of tasks"):
        TD(executable="/bin/true", after="task.000001")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a pilotfish Task"):
        TD(function=inc, args=(Future(),))
    with pf.Session(path=session.path.parent / "other") as other:
        other.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1))
        foreign = other.submit(TD(executable="/bin/true"))
        with pytest.raises(ValueError, match="a task of another session"):
            session.submit([TD(executable="/bin/true"), TD(executable="/bin/true",
                                                           after=[foreign])])
        assert other.wait(timeout=30)
    assert session.outstanding == 0  # nothing of the refused batch was submitted
