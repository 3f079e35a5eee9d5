"""Launchers (launchers.py): what is started for a placed task, as exact argv and environments.

The argv lists are the contract with srun and mpiexec, so they are compared whole. The
per-rank script is run for real with the rank variable each launcher sets (no srun or
mpiexec needed), to check that every launcher gives each rank the environment `local`
gives it.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import pytest

from pilotfish.backends.base import NodeLayout, PlacedTask, TaskFinished, TaskStarted
from pilotfish.backends.flux.backend import start_command
from pilotfish.backends.processes import ProcessRunner, spawn_process
from pilotfish.launchers import (
    LAUNCHERS,
    MPICH_SCRIPT,
    OPENMPI_SCRIPT,
    SRUN_LAUNCHERS,
    SRUN_SCRIPT,
    Process,
    check_launcher,
    local,
    mpiexec,
    srun,
    srun_per_node,
    task_environment,
)
from pilotfish.messages import TaskSpec
from pilotfish.reactor import Reactor
from pilotfish.resources import Slot
from pilotfish.states import TaskState

CORE_IDS = (1, 2, 3, 4, 5, 6, 7, 8)  # core index i is physical core i + 1 (core 0: the OS's)
CPUS = NodeLayout(CORE_IDS)
GPUS = NodeLayout(CORE_IDS, gpus=4)
HOSTS = ["n0", "n1", "n2", "n3"]
BASE = {"PATH": "/bin", "HOME": "/home/u"}
COMMAND = ["/bin/app", "-in", "in.lj"]
ONE, HALF = Fraction(1), Fraction(1, 2)


def task(**resources: int | float) -> TaskSpec:
    return TaskSpec("t1", "executable", "/bin/app", ["-in", "in.lj"], {"OMP_NUM_THREADS": "2"},
                    **resources)  # type: ignore[arg-type]


def shared(**pilot: str) -> dict[str, str]:
    """The environment a launcher process gets: every rank's in common."""
    return {**BASE, "OMP_NUM_THREADS": "2", "PILOTFISH_TASK_ID": "t1", **pilot}


def srun_argv(*options: str, table: list[str], gpu_env: str = "") -> list[str]:
    return ["srun", *options, "--overlap", "--export=ALL", "--kill-on-bad-exit=1",
            "/bin/sh", "-c", SRUN_SCRIPT, "pilotfish", gpu_env, str(len(table)), *table,
            *COMMAND]


def overlapping(env: dict[str, str]) -> dict[str, str]:
    """mpiexec's environment: its daemons' srun steps overlap the others'."""
    return {**env, "SLURM_OVERLAP": "1"}


X_PILOT = ["-x", "OMP_NUM_THREADS", "-x", "PILOTFISH_TASK_ID", "-x", "PILOTFISH_RANKS",
           "-x", "PILOTFISH_NODES"]


def openmpi_argv(n: int, hosts: str, table: list[str], gpu_env: str = "",
                 exported: list[str] = X_PILOT) -> list[str]:
    return ["mpiexec", "-n", str(n), "--host", hosts, "--map-by", "slot", "--bind-to", "none",
            *exported, "/bin/sh", "-c", OPENMPI_SCRIPT, "pilotfish", gpu_env, str(n), *table,
            *COMMAND]


def mpich_argv(n: int, hosts: str, bind: list[str], table: list[str],
               gpu_env: str = "") -> list[str]:
    return ["mpiexec", "-n", str(n), "-hosts", hosts, *bind, "/bin/sh", "-c", MPICH_SCRIPT,
            "pilotfish", gpu_env, str(n), *table, *COMMAND]


def ranks_of(processes: list[Process]) -> list[tuple[str, str, str]]:
    return [(p.env["PILOTFISH_RANK"], p.env["PILOTFISH_NODE"], p.env["PILOTFISH_CORES"])
            for p in processes]


# ---- one case at a time, every launcher ------------------------------------------------


