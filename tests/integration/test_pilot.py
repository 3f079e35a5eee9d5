"""A real agent process, real tasks: each behaviour of the local pilot end to end."""

from __future__ import annotations

import collections
import os
import sqlite3
import sys
import threading
import time
from concurrent.futures import as_completed
from pathlib import Path

import pytest

import pilotfish as pf
from pilotfish import TaskDescription as TD
from pilotfish import TaskState
from pilotfish.journal import connect_readonly

from ..conftest import children, process_gone

pytestmark = pytest.mark.timeout(60)


def fail_with(message: str) -> None:
    raise ZeroDivisionError(message)


def sleep_for(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def crash_worker() -> None:
    os._exit(3)


def test_the_issue_example(session: pf.Session, pilot: pf.Pilot) -> None:
    t = session.submit(TD(executable="/bin/echo", arguments=["hello"]))
    many = session.submit([TD(executable="/bin/sleep", arguments=["0.1"]) for _ in range(100)])
    f = session.submit(TD(function=pow, args=(2, 10)))
    assert session.wait(timeout=60)
    assert t.state == TaskState.DONE and t.exit_code == 0 and t.stdout.strip() == "hello"
    assert t.result() == 0
    assert f.result() == 1024
    assert all(x.state == TaskState.DONE for x in many)
    names = [e for e, _ in t.events]
    assert names == ["NEW", "SUBMITTED", "SCHEDULED", "launch", "RUNNING", "exec_stop", "DONE"]
    stamps = [ts for _, ts in t.events]
    assert stamps == sorted(stamps)


def test_nonzero_exit_fails_with_exit_code_and_stderr(session: pf.Session, pilot: pf.Pilot
                                                      ) -> None:
    t = session.submit(TD(executable="/bin/sh", arguments=["-c", "echo oops >&2; exit 3"]))
    with pytest.raises(pf.TaskFailed) as info:
        t.result(timeout=30)
    assert t.state == TaskState.FAILED and t.exit_code == 3
    assert info.value.exit_code == 3 and "oops" in str(info.value)
    assert "exit code 3" in t.error


def test_missing_executable_fails_with_reason(session: pf.Session, pilot: pf.Pilot) -> None:
    t = session.submit(TD(executable="/no/such/program"))
    with pytest.raises(pf.TaskFailed, match="cannot launch"):
        t.result(timeout=30)


def test_function_exception_carries_remote_traceback(session: pf.Session, pilot: pf.Pilot
                                                     ) -> None:
    t = session.submit(TD(function=fail_with, args=("bad input",)))
    with pytest.raises(ZeroDivisionError, match="bad input") as info:
        t.result(timeout=30)
    assert t.state == TaskState.FAILED
    assert "fail_with" in str(info.value.__cause__)  # the remote traceback
    assert "worker.py" not in t.error  # from the user's code on, not the worker's
    # Shown once: as the cause; the note only names the task.
    assert info.value.__notes__ == [f"(raised by task {t.uid}: its remote traceback is above)"]


def test_environment_ranks_and_gpus(session: pf.Session, pilot: pf.Pilot) -> None:
    script = ('echo "$PILOTFISH_TASK_ID $PILOTFISH_RANK/$PILOTFISH_RANKS '
              'gpu=$CUDA_VISIBLE_DEVICES $X"')
    t = session.submit(TD(executable="/bin/sh", arguments=["-c", script], ranks=4,
                          gpus_per_rank=1, environment={"X": "userval"}))
    assert t.result(timeout=30) == 0
    lines = sorted(t.stdout.split("\n")[:-1])
    assert [line.split()[1] for line in lines] == ["0/4", "1/4", "2/4", "3/4"]
    assert all(line.startswith(t.uid) and line.endswith("userval") for line in lines)
    gpus = sorted(line.split()[2] for line in lines)
    assert gpus == ["gpu=0", "gpu=1", "gpu=2", "gpu=3"]
    plain = session.submit(TD(executable="/bin/sh",
                              arguments=["-c", "echo gpu=$CUDA_VISIBLE_DEVICES"]))
    plain.result(timeout=30)
    assert plain.stdout.strip() == "gpu="


def test_fractional_gpus_share_one_device(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=4, gpus_per_node=1))
    script = "echo $CUDA_VISIBLE_DEVICES; sleep 0.5"
    a, b = session.submit([TD(executable="/bin/sh", arguments=["-c", script],
                              gpus_per_rank=0.5) for _ in range(2)])
    assert session.wait(timeout=30)
    assert a.stdout.strip() == b.stdout.strip() == "0"
    # both ran at once: their execution overlapped
    start = {t.uid: dict(t.events)["RUNNING"] for t in (a, b)}
    stop = {t.uid: dict(t.events)["exec_stop"] for t in (a, b)}
    assert max(start.values()) < min(stop.values())


