"""Partitions through a real agent: routing, pinning, per-partition placement, metrics."""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

import pilotfish as pf
from pilotfish.backends.flux import unavailable as flux_available
from pilotfish.cli import main
from pilotfish.partitions import Partition

TD = pf.TaskDescription
PS = pf.PartitionSpec
NODE = 'echo "$PILOTFISH_NODE"'


def node_of(task: pf.Task) -> int:
    assert task.stdout is not None
    return int(task.stdout.strip())


def test_pinned_tasks_run_on_their_partitions_nodes(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(
        nodes=4, cores_per_node=2,
        partitions=[PS(backend="builtin", nodes=1, name="small"), PS(backend="builtin")]))
    small = session.submit([TD(executable="/bin/sh", arguments=["-c", NODE],
                               partition="small") for _ in range(4)])
    rest = session.submit([TD(executable="/bin/sh", arguments=["-c", NODE],
                              tags={"partition": "builtin"}) for _ in range(6)])
    free = session.submit([TD(function=pow, args=(2, 5)) for _ in range(6)])
    assert session.wait(timeout=60)
    assert {node_of(t) for t in small} == {0} and {t.partition for t in small} == {"small"}
    assert {node_of(t) for t in rest} <= {1, 2, 3} and {t.partition for t in rest} == {
        "builtin"}
    assert all(t.result() == 32 for t in free)
    assert {t.partition for t in free} <= {"small", "builtin"}
    by = session.metrics(by="partition")
    assert by.groups["small"].offered_cores == 2 and by.groups["builtin"].offered_cores == 6
    by_backend = session.metrics(by="backend")
    assert list(by_backend.groups) == ["builtin"]  # both partitions: one backend's 8 cores
    assert by_backend.groups["builtin"].offered_cores == 8
    assert by_backend.groups["builtin"].n_tasks == 16


def test_tasks_no_partition_can_take_fail_at_once_with_the_reason(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(
        nodes=3, cores_per_node=2,
        partitions=[PS(backend="builtin", nodes=1, name="small"), PS(backend="builtin")]))
    ghost = session.submit(TD(executable="/bin/true", partition="gpu"))
    with pytest.raises(pf.TaskFailed, match="no partition 'gpu' \\(partitions: small, builtin\\)"):
        ghost.result(timeout=30)
    wide = session.submit(TD(executable="/bin/true", ranks=2, ranks_per_node=1,
                             partition="small"))
    with pytest.raises(pf.TaskFailed,
                       match=r"partition 'small' \(builtin\) needs 2 nodes .* there are 1"):
        wide.result(timeout=30)
    assert session.submit(TD(executable="/bin/true", ranks=2, ranks_per_node=1)).result(
        timeout=30) == 0


def test_default_routing_on_a_simulated_flux_dragon_builtin_pilot(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(
        backend="simulated", nodes=8, cores_per_node=8, gpus_per_node=2,
        partitions=[PS(backend="flux", nodes=4, instances=2), PS(backend="dragon", nodes=2),
                    PS(backend="builtin")]))
    # As many functions as Dragon's cores: none waits, so late binding moves none (an
    # idle partition takes queued work, which this test is not about).
    functions = session.submit([TD(function=pow, args=(2, 2)) for _ in range(16)])
    mpi = session.submit([TD(executable="sleep", arguments=["30"], ranks=4, ranks_per_node=2)
                          for _ in range(4)])
    shared = session.submit(TD(executable="sleep", arguments=["5"], ranks=2,
                               gpus_per_rank=0.5))
    refused = session.submit(TD(function=pow, args=(1, 1), partition="flux.0"))
    assert session.wait(timeout=60)
    assert {t.partition for t in functions} == {"dragon"}
    assert {t.partition for t in mpi} == {"flux.0", "flux.1"}
    assert shared.partition == "builtin"  # only it can share a GPU
    assert refused.state is pf.TaskState.FAILED
    assert "partition 'flux.0' (flux) runs no Python functions" in (refused.error or "")
    by_backend = session.metrics(by="backend")
    assert by_backend.groups["flux"].n_tasks == 4 and by_backend.groups["dragon"].n_tasks == 16
    assert refused.partition is None  # it ran nowhere
    assert by_backend.groups["flux"].offered_cores == 4 * 8  # its two instances' nodes