def test_one_rank() -> None:
    spec, slot = task(), Slot((0,), ((0,),))
    assert local(spec, slot, CPUS, BASE) == [Process(argv=COMMAND, env=shared(
        PILOTFISH_RANK="0", PILOTFISH_RANKS="1", PILOTFISH_NODE="0", PILOTFISH_NODES="0",
        PILOTFISH_CORES="1"))]
    env = shared(PILOTFISH_RANKS="1", PILOTFISH_NODES="0")
    assert srun(spec, slot, CPUS, BASE, HOSTS) == [Process(argv=srun_argv(
        "--ntasks=1", "--distribution=arbitrary", "--nodelist=n0", "--cpus-per-task=1",
        "--cpu-bind=map_cpu:1", table=["0/1/"]), env=env)]
    assert mpiexec(spec, slot, CPUS, BASE, HOSTS) == [Process(
        argv=openmpi_argv(1, "n0:1", ["0/1/"]), env=overlapping(env))]
    assert mpiexec(spec, slot, CPUS, BASE, HOSTS, flavor="mpich") == [Process(
        argv=mpich_argv(1, "n0:1", ["-bind-to", "user:1"], ["0/1/"]), env=overlapping(env))]


def test_four_ranks_over_two_nodes_two_per_node() -> None:
    spec = task(ranks=4, ranks_per_node=2)
    slot = Slot((0, 0, 1, 1), ((0,), (1,), (0,), (1,)))
    processes = local(spec, slot, CPUS, BASE)
    assert ranks_of(processes) == [("0", "0", "1"), ("1", "0", "2"), ("2", "1", "1"),
                                   ("3", "1", "2")]
    assert processes[3].env == shared(PILOTFISH_RANK="3", PILOTFISH_RANKS="4",
                                      PILOTFISH_NODE="1", PILOTFISH_NODES="0,1",
                                      PILOTFISH_CORES="2")
    assert all(p.argv is processes[0].argv for p in processes)  # one list for all ranks
    table = ["0/1/", "0/2/", "1/1/", "1/2/"]
    env = shared(PILOTFISH_RANKS="4", PILOTFISH_NODES="0,1")
    assert srun(spec, slot, CPUS, BASE, HOSTS) == [Process(argv=srun_argv(
        "--ntasks=4", "--distribution=arbitrary", "--nodelist=n0,n0,n1,n1",
        "--cpus-per-task=1", "--cpu-bind=map_cpu:1,2", table=table), env=env)]
    assert mpiexec(spec, slot, CPUS, BASE, HOSTS) == [Process(
        argv=openmpi_argv(4, "n0:2,n1:2", table), env=overlapping(env))]
    assert mpiexec(spec, slot, CPUS, BASE, HOSTS, flavor="mpich") == [Process(
        argv=mpich_argv(4, "n0:2,n1:2", ["-bind-to", "user:1,2"], table), env=overlapping(env))]


def test_ranks_with_two_cores_each() -> None:
    spec = task(ranks=2, cores_per_rank=2)
    slot = Slot((0, 0), ((0, 1), (2, 3)))
    assert ranks_of(local(spec, slot, CPUS, BASE)) == [("0", "0", "1,2"), ("1", "0", "3,4")]
    table = ["0/1,2/", "0/3,4/"]
    assert srun(spec, slot, CPUS, BASE, HOSTS)[0].argv == srun_argv(
        "--ntasks=2", "--distribution=arbitrary", "--nodelist=n0,n0", "--cpus-per-task=2",
        "--cpu-bind=mask_cpu:0x6,0x18", table=table)  # cores 1,2 and 3,4
    assert mpiexec(spec, slot, CPUS, BASE, HOSTS)[0].argv == openmpi_argv(2, "n0:2", table)
    assert mpiexec(spec, slot, CPUS, BASE, HOSTS, flavor="mpich")[0].argv == mpich_argv(
        2, "n0:2", ["-bind-to", "user:1+2,3+4"], table)