def test_timeout_kills_the_whole_process_group(session: pf.Session, pilot: pf.Pilot,
                                               tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $! > {pids}; echo $$ >> {pids}; wait"
    t = session.submit(TD(executable="/bin/sh", arguments=["-c", script], timeout=1))
    with pytest.raises(pf.TaskFailed, match="timed out"):
        t.result(timeout=30)
    for pid in map(int, pids.read_text().split()):
        assert process_gone(pid, 5)


def test_cancel_queued_and_running(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1))
    running = session.submit(TD(executable="/bin/sleep", arguments=["60"]))
    queued = session.submit(TD(executable="/bin/sleep", arguments=["60"]))
    assert session.wait([running], timeout=0.01) is False
    # progress updates arrive within 50 ms
    assert session.wait_for([running], TaskState.RUNNING, timeout=30)
    assert running.state is TaskState.RUNNING
    session.cancel([queued, running])  # one message: the queued one never starts
    assert session.wait(timeout=30)
    assert running.state is queued.state is TaskState.CANCELED
    assert running.cancelled() and queued.cancelled()
    assert "RUNNING" not in dict(queued.events)
    assert process_gone(running.pid, 5)
    assert not running.cancel()  # final states are final


def test_wait_for_a_state(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1))
    running, queued = session.submit([TD(executable="/bin/sleep", arguments=["60"])] * 2)
    assert session.wait_for([running], TaskState.RUNNING, timeout=30)
    assert running.state is TaskState.RUNNING
    assert session.wait_for([running], "SCHEDULED", timeout=0)  # a later state counts
    started = time.monotonic()  # the queued one never runs while the first holds the core
    assert session.wait_for([running, queued], TaskState.RUNNING, timeout=0.3) is False
    assert 0.3 <= time.monotonic() - started < 5
    assert queued.state is TaskState.SUBMITTED
    queued.cancel()  # it ends without reaching RUNNING: that ends the wait too
    assert session.wait_for([running, queued], TaskState.RUNNING, timeout=30)
    assert queued.state is TaskState.CANCELED and "RUNNING" not in dict(queued.events)
    never = session.submit(TD(executable="/bin/true", cores_per_rank=2))  # fails at once
    assert session.wait_for([never], TaskState.RUNNING, timeout=30)
    assert never.state is TaskState.FAILED
    assert session._state_waiters == 0  # the channel thread notifies only while one waits
    with pytest.raises(ValueError, match="RUN"):
        session.wait_for([running], "RUN", timeout=1)
    running.cancel()


def test_function_timeout_and_cancel_keep_the_worker(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1))
    slow = session.submit(TD(function=sleep_for, args=(60,), timeout=0.5))
    with pytest.raises(pf.TaskFailed, match="timed out"):
        slow.result(timeout=30)
    running = session.submit(TD(function=sleep_for, args=(60,)))
    assert session.wait_for([running], TaskState.RUNNING, timeout=30)
    assert running.cancel()
    assert session.wait([running], timeout=30)
    assert running.state is TaskState.CANCELED
    assert session.submit(TD(function=pow, args=(3, 2))).result(timeout=30) == 9


def test_worker_death_fails_its_task_only(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1))
    # Same worker, just before: its result may still be held in the worker when it dies
    # (then it is lost with it, and runs again only as its retries allow).
    before = session.submit(TD(function=pow, args=(3, 3), retries=1))
    bad = session.submit(TD(function=crash_worker))
    after = session.submit([TD(function=pow, args=(2, i)) for i in range(20)])
    with pytest.raises(pf.TaskFailed, match="worker died"):
        bad.result(timeout=30)
    assert before.result(timeout=30) == 27  # not blamed for its neighbour's crash
    assert before.attempt in (1, 2)
    assert [t.result(timeout=30) for t in after] == [2**i for i in range(20)]


