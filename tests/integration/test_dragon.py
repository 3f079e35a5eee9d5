"""A real Dragon runtime as a partition of a local pilot (skipped where Dragon is absent)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import pilotfish as pf
from pilotfish.backends.dragon import unavailable as dragon_available
from tests.conftest import children, process_gone

pytestmark = pytest.mark.skipif(dragon_available() is not None,
                                reason=f"no Dragon here: {dragon_available()}")
TD = pf.TaskDescription
PS = pf.PartitionSpec


def square(x: int) -> int:
    return x * x


def visible_gpus() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def fail(message: str) -> None:
    raise ValueError(message)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def nap_the_first_time(marker: str) -> str:
    """Sleeps (the first run, until killed) or returns at once (the run after a move)."""
    if os.path.exists(marker):
        return "moved"
    open(marker, "w").close()
    time.sleep(60)
    return "stayed"


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def dragon_launcher(pilot: pf.Pilot) -> int:
    assert pilot.process is not None
    launchers = [pid for pid, cmd in children(pilot.process.pid) if "dragon -s" in cmd]
    assert len(launchers) == 1, children(pilot.process.pid)
    return launchers[0]


def program() -> str:
    """The command line of the process a function runs in."""
    with open("/proc/self/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


@pytest.mark.parametrize("functions", [None, "pool"])  # None: the default, the workers
def test_functions_and_executables_run_in_dragon(session: pf.Session,
                                                 functions: str | None) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    pilot = session.start_pilot(pf.PilotDescription(
        nodes=2, cores_per_node=2, gpus_per_node=2,
        partitions=[PS(backend="dragon", functions=functions)]))
    where = session.submit(TD(function=program)).result(timeout=90)
    assert ("pilotfish.backends.functions.worker" in where) is (functions is None), where
    squares = session.submit([TD(function=square, args=(i,)) for i in range(100)])
    gpus = session.submit([TD(function=visible_gpus, gpus_per_rank=1) for _ in range(4)])
    broken = session.submit(TD(function=fail, args=("boom",)))
    echo = session.submit(TD(executable="/bin/sh", arguments=[
        "-c", 'echo "rank $PILOTFISH_RANK on $PILOTFISH_NODE"; echo oops >&2']))
    group = session.submit(TD(executable="/bin/sh", arguments=[
        "-c", 'echo "$PILOTFISH_RANK:$PILOTFISH_NODE"'], ranks=4, ranks_per_node=2))
    false = session.submit(TD(executable="/bin/false"))
    one_fails, one_fails_in_group = session.submit([TD(executable="/bin/sh", arguments=[
        "-c", '[ "$PILOTFISH_RANK" = 1 ] && exit 3; exec sleep 600'], ranks=3, tags=tags)
        for tags in ({}, {"pmi": "cray"})])  # a process each; a PMI group
    assert session.wait(timeout=90)
    assert [t.result() for t in squares] == [i * i for i in range(100)]
    assert {t.partition for t in squares} == {"dragon"}
    assert all(t.result() in ("0", "1") for t in gpus)  # one GPU each, its own
    with pytest.raises(ValueError, match="boom"):  # the function's own exception
        broken.result()
    assert echo.stdout in ("rank 0 on 0\n", "rank 0 on 1\n") and echo.stderr == "oops\n"
    assert group.state is pf.TaskState.DONE
    node_of = dict(line.split(":") for line in (group.stdout or "").split())
    assert sorted(node_of) == ["0", "1", "2", "3"]  # two ranks on each of two nodes
    assert node_of["0"] == node_of["1"] != node_of["2"] == node_of["3"]
    assert false.state is pf.TaskState.FAILED and false.error == "exit code 1"
    for task in (one_fails, one_fails_in_group):
        assert task.state is pf.TaskState.FAILED and task.error == (
            "a rank failed with exit code 3; the other ranks were killed")
    session.close()
    assert process_gone(pilot.process.pid, 30) if pilot.process else True
    assert set(os.listdir("/dev/shm")) <= shm_before  # Dragon's segments removed


def exit_at_once() -> None:
    os._exit(3)


def test_a_dragon_pool_worker_that_dies_fails_its_task_only(session: pf.Session) -> None:
    # The pool never reports a worker that died; the executor's watchdog does. The tasks
    # sent to that worker in the same pool call as the dying one are placed again.
    session.start_pilot(pf.PilotDescription(
        nodes=1, cores_per_node=2, partitions=[PS(backend="dragon", functions="pool")]))
    assert session.submit(TD(function=square, args=(2,))).result(timeout=90) == 4
    start = time.monotonic()
    dying, *mates = session.submit([TD(function=exit_at_once)]
                                   + [TD(function=square, args=(i,)) for i in range(20)])
    with pytest.raises(pf.TaskFailed, match=r"the Dragon pool worker running it died"):
        dying.result(timeout=30)
    assert time.monotonic() - start < 10
    assert [t.result(timeout=30) for t in mates] == [i * i for i in range(20)]
    after = session.submit([TD(function=square, args=(i,)) for i in range(20)])
    assert [t.result(timeout=30) for t in after] == [i * i for i in range(20)]


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def write_pid_and_nap(path: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(60)


def test_functions_run_in_pilotfish_workers_inside_dragon(
        session: pf.Session, tmp_path: Path) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    workers = (os.cpu_count() or 1) + 2  # more than the CPUs, all at once
    pilot = session.start_pilot(pf.PilotDescription(
        nodes=1, cores_per_node=workers, gpus_per_node=1, function_workers=workers,
        partitions=[PS(backend="dragon")]))
    squares = session.submit([TD(function=square, args=(i,)) for i in range(500)])
    assert [t.result(timeout=90) for t in squares] == [i * i for i in range(500)]
    pids = {t.result(timeout=30) for t in session.submit(
        [TD(function=pid_after, args=(0.5,)) for _ in range(workers)])}
    assert len(pids) == workers  # one task each, at once
    launcher = dragon_launcher(pilot)
    assert {os.getpgid(pid) for pid in pids} == {launcher}  # Dragon's processes
    assert pilot.process is not None
    assert not pids & {pid for pid, _ in children(pilot.process.pid)}  # not the agent's
    gpu = session.submit(TD(function=visible_gpus, gpus_per_rank=1))
    assert gpu.result(timeout=30) == "0"  # a one-off worker that sees its GPU only
    # Timeout and cancel interrupt the function; a killed worker fails only its task.
    late = session.submit(TD(function=nap, args=(60,), timeout=1))
    napping = session.submit(TD(function=nap, args=(60,)))
    marker = tmp_path / "pid"
    victim = session.submit(TD(function=write_pid_and_nap, args=(str(marker),)))
    assert session.wait_for([napping], pf.TaskState.RUNNING, timeout=60)
    assert napping.state is pf.TaskState.RUNNING
    wait_until(marker.exists)
    start = time.monotonic()
    napping.cancel()
    os.kill(int(marker.read_text()), signal.SIGKILL)
    with pytest.raises(pf.TaskFailed, match="timed out after 1"):
        late.result(timeout=10)
    with pytest.raises(pf.TaskFailed, match="function worker died"):
        victim.result(timeout=10)
    assert session.wait(timeout=10) and napping.state is pf.TaskState.CANCELED
    assert time.monotonic() - start < 10
    after = session.submit([TD(function=square, args=(i,)) for i in range(50)])
    assert [t.result(timeout=30) for t in after] == [i * i for i in range(50)]
    session.close()
    assert process_gone(launcher, 30)
    assert set(os.listdir("/dev/shm")) <= shm_before


def test_two_dragon_instances_run_side_by_side_and_clean_up_their_own(
        session: pf.Session) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    pilot = session.start_pilot(pf.PilotDescription(
        nodes=2, cores_per_node=2, partitions=[PS(backend="dragon", instances=2)]))
    tasks = session.submit([TD(function=square, args=(i,), partition=f"dragon.{i % 2}")
                            for i in range(10)])
    assert [t.result(timeout=90) for t in tasks] == [i * i for i in range(10)]
    assert pilot.process is not None
    assert len([pid for pid, cmd in children(pilot.process.pid) if "dragon -s" in cmd]) == 2
    session.close()
    assert set(os.listdir("/dev/shm")) <= shm_before


@pytest.mark.parametrize("functions", ["workers", "pool"])
def test_cancel_and_timeout_in_dragon(session: pf.Session, functions: str) -> None:
    session.start_pilot(pf.PilotDescription(
        nodes=1, cores_per_node=8, partitions=[PS(backend="dragon", functions=functions)]))
    late = session.submit(TD(executable="/bin/sleep", arguments=["60"], timeout=1))
    deaf = session.submit([TD(executable="/bin/sh", arguments=[
        "-c", "trap '' TERM; sleep 600"], timeout=1, ranks=ranks, tags=tags)
        for ranks, tags in ((1, {}), (2, {}), (2, {"pmi": "cray"}))])  # the last: a group
    napping = session.submit(TD(function=nap, args=(60,), timeout=1))
    sleeper = session.submit(TD(executable="/bin/sleep", arguments=["60"]))
    assert session.wait_for([sleeper], pf.TaskState.RUNNING, timeout=60)
    assert sleeper.state is pf.TaskState.RUNNING
    sleeper.cancel()
    assert session.wait(timeout=60)
    assert late.state is pf.TaskState.FAILED and "timed out after 1" in (late.error or "")
    for task in deaf:  # SIGKILL followed
        assert task.state is pf.TaskState.FAILED and "timed out after 1" in (task.error or "")
    assert napping.state is pf.TaskState.FAILED and "timed out after 1" in (napping.error or "")
    assert sleeper.state is pf.TaskState.CANCELED


def test_executables_canceled_while_dragon_starts_them_end_canceled(
        session: pf.Session) -> None:
    # Dragon starts processes one at a time on the executor's launcher thread: a cancel
    # finds tasks waiting to start, one starting, and some running.
    pilot = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=16,
                                                    partitions=[PS(backend="dragon")]))
    sleepers = session.submit([TD(executable="/bin/sleep", arguments=["60"])
                               for _ in range(16)])
    assert session.wait_for(sleepers[:1], pf.TaskState.RUNNING, timeout=60)  # started first
    assert sleepers[0].state is pf.TaskState.RUNNING
    assert sleeping_in(dragon_launcher(pilot))
    for task in sleepers:
        task.cancel()
    assert session.wait(timeout=30)
    assert {t.state for t in sleepers} == {pf.TaskState.CANCELED}
    group = dragon_launcher(pilot)  # it leads the runtime's process group
    wait_until(lambda: not sleeping_in(group), timeout=10)


def sleeping_in(pgid: int) -> list[int]:
    """The `sleep 60` processes of process group `pgid`."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:2] == [b"/bin/sleep", b"60"] and (
                        os.getpgid(int(name)) == pgid):
                    found.append(int(name))
        except OSError:
            continue
    return found


