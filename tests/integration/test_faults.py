"""Faults a session survives, each ending every task with a reason and losing nothing
silently.

Each fault strikes a pilot running a mix of executables and functions, some running and
some queued, and each test then checks the same four things (`Mix.check`):

- every task ends: DONE, or FAILED or CANCELED with a reason;
- none is lost: the journal, read as `pilotfish report` reads it, holds each task in the
  state the client saw, and none NEW, SUBMITTED, SCHEDULED or RUNNING once the session
  closed;
- none runs twice: each task writes its label to a file as it starts; only a task given
  `retries` whose run was lost runs again, and then `task.attempt` counts its runs and its
  events hold `requeued`;
- nothing is left behind: no process of the agent's process session (the agent leads
  one), and for Dragon, no new /dev/shm entries.

docs/reliability.md lists these tests and what each shows.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import pilotfish as pf
from pilotfish.backends.dragon import unavailable as dragon_unavailable
from pilotfish.journal import connect_readonly

from ..conftest import children, in_session, process_gone

pytestmark = pytest.mark.timeout(60)
TD = pf.TaskDescription
PS = pf.PartitionSpec
LIVE = ("NEW", "SUBMITTED", "SCHEDULED", "RUNNING")


# ---- what the tasks run: each marks its label (and pid) in the runs file as it starts ----


def _mark(runs: str, label: str) -> int:
    """Append `label pid` to the runs file; return how often the label was there before."""
    try:
        with open(runs) as f:
            before = sum(line.split()[0] == label for line in f)
    except FileNotFoundError:
        before = 0
    fd = os.open(runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{label} {os.getpid()}\n".encode())  # one write: whole lines
    finally:
        os.close(fd)
    return before


def nap(runs: str, label: str, seconds: float, again: float | None = None) -> str:
    """A function task: marks its run, sleeps `seconds` (`again` on a second run)."""
    before = _mark(runs, label)
    time.sleep(again if before and again is not None else seconds)
    return label


def mark_and_die(runs: str, label: str) -> None:
    """Marks its run, then SIGKILLs its own worker (as a crash in native code would)."""
    _mark(runs, label)
    os.kill(os.getpid(), signal.SIGKILL)


def sleeper(runs: Path, label: str, seconds: float, again: float | None = None,
            **kwargs: object) -> pf.TaskDescription:
    """An executable task that marks its run and sleeps (`again` on a second run)."""
    then = seconds if again is None else again
    script = (f'if grep -qs "^{label} " {runs}; then s={then}; else s={seconds}; fi; '
              f'echo "{label} $$" >> {runs}; exec sleep $s')
    return TD(executable="/bin/sh", arguments=["-c", script], name=label,
              **kwargs)  # type: ignore[arg-type]


def napper(runs: Path, label: str, seconds: float, again: float | None = None,
           **kwargs: object) -> pf.TaskDescription:
    return TD(function=nap, args=(str(runs), label, seconds, again), name=label,
              **kwargs)  # type: ignore[arg-type]


def wait_until(condition: Callable[[], object], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.02)


# ---- the mix, and the checks every fault test makes ---------------------------------------


@dataclass
class Mix:
    runs: Path
    running: list[pf.Task] = field(default_factory=list)
    queued: list[pf.Task] = field(default_factory=list)
    others: list[pf.Task] = field(default_factory=list)  # submitted later by the test

    @property
    def tasks(self) -> list[pf.Task]:
        return self.running + self.queued + self.others

    def runs_of(self) -> Counter[str]:
        try:
            return Counter(line.split()[0] for line in self.runs.read_text().splitlines())
        except FileNotFoundError:
            return Counter()

    def pids(self) -> dict[str, int]:
        """label -> pid of its last run."""
        try:
            text = self.runs.read_text()
        except FileNotFoundError:
            return {}
        return {label: int(pid) for label, pid in (line.split() for line in text.splitlines())}

    def wait_running(self, session: pf.Session, timeout: float = 30) -> None:
        """Until the running part of the mix runs (and has marked it)."""
        assert session.wait_for(self.running, pf.TaskState.RUNNING, timeout=timeout)
        assert {t.state for t in self.running} == {pf.TaskState.RUNNING}
        labels = {t.description.name for t in self.running}
        wait_until(lambda: labels <= set(self.runs_of()), what="the running tasks' marks")
        assert not any(t.state.final for t in self.queued)

    def check_ended(self) -> None:
        """Every task final, with a reason unless DONE; none ran twice unless allowed."""
        counts = self.runs_of()
        for t in self.tasks:
            assert t.state.final, t
            assert t.state is pf.TaskState.DONE or t.error, (t, t.error)
            runs = counts[t.description.name or ""]
            assert runs <= t.attempt, (t, runs, t.events)
            if runs > 1:  # only after what ran it was lost, as its retries allowed
                assert t.description.retries >= runs - 1 and "requeued" in dict(t.events), t
            if t.state is pf.TaskState.DONE:
                assert runs >= 1, t

    def check_journal(self, session: pf.Session) -> None:
        """The journal (read as reports read it) agrees with the client; nothing live."""
        db = connect_readonly(session.path)
        try:
            rows = {uid: (state, error) for uid, state, error in
                    db.execute("SELECT uid, state, error FROM tasks")}
            live = db.execute(f"SELECT uid, state FROM tasks WHERE state IN {LIVE}").fetchall()
        finally:
            db.close()
        assert {t.uid: rows.get(t.uid) for t in self.tasks} == {
            t.uid: (t.state.value, t.error) for t in self.tasks}
        assert [tuple(row) for row in live] == []

    def check(self, session: pf.Session, agent_pid: int) -> None:
        """All four, once the session is closed."""
        session.close()
        self.check_ended()
        self.check_journal(session)
        nothing_left_of(agent_pid)


def nothing_left_of(agent_pid: int, timeout: float = 10) -> None:
    """The agent and every process of its session are gone."""
    assert process_gone(agent_pid, timeout), "the agent is still alive"
    deadline = time.monotonic() + timeout
    while (left := in_session(agent_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []


def start_mix(session: pf.Session, runs: Path, *, seconds: float = 60,
              queued_seconds: float = 60, retries: int = 0, again: float | None = None,
              **pilot: object) -> tuple[pf.Pilot, Mix]:
    """A pilot of 4 cores running 2 executables and 2 functions (`seconds` long), with 4
    of each queued behind them (`queued_seconds`); returns once the first four run."""
    p = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=4,
                                                **pilot))  # type: ignore[arg-type]
    mix = Mix(runs)
    mix.running = session.submit(
        [sleeper(runs, f"x{i}", seconds, again, retries=retries) for i in range(2)]
        + [napper(runs, f"f{i}", seconds, again, retries=retries) for i in range(2)])
    mix.queued = session.submit(
        [sleeper(runs, f"xq{i}", queued_seconds, retries=retries) for i in range(4)]
        + [napper(runs, f"fq{i}", queued_seconds, retries=retries) for i in range(4)])
    mix.wait_running(session)
    return p, mix


NO_DRAGON = pytest.mark.skipif(dragon_unavailable() is not None,
                               reason=f"no Dragon here: {dragon_unavailable()}")
BACKENDS = ["builtin", pytest.param("dragon", marks=NO_DRAGON)]


def on(backend: str) -> dict[str, object]:
    """The pilot's fields for a pilot of one partition on `backend`."""
    return {} if backend == "builtin" else {"partitions": [PS(backend=backend)]}