class ExecutablesToDragon(pf.RoutingPolicy):
    """Single-rank executables to the Dragon partition, functions to the built-in one."""

    function_backends = ("builtin",)

    def choose(self, traits: pf.TaskTraits, able: Sequence[Partition],
               load: Mapping[str, float]) -> Partition:
        if traits.kind == "executable" and traits.ranks == 1:
            return next(p for p in able if p.backend == "dragon")
        return super().choose(traits, able, load)


def test_a_routing_policy_of_the_users_routes_in_the_agent(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(
        backend="simulated", nodes=4, cores_per_node=8, routing=ExecutablesToDragon(),
        partitions=[PS(backend="flux", nodes=2), PS(backend="dragon", nodes=1),
                    PS(backend="builtin")]))
    executables = session.submit([TD(executable="sleep", arguments=["5"]) for _ in range(8)])
    functions = session.submit([TD(function=pow, args=(2, 2)) for _ in range(8)])
    mpi = session.submit(TD(executable="sleep", arguments=["5"], ranks=16, ranks_per_node=8))
    assert session.wait(timeout=60)
    assert {t.partition for t in executables} == {"dragon"}
    assert {t.partition for t in functions} == {"builtin"}
    assert mpi.partition == "flux"  # the default rules for the rest


def test_routing_must_be_a_policy_that_can_travel() -> None:
    with pytest.raises(pf.InvalidDescription, match=r"routing: must be a routing\.RoutingPolicy"):
        pf.PilotDescription(routing=lambda traits: "builtin")  # type: ignore[arg-type]
    unpicklable = pf.RoutingPolicy()
    unpicklable.lock = threading.Lock()  # type: ignore[attr-defined]
    with pytest.raises(pf.InvalidDescription, match="routing: cannot be pickled"):
        pf.PilotDescription(routing=unpicklable)


def test_a_policy_the_agent_cannot_import_fails_the_start_with_the_cause(
        session: pf.Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gone_policy.py").write_text(
        "import pilotfish as pf\nclass Gone(pf.RoutingPolicy):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gone_policy", raising=False)
    policy = importlib.import_module("gone_policy").Gone()
    desc = pf.PilotDescription(nodes=1, cores_per_node=2, routing=policy)
    (tmp_path / "gone_policy.py").unlink()  # pickled by reference: the agent imports it
    with pytest.raises(RuntimeError, match="No module named 'gone_policy'"):
        session.start_pilot(desc)


def test_partition_specs_are_checked_with_the_pilot() -> None:
    with pytest.raises(pf.InvalidDescription, match="partitions: partitions ask for 5 node"):
        pf.PilotDescription(nodes=4, partitions=[PS(backend="builtin", nodes=5)])
    if flux_available() is not None:  # as here: the bindings need a Flux install
        with pytest.raises(pf.InvalidDescription, match="partitions: no flux here: the flux "
                                                        "Python bindings cannot be imported"):
            pf.PilotDescription(nodes=4, partitions=[PS(backend="flux")])
    with pytest.raises(TypeError, match="list of PartitionSpec"):
        pf.PilotDescription(nodes=4, partitions=[{"backend": "builtin"}])  # type: ignore[list-item]


def test_an_idle_partition_takes_queued_tasks_from_a_backlogged_one(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(
        backend="simulated", nodes=4, cores_per_node=8,
        partitions=[PS(backend="dragon", nodes=1), PS(backend="builtin")]))
    functions = session.submit([TD(function=pow, args=(2, 2), duration=10.0)
                                for _ in range(800)])
    pinned = session.submit([TD(function=pow, args=(2, 2), duration=10.0, partition="dragon")
                             for _ in range(200)])
    assert session.wait(timeout=120)
    where = [t.partition for t in functions]
    assert where.count("builtin") > where.count("dragon") > 0  # routed to Dragon, then taken
    assert {t.partition for t in pinned} == {"dragon"}  # pinned tasks never move
    m = session.metrics()
    # 32 cores: (800 + 200) x 10 s of work ends well before Dragon's 8 cores alone would.
    assert m.makespan_s is not None and m.makespan_s < 1000 * 10 / 8 * 0.75