def test_a_lost_dragon_partition_fails_or_moves_only_its_tasks(session: pf.Session,
                                                                tmp_path: Path) -> None:
    pilot = session.start_pilot(pf.PilotDescription(
        nodes=2, cores_per_node=2,
        partitions=[PS(backend="dragon", nodes=1), PS(backend="builtin", nodes=1)]))
    on_dragon = session.submit([TD(executable="/bin/sleep", arguments=["60"],
                                   partition="dragon")])
    marker = tmp_path / "started"
    movable = session.submit(TD(function=nap_the_first_time, args=(str(marker),), retries=1))
    on_builtin = session.submit(TD(executable="/bin/sleep", arguments=["2"],
                                   partition="builtin"))
    assert session.wait_for(on_dragon, pf.TaskState.RUNNING, timeout=60)
    assert {t.state for t in on_dragon} == {pf.TaskState.RUNNING}
    wait_until(marker.exists)
    os.killpg(dragon_launcher(pilot), signal.SIGKILL)
    for task in on_dragon:
        with pytest.raises(pf.TaskFailed, match="partition 'dragon' lost: the Dragon runtime "
                                                "exited"):
            task.result(timeout=30)
    assert movable.result(timeout=30) == "moved" and movable.partition == "builtin"
    assert on_builtin.result(timeout=30) == 0
    after = session.submit([TD(function=square, args=(3,)), TD(executable="/bin/true")])
    assert [t.result(timeout=30) for t in after] == [9, 0]
    assert {t.partition for t in after} == {"builtin"}
    pinned = session.submit(TD(executable="/bin/true", partition="dragon"))
    with pytest.raises(pf.TaskFailed, match="partition 'dragon' lost: the Dragon runtime "):
        pinned.result(timeout=30)