def no_new_segments(before: set[str], timeout: float = 10) -> None:
    """No /dev/shm entry that was not there `before` (Dragon's are removed)."""
    deadline = time.monotonic() + timeout
    while (new := set(os.listdir("/dev/shm")) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert new == set()


def agent_pid_of(pilot: pf.Pilot) -> int:
    assert pilot.process is not None
    return pilot.process.pid


# ---- the agent -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_agent_killed_fails_every_task_once_with_the_reason(
        session: pf.Session, tmp_path: Path, backend: str) -> None:
    shm = set(os.listdir("/dev/shm"))
    pilot, mix = start_mix(session, tmp_path / "runs", **on(backend))
    agent = agent_pid_of(pilot)
    started = time.monotonic()
    os.kill(agent, signal.SIGKILL)
    assert session.wait(mix.tasks, timeout=10)
    assert time.monotonic() - started < 5  # its pidfd says so at once
    for t in mix.tasks:
        assert t.state is pf.TaskState.FAILED
        assert t.error == "agent lost: agent process exited", t.error
    assert mix.runs_of() == Counter({t.description.name: 1 for t in mix.running})
    mix.check(session, agent)
    no_new_segments(shm)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_agent_stopped_past_its_heartbeat_timeout_is_lost_and_killed(
        session: pf.Session, tmp_path: Path, backend: str) -> None:
    shm = set(os.listdir("/dev/shm"))
    pilot, mix = start_mix(session, tmp_path / "runs", heartbeat_timeout=2, **on(backend))
    agent = agent_pid_of(pilot)
    running = mix.pids()
    os.kill(agent, signal.SIGSTOP)  # alive, holding its tasks, but silent
    started = time.monotonic()
    assert session.wait(mix.tasks, timeout=10)
    assert 2 <= time.monotonic() - started < 5
    for t in mix.tasks:
        assert t.state is pf.TaskState.FAILED
        assert (t.error or "").startswith("agent lost: no heartbeat for 2."), t.error
    assert process_gone(agent, 5)  # the client killed it, stopped as it was
    assert all(process_gone(pid, 5) for pid in running.values())  # and its tasks
    mix.check(session, agent)
    no_new_segments(shm)


