"""Flux partitions over the real nodes of a Slurm allocation (the local cluster).

As in test_slurm.py, each test runs a client inside `salloc` (4 nodes, which are this
one host told apart by `SLURMD_NODENAME`). A Flux partition starts one broker per node of
its slice with one `srun` (PMI2 bootstrap); Flux places each job's ranks on its brokers.
A rank shows the node pilotfish says it is on (`PILOTFISH_NODE`) and the node Slurm
started its broker on (the broker's own `SLURMD_NODENAME`, read from /proc: the job's
environment is the task's, not the broker's).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pilotfish.backends.flux import unavailable as flux_unavailable

from .test_slurm import _WHY, in_allocation, slurm_problem

_NO_FLUX = flux_unavailable()
pytestmark = [pytest.mark.timeout(240), pytest.mark.skipif(_WHY is not None, reason=_WHY or ""),
              pytest.mark.skipif(_NO_FLUX is not None, reason=f"no Flux here: {_NO_FLUX}")]

# Each rank: its PILOTFISH_NODE, its rank, its GPUs, and its broker's Slurm node.
# (The rank's parent is its job shell, whose parent is the broker.)
SHOW = r"""
broker=$(ps -o ppid= -p "$PPID" | tr -d ' ')
broker=$(tr '\0' '\n' < "/proc/$broker/environ" | sed -n 's/^SLURMD_NODENAME=//p')
echo "$PILOTFISH_NODE $PILOTFISH_RANK ${CUDA_VISIBLE_DEVICES-unset} $broker"
"""


def test_flux_instances_over_the_nodes_of_an_allocation(tmp_path: Path) -> None:
    out = in_allocation(tmp_path, f"""
PS = pf.PartitionSpec
pilot = session.start_pilot(pf.PilotDescription(platform="slurm-local", partitions=[
    PS(backend="flux", instances=2)]))
out["hosts"] = list(pilot.description.hosts)
out["layout"] = [(p.name, p.first, p.nodes) for p in pilot.description.layout]
show = {SHOW!r}
mpi = {{name: session.submit(TD(executable="/bin/sh", arguments=["-c", show], ranks=4,
                               ranks_per_node=2, gpus_per_rank=1, partition=name))
        for name in ("flux.0", "flux.1")}}
false = session.submit(TD(executable="/bin/false", partition="flux.0"))
timed = session.submit(TD(executable="/bin/sleep", arguments=["60"], timeout=2,
                          partition="flux.1"))
sleeper = session.submit(TD(executable="/bin/sleep", arguments=["60"], partition="flux.0"))
session.wait_for([sleeper], pf.TaskState.RUNNING, timeout=60)
session.cancel([sleeper])
assert session.wait(timeout=90)
out["mpi"] = {{name: (t.state.value, t.error, t.stdout, t.partition) for name, t in mpi.items()}}
out["placement"] = {{name: t.placement for name, t in mpi.items()}}
out["ended"] = [(t.state.value, t.error) for t in (false, timed, sleeper)]
""")
    hosts = out["hosts"]
    assert out["layout"] == [["flux.0", 0, 2], ["flux.1", 2, 2]]  # two instances of 2 nodes
    for name, nodes in (("flux.0", {0, 1}), ("flux.1", {2, 3})):
        state, error, stdout, partition = out["mpi"][name]
        assert (state, error, partition) == ("DONE", None, name), stdout
        ranks = sorted(line.split() for line in stdout.splitlines())
        assert [r[1] for r in ranks] == ["0", "1", "2", "3"], stdout
        assert {int(r[0]) for r in ranks} == nodes, stdout  # on the instance's own nodes
        assert all(hosts[int(r[0])] == r[3] for r in ranks), stdout  # where Slurm put them
        by_node: dict[str, list[str]] = {}
        for node, _, gpus, _ in ranks:
            by_node.setdefault(node, []).append(gpus)
        assert all(len(set(g)) == len(g) for g in by_node.values()), stdout  # a GPU each
        placed = out["placement"][name]  # from Flux's R: the nodes its ranks ran on
        assert sorted(node for node, _, _ in placed) == sorted(nodes), placed
        assert all(len(cores) == 2 and len(gpus) == 2 for _, cores, gpus in placed), placed
    assert out["ended"] == [["FAILED", "exit code 1"],
                            ["FAILED", "timed out (Flux ended it at its time limit)"],
                            ["CANCELED", "canceled"]]


def test_the_papers_hybrid_pilot_routes_by_kind(tmp_path: Path) -> None:
    """One pilot over the 4-node allocation: Flux (executables, MPI) on two nodes, Dragon
    (functions) on one, built-in on one; tasks routed by kind, none pinned."""
    from pilotfish.backends.dragon import unavailable as dragon_unavailable

    if (why := dragon_unavailable()) is not None:
        pytest.skip(f"no Dragon here: {why}")
    out = in_allocation(tmp_path, f"""
PS = pf.PartitionSpec
pilot = session.start_pilot(pf.PilotDescription(platform="slurm-local", partitions=[
    PS(backend="flux", nodes=2), PS(backend="dragon", nodes=1), PS(backend="builtin")]))
show = {SHOW!r}
mpi = session.submit([TD(executable="/bin/sh", arguments=["-c", show], ranks=4,
                         ranks_per_node=2) for _ in range(4)])