def test_gpu_ranks_see_their_own_gpus() -> None:
    spec = task(ranks=2, gpus_per_rank=1.0)
    slot = Slot((0, 0), ((0,), (1,)), (((2, ONE),), ((3, ONE),)))
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in local(spec, slot, GPUS, BASE)] == ["2", "3"]
    table = ["0/1/2", "0/2/3"]
    env = shared(PILOTFISH_RANKS="2", PILOTFISH_NODES="0")  # the script sets the GPUs
    assert srun(spec, slot, GPUS, BASE, HOSTS) == [Process(argv=srun_argv(
        "--ntasks=2", "--distribution=arbitrary", "--nodelist=n0,n0", "--cpus-per-task=1",
        "--cpu-bind=map_cpu:1,2", "--gpus-per-node=4", table=table,
        gpu_env="CUDA_VISIBLE_DEVICES"), env=env)]
    assert mpiexec(spec, slot, GPUS, BASE, HOSTS) == [Process(argv=openmpi_argv(
        2, "n0:2", table, gpu_env="CUDA_VISIBLE_DEVICES"), env=overlapping(env))]
    assert mpiexec(spec, slot, GPUS, BASE, HOSTS, flavor="mpich")[0].argv == mpich_argv(
        2, "n0:2", ["-bind-to", "user:1,2"], table, gpu_env="CUDA_VISIBLE_DEVICES")
    # Two ranks sharing one GPU by halves both name it.
    halves = Slot((0, 0), ((0,), (1,)), (((1, HALF),), ((1, HALF),)))
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in local(spec, halves, GPUS, BASE)] == [
        "1", "1"]
    assert srun(spec, halves, GPUS, BASE, HOSTS)[0].argv[-5:-3] == ["0/1/1", "0/2/1"]


def test_a_task_without_gpus_on_gpu_nodes_sees_none() -> None:
    spec, slot = task(), Slot((0,), ((0,),))
    assert local(spec, slot, GPUS, BASE)[0].env["CUDA_VISIBLE_DEVICES"] == ""
    env = shared(PILOTFISH_RANKS="1", PILOTFISH_NODES="0", CUDA_VISIBLE_DEVICES="")
    (under_srun,) = srun(spec, slot, GPUS, BASE, HOSTS)
    assert under_srun.env == env
    assert not any(a.startswith("--gpus") for a in under_srun.argv)
    # Each rank sets it empty itself: the launcher may set it to every GPU of the step.
    assert under_srun.argv[-6] == "CUDA_VISIBLE_DEVICES"
    assert mpiexec(spec, slot, GPUS, BASE, HOSTS)[0].argv == openmpi_argv(
        1, "n0:1", ["0/1/"], gpu_env="CUDA_VISIBLE_DEVICES",
        exported=[*X_PILOT, "-x", "CUDA_VISIBLE_DEVICES"])


def test_uneven_ranks_per_node() -> None:
    spec = task(ranks=5, ranks_per_node=2)  # 2, 2, 1
    slot = Slot((0, 0, 1, 1, 2), ((0,), (1,), (0,), (1,), (0,)))
    assert [p.env["PILOTFISH_NODE"] for p in local(spec, slot, CPUS, BASE)] == [
        "0", "0", "1", "1", "2"]
    table = ["0/1/", "0/2/", "1/1/", "1/2/", "2/1/"]
    assert srun(spec, slot, CPUS, BASE, HOSTS)[0].argv == srun_argv(
        "--ntasks=5", "--distribution=arbitrary", "--nodelist=n0,n0,n1,n1,n2",
        "--cpus-per-task=1", "--cpu-bind=map_cpu:1,2", table=table)  # n2 uses the first
    assert mpiexec(spec, slot, CPUS, BASE, HOSTS)[0].argv == openmpi_argv(
        5, "n0:2,n1:2,n2:1", table)
    assert mpiexec(spec, slot, CPUS, BASE, HOSTS, flavor="mpich")[0].argv == mpich_argv(
        5, "n0:2,n1:2,n2:1", ["-bind-to", "user:1,2"], table)