# ---- function workers ----------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1])
def test_a_function_worker_killed_under_its_task_fails_or_reruns_that_task_only(
        session: pf.Session, tmp_path: Path, retries: int) -> None:
    # The victim f0 runs again (briefly) only if its retries allow; the others end DONE.
    pilot, mix = start_mix(session, tmp_path / "runs", seconds=2, queued_seconds=0.2,
                           retries=retries, again=0.1)
    victim = mix.running[2]
    assert victim.description.name == "f0"
    os.kill(mix.pids()["f0"], signal.SIGKILL)
    assert session.wait(mix.tasks, timeout=20)
    for t in mix.tasks:
        if t is not victim:
            assert t.state is pf.TaskState.DONE, (t, t.error)
            assert t.attempt == 1
    if retries:
        assert victim.result() == "f0" and victim.attempt == 2
        assert "requeued" in dict(victim.events)
        assert mix.runs_of()["f0"] == 2
    else:
        assert victim.state is pf.TaskState.FAILED and victim.attempt == 1
        assert victim.error == ("function worker died (killed by signal 9) while running "
                                "this task")
        assert mix.runs_of()["f0"] == 1
    after = session.submit(napper(mix.runs, "after", 0))  # the pool goes on
    mix.others.append(after)
    assert after.result(timeout=20) == "after"
    mix.check(session, agent_pid_of(pilot))


def test_a_task_that_ended_just_before_its_worker_was_killed_does_not_run_again(
        session: pf.Session, tmp_path: Path) -> None:
    """A worker holds a finished task's result a few milliseconds (to send several in
    one message): when it dies in that window, the task must not run a second time."""
    pilot = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1,
                                                    function_workers=1))
    runs = tmp_path / "runs"
    mix = Mix(runs)
    assert session.submit(TD(function=pow, args=(2, 2))).result(timeout=30) == 4  # ready
    # One message to the one worker: `done` runs, then `dies` kills the worker at once.
    mix.running = session.submit([napper(runs, "done", 0),
                                  TD(function=mark_and_die, args=(str(runs), "dies"),
                                     name="dies")])
    assert session.wait(mix.tasks, timeout=20)
    done, dies = mix.running
    assert dies.state is pf.TaskState.FAILED
    assert dies.error == "function worker died (killed by signal 9) while running this task"
    assert mix.runs_of()["done"] == 1, (done, done.state, done.error, mix.runs_of())
    assert done.state is pf.TaskState.FAILED and done.attempt == 1  # its result died unsent
    assert done.error == ("function worker died (killed by signal 9) after this task ran, "
                          "before its result reached the agent")
    mix.check(session, agent_pid_of(pilot))


