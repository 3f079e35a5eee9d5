"""One contract, every backend: the same tasks through a real pilot of each backend.

Each test runs once per backend of the registry (the `backend` fixture's params, after
PSI/J's `execparams`); a backend whose runtime cannot run here skips with its registry
entry's `unavailable()` reason. A check that cannot apply to a backend (the simulated
backend runs no process: no output, no environment, no exit codes) skips with the reason
from `SHOWS`, the table of what each backend can show, never by passing silently; a kind
of task a backend does not run at all (Flux runs no functions) skips with its registry
abilities' reason.

Depth lives elsewhere (test_pilot.py, test_dragon.py, test_flux.py, test_simulated.py):
here each check is small, and the point is that they all hold for every backend. One
pilot per backend serves the module (a Dragon runtime takes seconds to start), except
for the destructive case, which starts its own.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import pilotfish as pf
from pilotfish.backends import registry

from ..conftest import children

pytestmark = pytest.mark.timeout(60)
TD = pf.TaskDescription
TaskState = pf.TaskState
SHAPE = {"nodes": 1, "cores_per_node": 4, "gpus_per_node": 2}  # the shared pilots' shape
NO_PROCESS = "the simulated backend runs no process"


def kill_agent(pilot: pf.Pilot) -> None:
    """The runtime of the built-in and simulated backends is the agent process itself."""
    assert pilot.process is not None
    os.kill(pilot.process.pid, signal.SIGKILL)


def runtime_killer(command: str) -> Callable[[pf.Pilot], None]:
    """Kills the process group led by the agent's child running `command` (`dragon -s`,
    `flux-broker`, which `flux start` becomes: each runtime is started in a process group
    of its own)."""
    def kill(pilot: pf.Pilot) -> None:
        assert pilot.process is not None
        leaders = [pid for pid, cmd in children(pilot.process.pid) if command in cmd]
        assert len(leaders) == 1, children(pilot.process.pid)
        os.killpg(leaders[0], signal.SIGKILL)
    return kill


@dataclass(frozen=True)
class Shows:
    """What a backend's tasks can show a test: None where it can, else why not."""

    kill_runtime: Callable[[pf.Pilot], None]  # makes its runtime die
    lost: str  # what its tasks' reason says then (a regular expression)
    output: str | None = None  # the tasks' stdout is captured
    environment: str | None = None  # a process sees its rank, its GPUs
    exit_codes: str | None = None  # an executable's own exit code
    results: str | None = None  # a function's return value


SHOWS = {
    "builtin": Shows(kill_agent, "agent lost"),
    "dragon": Shows(runtime_killer("dragon -s"),
                    "partition 'dragon' lost: the Dragon runtime exited"),
    "flux": Shows(runtime_killer("flux-broker"), "partition 'flux' lost"),
    "simulated": Shows(
        kill_agent, "agent lost",
        output=f"{NO_PROCESS}: there is no output to capture",
        environment=f"{NO_PROCESS}: no environment shows ranks or GPUs",
        exit_codes=f"{NO_PROCESS}: every task that is not timed out or canceled exits 0",
        results=f"{NO_PROCESS}: a function ends DONE without being called"),
}
BACKENDS = [entry.name for entry in registry.SHIPPED]
# Backends that run only on a pilot holding real nodes (a Slurm allocation), which these
# local pilots are not: their own tests run them there.
ON_REAL_NODES = {"srun": "tests/integration/test_slurm_mpi.py runs it inside an allocation"}


def shows(backend: str, what: str) -> None:
    """Skip unless `backend` can show `what` (a field of Shows)."""
    why = getattr(SHOWS[backend], what)
    if why is not None:
        pytest.skip(f"{backend}: {why}")


def runs(backend: str, kind: str, ranks: int = 1, gpus_per_rank: float = 0.0) -> None:
    """Skip unless `backend`'s registry abilities say it runs such a task."""
    why = registry.get(backend).abilities.why_not(kind, ranks, gpus_per_rank)
    if why is not None:
        pytest.skip(f"{backend} {why} (its registry abilities)")


def description(backend: str, **extra: object) -> pf.PilotDescription:
    return pf.PilotDescription(backend=backend, **{**SHAPE, **extra})  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    why = registry.get(name).unavailable()
    if why is not None:
        pytest.skip(f"{name} cannot run here: {why}")
    if registry.get(name).real_nodes:
        pytest.skip(f"{name} runs only on real nodes, not on this local pilot's virtual "
                    f"ones: {ON_REAL_NODES[name]}")
    assert name in SHOWS, f"add backend {name!r} to SHOWS: what can its tasks show?"
    return name