def _workers_of(pid: int) -> int:
    """How many function workers process `pid` has started."""
    return sum("pilotfish.backends.functions.worker" in cmd for _, cmd in children(pid))


def test_function_workers_asked_for_start_with_the_pilot(session: pf.Session) -> None:
    """Asked for: all start with the pilot. By default a worker per core, of which as
    many as the host has CPUs start with the pilot, the others at their first task."""
    cores = (os.cpu_count() or 1) + 2
    default = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=cores))
    asked = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=cores,
                                                    function_workers=cores))
    assert default.process is not None and asked.process is not None
    deadline = time.monotonic() + 30
    while _workers_of(asked.process.pid) < cores or _workers_of(
            default.process.pid) < cores - 2:
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.05)
    time.sleep(0.3)
    assert _workers_of(default.process.pid) == cores - 2
    tasks = session.submit([TD(function=time.sleep, args=(1,)) for _ in range(cores)],
                           pilot=default)
    assert session.wait(tasks, timeout=60)
    assert _workers_of(default.process.pid) == cores  # one per core


def test_the_first_calls_go_to_the_workers_started_with_the_pilot(
        session: pf.Session) -> None:
    """On a pilot of several (virtual) nodes, the workers that start with it are the
    ones the scheduler feeds first: a first burst starts no other."""
    cpus = os.cpu_count() or 1
    pilot = session.start_pilot(pf.PilotDescription(nodes=2, cores_per_node=cpus + 4))
    assert pilot.process is not None
    deadline = time.monotonic() + 30
    while _workers_of(pilot.process.pid) < cpus:
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.05)
    calls = session.submit([TD(function=time.sleep, args=(0.5,)) for _ in range(cpus)])
    assert session.wait(calls, timeout=30)
    assert _workers_of(pilot.process.pid) == cpus  # (they ran on those)


def test_calls_waiting_for_inputs_find_their_workers_started(session: pf.Session) -> None:
    """While function tasks wait for their inputs, the workers they will be fed to start
    (by default only as many as the host has CPUs start with the pilot)."""
    cores = (os.cpu_count() or 1) + 4
    pilot = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=cores))
    gate = session.submit(TD(executable="/bin/sleep", arguments=["4"]))
    calls = session.submit([TD(function=time.sleep, args=(0,), after=[gate])
                            for _ in range(cores - 1)])
    assert pilot.process is not None
    deadline = time.monotonic() + 30
    while _workers_of(pilot.process.pid) < cores - 1:
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.05)
    assert not gate.done()  # (they started while it ran)
    assert session.wait(calls, timeout=30)
    assert {t.state for t in calls} == {pf.TaskState.DONE}
    assert _workers_of(pilot.process.pid) == cores - 1


def test_task_that_can_never_fit_fails_at_once(session: pf.Session, pilot: pf.Pilot) -> None:
    big = session.submit(TD(executable="/bin/true", ranks=3, cores_per_rank=4,
                            ranks_per_node=3))
    gpu = session.submit(TD(executable="/bin/true", gpus_per_rank=8))
    with pytest.raises(pf.TaskFailed, match=r"3 ranks per node, a node holds at most 2 "
                                            r"\(8 cores / 4 per rank\)"):
        big.result(timeout=10)
    with pytest.raises(pf.TaskFailed, match="GPU"):
        gpu.result(timeout=10)
    assert "RUNNING" not in dict(big.events)


def test_bad_descriptions_raise_before_anything_is_submitted(session: pf.Session,
                                                             pilot: pf.Pilot) -> None:
    with pytest.raises(ValueError, match="executable"):
        TD()
    with pytest.raises(ValueError, match="not both"):
        TD(executable="/bin/true", function=pow)
    with pytest.raises(ValueError, match="cores_per_rank"):
        TD(executable="/bin/true", cores_per_rank=-1)
    with pytest.raises(TypeError, match="nodes_wanted"):
        TD(executable="/bin/true", nodes_wanted=3)  # type: ignore[call-arg]
    lock = threading.Lock()
    with pytest.raises(TypeError, match="function"):
        TD(function=lambda: lock)
    with pytest.raises(TypeError, match="item 1"):
        session.submit([TD(executable="/bin/true"), "not a description"])  # type: ignore[list-item]
    assert session.outstanding == 0
    assert session.wait(timeout=1)