def test_a_pilot_whose_every_partition_was_lost_says_so(session: pf.Session) -> None:
    pilot = session.start_pilot(pf.PilotDescription(
        nodes=1, cores_per_node=2, partitions=[PS(backend="dragon")]))
    assert session.submit(TD(function=square, args=(3,))).result(timeout=90) == 9
    os.killpg(dragon_launcher(pilot), signal.SIGKILL)
    wait_until(lambda: (session.submit(TD(function=square, args=(1,))).exception(timeout=30)
                        is not None))
    late = session.submit(TD(executable="/bin/true"))
    with pytest.raises(pf.TaskFailed, match="every partition was lost: 'dragon': the Dragon "
                                            "runtime exited"):
        late.result(timeout=30)


def test_tasks_waiting_in_a_lost_partitions_queue_move_too(session: pf.Session) -> None:
    pilot = session.start_pilot(pf.PilotDescription(
        nodes=2, cores_per_node=2,
        partitions=[PS(backend="dragon", nodes=1), PS(backend="builtin", nodes=1)]))
    assert session.submit(TD(function=square, args=(3,), partition="dragon")).result(
        timeout=90) == 9
    # The built-in partition busy with a queue of its own: it takes nothing from Dragon's.
    busy = session.submit([TD(executable="/bin/sleep", arguments=["2"], partition="builtin")
                           for _ in range(3)])
    # Each takes the whole Dragon node: one runs, the others wait in its queue.
    naps = session.submit([TD(function=nap, args=(0.2,), cores_per_rank=2, retries=1)
                           for _ in range(4)])
    assert session.wait_for(naps[:1], pf.TaskState.RUNNING, timeout=60)  # the first runs
    os.killpg(dragon_launcher(pilot), signal.SIGKILL)
    assert [t.result(timeout=60) for t in naps] == [0.2] * 4
    assert {t.partition for t in naps} == {"builtin"}
    assert [t.result(timeout=30) for t in busy] == [0, 0, 0]
    assert pilot.active