def test_an_idle_dragon_partition_leaves_executables_to_the_built_in_one(
        session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(
        backend="simulated", nodes=2, cores_per_node=4,
        partitions=[PS(backend="builtin", nodes=1), PS(backend="dragon", nodes=1)]))
    executables = session.submit([TD(executable="sleep", arguments=["10"], duration=10.0)
                                  for _ in range(40)])
    assert session.wait(timeout=60)
    # Routed there, and late binding does not move them to Dragon's idle cores.
    assert {t.partition for t in executables} == {"builtin"}


class AllToFirst(pf.RoutingPolicy):
    def choose(self, traits: pf.TaskTraits, able: Sequence[Partition],
               load: Mapping[str, float]) -> Partition:
        return min(able, key=lambda p: p.first)


def test_a_partition_with_idle_cores_takes_even_a_single_waiting_task(
        session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(
        backend="simulated", nodes=2, cores_per_node=2, routing=AllToFirst(),
        partitions=[PS(backend="builtin", nodes=1, name="a"), PS(backend="builtin", name="b")]))
    tasks = session.submit([TD(executable="sleep", arguments=["10"], duration=10.0)
                            for _ in range(3)])
    assert session.wait(timeout=60)
    assert sorted(t.partition or "" for t in tasks) == ["a", "a", "b"]
    m = session.metrics()
    assert m.makespan_s is not None and m.makespan_s < 15  # not 20: the third ran at once



def test_pilotfish_run_splits_the_pilot_and_reports_by_partition(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--nodes", "3", "--cores", "8", "--gpus", "0", "--tasks", "60",
            "--sessions", str(tmp_path)]
    assert main([*argv, "--partitions", "builtin:1,builtin:0.5,builtin"]) == 0
    out = capsys.readouterr().out
    assert "tasks: 60 DONE" in out
    for name in ("builtin-1", "builtin-2", "builtin-3"):
        assert f"[partition = {name}]" in out
    for bad, why in [("builtin:x", "'builtin:x': NODES must be a count or a fraction"),
                     ("bogus", "unknown backend 'bogus'"),
                     ("builtin:4", "partitions ask for 4 node")]:
        assert main([*argv, "--partitions", bad]) == 2
        assert why in capsys.readouterr().err


def test_run_and_report_print_the_same_figures(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--nodes", "1", "--cores", "16", "--gpus", "4", "--tasks", "40",
                 "--sessions", str(tmp_path)]) == 0
    ran = capsys.readouterr().out
    path = ran.split("report: pilotfish report ")[1].strip()
    assert main(["report", path]) == 0
    reported = capsys.readouterr().out
    def figures(text: str) -> dict[str, str]:
        labels = ("throughput", "peak throughput", "core utilization",
                  "core util. (pilot life)", "makespan")
        found: dict[str, str] = {}
        for line in text.splitlines():
            for label in labels:
                if line.strip().startswith(label + " "):
                    found.setdefault(label, line.strip()[len(label):].strip())
        return found

    assert figures(ran) == figures(reported) and len(figures(ran)) == 5, (ran, reported)


def whoami() -> int:
    return os.getpid()


def test_each_partitions_function_workers_have_files_of_their_own(
        session: pf.Session) -> None:
    # Two pools' "w0" once shared a counter file: one truncating it as the other's
    # worker mapped it made that worker fail to start.
    pilot = session.start_pilot(pf.PilotDescription(
        nodes=2, cores_per_node=1, function_workers=1,
        partitions=[PS(backend="builtin", nodes=1), PS(backend="builtin", nodes=1)]))
    pids = session.submit([TD(function=whoami, partition=f"builtin-{i}") for i in (1, 2)])
    assert len({t.result(timeout=30) for t in pids}) == 2
    files = sorted(p.name for p in pilot.sandbox.glob("worker.*"))
    assert files == [f"worker.builtin-{i}.w0.{kind}" for i in (1, 2)
                     for kind in ("log", "started")]