def test_priority_orders_queued_tasks(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1))
    blocker = session.submit(TD(executable="/bin/sleep", arguments=["0.5"]))
    low = session.submit([TD(executable="/bin/true", priority=0) for _ in range(3)])
    high = session.submit([TD(executable="/bin/true", priority=5) for _ in range(3)])
    assert session.wait(timeout=30)
    assert blocker.state is TaskState.DONE
    first_low = min(dict(t.events)["RUNNING"] for t in low)
    last_high = max(dict(t.events)["RUNNING"] for t in high)
    assert last_high < first_low


def test_executor_futures_callbacks(session: pf.Session, pilot: pf.Pilot) -> None:
    seen: list[int] = []
    with session.executor() as ex:
        futures = [ex.submit(pow, 2, i) for i in range(50)]
        futures[0].add_done_callback(lambda f: seen.append(f.result()))
        assert sorted(f.result() for f in as_completed(futures, timeout=30)) == sorted(
            2**i for i in range(50))
        assert list(ex.map(abs, [-1, -2, -3], timeout=30)) == [1, 2, 3]
    assert seen == [1]


def inverse(x: int, scale: int) -> float:
    return scale / x


def test_executor_map_in_chunks(session: pf.Session, pilot: pf.Pilot) -> None:
    with session.executor() as ex:
        assert list(ex.map(inverse, [1, 2, 4, 5, 8], [40] * 5, chunksize=2)) == [
            40, 20, 10, 8, 5]
        assert len(ex._tasks) == 3  # a task per chunk
        assert list(ex.map(abs, range(-5, 0), chunksize=4)) == [5, 4, 3, 2, 1]
        assert list(ex.map(abs, [], chunksize=4)) == list(ex.map(abs, [])) == []
        results = ex.map(inverse, [1, 2, 4, 0], [1] * 4, chunksize=2)
        assert next(results) == 1 and next(results) == 0.5
        with pytest.raises(ZeroDivisionError):  # the failing call's chunk fails whole
            next(results)
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(abs, [1], chunksize=0)
        slow = ex.map(sleep_for, [30, 30], timeout=0.5)
        with pytest.raises(TimeoutError, match=r"task\.\d+ not done within 0\.\d+ s"):
            next(slow)  # (the message says which task, how long, and its state)
        assert session.wait(ex._tasks[-2:], timeout=10)  # the rest are canceled
        assert {t.state for t in ex._tasks[-2:]} == {TaskState.CANCELED}


def test_executor_map_chooses_its_chunks(session: pf.Session, pilot: pf.Pilot) -> None:
    """Without a chunksize: about 4 chunks a core, at most 1,000 calls each (this pilot
    has 2 x 8 cores): many tiny calls become few tasks, a few calls stay a task each."""
    with session.executor() as ex:
        assert list(ex.map(abs, range(-10_000, 0))) == list(range(10_000, 0, -1))
        assert len(ex._tasks) == 65  # 10,000 // (4 x 16) = 156 calls a task
        assert list(ex.map(pow, [2] * 10, range(10))) == [2**i for i in range(10)]
        assert len(ex._tasks) == 65 + 10  # too few to chunk: a task each


def test_agent_killed_mid_run_fails_every_task(session: pf.Session, tmp_path: Path) -> None:
    pilot = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=4,
                                                    heartbeat_timeout=5))
    tasks = session.submit([TD(executable="/bin/sleep", arguments=["60"]) for _ in range(8)])
    assert session.wait_for(tasks[:4], TaskState.RUNNING, timeout=30)  # the first 4 cores
    assert [t.state for t in tasks[:4]] == [TaskState.RUNNING] * 4
    running_pids = [t.pid for t in tasks if t.pid]
    assert pilot.process is not None
    started = time.monotonic()
    pilot.process.kill()
    assert session.wait(tasks, timeout=10)
    assert time.monotonic() - started < 10
    assert all(t.state is TaskState.FAILED and "agent lost" in t.error for t in tasks)
    assert all(process_gone(pid, 5) for pid in running_pids)
    with pytest.raises(RuntimeError, match="no active pilot"):
        session.submit(TD(executable="/bin/true"))