exes = session.submit([TD(executable="/bin/true") for _ in range(50)])
fns = session.submit([TD(function=pow, args=(2, i)) for i in range(200)])
assert session.wait(timeout=150)
out["mpi"] = [(t.state.value, t.partition, t.stdout) for t in mpi]
out["exes"] = sorted({{(t.state.value, t.partition) for t in exes}})
out["fns"] = sorted({{(t.state.value, t.partition) for t in fns}})
out["results"] = [t.result() for t in fns] == [2 ** i for i in range(200)]
out["hosts"] = list(pilot.description.hosts)
groups = session.metrics(by="partition").groups
out["groups"] = {{k: [g.n_tasks, g.n_done, g.offered_cores] for k, g in groups.items()}}
""", timeout=240)
    for state, partition, stdout in out["mpi"]:
        assert (state, partition) == ("DONE", "flux")
        ranks = [line.split(" ") for line in stdout.splitlines()]
        assert {int(r[0]) for r in ranks} <= {0, 1}  # the Flux partition's nodes
        assert all(out["hosts"][int(r[0])] == r[3] for r in ranks)
        assert all(r[2] == "" for r in ranks)  # no GPU asked: none
    # Single executables go to Flux or the built-in partition (least work per core);
    # functions to Dragon first (an idle built-in partition may take some: late binding).
    assert {state for state, _ in out["exes"]} == {"DONE"}
    assert {p for _, p in out["exes"]} <= {"flux", "builtin"}
    assert ["DONE", "dragon"] in out["fns"] and {s for s, _ in out["fns"]} == {"DONE"}
    assert out["results"]
    # Metrics per partition: each one's own tasks, over its own cores (16 per node).
    groups = out["groups"]
    assert {k: v[2] for k, v in groups.items()} == {"builtin": 16, "dragon": 16, "flux": 32}
    assert all(n == done for n, done, _ in groups.values())
    assert sum(n for n, _, _ in groups.values()) == 4 + 50 + 200


def test_a_dead_node_loses_its_tasks_and_a_dead_leader_its_instance(tmp_path: Path) -> None:
    """A node of a Flux instance dies (its broker's whole process tree killed, as a crash
    would): its tasks run again elsewhere if their retries allow, else fail with the
    reason; the instance's leader dies: its partition is lost, its tasks move or fail.
    Nothing is left holding a node after."""
    out = in_allocation(tmp_path, r"""
import glob, signal
marks = os.path.join(session.path, "marks")
os.makedirs(marks)
MARK = ('echo "$(ps -o ppid= -p $PPID | tr -d " ") $PILOTFISH_NODE" > '
        + marks + '/$PILOTFISH_TASK_ID.$PILOTFISH_RANK; exec sleep 8')

def where(tasks):
    # Each task's nodes, once every rank has marked its own (and its broker's pid).
    files = []
    for _ in range(100):
        files = [f for t in tasks for f in glob.glob(f"{marks}/{t.uid}.*")]
        if len(files) == sum(t.description.ranks for t in tasks):
            break
        time.sleep(0.1)
    found, brokers = {}, {}
    for f in files:
        broker, node = open(f).read().split()
        found.setdefault(os.path.basename(f).rsplit(".", 1)[0], set()).add(int(node))
        brokers[int(node)] = int(broker)
    return found, brokers

def crash(broker):
    # SIGKILL a broker and everything under it, as a node crash would.
    parent = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent[int(pid)] = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            pass
    tree = [broker]
    for pid in tree:
        tree.extend(p for p, pp in parent.items() if pp == pid)
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

def run_and_crash(tasks, node):
    assert session.wait_for(tasks, pf.TaskState.RUNNING, timeout=60)
    nodes, brokers = where(tasks)
    crash(brokers[node])
    assert session.wait(tasks, timeout=60)
    return sorted((t.description.retries, t.state.value, t.partition, t.error or "")
                  for t in tasks if nodes[t.uid] & {2, 3})

pilot = session.start_pilot(pf.PilotDescription(platform="slurm-local", partitions=[
    pf.PartitionSpec(backend="flux", instances=2)]))
# (Routed by load: the instances take turns.)
wide = session.submit([TD(executable="/bin/sh", arguments=["-c", MARK], ranks=2,
                          ranks_per_node=1, retries=r) for r in (0, 0, 1, 1)])
# flux.1's second node: a 2-node task there cannot run on flux.1 again.
out["node"] = run_and_crash(wide, 3)
single = session.submit([TD(executable="/bin/sh", arguments=["-c", MARK], retries=r)
                         for r in (0, 0, 1, 1)])
out["leader"] = run_and_crash(single, 2)  # flux.1's leader: the instance is lost
after = session.submit(TD(executable="/bin/true"))
after.result(timeout=30)
out["after"] = after.partition
""", timeout=180)
    wide_lost = "Flux lost a node under it: node failure"
    assert [o[:3] for o in out["node"]] == [[0, "FAILED", "flux.1"], [1, "DONE", "flux.0"]]
    assert out["node"][0][3].startswith(wide_lost), out["node"]
    assert [o[:2] for o in out["leader"]] == [[0, "FAILED"], [1, "DONE"]], out["leader"]
    for retries, _, partition, error in out["leader"]:
        if retries:
            assert partition == "flux.0", out["leader"]  # moved to the other instance
        else:
            assert error.startswith("partition 'flux.1' lost"), out["leader"]
    assert out["after"] == "flux.0"
    for _ in range(100):  # the allocation ended: its nodes free again, none left COMPLETING
        if slurm_problem() is None:
            break
        time.sleep(0.1)
    assert slurm_problem() is None