def test_a_task_canceled_on_a_worker_that_then_dies_stays_canceled(
        session: pf.Session, tmp_path: Path) -> None:
    """Queued on the worker (fed ahead) when canceled; the worker dies before it says so:
    the task must not go back to the queue and run."""
    pilot = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1,
                                                    function_workers=1))
    runs = tmp_path / "runs"
    mix = Mix(runs)
    assert session.submit(TD(function=pow, args=(2, 2))).result(timeout=30) == 4  # ready
    mix.running = session.submit([napper(runs, "long", 60)])
    mix.queued = session.submit([napper(runs, "canceled", 0, retries=1)])
    wait_until(lambda: "long" in mix.runs_of(), what="the long task's mark")
    assert session.wait_for(mix.tasks, pf.TaskState.SCHEDULED, timeout=10)
    assert mix.queued[0].state is pf.TaskState.SCHEDULED  # on the worker, behind `long`
    mix.queued[0].cancel()
    time.sleep(0.3)  # the cancel reaches the worker
    os.kill(mix.pids()["long"], signal.SIGKILL)
    assert session.wait(mix.tasks, timeout=20)
    assert mix.running[0].error == ("function worker died (killed by signal 9) while "
                                    "running this task")
    canceled = mix.queued[0]
    assert canceled.state is pf.TaskState.CANCELED, (canceled.state, canceled.error)
    assert canceled.error == "canceled (its function worker died: killed by signal 9)"
    assert mix.runs_of() == Counter({"long": 1})
    mix.check(session, agent_pid_of(pilot))


# ---- executables ---------------------------------------------------------------------


def test_an_executable_killed_fails_with_the_signal_and_nothing_else_does(
        session: pf.Session, tmp_path: Path) -> None:
    pilot, mix = start_mix(session, tmp_path / "runs", seconds=1.5, queued_seconds=0.2)
    victim = mix.running[0]
    os.kill(mix.pids()["x0"], signal.SIGKILL)
    assert session.wait(mix.tasks, timeout=20)
    assert victim.state is pf.TaskState.FAILED and victim.exit_code == -9
    assert victim.error == "killed by signal 9"
    assert [t.state for t in mix.tasks if t is not victim] == [pf.TaskState.DONE] * 11
    assert sum(mix.runs_of().values()) == 12
    mix.check(session, agent_pid_of(pilot))


# ---- the client ----------------------------------------------------------------------