CLIENT_SCRIPT = """
import os, sys, pilotfish as pf
s = pf.Session(path=sys.argv[1])
p = s.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
t = s.submit(pf.TaskDescription(executable="/bin/sleep", arguments=["60"]))
f = s.submit(pf.TaskDescription(function=pow, args=(2, 2)))
f.result(30)
assert s.wait_for([t], pf.TaskState.RUNNING, timeout=30) and t.pid is not None
print(p.process.pid, t.pid, flush=True)
os._exit(0)
"""


def test_client_death_stops_the_agent_and_its_tasks(tmp_path: Path) -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    agent_pid, task_pid = map(int, out.stdout.split())
    assert process_gone(agent_pid, 10)
    assert process_gone(task_pid, 10)


def test_ten_thousand_tasks_journaled(session: pf.Session, pilot: pf.Pilot) -> None:
    descs = [TD(function=pow, args=(i, 2)) if i % 2 else TD(executable="/bin/true")
             for i in range(10_000)]
    tasks = session.submit(descs)
    assert session.wait(timeout=120)
    assert all(t.state is TaskState.DONE for t in tasks)
    assert tasks[1].result() == 1 and tasks[9_999].result() == 9_999**2
    session.journal.flush()
    db = sqlite3.connect(session.path / "session.db")
    assert db.execute("SELECT count(*) FROM tasks WHERE state = 'DONE'").fetchone()[0] == 10_000
    per_task = db.execute("SELECT count(*) FROM all_events GROUP BY task").fetchall()
    assert len(per_task) == 10_000 and min(n for (n,) in per_task) >= 6
    # no per-task files: functions have none, and silent short executables leave none
    assert list((pilot.sandbox / "tasks").iterdir()) == []


def test_output_files_are_named_once_written(session: pf.Session,
                                                             pilot: pf.Pilot) -> None:
    sandbox = pilot.sandbox / "tasks"
    loud = session.submit(TD(executable="/bin/sh", arguments=["-c", "echo out; echo err >&2"]))
    quiet = session.submit(TD(executable="/bin/true"))
    # a long task finds its output file by name while it runs, once it wrote to it
    check = ('echo started; sleep 1.5; test -e "$PILOTFISH_TASK_ID.out" '
             '&& test ! -e "$PILOTFISH_TASK_ID.err"')
    long = session.submit(TD(executable="/bin/sh", arguments=["-c", check]))
    assert session.wait(timeout=30)
    assert long.state is TaskState.DONE, long.error
    assert (sandbox / f"{loud.uid}.out").read_text() == "out\n" == loud.stdout
    assert (sandbox / f"{loud.uid}.err").read_text() == "err\n" == loud.stderr
    assert not (sandbox / f"{quiet.uid}.out").exists() and quiet.stdout == ""


def test_custom_sandbox_and_path_lookup(session: pf.Session, pilot: pf.Pilot,
                                        tmp_path: Path) -> None:
    box = tmp_path / "box"
    here = session.submit(TD(executable="pwd", sandbox=box, ranks=2))
    assert here.result(timeout=30) == 0
    assert here.stdout.split() == [str(box), str(box)]
    assert (box / f"{here.uid}.out").read_text() == here.stdout
    default = session.submit(TD(executable="pwd"))
    default.result(timeout=30)
    assert Path(default.stdout.strip()) == pilot.sandbox.resolve() / "tasks"


def test_pilot_runtime_ends_the_pilot_and_fails_what_is_left(session: pf.Session) -> None:
    pilot = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1, runtime=1))
    running, queued = session.submit([TD(executable="/bin/sleep", arguments=["60"])] * 2)
    assert session.wait(timeout=20)
    for t in (running, queued):
        assert t.state is TaskState.FAILED and "runtime of 1 s exceeded" in t.error
    assert pilot.stopped.wait(10) and pilot.state == "DONE"


def test_closing_the_session_cancels_running_tasks(tmp_path: Path) -> None:
    with pf.Session(path=tmp_path) as session:
        session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
        t = session.submit(TD(executable="/bin/sleep", arguments=["60"]))
        assert session.wait_for([t], TaskState.RUNNING, timeout=30)
        assert t.pid is not None  # the RUNNING update carries it
    assert t.state is TaskState.CANCELED
    assert process_gone(t.pid, 5)
    db = sqlite3.connect(session.path / "session.db")
    state, error = db.execute("SELECT state, error FROM tasks WHERE uid = ?", (t.uid,)).fetchone()
    assert state == "CANCELED" and "shutdown" in error


