"""Placement through a real agent and the built-in backend: what the ranks are told."""

from __future__ import annotations

import os

import pilotfish as pf

TD = pf.TaskDescription
SHOW = 'echo "$PILOTFISH_RANK $PILOTFISH_NODE $PILOTFISH_NODES $PILOTFISH_CORES ' \
       '$CUDA_VISIBLE_DEVICES"'


def rank_lines(task: pf.Task) -> list[list[str]]:
    assert task.stdout is not None
    return sorted(line.split(" ") for line in task.stdout.strip().splitlines())


def test_an_mpi_layout_spans_nodes_with_exact_ranks_per_node(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=3, cores_per_node=4, gpus_per_node=2))
    task = session.submit(TD(executable="/bin/sh", arguments=["-c", SHOW], ranks=5,
                             cores_per_rank=2, gpus_per_rank=1, ranks_per_node=2))
    assert task.result(timeout=30) == 0
    lines = rank_lines(task)
    assert [line[0] for line in lines] == ["0", "1", "2", "3", "4"]
    per_node: dict[str, int] = {}
    for _, node, nodes, cores, gpus in lines:
        per_node[node] = per_node.get(node, 0) + 1
        assert nodes == "0,1,2"
        assert len(cores.split(",")) == 2 and len(gpus.split(",")) == 1
    assert sorted(per_node.values()) == [1, 2, 2]


def test_exclusive_tasks_keep_others_off_their_node(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=2, cores_per_node=4))
    held = session.submit(TD(executable="/bin/sh", arguments=["-c", SHOW + "; sleep 1"],
                             tags={"exclusive": "x"}))
    others = session.submit([TD(executable="/bin/sh", arguments=["-c", SHOW])
                             for _ in range(4)])
    assert session.wait(timeout=30)
    x_node = rank_lines(held)[0][1]
    # Three cores of the x node were free all along, yet none of the others went there.
    assert {rank_lines(t)[0][1] for t in others} == {"1" if x_node == "0" else "0"}


def test_colocated_tasks_share_the_first_ones_node(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=4, cores_per_node=2))
    tasks = session.submit([TD(executable="/bin/sh", arguments=["-c", SHOW],
                               tags={"colocate": "stage"}) for _ in range(6)])
    assert session.wait(tasks, timeout=30)
    assert len({rank_lines(t)[0][1] for t in tasks}) == 1
    too_big = session.submit(TD(executable="/bin/true", ranks=2, ranks_per_node=1,
                                tags={"colocate": "stage"}))  # 2 nodes; the group has 1
    assert too_big.exception(timeout=30) is not None
    assert "colocate group 'stage'" in (too_big.error or "")


def test_blocked_cores_are_never_used_and_gpus_use_the_platforms_variable(
        session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(platform="frontier", mode="local", nodes=1,
                                            cores_per_node=8, gpus_per_node=2))
    show = 'echo "$PILOTFISH_CORES|$ROCR_VISIBLE_DEVICES|${CUDA_VISIBLE_DEVICES-unset}"'
    whole = session.submit(TD(executable="/bin/sh", arguments=["-c", show], cores_per_rank=8,
                              gpus_per_rank=2))
    assert whole.result(timeout=30) == 0
    assert whole.stdout is not None
    assert whole.stdout.strip() == "1,2,3,4,5,6,7,9|0,1|unset"  # cores 0 and 8 are blocked


def test_label_tags_keep_plain_functions_on_the_persistent_workers(
        session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1))
    labelled = session.submit([pf.TaskDescription(function=os.getpid, tags={"kind": "x"})
                               for _ in range(20)])
    grouped = session.submit([pf.TaskDescription(function=os.getpid, tags={"colocate": "g"})
                              for _ in range(3)])
    assert session.wait(timeout=60)
    assert len({t.result() for t in labelled}) == 1  # the node's one worker ran them all
    assert all(t.state is pf.TaskState.DONE for t in grouped)  # placed with a slot each