def test_ranks_follow_the_node_order_and_unbound_where_nodes_differ() -> None:
    # The allocator may list a task's nodes most-room-first: node 3 before node 1. The
    # launchers number ranks node by node in the pilot's order; the cores differ between
    # the nodes, which one map for every node cannot say: not bound, cores still told.
    spec = task(ranks=3)
    slot = Slot((3, 3, 1), ((4,), (5,), (0,)))
    assert ranks_of(local(spec, slot, CPUS, BASE)) == [("0", "3", "5"), ("1", "3", "6"),
                                                        ("2", "1", "1")]
    table = ["1/1/", "3/5/", "3/6/"]
    assert srun(spec, slot, CPUS, BASE, HOSTS)[0].argv == srun_argv(
        "--ntasks=3", "--distribution=arbitrary", "--nodelist=n1,n3,n3", "--cpus-per-task=1",
        "--cpu-bind=none", table=table)
    assert mpiexec(spec, slot, CPUS, BASE, HOSTS)[0].argv == openmpi_argv(3, "n1:1,n3:2",
                                                                          table)
    assert mpiexec(spec, slot, CPUS, BASE, HOSTS, flavor="mpich")[0].argv == mpich_argv(
        3, "n1:1,n3:2", [], table)


def test_nodes_of_a_later_partition_count_from_its_first() -> None:
    layout = NodeLayout(CORE_IDS, first_node=2)
    spec, slot = task(ranks=2, ranks_per_node=1), Slot((0, 1), ((0,), (0,)))
    assert ranks_of(local(spec, slot, layout, BASE)) == [("0", "2", "1"), ("1", "3", "1")]
    (process,) = srun(spec, slot, layout, BASE, HOSTS)
    assert "--nodelist=n2,n3" in process.argv and process.env["PILOTFISH_NODES"] == "2,3"
    assert process.argv[-5:-3] == ["2/1/", "3/1/"]


def test_odd_host_names_pass_through_as_single_arguments() -> None:
    odd = ["node-01.cluster.example.org", "n$(reboot)'\"x;&|`y`", "n2", "n3"]
    spec = task(ranks=2, ranks_per_node=1)
    slot = Slot((0, 1), ((0,), (0,)))
    argv = srun(spec, slot, CPUS, BASE, odd)[0].argv
    assert argv[3] == "--nodelist=node-01.cluster.example.org,n$(reboot)'\"x;&|`y`"
    assert len(argv) == len(srun_argv("", "", "", "", "", table=["", ""]))
    argv = mpiexec(spec, slot, CPUS, BASE, odd)[0].argv
    assert argv[4] == "node-01.cluster.example.org:1,n$(reboot)'\"x;&|`y`:1"
    assert srun_per_node(odd[:2], ["x"])[4] == f"--nodelist={odd[0]},{odd[1]}"


@pytest.mark.parametrize("name", ["a,b", "a b", "rack/7", "n[1-4]", "n*2", ""])
def test_host_names_srun_would_misread_are_refused(name: str) -> None:
    slot = Slot((0,), ((0,),))
    with pytest.raises(ValueError, match="cannot be passed to srun"):
        srun(task(), slot, CPUS, BASE, [name])
    with pytest.raises(ValueError, match="cannot be passed to srun"):
        srun_per_node(["n1", name], ["flux", "start"])


@pytest.mark.parametrize("name", ["a,b", "host:2", "a\tb"])
def test_host_names_mpiexec_would_misread_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="cannot be passed to mpiexec"):
        mpiexec(task(), Slot((0,), ((0,),)), CPUS, BASE, [name], flavor="mpich")


def test_a_node_without_a_host_name_is_refused() -> None:
    slot = Slot((0, 4), ((0,), (0,)))
    for launcher in (srun, mpiexec):
        with pytest.raises(ValueError, match="no host name for node 4"):
            launcher(task(ranks=2), slot, CPUS, BASE, HOSTS)