def test_executables_dragon_cannot_start_fail_with_the_reason(session: pf.Session,
                                                              tmp_path: Path) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2,
                                            partitions=[PS(backend="dragon")]))
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from $PWD\n")
    script.chmod(0o755)
    bad = session.submit([TD(executable="/no/such/program"), TD(executable="no-such-program"),
                          TD(executable=str(tmp_path / "hello.sh"), sandbox="/proc/no/dir")])
    for task, why in zip(bad, ["'/no/such/program': no such executable file",
                               "'no-such-program': no such executable file in PATH",
                               "No such file or directory: '/proc/no'"], strict=True):
        with pytest.raises(pf.TaskFailed, match=f"cannot launch .*{why}"):
            task.result(timeout=90)
    relative = session.submit(TD(executable="./hello.sh", sandbox=str(tmp_path)))
    assert relative.result(timeout=60) == 0 and relative.stdout == f"hello from {tmp_path}\n"


def test_a_dead_agents_dragon_runtime_and_segments_are_cleaned_up(
        session: pf.Session) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    pilot = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2,
                                                    partitions=[PS(backend="dragon")]))
    assert session.submit(TD(function=square, args=(3,))).result(timeout=90) == 9
    sleeper = session.submit(TD(executable="/bin/sleep", arguments=["60"]))
    assert session.wait_for([sleeper], pf.TaskState.RUNNING, timeout=60)
    assert sleeper.state is pf.TaskState.RUNNING
    launcher = dragon_launcher(pilot)
    assert set(os.listdir("/dev/shm")) - shm_before  # the runtime's segments
    assert pilot.process is not None
    os.kill(pilot.process.pid, signal.SIGKILL)
    with pytest.raises(pf.TaskFailed, match="agent"):
        sleeper.result(timeout=30)
    assert process_gone(launcher, 10)
    # Killed with the agent's session (a SIGKILLed process lingers a moment under load).
    wait_until(lambda: not sleeping_in(launcher), timeout=10)
    assert set(os.listdir("/dev/shm")) <= shm_before


def test_dragon_partitions_need_dragon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pilotfish.backends.dragon.unavailable", lambda: "not here")
    with pytest.raises(pf.InvalidDescription, match="partitions: no dragon here: not here"):
        pf.PilotDescription(nodes=2, partitions=[PS(backend="dragon")])