@pytest.fixture(scope="module")
def shared(backend: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[pf.Session, pf.Pilot]]:
    """One session and pilot per backend for the module's non-destructive tests."""
    with pf.Session(path=tmp_path_factory.mktemp(backend)) as session:
        yield session, session.start_pilot(description(backend))


@pytest.fixture
def session(shared: tuple[pf.Session, pf.Pilot]) -> Iterator[pf.Session]:
    """The backend's shared session (here, instead of conftest's session of one test);
    what a test leaves unfinished is canceled after it, so the next finds the pilot idle."""
    s, pilot = shared
    assert pilot.active, f"the shared pilot ended: {pilot.reason}"
    yield s
    leftover = list(s._live.values())
    if leftover:
        s.cancel(leftover)
        assert s.wait(leftover, timeout=30), "leftover tasks did not end"


def test_every_backend_says_what_its_tasks_can_show() -> None:
    assert sorted([*SHOWS, *ON_REAL_NODES]) == sorted(BACKENDS)
    assert all(registry.get(name).real_nodes for name in ON_REAL_NODES)


# ---- executables ----------------------------------------------------------------------


def test_executable_exits_zero(backend: str, session: pf.Session) -> None:
    task = session.submit(TD(executable="/bin/echo", arguments=["hello"]))
    assert task.result(timeout=30) == 0
    assert task.state is TaskState.DONE and task.exit_code == 0 and task.error is None


def test_executable_stdout_is_captured(backend: str, session: pf.Session) -> None:
    shows(backend, "output")
    task = session.submit(TD(executable="/bin/sh", arguments=["-c", "echo hello; echo oops >&2"]))
    assert task.result(timeout=30) == 0
    assert task.stdout == "hello\n" and task.stderr == "oops\n"


def test_a_silent_executable_has_empty_output(backend: str, session: pf.Session) -> None:
    shows(backend, "output")
    task = session.submit(TD(executable="/bin/true"))
    assert task.result(timeout=30) == 0
    assert task.stdout == "" and task.stderr == ""  # strings, as for any executable


def chatty(fail: bool) -> int:
    print("hello")
    print("oops", file=sys.stderr)
    if fail:
        raise ValueError("no")
    return 1


def test_a_functions_prints_are_its_own(backend: str, session: pf.Session,
                                        tmp_path: Path) -> None:
    runs(backend, "function")
    shows(backend, "output")
    done, failed, silent = session.submit([TD(function=chatty, args=(False,)),
                                           TD(function=chatty, args=(True,)),
                                           TD(function=abs, args=(-1,))])
    assert session.wait([done, failed, silent], timeout=30)
    assert done.stdout == failed.stdout == "hello\n"  # each its own, even one that raised
    assert done.stderr == failed.stderr == "oops\n"
    assert silent.stdout == silent.stderr == ""
    # All of it in files, as an executable's, where there is something to keep.
    tasks = session.pilots[done.pilot].sandbox / "tasks"
    assert (tasks / f"{done.uid}.out").read_text() == "hello\n"
    assert (tasks / f"{failed.uid}.err").read_text() == "oops\n"
    assert not (tasks / f"{silent.uid}.out").exists()
    boxed = session.submit(TD(function=chatty, args=(False,), sandbox=tmp_path / "box"))
    assert boxed.result(timeout=30) == 1
    assert (tmp_path / "box" / f"{boxed.uid}.out").read_text() == "hello\n"
    assert (tmp_path / "box" / f"{boxed.uid}.err").stat().st_mode & 0o777 == 0o600


def test_failing_exit_code_fails_with_it(backend: str, session: pf.Session) -> None:
    shows(backend, "exit_codes")
    task = session.submit(TD(executable="/bin/sh", arguments=["-c", "exit 3"]))
    with pytest.raises(pf.TaskFailed) as info:
        task.result(timeout=30)
    assert task.state is TaskState.FAILED and task.exit_code == 3
    assert task.error == "exit code 3" and info.value.exit_code == 3


# ---- functions ------------------------------------------------------------------------


def test_function_returns_its_result(backend: str, session: pf.Session) -> None:
    runs(backend, "function")
    shows(backend, "results")
    task = session.submit(TD(function=pow, args=(2, 10)))
    assert task.result(timeout=30) == 1024 and task.state is TaskState.DONE


# ---- ranks and GPUs -------------------------------------------------------------------


def test_every_rank_of_a_multi_rank_task_runs(backend: str, session: pf.Session) -> None:
    runs(backend, "executable", ranks=2)
    shows(backend, "environment")
    task = session.submit(TD(executable="/bin/sh", ranks=2, arguments=[
        "-c", 'echo "$PILOTFISH_RANK/$PILOTFISH_RANKS"']))
    assert task.result(timeout=30) == 0
    assert sorted((task.stdout or "").split()) == ["0/2", "1/2"]