def test_journal_holds_descriptions_outcomes_and_events(session: pf.Session,
                                                        pilot: pf.Pilot) -> None:
    ok = session.submit(TD(executable="/bin/echo", arguments=["x"], name="greeter",
                           tags={"stage": "1"}))
    bad = session.submit(TD(executable="/bin/sh", arguments=["-c", "exit 7"]))
    assert session.wait(timeout=30)
    session.journal.flush()
    db = sqlite3.connect(session.path / "session.db")
    import json

    rows = {uid: (name, state, code, error, json.loads(desc)) for uid, name, state, code, error,
            desc in db.execute("SELECT uid, name, state, exit_code, error, description FROM tasks")}
    assert rows[ok.uid][:4] == ("greeter", "DONE", 0, None)
    assert rows[ok.uid][4][2:4] == ["/bin/echo", ["x"]]  # executable, arguments
    assert rows[bad.uid][1:4] == ("FAILED", 7, "exit code 7")
    events = db.execute("SELECT event, ts FROM task_events WHERE uid = ? ORDER BY ts",
                        (ok.uid,)).fetchall()
    assert [e for e, _ in events] == [e for e, _ in ok.events]


def test_large_function_arguments_are_not_journaled(session: pf.Session,
                                                    pilot: pf.Pilot) -> None:
    small, large = session.submit([TD(function=len, args=(b"x" * n,)) for n in (10, 10**6)])
    assert [small.result(timeout=30), large.result(timeout=30)] == [10, 10**6]
    session.journal.flush()
    db = sqlite3.connect(session.path / "session.db")
    import json

    args = {uid: json.loads(desc)[7] for uid, desc in db.execute(
        "SELECT uid, description FROM tasks")}  # the pickled arguments, in base64
    assert args[small.uid] is not None and args[large.uid] is None
    assert sum(os.path.getsize(f) for f in session.path.glob("session.db*")) < 10**6


def test_callbacks_run_off_the_channel_thread(session: pf.Session) -> None:
    """A slow callback, or one that waits on another task, stalls nothing else."""
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2, heartbeat_timeout=3))
    slow = session.submit(TD(executable="/bin/sleep", arguments=["4"]))  # (past the timeout)
    results: list[object] = []
    called = threading.Event()

    def callback(_: object) -> None:
        results.append(slow.result(timeout=30))  # waits for another task: fine here
        called.set()

    fast = session.submit(TD(executable="/bin/true"))
    fast.add_done_callback(callback)
    assert called.wait(30)
    assert results == [0]
    assert slow.state is TaskState.DONE  # heartbeats went on while the callback waited



def test_recycled_output_files_never_mix_tasks(session: pf.Session, pilot: pf.Pilot) -> None:
    quiet = session.submit([TD(executable="/bin/true") for _ in range(50)])
    assert session.wait(quiet, timeout=30)
    loud = session.submit([TD(executable="/bin/sh", arguments=["-c", 'echo "$PILOTFISH_TASK_ID"'])
                           for _ in range(50)])
    assert session.wait(loud, timeout=30)
    sandbox = pilot.sandbox / "tasks"
    for t in loud:
        assert t.stdout == f"{t.uid}\n" == (sandbox / f"{t.uid}.out").read_text()
        assert not (sandbox / f"{t.uid}.err").exists()


def test_a_hung_agent_is_declared_lost_by_heartbeat(session: pf.Session) -> None:
    import signal

    pilot = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2,
                                                    heartbeat_timeout=2))
    task = session.submit(TD(executable="/bin/sh", arguments=["-c", "echo $$; sleep 60"]))
    sandbox = pilot.sandbox / "tasks"
    assert pilot.process is not None
    deadline = time.monotonic() + 30
    while not (sandbox / f"{task.uid}.out").exists():  # named once it wrote its pid
        assert time.monotonic() < deadline, "the task's output file did not appear"
        assert session.wait([task], timeout=0.05) is False
    task_pid = int((sandbox / f"{task.uid}.out").read_text())
    os.kill(pilot.process.pid, signal.SIGSTOP)  # alive but silent
    started = time.monotonic()
    assert session.wait([task], timeout=10)
    assert task.state is TaskState.FAILED and "no heartbeat" in task.error
    assert time.monotonic() - started < 10
    assert process_gone(pilot.process.pid, 5)  # the client killed it
    assert process_gone(task_pid, 5)  # and the task it had started


