"""Simulated pilots: the real client, agent and scheduler, tasks on a jumping virtual clock."""

from __future__ import annotations

import threading
import time

import pytest

import pilotfish as pf
from pilotfish.backends.base import BackendEvent, PlacedTask, TaskFinished, TaskStarted
from pilotfish.backends.simulated import SimulatedBackend, simulated_duration
from pilotfish.cli import main
from pilotfish.messages import TaskSpec
from pilotfish.metrics import session_metrics
from pilotfish.partitions import PartitionError
from pilotfish.reactor import Reactor
from pilotfish.resources import Slot

TD = pf.TaskDescription


def sim_pilot(session: pf.Session, **shape: object) -> pf.Pilot:
    desc = pf.PilotDescription(backend="simulated", **shape)  # type: ignore[arg-type]
    return session.start_pilot(desc)


def times(task: pf.Task) -> tuple[float, float]:
    events = dict(task.events)
    return events["RUNNING"], events["exec_stop"]


def test_durations_come_from_the_description_or_sleep_arguments() -> None:
    assert simulated_duration(TaskSpec("a", "executable", "sleep", ["2.5"])) == 2.5
    assert simulated_duration(TaskSpec("a", "executable", "/bin/sleep", ["7"])) == 7.0
    assert simulated_duration(TaskSpec("a", "executable", "sleep", ["7"], duration=1.0)) == 1.0
    assert simulated_duration(TaskSpec("a", "executable", "sleep", ["1m"])) == 0.0
    assert simulated_duration(TaskSpec("a", "executable", "/bin/true")) == 0.0
    assert simulated_duration(TaskSpec("a", "function")) == 0.0


def test_an_hour_of_tasks_takes_a_moment_and_keeps_exact_virtual_times(
        session: pf.Session) -> None:
    sim_pilot(session, nodes=1, cores_per_node=2)
    started = time.monotonic()
    tasks = session.submit([TD(executable="sleep", arguments=["600"]) for _ in range(12)])
    assert session.wait(timeout=60)
    assert time.monotonic() - started < 30  # 3,600 simulated seconds
    assert all(t.state is pf.TaskState.DONE for t in tasks)
    spans = sorted(times(t) for t in tasks)
    assert all(end - start == pytest.approx(600, abs=1e-6) for start, end in spans)
    # Two cores: six waves of two, each starting when the one before ends.
    first = spans[0][0]
    waves = sorted({round(start - first) for start, _ in spans})
    assert waves == [0, 600, 1200, 1800, 2400, 3000]
    m = session.metrics()  # flushes the journal first
    assert m.core_utilization == pytest.approx(1.0, abs=1e-3)
    assert m.makespan_s == pytest.approx(3600, rel=0.01)
    # A task's final state is stamped when its update left the agent, before the clock
    # jumped to the next wave's end (not 600 simulated seconds late).
    assert m.end_to_final is not None and m.end_to_final.max < 60, m.end_to_final


def test_multi_node_gpu_tasks_and_tags_are_placed_as_for_real(session: pf.Session) -> None:
    sim_pilot(session, nodes=4, cores_per_node=8, gpus_per_node=4)
    mpi = session.submit(TD(executable="sleep", arguments=["100"], ranks=8, cores_per_rank=2,
                            gpus_per_rank=1, ranks_per_node=4))
    fits_later = session.submit(TD(executable="sleep", arguments=["10"], ranks=4,
                                   cores_per_rank=8))
    assert session.wait(timeout=60)
    assert mpi.state is pf.TaskState.DONE and fits_later.state is pf.TaskState.DONE
    # The 8-rank task held two whole nodes' GPUs; the 4-node task had to wait for it.
    assert times(fits_later)[0] == pytest.approx(times(mpi)[1], abs=1.0)