def test_where_each_task_ran_is_known_and_journaled(backend: str, session: pf.Session) -> None:
    runs(backend, "executable", ranks=2, gpus_per_rank=1)
    task = session.submit(TD(executable="/bin/true", ranks=2, gpus_per_rank=1))
    assert task.result(timeout=30) == 0
    ((node, cores, gpus),) = task.placement or [(None, [], [])]
    assert node == 0 and len(set(cores)) == 2 and set(cores) <= set(range(4))
    assert sorted(gpus) == [0, 1]  # a GPU each: the node's two
    session.journal.flush()
    with sqlite3.connect(f"file:{session.path}/session.db?mode=ro", uri=True) as db:
        (journaled,) = db.execute("SELECT placement FROM tasks WHERE uid = ?",
                                  (task.uid,)).fetchone()
    assert json.loads(journaled) == [[node, cores, gpus]]


def test_where_a_function_ran_is_known(backend: str, session: pf.Session) -> None:
    runs(backend, "function")
    task = session.submit(TD(function=abs, args=(-1,)))
    assert session.wait([task], timeout=30) and task.state is TaskState.DONE
    ((node, cores, gpus),) = task.placement or [(None, [], [])]
    assert (node, len(cores), gpus) == (0, 1, []) and cores[0] in range(4)


def test_a_rank_sees_exactly_the_gpus_it_asked_for(backend: str, session: pf.Session) -> None:
    runs(backend, "executable", ranks=2, gpus_per_rank=1)
    shows(backend, "environment")
    show = 'echo "$PILOTFISH_RANK:${CUDA_VISIBLE_DEVICES-unset}"'
    with_gpus = session.submit(TD(executable="/bin/sh", arguments=["-c", show], ranks=2,
                                  gpus_per_rank=1))
    without = session.submit(TD(executable="/bin/sh", arguments=["-c", show]))
    assert session.wait([with_gpus, without], timeout=30)
    assert with_gpus.state is without.state is TaskState.DONE, (with_gpus.error, without.error)
    seen = dict(line.split(":") for line in (with_gpus.stdout or "").split())
    assert sorted(seen) == ["0", "1"]
    assert sorted(seen.values()) == ["0", "1"]  # one GPU each, not the same one
    assert without.stdout == "0:\n"  # set, and empty: no GPU at all


# ---- cancel, timeout ------------------------------------------------------------------


def test_cancel_a_queued_and_a_running_task(backend: str, session: pf.Session) -> None:
    whole_node = SHAPE["cores_per_node"]
    running, queued = session.submit([TD(executable="/bin/sleep", arguments=["60"],
                                         cores_per_rank=whole_node) for _ in range(2)])
    # (On a simulated pilot the clock holds still for half a second after a submit; then
    # it would jump to the running task's end.)
    assert session.wait_for([running], TaskState.RUNNING, timeout=30)
    # (A runtime that places tasks itself, Flux, already holds the queued one: SCHEDULED.)
    assert running.state is TaskState.RUNNING
    assert queued.state in (TaskState.SUBMITTED, TaskState.SCHEDULED)
    session.cancel([queued, running])
    assert session.wait([running, queued], timeout=30)
    assert running.state is queued.state is TaskState.CANCELED
    assert running.cancelled() and queued.cancelled()
    assert "RUNNING" not in dict(queued.events)


def test_timeout_fails_the_task(backend: str, session: pf.Session) -> None:
    task = session.submit(TD(executable="/bin/sleep", arguments=["60"], timeout=1))
    with pytest.raises(pf.TaskFailed, match="timed out"):
        task.result(timeout=30)
    assert task.state is TaskState.FAILED and "timed out" in (task.error or "")


# ---- a runtime that dies (destructive: a pilot of its own) ----------------------------


def test_tasks_of_a_runtime_that_dies_fail_with_the_reason(backend: str,
                                                           tmp_path: Path) -> None:
    with pf.Session(path=tmp_path) as session:
        pilot = session.start_pilot(description(backend, heartbeat_timeout=5))
        tasks = session.submit([TD(executable="/bin/sleep", arguments=["60"])
                                for _ in range(2)])
        assert session.wait_for(tasks, TaskState.RUNNING, timeout=30)
        assert {t.state for t in tasks} == {TaskState.RUNNING}
        started = time.monotonic()
        SHOWS[backend].kill_runtime(pilot)
        assert session.wait(tasks, timeout=10)
        assert time.monotonic() - started < 10
        for task in tasks:
            assert task.state is TaskState.FAILED, task.state
            with pytest.raises(pf.TaskFailed, match=SHOWS[backend].lost):
                task.result()