def test_tasks_submitted_as_the_pilot_ends_all_end(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2, runtime=1))
    batches = []
    while True:  # submit until the pilot's runtime is over and submit refuses
        try:
            batches.append(session.submit([TD(executable="/bin/true") for _ in range(2000)]))
        except RuntimeError as exc:
            assert "no active pilot" in str(exc)
            break
    assert session.wait(timeout=30)
    failed = [t for batch in batches for t in batch if t.state is TaskState.FAILED]
    assert failed and all("runtime" in t.error for t in failed)


def test_function_results_do_not_wait_behind_a_long_task(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1))
    quick, slow = session.submit([TD(function=pow, args=(2, 5)), TD(function=sleep_for,
                                                                    args=(30,))])
    assert quick.result(timeout=10) == 32  # long before the slow one ends
    # announced 10 ms into the task
    assert session.wait_for([slow], TaskState.RUNNING, timeout=10)
    assert slow.state is TaskState.RUNNING
    slow.cancel()
    assert session.wait([slow], timeout=10) and slow.state is TaskState.CANCELED


def square(x: int) -> int:
    return x * x


def test_concurrent_submits_of_one_function(session: pf.Session, pilot: pf.Pilot) -> None:
    """Whichever submit reaches the agent first carries the function."""
    big: list[pf.Task] = []
    worker = threading.Thread(target=lambda: big.extend(
        session.submit([TD(function=square, args=(i,)) for i in range(20_000)])))
    worker.start()
    small = session.submit(TD(function=square, args=(7,)))
    worker.join(60)
    assert small.result(timeout=60) == 49
    assert session.wait(big, timeout=120)
    assert all(t.state is TaskState.DONE for t in big)


def test_tasks_go_to_the_least_loaded_pilot(session: pf.Session) -> None:
    small = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
    large = session.start_pilot(pf.PilotDescription(nodes=2, cores_per_node=4))
    tasks = [session.submit(TD(executable="/bin/sleep", arguments=["1"])) for _ in range(30)]
    assert session.wait(tasks, timeout=60)
    on = {p.uid: sum(t.pilot == p.uid for t in tasks) for p in (small, large)}
    assert on[small.uid] == 6 and on[large.uid] == 24  # in proportion to their cores
    by_pilot = session.metrics(by="pilot")
    assert by_pilot.groups[large.uid].n_done == 24


