"""Function tasks: their environment and sandbox apply, and a worker that dies loses
nothing silently and runs nothing twice unless the task allows it."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pilotfish as pf
from pilotfish import TaskDescription as TD
from pilotfish import TaskState
from pilotfish.backends.base import BackendEvent, TaskFinished, TaskRequeued
from pilotfish.backends.functions import pool as pool_module
from pilotfish.keys import Keys
from pilotfish.messages import TaskSpec
from pilotfish.reactor import Reactor


def where_am_i(name: str) -> tuple[str | None, str]:
    return os.environ.get(name), os.getcwd()


def crash_the_first_time(marker: str) -> str:
    """Kills its worker (as a crash in native code would) unless it ran before."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return "ran again"


def meet(folder: str, count: int, timeout: float) -> int:
    """Arrive at `folder` and wait until `count` calls are there at once (or time out)."""
    import time

    Path(folder, str(os.getpid())).touch()
    deadline = time.monotonic() + timeout
    while len(os.listdir(folder)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(os.listdir(folder))} of {count} calls ran at once")
        time.sleep(0.01)
    return os.getpid()


def test_by_default_every_core_runs_a_function(session: pf.Session, tmp_path: Path) -> None:
    """A pilot of 2 x 16 cores on a 2-CPU host runs 32 functions at once, each on a core
    of its own (one worker per core, not per CPU)."""
    session.start_pilot(pf.PilotDescription(nodes=2, cores_per_node=16))
    folder = tmp_path / "met"
    folder.mkdir()
    tasks = session.submit([TD(function=meet, args=(str(folder), 32, 60.0))
                            for _ in range(32)])
    assert session.wait(tasks, timeout=120)
    assert [t.exception() for t in tasks] == [None] * 32
    assert len({t.result() for t in tasks}) == 32  # 32 worker processes
    cores = {(node, core) for t in tasks for node, cs, _ in t.placement or () for core in cs}
    assert len(cores) == 32


def test_a_functions_environment_and_sandbox_apply_while_it_runs(
        session: pf.Session, tmp_path: Path) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1, function_workers=1))
    box = tmp_path / "box"
    inside = session.submit(TD(function=where_am_i, args=("PF_TEST_VAR",),
                               environment={"PF_TEST_VAR": "set"}, sandbox=box))
    after = session.submit(TD(function=where_am_i, args=("PF_TEST_VAR",)))  # same worker
    assert inside.result(timeout=30) == ("set", str(box))
    value, cwd = after.result(timeout=30)
    assert value is None and cwd != str(box)  # nothing leaks into the next task


def test_a_task_whose_worker_died_runs_again_only_if_its_retries_allow(
        session: pf.Session, tmp_path: Path) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1))
    once = session.submit(TD(function=crash_the_first_time, args=(str(tmp_path / "a"),)))
    assert session.wait([once], timeout=30)
    assert once.state is TaskState.FAILED and "worker died" in (once.error or "")
    assert once.attempt == 1
    twice = session.submit(TD(function=crash_the_first_time, args=(str(tmp_path / "b"),),
                              retries=1))
    assert twice.result(timeout=30) == "ran again"
    assert twice.attempt == 2 and "requeued" in dict(twice.events)


class _NeverReady:
    """Worker processes that die before they say they are ready (as a worker killed while
    it starts, or one whose environment is broken)."""

    def __init__(self) -> None:
        self.started: list[Callable[[int | None], None]] = []

    def start(self, reactor: Reactor, ident: str, argv: list[str], env: dict[str, str],
              cwd: str, log: str, on_exit: Callable[[int | None], None]) -> None:
        self.started.append(on_exit)

    def signal(self, ident: str, signum: int) -> None:
        pass

    def stop(self, timeout: float) -> None:
        pass


def test_tasks_of_a_worker_killed_while_it_started_are_placed_again(tmp_path: Path) -> None:
    keys = Keys.generate().save(tmp_path / "keys")
    processes = _NeverReady()
    pool = pool_module.FunctionPool(str(tmp_path), {"k": pickle.dumps(len)}, [], str(keys),
                                    processes)
    events: list[BackendEvent] = []
    pool.start(Reactor(), events.append)
    try:
        for attempt in range(pool_module.MAX_FAILED_STARTS):
            pool.dispatch([(TaskSpec(f"t{attempt}", "function", function_key="k"), "w0")])
            processes.started[-1](-9)  # it died, killed, before it was ready
        ended = [type(e) for e in events]
        assert ended == [TaskRequeued] * (pool_module.MAX_FAILED_STARTS - 1) + [TaskFinished]
        last = events[-1]
        assert isinstance(last, TaskFinished) and last.state is TaskState.FAILED
        assert "function workers could not start (killed by signal 9; 3 in a row)" in (
            last.error or "")
    finally:
        pool.stop(1)


def test_a_remote_traceback_from_main_shows_its_source_once(tmp_path: Path) -> None:
    """A function from `__main__` travels by value (cloudpickle names its file
    "<dynamic-code>"): its remote traceback shows the script's file and line, once."""
    script = tmp_path / "script.py"
    script.write_text(
        "import pilotfish as pf\n"
        "def boom(x):\n"
        "    raise ValueError(f'bad {x}')  # the line to see\n"
        f"with pf.Session(path={str(tmp_path)!r}) as s:\n"
        "    s.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1))\n"
        "    s.submit(pf.TaskDescription(function=boom, args=(1,))).result(timeout=30)\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, env={**os.environ,
                                          "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == 1 and "ValueError: bad 1" in run.stderr
    assert f'File "{script}", line 3, in boom' in run.stderr, run.stderr
    assert run.stderr.count("raise ValueError(f'bad {x}')  # the line to see") == 1
    assert "<dynamic-code>" not in run.stderr