def test_bad_input_is_refused() -> None:
    slot = Slot((0,), ((0,),))
    with pytest.raises(ValueError, match="unknown mpiexec flavor"):
        mpiexec(task(), slot, CPUS, BASE, HOSTS, flavor="intel")  # type: ignore[arg-type]
    for launcher in LAUNCHERS.values():
        with pytest.raises(ValueError, match="no executable"):
            launcher(TaskSpec("f", "function"), slot, CPUS, BASE, HOSTS)


def test_launchers_by_name() -> None:
    assert list(LAUNCHERS) == ["local", "srun", "srun.pmix", "srun.pmi2", "mpiexec",
                               "mpiexec.openmpi", "mpiexec.mpich"]
    assert (LAUNCHERS["local"], LAUNCHERS["srun"], LAUNCHERS["mpiexec"]) == (local, srun,
                                                                            mpiexec)
    assert SRUN_LAUNCHERS == ("srun", "srun.pmix", "srun.pmi2")
    assert check_launcher("srun.pmix") is None
    for bad in ("srun.pmi3", "mpirun", "", None, 3):
        assert check_launcher(bad) == (f"unknown launcher {bad!r}; one of local, srun, "
                                       "srun.pmix, srun.pmi2, mpiexec, mpiexec.openmpi, "
                                       "mpiexec.mpich")
    # Each variant is its launcher with the PMI plugin or the program (and flavor) named.
    spec, slot = task(ranks=2, ranks_per_node=1), Slot((0, 1), ((0,), (0,)))
    table = ["0/1/", "1/1/"]
    env = shared(PILOTFISH_RANKS="2", PILOTFISH_NODES="0,1")
    options = ["--ntasks=2", "--distribution=arbitrary", "--nodelist=n0,n1",
               "--cpus-per-task=1", "--cpu-bind=map_cpu:1"]
    for plugin in ("pmix", "pmi2"):
        assert LAUNCHERS[f"srun.{plugin}"](spec, slot, CPUS, BASE, HOSTS) == [Process(
            argv=srun_argv(*options, f"--mpi={plugin}", table=table), env=env)]
    (openmpi,) = LAUNCHERS["mpiexec.openmpi"](spec, slot, CPUS, BASE, HOSTS)
    assert openmpi == Process(argv=["mpiexec.openmpi", *openmpi_argv(2, "n0:1,n1:1",
                                                                    table)[1:]],
                              env=overlapping(env))
    (mpich_,) = LAUNCHERS["mpiexec.mpich"](spec, slot, CPUS, BASE, HOSTS)
    assert mpich_ == Process(argv=["mpiexec.mpich", *mpich_argv(
        2, "n0:1,n1:1", ["-bind-to", "user:1"], table)[1:]], env=overlapping(env))


# ---- srun one process per node: how Flux instances start -------------------------------


def test_one_process_per_node() -> None:
    assert srun_per_node(["n1", "n2", "n3"], ["flux", "start", "app"], stdin_rank=0) == [
        "srun", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--nodelist=n1,n2,n3",
        "--overlap", "--input=0", "--export=ALL", "flux", "start", "app"]
    assert srun_per_node(["n1"], ["hostname"]) == [
        "srun", "--nodes=1", "--ntasks=1", "--ntasks-per-node=1", "--nodelist=n1",
        "--overlap", "--export=ALL", "hostname"]
    assert srun_per_node(["n1"], ["flux", "start"], whole=True, mpi="pmi2") == [
        "srun", "--nodes=1", "--ntasks=1", "--ntasks-per-node=1", "--nodelist=n1",
        "--overlap", "--whole", "--mpi=pmi2", "--export=ALL", "flux", "start"]
    assert start_command(["n1", "n2"]) == [  # Flux's brokers: PMI2, whole nodes
        "srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--nodelist=n1,n2",
        "--overlap", "--input=0", "--whole", "--mpi=pmi2", "--export=ALL", "flux", "start",
        "sh", "-c", 'echo "$FLUX_URI $(flux uri --remote "$FLUX_URI")"; exec cat >/dev/null']