def test_a_task_longer_than_its_timeout_fails_at_the_timeout(session: pf.Session) -> None:
    sim_pilot(session, nodes=1, cores_per_node=1)
    task = session.submit(TD(executable="sleep", arguments=["100"], timeout=30))
    with pytest.raises(pf.TaskFailed, match="timed out"):
        task.result(timeout=30)
    start, end = times(task)
    assert end - start == pytest.approx(30, abs=1e-6)


def test_cancel_ends_a_running_simulated_task_and_frees_its_core() -> None:
    backend = SimulatedBackend()
    events: list[BackendEvent] = []
    backend.start(Reactor(), events.append)
    slot = Slot((0,), ((0,),))
    backend.launch([PlacedTask(TaskSpec("long", "executable", "sleep", ["1e6"]), slot),
                    PlacedTask(TaskSpec("short", "executable", "sleep", ["5"]), slot)])
    assert [type(e) for e in events] == [TaskStarted, TaskStarted]
    backend.cancel(["long", "unknown"])
    (canceled,) = events[2:]
    assert isinstance(canceled, TaskFinished) and canceled.state is pf.TaskState.CANCELED
    assert backend._on_idle() == 0.0  # nothing due: the clock jumps to the short task's end
    (done,) = events[3:]
    assert isinstance(done, TaskFinished) and done.uid == "short"
    assert done.exec_stop - done.exec_start == pytest.approx(5)
    assert backend._on_idle() is None  # nothing left: no jump to the canceled one's end
    assert backend.clock.jumps == 1


def test_functions_run_as_slotted_tasks_of_zero_length(session: pf.Session) -> None:
    sim_pilot(session, nodes=1, cores_per_node=4)
    tasks = session.submit([TD(function=pow, args=(2, 3)) for _ in range(50)])
    assert session.wait(timeout=30)
    assert all(t.state is pf.TaskState.DONE for t in tasks)