CLIENT = """
import os, sys, time
sys.path[:0] = {path!r}
import pilotfish as pf
from tests.integration.test_faults import napper, sleeper
from pathlib import Path
runs = Path(sys.argv[2])
s = pf.Session(path=sys.argv[1])
partitions = [pf.PartitionSpec(backend=sys.argv[3])]
p = s.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=4, partitions=partitions))
running = s.submit([sleeper(runs, f"x{{i}}", 60) for i in range(2)]
                   + [napper(runs, f"f{{i}}", 60) for i in range(2)])
queued = s.submit([sleeper(runs, f"xq{{i}}", 60) for i in range(4)]
                  + [napper(runs, f"fq{{i}}", 60) for i in range(4)])
assert s.wait_for(running, pf.TaskState.RUNNING, timeout=60)
s.journal.flush()
print(s.path, p.process.pid, flush=True)
time.sleep(60)  # until killed
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_client_killed_stops_the_agent_and_its_tasks_and_the_journal_says_what_it_knows(
        tmp_path: Path, backend: str) -> None:
    shm = set(os.listdir("/dev/shm"))
    runs = tmp_path / "runs"
    client = subprocess.Popen([sys.executable, "-c", CLIENT.format(path=sys.path),
                               str(tmp_path), str(runs), backend],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        line = client.stdout.readline()
        assert line, client.communicate(timeout=10)[1]
        where, pid = line.split()
        session_dir, agent = Path(where), int(pid)
        mix = Mix(runs)
        wait_until(lambda: len(mix.runs_of()) == 4, what="the four running tasks' marks")
        running = mix.pids()
        started = time.monotonic()
        client.kill()
        client.wait(5)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(5)
    assert process_gone(agent, 5)  # its pidfd of the client says so at once
    assert time.monotonic() - started < 5
    assert all(process_gone(pid, 5) for pid in running.values())
    nothing_left_of(agent)
    no_new_segments(shm)
    assert mix.runs_of() == Counter(dict.fromkeys(running, 1))  # and nothing else started
    # The journal is readable; it knows the tasks were submitted, which of them were
    # placed or running (those whose progress reached the client), not how they ended.
    db = connect_readonly(session_dir)
    try:
        states = Counter(state for (state,) in db.execute("SELECT state FROM tasks"))
        pilot_state, stopped = db.execute("SELECT state, stopped FROM pilots").fetchone()
    finally:
        db.close()
    assert states.total() == 12 and set(states) <= set(LIVE), states
    assert states["RUNNING"] <= 4, states  # four ran (the cores)
    assert (pilot_state, stopped) == ("ACTIVE", None)
    report = subprocess.run([sys.executable, "-m", "pilotfish.cli", "report", str(session_dir)],
                            capture_output=True, text=True, timeout=30)
    assert report.returncode == 0, report.stderr
    assert "pilot.0000" in report.stdout and "ACTIVE" in report.stdout, report.stdout
    assert "not final 12" in report.stdout, report.stdout


# ---- the disk ------------------------------------------------------------------------


def journal_errors(*steps: Callable[[], object]) -> list[pf.JournalError]:
    """Run each step; return the `JournalError`s they raised.

    A failed write is reported once, by whichever of `submit`, `wait`, `flush` or `close`
    comes next: which one depends on when the journal's thread got to it. (Later small
    writes may even succeed again, in the room a failed transaction left in the WAL.)"""
    errors = []
    for step in steps:
        try:
            step()
        except pf.JournalError as exc:
            errors.append(exc)
    return errors


def test_a_full_disk_under_the_session_is_raised_to_the_user(tiny_disk: Path) -> None:
    session = pf.Session(path=tiny_disk)
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=8))
    tasks = session.submit([TD(executable="/bin/echo", arguments=["x" * 100])
                            for _ in range(2000)])
    errors = journal_errors(lambda: session.wait(timeout=60), session.journal.flush)
    assert session.outstanding == 0  # the tasks all ended, with their reasons
    assert all(t.state.final and (t.state is pf.TaskState.DONE or t.error) for t in tasks)
    errors += journal_errors(session.close)
    assert errors and "database or disk is full" in str(errors[0])
    assert all(re.search(r"\d+ write\(s\) lost so far", str(e)) for e in errors), errors
    assert session.journal.lost > 0


def test_a_disk_that_fills_under_running_tasks_ends_them_all_once(
        tiny_disk: Path, tmp_path: Path) -> None:
    session = pf.Session(path=tiny_disk)
    runs = tmp_path / "runs"  # off the full disk
    errors: list[pf.JournalError] = []
    try:
        pilot, mix = start_mix(session, runs, seconds=1, queued_seconds=0.1)
        agent = agent_pid_of(pilot)
        try:  # fill what is left (if anything is)
            with open(tiny_disk / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        mix.others = session.submit([napper(runs, f"m{i}", 0) for i in range(50)]
                                    + [sleeper(runs, f"mx{i}", 0) for i in range(50)])
        errors += journal_errors(lambda: session.wait(timeout=30), session.journal.flush)
        # The tasks need no room on the session's disk: they all ran, once.
        assert {t.state for t in mix.tasks} == {pf.TaskState.DONE}
        mix.check_ended()
    finally:
        errors += journal_errors(session.close)
    assert errors and "database or disk is full" in str(errors[0])
    nothing_left_of(agent)
    # What the journal holds is readable, and true as far as it goes.
    db = connect_readonly(session.path)
    try:
        rows = dict(db.execute("SELECT uid, state FROM tasks").fetchall())
    finally:
        db.close()
    for t in mix.tasks:  # (a state it passed through on the way, at worst)
        assert rows.get(t.uid) in (None, *LIVE, t.state.value), (t, rows.get(t.uid))


# ---- a Dragon runtime ----------------------------------------------------------------


def dragon_launcher(pilot: pf.Pilot) -> int:
    launchers = [pid for pid, cmd in children(agent_pid_of(pilot)) if "dragon -s" in cmd]
    assert len(launchers) == 1, children(agent_pid_of(pilot))
    return launchers[0]


def in_group(pgid: int) -> list[int]:
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            found.append(int(name))
    return found


@NO_DRAGON
def test_the_dragon_launcher_killed_fails_or_moves_its_partitions_tasks_only(
        session: pf.Session, tmp_path: Path) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    runs = tmp_path / "runs"
    pilot = session.start_pilot(pf.PilotDescription(
        nodes=2, cores_per_node=2,
        partitions=[PS(backend="dragon", nodes=1), PS(backend="builtin", nodes=1)]))
    mix = Mix(runs)
    # On Dragon's node: an executable and a function running (the function may move),
    # and queued behind them two pinned tasks and one that may move. On the built-in
    # node: an executable running, and a core free for what moves.
    mix.running = session.submit(
        [sleeper(runs, "dx", 60, partition="dragon"),
         napper(runs, "df", 60, 0.1, retries=1),  # functions go to Dragon first
         sleeper(runs, "bx", 60, partition="builtin")])
    mix.queued = session.submit(
        [sleeper(runs, "dxq", 60, partition="dragon"),
         napper(runs, "dfq", 60, partition="dragon"),
         napper(runs, "dfq-movable", 0.1, retries=1, partition=None)])
    mix.wait_running(session, timeout=90)
    by_label = {t.description.name: t for t in mix.tasks}
    launcher = dragon_launcher(pilot)
    os.kill(launcher, signal.SIGKILL)  # the launcher alone: its runtime is orphaned
    moved = [by_label[label] for label in ("dx", "df", "dxq", "dfq", "dfq-movable")]
    assert session.wait(moved, timeout=30)
    why = "partition 'dragon' lost: the Dragon runtime exited"
    for label in ("dx", "dxq", "dfq"):
        t = by_label[label]
        assert t.state is pf.TaskState.FAILED and (t.error or "").startswith(why), t.error
    for label in ("df", "dfq-movable"):
        t = by_label[label]
        assert t.state is pf.TaskState.DONE and t.partition == "builtin", (t, t.error)
    assert by_label["df"].attempt == 2 and mix.runs_of()["df"] == 2
    assert by_label["bx"].state is pf.TaskState.RUNNING  # the other partition runs on
    assert in_group(launcher) == []  # the runtime's processes went with it
    mix.others = session.submit([napper(runs, "after", 0), sleeper(runs, "after-x", 0)])
    assert [t.result(timeout=30) for t in mix.others] == ["after", 0]
    assert {t.partition for t in mix.others} == {"builtin"}
    by_label["bx"].cancel()
    assert session.wait(timeout=10) and by_label["bx"].state is pf.TaskState.CANCELED
    mix.check(session, agent_pid_of(pilot))
    assert set(os.listdir("/dev/shm")) <= shm_before


def test_the_agents_log_on_a_full_disk_never_stops_it(tiny_disk: Path) -> None:
    from pilotfish.agent.__main__ import LogStream

    f = open(tiny_disk / "agent.log", "w", buffering=1)  # noqa: SIM115
    log = LogStream(f)
    for _ in range(10_000):  # far more than the disk holds
        print("x" * 100, file=log)
    log.flush()
    try:
        f.close()  # (what it still holds cannot be written either)
    except OSError:
        pass