# ---- the per-rank script, run for real -------------------------------------------------

SHOWN = ("OMP_NUM_THREADS", "PILOTFISH_TASK_ID", "PILOTFISH_RANK", "PILOTFISH_RANKS",
         "PILOTFISH_NODE", "PILOTFISH_NODES", "PILOTFISH_CORES", "CUDA_VISIBLE_DEVICES")


def run_rank(process: Process, variable: str, rank: int) -> dict[str, str]:
    """Run the per-rank script as `variable` = `rank` would, with `env` as the task."""
    argv = process.argv[process.argv.index("/bin/sh"):]
    argv[len(argv) - len(COMMAND):] = ["/usr/bin/env"]
    out = subprocess.run(argv, env={**process.env, variable: str(rank)}, check=True,
                         capture_output=True, text=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines())
    return {k: env[k] for k in SHOWN if k in env}


def mpich(spec: TaskSpec, slot: Slot, layout: NodeLayout, base: Mapping[str, str],
          hosts: Sequence[str] = ()) -> list[Process]:
    return mpiexec(spec, slot, layout, base, hosts, flavor="mpich")


@pytest.mark.parametrize(("launcher", "variable"), [
    (srun, "SLURM_PROCID"), (mpiexec, "OMPI_COMM_WORLD_RANK"), (mpich, "PMI_RANK")])
def test_every_launcher_gives_each_rank_what_local_gives_it(
        launcher: Callable[..., list[Process]], variable: str) -> None:
    spec = task(ranks=4, cores_per_rank=2, gpus_per_rank=1.0, ranks_per_node=2)
    slot = Slot((2, 2, 0, 0), ((0, 1), (2, 3), (4, 5), (6, 7)),
                (((0, ONE),), ((1, ONE),), ((2, ONE),), ((3, ONE),)))
    (process,) = launcher(spec, slot, GPUS, BASE, HOSTS)
    by_rank = [run_rank(process, variable, rank) for rank in range(4)]
    expected = [task_environment(BASE, spec, slot, r, GPUS) for r in (2, 3, 0, 1)]
    for env, want in zip(by_rank, expected, strict=True):
        want["PILOTFISH_RANK"] = env["PILOTFISH_RANK"]  # numbered node by node instead
        assert env == {k: want[k] for k in SHOWN}
    assert [env["PILOTFISH_RANK"] for env in by_rank] == ["0", "1", "2", "3"]
    assert [env["PILOTFISH_NODE"] for env in by_rank] == ["0", "0", "2", "2"]


def test_the_script_refuses_to_run_outside_its_launcher() -> None:
    (process,) = srun(task(), Slot((0,), ((0,),)), CPUS, BASE, HOSTS)
    argv = process.argv[process.argv.index("/bin/sh"):]
    done = subprocess.run(argv, env=process.env, capture_output=True, text=True)
    assert done.returncode != 0 and "not started by srun" in done.stderr


# ---- the process runner starts what its launcher says ----------------------------------