def test_pilotfish_simulate_prints_throughput_makespan_and_utilization(
        tmp_path, capsys) -> None:
    code = main(["simulate", "--platform", "local", "--nodes", "3", "--workload", "sleep",
                 "--tasks", "300", "--duration", "5", "--sessions", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "decisions/s" in out and "simulated makespan" in out
    assert "CPU utilization" in out and "GPU utilization" in out
    session_dir = next(tmp_path.iterdir())
    assert session_metrics(session_dir).n_done == 300
    assert main(["report", str(session_dir)]) == 0
    assert "core utilization" in capsys.readouterr().out
    # The same through srun job steps (modelled): slower to start, said so.
    srun_dir = tmp_path / "srun"
    assert main(["simulate", "--platform", "frontier", "--nodes", "4", "--workload", "sleep",
                 "--tasks", "2000", "--duration", "1", "--via", "srun",
                 "--sessions", str(srun_dir)]) == 0
    assert "each an srun job step (modelled" in capsys.readouterr().out
    started = session_metrics(next(srun_dir.iterdir())).started_per_s
    assert started is not None and started <= 152.5


def test_the_hybrid_workload_needs_gpus(tmp_path) -> None:
    with pytest.raises(ValueError, match="needs GPUs"):
        main(["simulate", "--platform", "local", "--nodes", "1", "--workload", "hybrid",
              "--tasks", "10", "--sessions", str(tmp_path)])


def test_an_srun_partition_launches_through_a_modelled_controller(
        session: pf.Session) -> None:
    """On a simulated pilot, a partition on the srun backend starts its tasks as srun
    would (backends/simulated.py SRUN: 152 steps a second at most, each 40 ms late),
    while the pilot's own partition starts them at once: the paper's comparison."""
    sim_pilot(session, platform="frontier", nodes=8, partitions=[
        pf.PartitionSpec(backend="srun", nodes=4, name="srun"),
        pf.PartitionSpec(backend="builtin", nodes=4, name="pilot")])
    for name in ("srun", "pilot"):
        session.submit([TD(executable="sleep", arguments=["1"], partition=name)
                        for _ in range(2000)])
    assert session.wait(timeout=120)
    groups = session.metrics(by="partition").groups
    srun, ours = groups["srun"], groups["pilot"]
    assert srun.n_done == ours.n_done == 2000
    assert srun.started_per_s is not None and ours.started_per_s is not None
    assert 140 <= srun.started_per_s <= 152.5, srun.started_per_s
    assert ours.started_per_s > 1.3 * srun.started_per_s  # (224 cores: 224 a second)
    assert srun.core_utilization is not None and srun.core_utilization < 0.7


def test_flux_instances_launch_apart_and_srun_partitions_share_one_controller(
        session: pf.Session) -> None:
    """Each Flux instance admits its own jobs (FLUX: 700 a second each), while every
    srun partition goes through the one slurmctld (SRUN: 152 a second in all)."""
    sim_pilot(session, platform="frontier", nodes=16, partitions=[
        pf.PartitionSpec(backend="flux", nodes=8, instances=2, name="flux"),
        pf.PartitionSpec(backend="srun", nodes=8, instances=2, name="srun")])
    n = 1500
    for name in ("flux.0", "flux.1", "srun.0", "srun.1"):  # (0 s tasks: launch-bound)
        session.submit([TD(executable="/bin/true", partition=name) for _ in range(n)])
    assert session.wait(timeout=120)
    groups = session.metrics(by="partition").groups
    rates = {name: groups[name].started_per_s or 0.0 for name in groups}
    assert all(groups[name].n_done == n for name in groups), groups
    for name in ("srun.0", "srun.1"):  # about half of the one controller's 152 each
        assert 65 <= rates[name] <= 90, rates
    for name in ("flux.0", "flux.1"):  # 700 each, not half of it
        assert 600 <= rates[name] <= 710, rates


def test_a_partitions_own_launch_costs_replace_its_backends_model(
        session: pf.Session) -> None:
    """`PartitionSpec(launch=(latency, rate))`: a cluster's measured srun, say."""
    sim_pilot(session, platform="frontier", nodes=4, partitions=[
        pf.PartitionSpec(backend="srun", launch=(0.5, 40.0))])
    tasks = session.submit([TD(executable="/bin/true") for _ in range(400)])
    assert session.wait(timeout=60)
    m = session.metrics()
    assert m.started_per_s is not None and 38 <= m.started_per_s <= 40.5
    submitted = min(dict(t.events)["SUBMITTED"] for t in tasks)
    assert min(dict(t.events)["RUNNING"] for t in tasks) - submitted >= 0.5  # its latency


@pytest.mark.parametrize("launch", [(0.1,), (-1.0, 5.0), (0.0, 0.0), ("0", 5.0), [0.1, 5.0]])
def test_a_bad_launch_model_is_refused(launch: object) -> None:
    with pytest.raises(PartitionError, match="launch"):
        pf.PartitionSpec(backend="srun", launch=launch)  # type: ignore[arg-type]


def test_tasks_callbacks_submit_start_on_the_virtual_clock_when_they_would(
        session: pf.Session) -> None:
    """A workflow reacting in callbacks: what a callback submits when a task ends starts
    then, on the simulated clock, not after the clock jumped to the next end."""
    sim_pilot(session, nodes=1, cores_per_node=2)
    short, long = session.submit([TD(executable="sleep", arguments=["100"]),
                                  TD(executable="sleep", arguments=["1000"])])
    follow: list[pf.Task] = []
    submitted = threading.Event()

    def next_step(done: pf.Task) -> None:
        follow.append(session.submit(TD(executable="sleep", arguments=["10"])))
        if len(follow) < 3:  # a chain of reactions, each on the core short's freed
            follow[-1].add_done_callback(next_step)
        else:
            submitted.set()

    short.add_done_callback(next_step)
    assert submitted.wait(60) and session.wait([long, *follow], timeout=60)
    origin = times(short)[0]
    starts = [round(times(t)[0] - origin) for t in follow]
    assert starts == [100, 110, 120], starts  # (not 1000: when long ended)
