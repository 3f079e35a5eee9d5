"""Running executables as local processes: spawn, wait on pidfds, time out, cancel.

What to start for a task comes from a launcher (`launchers.py`; `local` by default: one
process per rank), or from the one the task names where the runner is given `launchers`
by name. Each task gets its own process group (all of the processes its
launcher asked for), so a timeout or a cancel kills the task and everything it started;
stdout and stderr of all of them are appended to `<sandbox>/<uid>.out` and `.err`.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..files import TAIL_BYTES
from ..launchers import Launcher, local
from ..messages import TaskSpec
from ..proctree import wait_fd
from ..reactor import Reactor
from ..resources import Slot
from ..states import TaskState
from .base import BackendEvent, NodeLayout, PlacedTask, TaskFinished, TaskStarted
from .outputs import PUBLISH_AFTER, OutputFile, OutputFiles

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
# For tasks started through srun (or mpiexec, whose daemons srun starts): SIGTERM makes
# `srun` cancel its step and wait (up to 7 s here) until the ranks are gone on every
# node, so it gets the time; and a kill waits until `srun` has run LAUNCH_SETTLE seconds.
# Signalled while still launching the step ("aborted before step completely launched"),
# srun gave up on it, and a node's slurmstepd held the ended step (its ranks gone) for 60 s
# more, waiting for srun to take its output: on Slurm 22.05 here, 2 steps of 2 when
# cancelled as they started, 1 of 6 half a second later, none with this wait.
LAUNCHER_KILL_GRACE = 10.0
LAUNCH_SETTLE = 2.0


def spawn_process(argv: list[str], env: dict[str, str], cwd: str | None, out_fd: int,
                  err_fd: int, pgid: int) -> int:
    """Start one process in process group `pgid` (0: a new group); return its pid.

    `cwd=None` means our own working directory (the agent works in its default sandbox):
    then `posix_spawn` is used and the environment is encoded in C, which is what makes
    spawning thousands of short tasks cheap. `Popen` otherwise. Raises OSError when the
    program cannot be executed.
    """
    if cwd is None:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out_fd, 1),
            (os.POSIX_SPAWN_DUP2, err_fd, 2),
        ]
        spawn = os.posix_spawn if "/" in argv[0] else os.posix_spawnp
        return spawn(argv[0], argv, env, file_actions=actions, setpgroup=pgid)
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out_fd,
                            stderr=err_fd, process_group=pgid, close_fds=True)
    proc.returncode = 0  # reaped through its pidfd, not by Popen
    return proc.pid


@dataclass(slots=True)
class _Running:
    spec: TaskSpec
    out: OutputFile
    err: OutputFile
    pgid: int
    pids: dict[int, int]  # pid -> pidfd, of ranks still running
    exec_start: float
    exit_code: int | None = None
    killed: str | None = None  # why we killed it: "timeout" or "canceled"
    timers: list[int] = field(default_factory=list)


class ProcessRunner:
    """Spawns placed executables and reports when they start and end."""

    def __init__(self, sandbox: str, layout: NodeLayout, slots: int = 0,
                 spawn: Callable[..., int] | None = None, launcher: Launcher = local,
                 hosts: Sequence[str] = (),
                 launchers: Mapping[str, Launcher] | None = None,
                 kill_grace: float = KILL_GRACE, settle: float = 0.0) -> None:
        self.sandbox = sandbox
        self.layout = layout
        self._slots = slots  # how many tasks may run at once: output files made ahead
        self._spawn = spawn or spawn_process  # the one seam for process creation
        self._launcher = launcher  # what to start for a task's ranks (launchers.py)
        self._launchers = launchers or {}  # by name: a task naming one is started by it
        self._kill_grace = kill_grace  # seconds between SIGTERM and SIGKILL
        self._settle = settle  # seconds a task runs before it is signalled to end
        self._hosts = hosts  # the pilot's host names, by node index (for launchers)
        self._base_env = dict(os.environ)
        self._made_dirs: set[str] = set()
        self._outputs = OutputFiles()
        self._cwd = os.getcwd()
        self._running: dict[str, _Running] = {}
        self._reactor: Reactor | None = None
        self._emit: Callable[[BackendEvent], None] = lambda e: None

    def start(self, reactor: Reactor, emit: Callable[[BackendEvent], None]) -> None:
        self._reactor, self._emit = reactor, emit
        self._cwd = os.getcwd()
        os.makedirs(self.sandbox, exist_ok=True)
        self._made_dirs.add(self.sandbox)
        self._outputs.prefill(self.sandbox, 2 * min(self._slots, 256))

    def launch(self, tasks: Sequence[PlacedTask]) -> None:
        for placed in tasks:
            self._launch_one(placed.spec, placed.slot)

    def _launch_one(self, spec: TaskSpec, slot: Slot) -> None:
        assert self._reactor is not None and spec.executable is not None
        launch_ts = time.time()
        sandbox = spec.sandbox or self.sandbox
        pids: dict[int, int] = {}
        pgid = 0
        outputs: list[OutputFile] = []
        try:
            if sandbox not in self._made_dirs:
                os.makedirs(sandbox, exist_ok=True)
                self._made_dirs.add(sandbox)
            for suffix in (".out", ".err"):
                path = os.path.join(sandbox, spec.uid + suffix)
                outputs.append(self._outputs.open(sandbox, path))
            out, err = outputs
            cwd = None if sandbox == self._cwd else sandbox
            launcher = self._launcher
            if spec.launcher is not None and spec.launcher in self._launchers:
                launcher = self._launchers[spec.launcher]
            for process in launcher(spec, slot, self.layout, self._base_env, self._hosts):
                pid = self._spawn(process.argv, process.env, cwd, out.fd, err.fd, pgid)
                if not pgid:
                    pgid = pid  # the first process leads the task's group
                pids[pid] = os.pidfd_open(pid)
        except Exception as exc:  # a bad argument or environment too: this task fails
            if pgid:
                signal_group(pgid, signal.SIGKILL)
            for pid, pidfd in pids.items():
                os.waitpid(pid, 0)
                os.close(pidfd)
            for output in outputs:
                output.close()
            now = time.time()
            self._emit(TaskFinished(spec.uid, TaskState.FAILED, None, now,
                                    error=f"cannot launch {spec.executable!r}: {exc}"))
            return
        exec_start = time.time()
        task = _Running(spec, out, err, pgid, pids, exec_start)
        self._running[spec.uid] = task
        for pid, pidfd in pids.items():
            self._reactor.add_reader(pidfd, functools.partial(self._reap, task, pid))
        task.timers.append(self._reactor.call_later(PUBLISH_AFTER, functools.partial(
            self._publish, task)))
        if spec.timeout:
            task.timers.append(self._reactor.call_later(
                spec.timeout, functools.partial(self._kill, task, "timeout")))
        self._emit(TaskStarted(spec.uid, exec_start, pgid, launch_ts))

    def _reap(self, task: _Running, pid: int) -> None:
        assert self._reactor is not None
        pidfd = task.pids.pop(pid)
        self._reactor.remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if task.exit_code is None or (task.exit_code == 0 and code != 0):
            task.exit_code = code
        if task.pids:
            if code != 0 and task.killed is None:  # one rank failed: stop the others
                task.killed = "rank failed"
                signal_group(task.pgid, signal.SIGKILL)
            return
        exec_stop = time.time()
        signal_group(task.pgid, signal.SIGKILL)  # leftovers the task left behind
        for timer in task.timers:
            self._reactor.cancel_timer(timer)
        del self._running[task.spec.uid]
        spec, code = task.spec, task.exit_code
        try:
            finish = self._outputs.finish
            stdout, stderr = finish(task.out, TAIL_BYTES), finish(task.err, TAIL_BYTES)
        except OSError as exc:  # e.g. the task removed its own sandbox
            stdout, stderr = None, f"(pilotfish could not keep this task's output: {exc})"
            task.out.close()
            task.err.close()
        if task.killed == "canceled":
            state, error = TaskState.CANCELED, "canceled"
        elif task.killed == "timeout":
            state, error = TaskState.FAILED, f"timed out after {spec.timeout} s (killed)"
        elif task.killed == "rank failed":
            state = TaskState.FAILED
            error = f"a rank failed with exit code {code}; the other ranks were killed"
        elif code == 0:
            state, error = TaskState.DONE, None
        else:
            state = TaskState.FAILED
            error = (f"killed by signal {-code}" if code is not None and code < 0
                     else f"exit code {code}")
        self._emit(TaskFinished(spec.uid, state, task.exec_start, exec_stop, exit_code=code,
                                error=error, stdout=stdout, stderr=stderr))

    def _publish(self, task: _Running) -> None:
        """A running task's output files get their names once written, to follow them."""
        assert self._reactor is not None
        try:
            named = [output.publish_if_written() for output in (task.out, task.err)]
        except OSError:
            return  # its sandbox is gone: the files stay unnamed, the task goes on
        if not all(named) and task.spec.uid in self._running:
            task.timers.append(self._reactor.call_later(
                PUBLISH_AFTER, functools.partial(self._publish, task)))

    def _kill(self, task: _Running, why: str) -> None:
        assert self._reactor is not None
        if task.spec.uid not in self._running or task.killed:
            return
        task.killed = why
        early = task.exec_start + self._settle - time.time()
        if early > 0:  # (its launcher is still starting it: see LAUNCH_SETTLE)
            task.timers.append(self._reactor.call_later(early, functools.partial(
                self._terminate, task)))
        else:
            self._terminate(task)

    def _terminate(self, task: _Running) -> None:
        assert self._reactor is not None
        if task.spec.uid not in self._running:
            return
        signal_group(task.pgid, signal.SIGTERM)
        task.timers.append(self._reactor.call_later(
            self._kill_grace, lambda: signal_group(task.pgid, signal.SIGKILL)))

    def cancel(self, uids: Sequence[str]) -> list[str]:
        """Kill the running tasks among `uids`; return those that were not ours."""
        others = []
        for uid in uids:
            task = self._running.get(uid)
            if task is None:
                others.append(uid)
            else:
                self._kill(task, "canceled")
        return others

    def stop(self, timeout: float) -> None:
        """Kill every running task's process group and reap it (no event is emitted)."""
        if self._settle and self._running:  # (see LAUNCH_SETTLE)
            youngest = max(task.exec_start for task in self._running.values())
            time.sleep(max(0.0, min(youngest + self._settle - time.time(), timeout / 2)))
        for task in self._running.values():
            signal_group(task.pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for task in list(self._running.values()):
            for pid, pidfd in task.pids.items():
                if not wait_fd(pidfd, deadline - time.monotonic()):
                    signal_group(task.pgid, signal.SIGKILL)
                    if not wait_fd(pidfd, KILL_GRACE):  # it left its process group
                        os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os.close(pidfd)
            signal_group(task.pgid, signal.SIGKILL)
            for output in (task.out, task.err):
                try:
                    self._outputs.finish(output, 0)  # keep what it wrote
                except OSError:
                    output.close()
        self._running.clear()
        self._outputs.close()

    @property
    def running(self) -> int:
        return len(self._running)


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