def test_the_runner_starts_a_launchers_processes_in_one_group(tmp_path: Path) -> None:
    calls: list[tuple[list[str], int, int]] = []  # argv, process group asked, pid

    def spawn(argv: list[str], env: dict[str, str], cwd: str | None, out_fd: int,
              err_fd: int, pgid: int) -> int:
        pid = spawn_process(argv, env, cwd, out_fd, err_fd, pgid)
        calls.append((argv, pgid, pid))
        return pid

    def two(spec: TaskSpec, slot: Slot, layout: NodeLayout, base: Mapping[str, str],
            hosts: Sequence[str] = ()) -> list[Process]:
        return [Process(argv=["sleep", "30"], env=dict(base)),
                Process(argv=[spec.executable or ""], env=dict(base))]

    events: list[object] = []
    runner = ProcessRunner(str(tmp_path), CPUS, spawn=spawn, launcher=two)
    runner.start(Reactor(), events.append)
    try:
        runner.launch([PlacedTask(TaskSpec("ok", "executable", "true"), Slot((0,), ((0,),)))])
        (started,) = events
        assert isinstance(started, TaskStarted)
        assert [(argv, pgid) for argv, pgid, _ in calls] == [
            (["sleep", "30"], 0), (["true"], started.pid)]  # both in the first's group
        # The second cannot start: the task fails, and its first is killed and reaped.
        calls.clear()
        runner.launch([PlacedTask(TaskSpec("bad", "executable", "/no/such/program"),
                                  Slot((0,), ((1,),)))])
        failed = events[-1]
        assert isinstance(failed, TaskFinished) and failed.state is TaskState.FAILED
        assert "cannot launch '/no/such/program'" in (failed.error or "")
        ((argv, _, pid),) = calls
        assert argv == ["sleep", "30"]  # only its first started
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped
        assert runner.running == 1
    finally:
        runner.stop(1.0)


def test_the_runner_starts_a_task_through_the_launcher_it_names(tmp_path: Path) -> None:
    argvs: list[list[str]] = []

    def spawn(argv: list[str], env: dict[str, str], cwd: str | None, out_fd: int,
              err_fd: int, pgid: int) -> int:
        argvs.append(argv)
        return spawn_process(["true"], env, cwd, out_fd, err_fd, pgid)

    def named(spec: TaskSpec, slot: Slot, layout: NodeLayout, base: Mapping[str, str],
              hosts: Sequence[str] = ()) -> list[Process]:
        return [Process(argv=["named", *hosts], env=dict(base))]

    reactor, events = Reactor(), list[object]()
    runner = ProcessRunner(str(tmp_path), CPUS, spawn=spawn, hosts=HOSTS,
                           launchers={"srun.pmix": named})
    runner.start(reactor, events.append)
    try:
        slot = Slot((0,), ((0,),))
        runner.launch([PlacedTask(TaskSpec("a", "executable", "/bin/app"), slot),
                       PlacedTask(TaskSpec("b", "executable", "/bin/app", launcher="srun.pmix"),
                                  slot),
                       PlacedTask(TaskSpec("c", "executable", "/bin/app", launcher="mpiexec"),
                                  slot)])
        # Its own launcher (the default) where it names none, or one the runner lacks.
        assert argvs == [["/bin/app"], ["named", *HOSTS], ["/bin/app"]]
        while runner.running:
            reactor.run_once(1.0)
    finally:
        runner.stop(1.0)


def test_a_launchers_task_is_signalled_once_it_has_settled(tmp_path: Path) -> None:
    """srun signalled while it launches its step leaves the step behind: a kill waits until
    the task has run `settle` seconds (processes.LAUNCH_SETTLE), then SIGTERM, SIGKILL after
    `kill_grace`."""
    reactor, events = Reactor(), list[object]()
    runner = ProcessRunner(str(tmp_path), CPUS, settle=0.5, kill_grace=0.3)
    runner.start(reactor, events.append)
    try:
        stubborn = ["-c", "trap '' TERM; echo up; sleep 30 & wait; sleep 30"]
        runner.launch([PlacedTask(TaskSpec("t", "executable", "/bin/sh", stubborn),
                                  Slot((0,), ((0,),)))])
        (started,) = events
        assert isinstance(started, TaskStarted) and started.pid is not None
        runner.cancel(["t"])
        reactor.run_once(0.2)
        os.kill(started.pid, 0)  # not signalled yet: still there
        deadline = time.monotonic() + 10
        while runner.running and time.monotonic() < deadline:
            reactor.run_once(0.1)
        finished = events[-1]
        assert isinstance(finished, TaskFinished) and finished.state is TaskState.CANCELED
        assert 0.5 + 0.3 <= finished.exec_stop - (finished.exec_start or 0) < 5
    finally:
        runner.stop(1.0)
