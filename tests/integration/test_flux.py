"""Real Flux instances as partitions of a local pilot.

CI installs Flux (../shared/flux/install-flux.sh, into /opt/flux), where pilotfish finds
it and its bindings; where it is absent these tests skip, saying how to install it. Each
test starts its own instances with `flux start` on this host, given the partition's
virtual cores and GPUs (inside a Flux allocation, a single Flux partition attaches to
`FLUX_URI` instead).
"""

from __future__ import annotations

import time

import pytest

import pilotfish as pf
from pilotfish.backends.flux import unavailable as flux_available

_why = flux_available()
pytestmark = [pytest.mark.skipif(_why is not None, reason=f"no Flux here: {_why}"),
              pytest.mark.timeout(180)]
TD = pf.TaskDescription
PS = pf.PartitionSpec


def test_executables_and_multi_rank_tasks_run_in_flux_functions_elsewhere(
        session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(
        nodes=3, cores_per_node=4,
        partitions=[PS(backend="flux", nodes=2, instances=2), PS(backend="builtin")]))
    # (The multi-rank task first: routed to Flux, it starts there at once. Queued behind
    # the pinned ones, the idle built-in partition may take it: late binding.)
    ranks = session.submit(TD(executable="/bin/sh", arguments=["-c", "echo $FLUX_TASK_RANK"],
                              ranks=4))
    echo = session.submit([TD(executable="/bin/sh", arguments=["-c", "echo $PILOTFISH_TASK_ID"],
                              partition=f"flux.{i % 2}") for i in range(20)])
    false = session.submit(TD(executable="/bin/false", partition="flux.0"))
    square = session.submit(TD(function=pow, args=(3, 2)))
    assert session.wait(timeout=120)
    assert all(t.stdout == f"{t.uid}\n" for t in echo)
    assert {t.partition for t in echo} == {"flux.0", "flux.1"}
    assert ranks.partition in ("flux.0", "flux.1")
    assert sorted((ranks.stdout or "").split()) == ["0", "1", "2", "3"]
    assert false.state is pf.TaskState.FAILED and false.error == "exit code 1"
    assert square.result() == 9 and square.partition == "builtin"


def test_cancel_and_timeout_in_flux(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=4,
                                            partitions=[PS(backend="flux")]))
    late = session.submit(TD(executable="/bin/sleep", arguments=["60"], timeout=2))
    sleeper = session.submit(TD(executable="/bin/sleep", arguments=["60"]))
    assert session.wait_for([sleeper], pf.TaskState.RUNNING, timeout=60)
    assert sleeper.state is pf.TaskState.RUNNING
    sleeper.cancel()
    assert session.wait(timeout=60)
    assert sleeper.state is pf.TaskState.CANCELED
    assert late.state is pf.TaskState.FAILED and "timed out" in (late.error or "")


def test_flux_is_fed_ahead_up_to_twice_its_cores(session: pf.Session) -> None:
    """Flux holds up to twice what fits (the agent's spare nodes for a runtime that places
    tasks itself), so it starts the next job as a core frees; the rest waits in the agent,
    where an idle partition could still take it."""
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2,
                                            partitions=[PS(backend="flux")]))
    tasks = session.submit([TD(executable="/bin/sleep", arguments=["60"]) for _ in range(6)])
    assert session.wait_for(tasks[:2], pf.TaskState.RUNNING, timeout=60)
    assert session.wait_for(tasks[2:4], pf.TaskState.SCHEDULED, timeout=30)
    time.sleep(0.5)  # (nothing more is handed over)
    assert [t.state.value for t in tasks] == ["RUNNING"] * 2 + ["SCHEDULED"] * 2 + [
        "SUBMITTED"] * 2
    session.cancel(tasks)
    assert session.wait(tasks, timeout=60)