def deaf_sleep(seconds: float) -> str:
    """Like code stuck in C: the worker's timeout and cancel signals never reach it."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGUSR1})
    time.sleep(seconds)
    return "woke"


def test_a_function_deaf_to_signals_still_times_out(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1))
    stuck = session.submit(TD(function=deaf_sleep, args=(60,), timeout=0.5))
    queued = session.submit(TD(function=pow, args=(2, 3)))
    with pytest.raises(pf.TaskFailed, match=r"did not stop.*worker was killed"):
        stuck.result(timeout=30)
    assert queued.result(timeout=30) == 8  # on a new worker


def c_sleep(seconds: int) -> float:
    """Sleeps in C (libc `sleep`, which returns early, not retried, if a signal arrives)."""
    import ctypes

    start = time.monotonic()
    ctypes.CDLL(None).sleep(seconds)
    return time.monotonic() - start


def test_a_function_blocked_in_c_is_announced_without_a_signal(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1))
    task = session.submit(TD(function=c_sleep, args=(2,)))
    # announced while it sleeps in C
    assert session.wait_for([task], TaskState.RUNNING, timeout=10)
    assert task.state is TaskState.RUNNING
    assert task.result(timeout=30) >= 1.9  # the announcement did not cut it short


def test_calls_given_the_wrong_things_say_which_and_what(session: pf.Session,
                                                        pilot: pf.Pilot) -> None:
    with pytest.raises(TypeError, match=r"wait takes Task objects .*item 0 is 1 \(int\)"):
        session.wait([1, 2])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"wait_for takes Task objects .*item 0 is 'x'"):
        session.wait_for(["x"], "RUNNING")  # type: ignore[list-item]
    with pytest.raises(TypeError, match="pilot must be a Pilot of this session or its uid "
                                        r"\(pilot.0000\), got 'pilot.9'"):
        session.submit(TD(executable="/bin/true"), pilot="pilot.9")
    task = session.submit(TD(executable="/bin/true"), pilot=pilot.uid)  # a uid will do
    with pytest.raises(TypeError, match=r"cancel takes a list of tasks, got one Task"):
        session.cancel(task)  # type: ignore[arg-type]
    assert task.result(timeout=30) == 0
    never = session.submit(TD(executable="/nonexistent/program"))
    assert session.wait([never], timeout=30) and never.state is pf.TaskState.FAILED
    assert never.stdout == never.stderr == ""  # it never ran: empty, not None


def test_one_batch_spreads_over_pilots_by_free_capacity(session: pf.Session) -> None:
    """Pilots of 4, 16 and 112 cores: 128 `sleep 0.5` go about 4, 16 and 108 to each
    (fewest unfinished tasks per core first), not all to one; a task that fits only the
    big pilot goes there."""
    pilots = [session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=cores))
              for cores in (4, 16, 112)]
    tasks = session.submit([TD(executable="/bin/sleep", arguments=["0.5"])
                            for _ in range(128)])
    wide = session.submit(TD(executable="/bin/true", cores_per_rank=64))
    assert session.wait(timeout=60)
    assert all(t.state is pf.TaskState.DONE for t in [*tasks, wide])
    per_pilot = [sum(t.pilot == p.uid for t in tasks) for p in pilots]
    assert abs(per_pilot[0] - 4) <= 1 and abs(per_pilot[1] - 16) <= 1, per_pilot
    assert wide.pilot == pilots[2].uid


def test_queued_tasks_move_to_pilots_with_room(session: pf.Session) -> None:
    """Late binding across pilots: 200 `sleep 0.2` queued on a 4-core pilot move, while
    queued, to pilots of 16 and 112 cores started after them; tasks submitted to the
    small pilot by name stay there; every task runs once, and the journal says where."""
    small = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=4))
    tasks = session.submit([TD(executable="/bin/sleep", arguments=["0.2"])
                            for _ in range(200)])
    pinned = session.submit([TD(executable="/bin/sleep", arguments=["0.2"])
                             for _ in range(8)], pilot=small)
    mid = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=16))
    big = session.start_pilot(pf.PilotDescription(nodes=7, cores_per_node=16))
    assert session.wait(timeout=120)
    assert {t.state for t in tasks + pinned} == {pf.TaskState.DONE}
    ran = collections.Counter(t.pilot for t in tasks)
    assert ran[big.uid] > ran[mid.uid] > 0 and ran[small.uid] < 100, ran
    assert {t.pilot for t in pinned} == {small.uid}
    moved = [t for t in tasks if t.pilot != small.uid]
    assert all([e for e, _ in t.events].count("RUNNING") == 1 for t in tasks)
    assert all("released" in dict(t.events) for t in moved)
    assert small.outstanding == mid.outstanding == big.outstanding == 0
    assert small.load == mid.load == big.load == 0
    session.journal.flush()
    db = connect_readonly(session.path)
    try:
        journaled = dict(db.execute("SELECT uid, pilot FROM tasks").fetchall())
    finally:
        db.close()
    assert all(journaled[t.uid] == t.pilot for t in tasks + pinned)
    assert session.metrics(by="pilot").groups[big.uid].n_tasks == ran[big.uid]


def test_the_executor_lets_finished_calls_go(session: pf.Session, pilot: pf.Pilot) -> None:
    """As concurrent.futures executors do: a map's tasks (and their results) are not kept
    once given out, nor are finished futures the caller dropped."""
    import gc
    import weakref

    with session.executor() as ex:
        results = ex.map(bytes, [100_000] * 1_500, chunksize=1)
        first = weakref.ref(ex._tasks[0])
        assert next(results) == bytes(100_000)
        assert sum(1 for _ in results) == 1_499
        # The executor lets finished tasks go as it submits, each time it holds twice
        # as many as after the last time (amortized: a list, no callback per task).
        assert len(list(ex.map(abs, range(1_600), chunksize=1))) == 1_600
        gc.collect()
        assert first() is None
        assert len(ex._tasks) <= 1_600
