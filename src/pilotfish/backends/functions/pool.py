"""Persistent function workers: started once, fed batches of function tasks over ZeroMQ.

Workers are started lazily, the first time the scheduler dispatches to one, and kept
for the pilot's life. A function task that needs its own resources (several cores, a
GPU) gets a one-off worker started with that slot's environment. If a worker dies, the
task it was running is lost (it runs again if its `retries` allow, else it fails with
the reason), as are those it ran whose results had not reached the agent yet; the tasks
queued behind it never started and are requeued. So are the tasks of a worker that dies
before it became ready, unless `MAX_FAILED_STARTS` workers in a row did (a broken
environment: they would again): then they fail with the reason. A task it was asked to
cancel ends CANCELED.
The messages are in protocol.py; one that cannot be decoded is dropped and counted
(`receiver`), as are results and starts that come too late to matter.

Each worker counts the tasks it has started in a small shared file (8 bytes, mapped in
memory; `worker.<partition>.<id>.started`, next to its log): when it dies, that count
names the task that was running, which is lost, as are those before it whose results
were still held (a worker sends results a few milliseconds late, several to a message:
they ran, and run again only if their `retries` allow); the tasks after it never
started and go back to the queue. Tasks it was asked to cancel end CANCELED.

A task that outlives its timeout, or a cancel, by `FORCE_GRACE` seconds (code stuck in C
never sees the worker's signals) has its worker killed: it fails (or ends CANCELED) with
that reason, and the worker is replaced.

Where the workers run is pluggable (`WorkerProcesses`): local child processes here
(`LocalProcesses`), Dragon processes for a Dragon partition (backends/dragon/backend.py).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import zmq

from ...keys import Keys
from ...messages import TaskSpec, encode
from ...proctree import wait_fd
from ...reactor import Reactor, readable
from ...states import TaskState
from ...wire import Receiver
from ..base import BackendEvent, TaskFinished, TaskLost, TaskRequeued, TaskStarted
from ..processes import signal_group
from .calls import TASKS_DIR_ENV
from .protocol import STATES, Call, Cancel, Done, FromWorker, Ready, Result, Run, Started, Stop
from .worker import ANNOUNCER_SUFFIX, PARENT_PID_ENV

WORKER_MODULE = "pilotfish.backends.functions.worker"  # run as `python -m`
MAX_FAILED_STARTS = 3  # workers in a row that die before ready: their tasks fail
FORCE_GRACE = 5.0  # seconds past a timeout or cancel before a worker is killed
WATCH_INTERVAL = 1.0
log = logging.getLogger(__name__)


class WorkerProcesses(Protocol):
    """Starts, signals and stops worker processes, and says when one has exited."""

    def start(self, reactor: Reactor, ident: str, argv: list[str], env: dict[str, str],
              cwd: str, log: str, on_exit: Callable[[int | None], None]) -> None:
        """Start a worker; call `on_exit` with its exit code (None: unknown) once it ends."""

    def signal(self, ident: str, signum: int) -> None:
        """Signal a worker (SIGKILL: kill it, and whatever it started)."""

    def stop(self, timeout: float) -> None:
        """Wait up to `timeout` for the workers told to stop, then kill the rest."""


class LocalProcesses:
    """Workers as child processes of the agent, each leading its own process group."""

    def __init__(self) -> None:
        self._procs: dict[str, tuple[int, int]] = {}  # ident -> (pid, pidfd)
        self._reactor: Reactor | None = None

    def start(self, reactor: Reactor, ident: str, argv: list[str], env: dict[str, str],
              cwd: str, log: str, on_exit: Callable[[int | None], None]) -> None:
        self._reactor = reactor
        env = {**env, PARENT_PID_ENV: str(os.getpid())}
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, process_group=0)
        proc.returncode = 0  # reaped through its pidfd, not by Popen
        pidfd = os.pidfd_open(proc.pid)
        self._procs[ident] = (proc.pid, pidfd)
        reactor.add_reader(pidfd, lambda: on_exit(self._reap(ident)))

    def _reap(self, ident: str) -> int:
        pid, pidfd = self._procs.pop(ident)
        assert self._reactor is not None
        self._reactor.remove_reader(pidfd)
        os.close(pidfd)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    def signal(self, ident: str, signum: int) -> None:
        if ident not in self._procs:
            return
        pid = self._procs[ident][0]
        if signum == signal.SIGKILL:
            signal_group(pid, signum)
            return
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for pid, pidfd in self._procs.values():
            if not wait_fd(pidfd, deadline - time.monotonic()):
                signal_group(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(pidfd)
        self._procs.clear()


@dataclass(slots=True)
class _Worker:
    ident: str
    log: str
    counter: str  # file where the worker counts the tasks it started
    forced: dict[str, tuple[TaskState, str]] = field(default_factory=dict)  # why killed
    watched: int = -1  # index of the task seen running at the last watch, and since when
    watched_since: float = 0.0
    one_off: bool = False
    ready: bool = False
    outstanding: dict[str, int] = field(default_factory=dict)  # uid -> dispatch index
    dispatched: int = 0
    unsent: list[Call] = field(default_factory=list)
    known_functions: set[str] = field(default_factory=set)


class FunctionPool:
    def __init__(self, sandbox: str, functions: dict[str, bytes], python_path: list[str],
                 keys_file: str, processes: WorkerProcesses | None = None,
                 name: str = "builtin", tasks_dir: str | None = None) -> None:
        self.sandbox = sandbox
        self.keys_file = keys_file  # workers read the session's keys there
        self.name = name  # the partition's: its workers' files are its own
        self.processes = processes or LocalProcesses()
        # Workers import functions pickled by reference from the client's own modules.
        self._env = dict(os.environ)
        if python_path:
            self._env["PYTHONPATH"] = os.pathsep.join(python_path)
        if tasks_dir:  # where a function without a sandbox leaves its output files
            self._env[TASKS_DIR_ENV] = tasks_dir
        self.functions = functions  # key -> pickled function, shared with the agent
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        Keys.load(keys_file).serve(self._sock)  # only the session's own processes get in
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.receiver: Receiver[FromWorker] = Receiver(f"function pool {name}", FromWorker)
        self._workers: dict[str, _Worker] = {}
        self._task_worker: dict[str, _Worker] = {}
        self._timeouts: dict[str, float] = {}  # of outstanding tasks that have one
        self._canceling: dict[str, float] = {}  # cancel sent (monotonic time), not ended
        self._watching = False
        self._failed_starts = 0  # workers in a row that died before they were ready
        self._reactor: Reactor | None = None
        self._emit: Callable[[BackendEvent], None] = lambda e: None

    def start(self, reactor: Reactor, emit: Callable[[BackendEvent], None]) -> None:
        self._reactor, self._emit = reactor, emit
        reactor.add_reader(self._sock, self._on_message)

    # ---- feeding workers --------------------------------------------------------------

    def dispatch(self, tasks: Sequence[tuple[TaskSpec, str]],
                 env: dict[str, str] | None = None) -> None:
        """Send each (spec, worker ident) to its worker, starting workers as needed."""
        by_worker: dict[str, list[Call]] = {}
        for spec, ident in tasks:  # (no per-task check that it has a function: it does)
            by_worker.setdefault(ident, []).append(Call(
                spec.uid, spec.function_key, spec.args_blob,  # type: ignore[arg-type]
                spec.timeout, spec.environment or None, spec.sandbox,
                spec.inputs or None))  # type: ignore[arg-type]
        for ident, items in by_worker.items():
            worker = self._workers.get(ident)
            if worker is None:
                try:
                    worker = self._spawn(ident, env, one_off=env is not None)
                except OSError as exc:  # a full disk, no processes left: the agent lives on
                    worker = self._stand_in(ident, env, exc)
                    if worker is None:
                        self._not_started([item.uid for item in items], str(exc), self.sandbox)
                        continue
            for item in items:
                worker.outstanding[item.uid] = worker.dispatched
                worker.dispatched += 1
                self._task_worker[item.uid] = worker
                if item.timeout:
                    self._timeouts[item.uid] = item.timeout
                    self._watch_soon()
            if worker.ready:
                self._send_run(worker, items)
            else:
                worker.unsent.extend(items)

    def _spawn(self, ident: str, env: dict[str, str] | None, one_off: bool) -> _Worker:
        assert self._reactor is not None
        os.makedirs(self.sandbox, exist_ok=True)
        log = os.path.join(self.sandbox, f"worker.{self.name}.{ident}.log")
        counter = os.path.join(self.sandbox, f"worker.{self.name}.{ident}.started")
        with open(counter, "wb") as f:
            f.write(bytes(8))
        worker = _Worker(ident, log, counter, one_off=one_off)
        self.processes.start(
            self._reactor, ident,
            [sys.executable, "-m", WORKER_MODULE, self.address, ident, counter,
             self.keys_file],
            {**self._env, **(env or {})}, self.sandbox, log,
            lambda code: self._on_exit(worker, code))
        self._workers[ident] = worker
        return worker

    def _stand_in(self, ident: str, env: dict[str, str] | None,
                  exc: OSError) -> _Worker | None:
        """A running worker that takes the tasks of one that could not start (after it
        runs its own): work goes on on fewer workers. None for a one-off worker (its
        task needs an environment of its own) or when none runs."""
        ready = [w for w in self._workers.values() if w.ready and not w.one_off]
        if env is not None or not ready:
            return None
        worker = min(ready, key=lambda w: len(w.outstanding))
        log.warning("function worker %s of %s could not start (%s): its tasks go to %s",
                    ident, self.name, exc, worker.ident)
        return worker

    def prestart(self, idents: Sequence[str]) -> None:
        """Start these workers now rather than at their first task."""
        for ident in idents:
            if ident not in self._workers:
                self._spawn(ident, None, one_off=False)

    def _send_run(self, worker: _Worker, items: list[Call]) -> None:
        known = worker.known_functions
        new = {c.key for c in items if c.key not in known}
        blobs = {key: self.functions[key] for key in new}
        known |= new
        self._send(worker, Run(items, blobs))

    def _send(self, worker: _Worker, message: Run | Cancel | Stop) -> None:
        try:
            self._sock.send_multipart([worker.ident.encode(), encode(message)])
        except zmq.ZMQError:
            pass  # the worker is gone: its exit handler deals with its tasks

    # ---- hearing back -----------------------------------------------------------------

    def _on_message(self) -> None:
        receiver = self.receiver
        while readable(self._sock):
            frames = self._sock.recv_multipart()
            if len(frames) != 2:  # (a worker's DEALER sends one frame, after its identity)
                receiver.drop(f"{len(frames) - 1} frames, not 1")
                continue
            ident_raw, raw = frames
            msg = receiver.decode(raw)
            if msg is None:
                continue
            # A worker's announcer thread has a socket of its own.
            ident = ident_raw.decode(errors="replace").removesuffix(ANNOUNCER_SUFFIX)
            worker = self._workers.get(ident)
            if worker is None:  # one that exited (its last words), or not one of ours
                receiver.note_stale()
            elif type(msg) is Done:
                self._on_done(worker, msg.results)
            elif type(msg) is Started:
                if msg.uid in worker.outstanding:
                    self._emit(TaskStarted(msg.uid, msg.ts))
                else:  # its result, sent from the other socket, overtook it
                    receiver.note_stale()
            elif type(msg) is Ready:
                worker.ready = True
                self._failed_starts = 0
                if worker.unsent:
                    self._send_run(worker, worker.unsent)
                    worker.unsent = []

    def _on_done(self, worker: _Worker, results: list[Result]) -> None:
        emit = self._emit
        outstanding = worker.outstanding
        for r in results:
            if outstanding.pop(r.uid, None) is None:
                # From a worker that died and was replaced (requeued already), or forged.
                self.receiver.note_stale()
                continue
            self._forget(r.uid)
            emit(TaskFinished(r.uid, STATES[r.outcome], r.exec_start, r.exec_stop,
                              error=r.error, result=r.result, stdout=r.stdout,
                              stderr=r.stderr))
        if worker.one_off and not outstanding:
            self._send(worker, Stop())

    def _on_exit(self, worker: _Worker, code: int | None) -> None:
        self._on_message()  # results it sent before it died count
        self._workers.pop(worker.ident, None)
        started = _read_started(worker.counter)
        if not worker.outstanding:
            return
        how = ("exited" if code is None else f"killed by signal {-code}" if code < 0
               else f"exit code {code}")
        now = time.time()
        uids = list(worker.outstanding)
        canceling = {uid for uid in uids if uid in self._canceling}  # never to run again
        for uid in uids:
            self._forget(uid)
        if not worker.ready:
            self._not_started(uids, how, worker.log)
            return
        running = started - 1
        for uid in uids:
            if uid in worker.forced:
                state, why = worker.forced[uid]
                self._emit(TaskFinished(uid, state, None, now, error=f"{why}: its function "
                                        "worker was killed"))
            elif uid in canceling:
                self._emit(TaskFinished(uid, TaskState.CANCELED, None, now,
                                        error=f"canceled (its function worker died: {how})"))
            elif worker.outstanding[uid] == running:  # runs again only if its retries allow
                self._emit(TaskLost(uid, f"function worker died ({how}) while running this "
                                         "task"))
            elif worker.outstanding[uid] < running:  # it ran: its result died unsent
                self._emit(TaskLost(uid, f"function worker died ({how}) after this task ran, "
                                         "before its result reached the agent"))
            else:
                self._emit(TaskRequeued(uid))

    def _not_started(self, uids: list[str], how: str, where: str) -> None:
        """Tasks of a worker that never became ready go back to be placed again; but
        workers that cannot start at all (a broken environment) would fail again and
        again: after `MAX_FAILED_STARTS` in a row, their tasks fail."""
        self._failed_starts += 1
        if self._failed_starts < MAX_FAILED_STARTS:
            for uid in uids:
                self._emit(TaskRequeued(uid))
            return
        reason = (f"function workers could not start ({how}; {self._failed_starts} in a "
                  f"row); see {where}")
        now = time.time()
        for uid in uids:
            self._emit(TaskFinished(uid, TaskState.FAILED, None, now, error=reason))

    # ---- control ----------------------------------------------------------------------

    def _forget(self, uid: str) -> None:
        """A task has left its worker (ended, canceled before it ran, or lost with it)."""
        self._task_worker.pop(uid, None)
        self._timeouts.pop(uid, None)
        self._canceling.pop(uid, None)

    def _watch_soon(self) -> None:
        if not self._watching and self._reactor is not None:
            self._watching = True
            self._reactor.call_later(WATCH_INTERVAL, self._watch)

    def _watch(self) -> None:
        """Once a second, while tasks have timeouts or cancels: kill the worker of a task
        still running `FORCE_GRACE` seconds after it should have stopped. (The worker
        cannot tell: code deaf to its signals does not let it run.)"""
        self._watching = False
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if not worker.outstanding or not worker.ready:
                continue
            running = _peek_started(worker.counter) - 1
            if running != worker.watched:
                worker.watched, worker.watched_since = running, now
                continue
            uid = next((u for u, i in worker.outstanding.items() if i == running), None)
            if uid is None or uid in worker.forced:
                continue
            timeout = self._timeouts.get(uid)
            if timeout and now - worker.watched_since > timeout + FORCE_GRACE:
                self._force(worker, uid, TaskState.FAILED, f"timed out after {timeout} s "
                            "and did not stop")
            elif uid in self._canceling and now - self._canceling[uid] > FORCE_GRACE:
                self._force(worker, uid, TaskState.CANCELED, "canceled and did not stop")
        if self._timeouts or self._canceling:
            self._watch_soon()

    def _force(self, worker: _Worker, uid: str, state: TaskState, why: str) -> None:
        worker.forced[uid] = (state, why)
        self.processes.signal(worker.ident, signal.SIGKILL)

    def cancel(self, uids: Sequence[str]) -> list[str]:
        """Ask workers to cancel these tasks; return the uids that are not ours."""
        others = []
        for uid in uids:
            worker = self._task_worker.get(uid)
            if worker is None:
                others.append(uid)
                continue
            if worker.ready:
                self._send(worker, Cancel([uid]))
                self.processes.signal(worker.ident, signal.SIGUSR1)
                self._canceling[uid] = time.monotonic()
                self._watch_soon()
            else:  # not started yet: it never runs
                worker.outstanding.pop(uid, None)
                worker.unsent = [c for c in worker.unsent if c.uid != uid]
                self._forget(uid)
                if worker.one_off and not worker.outstanding:
                    self.processes.signal(worker.ident, signal.SIGKILL)
                now = time.time()
                self._emit(TaskFinished(uid, TaskState.CANCELED, None, now, error="canceled"))
        return others

    def stop(self, timeout: float) -> None:
        for worker in self._workers.values():
            self._send(worker, Stop())
        self.processes.stop(timeout)
        self._workers.clear()
        self._sock.close(linger=0)


def _peek_started(path: str) -> int:
    """How many tasks a worker has started (see the module docstring)."""
    try:
        with open(path, "rb") as f:
            return int.from_bytes(f.read(8), "little")
    except OSError:
        return 0


def _read_started(path: str) -> int:
    """`_peek_started` of a worker that exited, removing its file."""
    count = _peek_started(path)
    try:
        os.unlink(path)
    except OSError:
        pass
    return count
