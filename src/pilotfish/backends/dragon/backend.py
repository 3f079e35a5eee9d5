"""The Dragon backend: one Dragon runtime per partition, driven over ZeroMQ.

`start` launches `dragon -s PYTHON -m ...dragon.executor ADDRESS WORKERS` in its own
process group (Dragon's launcher, its runtime and the executor inside it; not a new
session: Dragon's launcher does not come up as a session leader); the executor connects
back and says it is ready, and tasks placed before then wait for it. Executables run as
Dragon processes, multi-rank tasks as process groups.

Functions are fed ahead like the built-in function workers, to one of two kinds of
workers (`PartitionSpec(functions=...)`):

- "workers" (the default): pilotfish's own function workers (functions/worker.py), started
  as Dragon processes on the partition's nodes, fed by the agent directly. They block
  while they wait (a Dragon runtime with 32 of them idles at 0.08 CPU here), and give
  functions what the pool cannot: cancel and timeout interrupt the function, and a dead
  worker fails only its task.
- "pool": a Dragon `multiprocessing` pool in the executor; the tasks fed ahead to one
  worker in one message go as one pool call (a pool call costs ~2.4 ms of its own).
  Its workers spin while they wait for work: a runtime with a pool of 2 idles at 0.88
  CPU here, and on 2 CPUs a pool of 32 took 10.5 s to 167 s, run to run, for 320
  one-second functions (ideal: 10 s). So unless `function_workers` says otherwise the
  pool has no more workers than the host has CPUs.

`stop` asks the executor to stop, then ends the runtime's whole process group by its id
and removes the `/dev/shm` segments it made (named after its launcher's pid, and new
since it started: Dragon leaves them when it is killed, and its own clean-up tool would
remove every segment of the user), and Dragon segments new since it started that no
process uses any more. If the runtime dies, the agent hears `PartitionLost`
and fails or moves its tasks.

Dragon's segments are sized with `DRAGON_DEFAULT_SEG_SZ` and `DRAGON_INF_SEG_SZ`
(256 MiB each here, instead of the several GiB Dragon maps by default).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import zmq

from ...files import read_tail
from ...keys import Keys
from ...launchers import task_environment
from ...messages import TaskSpec, encode
from ...partitions import Partition
from ...proctree import kill_group
from ...reactor import Reactor
from ...states import TaskState
from ...wire import Receiver
from ..base import (
    BackendEvent,
    BuildContext,
    DispatchedTask,
    NodeLayout,
    PartitionLost,
    PlacedTask,
    TaskFinished,
    TaskRequeued,
    TaskStarted,
)
from ..functions.calls import TASKS_DIR_ENV
from ..functions.pool import FunctionPool
from ..functions.protocol import STATES
from . import launcher
from .janitor import remove_segments, segments_of, shm_entries
from .protocol import (
    Calls,
    Cancel,
    Done,
    Exec,
    ExecTask,
    Exited,
    FromExecutor,
    Functions,
    PoolCall,
    Rank,
    Ready,
    Requeued,
    Result,
    Signal,
    Started,
    StartWorker,
    Stop,
    ToExecutor,
)

SEGMENT_BYTES = 256 * 2**20
START_TIMEOUT = 60.0  # seconds for the runtime to come up
EXECUTOR = "pilotfish.backends.dragon.executor"  # run by Dragon as `python -m`


def launch_problem(spec: TaskSpec, sandbox: str) -> str | None:
    """Why an executable task cannot start, found before Dragon is asked (which would
    say it far less clearly: a shell's exit code 127, a global services error); None if
    it can. Checked on this host, where the runtime runs (`dragon -s`)."""
    if spec.kind != "executable" or spec.executable is None:
        return None
    cwd = spec.sandbox or sandbox
    try:
        os.makedirs(cwd, exist_ok=True)
    except OSError as exc:
        return f"cannot launch {spec.executable!r}: {exc}"
    exe = spec.executable
    if "/" in exe:
        path = os.path.join(cwd, exe)  # an absolute one stays as it is
        found = os.path.isfile(path) and os.access(path, os.X_OK)
    else:
        search = spec.environment.get("PATH", os.environ.get("PATH", ""))
        found = shutil.which(exe, path=search) is not None
    return None if found else (f"cannot launch {exe!r}: no such executable file"
                               + ("" if "/" in exe else " in PATH"))


_ABNORMAL = "Abnormal Termination of Dragon run-time with message:"


def abnormal_termination(log_tail: str) -> str | None:
    """The message Dragon gives when its runtime ends abnormally, from its output."""
    _, found, after = log_tail.rpartition(_ABNORMAL)
    lines = [line.strip() for line in after.splitlines() if line.strip()]
    return lines[0][:300] if found and lines else None


def build(context: BuildContext, partition: Partition) -> DragonBackend:
    workers = context.workers_per_node
    pool = partition.functions == "pool"
    if pool and context.function_workers is None:
        # Idle Dragon pool workers spin (no-op calls through Pool(8) on 2 CPUs ran 30x
        # slower than through Pool(2)): unless told otherwise, no more than the CPUs.
        workers = max(1, min(workers, (os.cpu_count() or 1) // partition.nodes))
    return DragonBackend(partition.name, context.task_sandbox, context.node_layout(partition),
                         context.functions, context.sandbox, partition.nodes, workers,
                         context.python_path, context.keys_file, dragon_pool=pool)


class DragonProcesses:
    """Function workers started as Dragon processes by the executor (see FunctionPool)."""

    def __init__(self, backend: DragonBackend) -> None:
        self.backend = backend
        self.node_of: dict[str, int] = {}  # worker ident -> its node, set before it starts
        self._on_exit: dict[str, Callable[[int | None], None]] = {}
        self.unsent: list[StartWorker] = []  # asked for before the runtime was ready

    def start(self, reactor: Reactor, ident: str, argv: list[str], env: dict[str, str],
              cwd: str, log: str, on_exit: Callable[[int | None], None]) -> None:
        self._on_exit[ident] = on_exit
        changed = {k: v for k, v in env.items() if os.environ.get(k) != v}  # Dragon's own stay
        message = StartWorker(ident, argv, changed, cwd, log, self.node_of.pop(ident, 0))
        if self.backend._ready:
            self.backend._send(message)
        else:
            self.unsent.append(message)

    def exited(self, ident: str, code: int | None) -> bool:
        """Say a worker ended; False if it is not one of ours (or was said before)."""
        on_exit = self._on_exit.pop(ident, None)
        if on_exit is None:
            return False
        on_exit(code)
        return True

    def signal(self, ident: str, signum: int) -> None:
        if ident in self._on_exit:
            self.backend._send(Signal(ident, signum))

    def stop(self, timeout: float) -> None:
        """Nothing to wait for: stopping the runtime ends its processes."""


class DragonBackend:
    def __init__(self, name: str, sandbox: str, layout: NodeLayout, functions: dict[str, bytes],
                 log_dir: str, nodes: int, workers_per_node: int, python_path: list[str],
                 keys_file: str, dragon_pool: bool = False) -> None:
        self.name = name
        self.keys_file = keys_file  # the executor and the workers connect with these keys
        self.sandbox = sandbox
        self.layout = layout
        self.functions = functions
        self.log_dir = log_dir
        self.workers_per_node = workers_per_node
        self.workers = nodes * workers_per_node
        # pilotfish's workers as Dragon processes (self.pool feeds them), unless asked
        # for Dragon's own pool (in the executor).
        self.processes: DragonProcesses | None = None
        self.pool: FunctionPool | None = None
        if not dragon_pool:
            self.processes = DragonProcesses(self)
            self.pool = FunctionPool(log_dir, functions, python_path, keys_file,
                                     self.processes, name, tasks_dir=sandbox)
        self.python_path = python_path
        self._sent_functions: set[str] = set()
        self._tasks: dict[str, PlacedTask | DispatchedTask] = {}  # sent or waiting, not ended
        self._waiting: list[PlacedTask | DispatchedTask] = []  # before the runtime was ready
        self._ready = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self.receiver: Receiver[FromExecutor] = Receiver(f"Dragon backend {name}", FromExecutor)
        self._shm_before: set[str] = set()
        self._reactor: Reactor | None = None
        self._emit: Callable[[BackendEvent], None] = lambda e: None
        self._pidfd: int | None = None
        self._dead: str | None = None
        self._segments_file = os.path.join(log_dir, f"dragon-{name}.segments")
        self._calls_dir = os.path.join(log_dir, f"dragon-{name}.calls")  # pool calls' markers
        # Bind ranks to their cores only where those cores exist (not on virtual nodes).
        self._bind = set(layout.core_ids) <= os.sched_getaffinity(0)

    # ---- life -------------------------------------------------------------------------

    def start(self, reactor: Reactor, emit: Callable[[BackendEvent], None]) -> None:
        self._reactor, self._emit = reactor, emit
        if self.pool is not None:
            self.pool.start(reactor, emit)
        os.makedirs(self.sandbox, exist_ok=True)
        if self.pool is None:  # Dragon's pool: its calls leave markers there
            os.makedirs(self._calls_dir, exist_ok=True)
        self._sock = zmq.Context.instance().socket(zmq.PAIR)
        self._sock.setsockopt(zmq.LINGER, 0)
        Keys.load(self.keys_file).serve(self._sock)
        port: int = self._sock.bind_to_random_port("tcp://127.0.0.1")
        env = dict(os.environ)
        env.setdefault("DRAGON_DEFAULT_SEG_SZ", str(SEGMENT_BYTES))
        env.setdefault("DRAGON_INF_SEG_SZ", str(SEGMENT_BYTES))
        env[TASKS_DIR_ENV] = self.sandbox  # (functions in its pool: their output files)
        env["PYTHONPATH"] = os.pathsep.join([p for p in self.python_path if p]
                                            + [env.get("PYTHONPATH", "")]).strip(os.pathsep)
        bin_dir = os.path.dirname(launcher())  # Dragon runs its own tools (dragon-config)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        self._shm_before = shm_entries()
        with open(os.path.join(self.log_dir, f"dragon-{self.name}.log"), "ab") as log:
            self._proc = subprocess.Popen(
                [launcher(), "-s", sys.executable, "-m", EXECUTOR,
                 f"tcp://127.0.0.1:{port}", str(0 if self.pool else self.workers),
                 self._calls_dir, self.keys_file],
                stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, cwd=self.sandbox, env=env,
                process_group=0)
        self._pidfd = os.pidfd_open(self._proc.pid)
        reactor.add_reader(self._sock, self._on_message)
        reactor.add_reader(self._pidfd, self._on_exit)
        reactor.call_later(START_TIMEOUT, self._check_started)

    def stop(self, timeout: float) -> None:
        if self.pool is not None:
            self.pool.stop(timeout)
        if self._proc is not None and self._proc.poll() is None and self._ready:
            self._send(Stop())
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self._proc is not None:
            kill_group(self._proc.pid)  # the launcher leads its process group
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self._proc is not None:
            remove_segments(self._proc.pid, self._shm_before)
            try:
                os.unlink(self._segments_file)
            except OSError:
                pass
        shutil.rmtree(self._calls_dir, ignore_errors=True)
        if self._sock is not None:
            self._sock.close(0)

    # ---- tasks ------------------------------------------------------------------------

    def launch(self, tasks: Sequence[PlacedTask | DispatchedTask]) -> None:
        if self.pool is not None and self.processes is not None:
            functions = [t for t in tasks if t.spec.kind == "function"]
            tasks = [t for t in tasks if t.spec.kind != "function"]
            self._to_workers(functions, self.pool, self.processes)
        runnable = []
        for placed in tasks:
            problem = launch_problem(placed.spec, self.sandbox)
            if problem is None:
                self._tasks[placed.spec.uid] = placed
                runnable.append(placed)
            else:
                self._emit(TaskFinished(placed.spec.uid, TaskState.FAILED, None, time.time(),
                                        error=problem))
        tasks = runnable
        if self._dead is not None:
            return  # the agent moves or fails them when it hears the runtime is lost
        if not self._ready:
            self._waiting.extend(tasks)
        else:
            self._send_tasks(tasks)

    def dispatch(self, tasks: Sequence[DispatchedTask]) -> None:
        """Plain functions queued ahead for a worker (in a Dragon pool, the tasks queued
        for one worker in one message go as one pool call; the pool picks its worker)."""
        self.launch(tasks)

    def _to_workers(self, tasks: Sequence[PlacedTask | DispatchedTask], pool: FunctionPool,
                    processes: DragonProcesses) -> None:
        """Functions for pilotfish's workers: each to its pooled worker (all in one go),
        or to a one-off worker that sees only the task's GPUs if it has a slot of its own."""
        pooled = []
        for task in tasks:
            if isinstance(task, DispatchedTask):
                ident = f"w{task.worker}"
                processes.node_of[ident] = task.node
                pooled.append((task.spec, ident))
            else:
                ident = f"task-{task.spec.uid}"
                processes.node_of[ident] = task.slot.nodes[0]
                pool.dispatch([(task.spec, ident)], env=self._gpu_env(task))
        if pooled:
            pool.dispatch(pooled)

    def cancel(self, uids: Sequence[str]) -> None:
        if self.pool is not None:
            uids = self.pool.cancel(uids)
        ours = [u for u in uids if u in self._tasks]
        waiting = {t.spec.uid for t in self._waiting}
        now = time.time()
        for uid in ours:
            if uid in waiting:
                self._waiting = [t for t in self._waiting if t.spec.uid != uid]
                del self._tasks[uid]
                self._emit(TaskFinished(uid, TaskState.CANCELED, None, now, error="canceled"))
        sent = [u for u in ours if u not in waiting]
        if sent:
            self._send(Cancel(sent))

    def _exec_message(self, placed: PlacedTask) -> ExecTask:
        spec, slot = placed.spec, placed.slot
        assert spec.executable is not None
        cwd = spec.sandbox or self.sandbox
        base = {"PATH": os.environ.get("PATH", "")}
        ids = self.layout.core_ids
        ranks = [Rank([spec.executable, *spec.arguments],
                      task_environment(base, spec, slot, rank, self.layout), slot.nodes[rank],
                      [ids[c] for c in slot.cores[rank]] if self._bind else [])
                 for rank in range(spec.ranks)]
        return ExecTask(spec.uid, ranks, cwd, os.path.join(cwd, spec.uid + ".out"),
                        os.path.join(cwd, spec.uid + ".err"), spec.timeout,
                        spec.tags.get("pmi") if spec.tags else None)

    def _gpu_env(self, task: PlacedTask | DispatchedTask) -> dict[str, str] | None:
        """What a function task's pool worker sets so the task sees its GPUs only."""
        if not (self.layout.gpu_env and self.layout.gpus):
            return None
        if isinstance(task, DispatchedTask):
            return {self.layout.gpu_env: ""}
        placed = task
        return {self.layout.gpu_env: ",".join(map(str, placed.slot.rank_gpu_ids(0)))}

    def _send_tasks(self, tasks: Sequence[PlacedTask | DispatchedTask]) -> None:
        calls: list[PoolCall] = []
        execs: list[ExecTask] = []
        new_functions: dict[str, bytes] = {}
        for placed in tasks:
            spec = placed.spec
            if spec.kind == "function":
                key = spec.function_key
                assert key is not None
                if key not in self._sent_functions:
                    new_functions[key] = self.functions[key]
                    self._sent_functions.add(key)
                worker = placed.worker if isinstance(placed, DispatchedTask) else -1
                gpu = self._gpu_env(placed)
                env = {**spec.environment, **gpu} if spec.environment and gpu else (
                    spec.environment or gpu)
                calls.append(PoolCall(spec.uid, key, spec.args_blob, spec.timeout, env,
                                      worker, spec.sandbox,
                                      spec.inputs or None))  # type: ignore[arg-type]
            else:
                assert isinstance(placed, PlacedTask)  # executables have slots
                execs.append(self._exec_message(placed))
        if new_functions:
            self._send(Functions(new_functions))
        if calls:
            self._send(Calls(calls))
        if execs:
            self._send(Exec(execs))

    # ---- from the runtime -------------------------------------------------------------

    def _on_message(self) -> None:
        assert self._sock is not None
        receiver = self.receiver
        while self._sock.poll(0):
            msg = receiver.decode(self._sock.recv())
            if type(msg) is Done:
                for result in msg.results:
                    self._finish(result)
            elif type(msg) is Started:
                if msg.uid in self._tasks:
                    self._emit(TaskStarted(msg.uid, msg.ts))
                else:  # ended (canceled) meanwhile
                    receiver.note_stale()
            elif type(msg) is Ready:
                if self._ready:
                    receiver.drop("a second Ready")
                    continue
                self._ready = True
                self._list_segments()
                if self.pool is not None and self.processes is not None:
                    per_node = self.workers_per_node
                    idents = [f"w{i}" for i in range(self.workers)]
                    self.processes.node_of.update((w, i // per_node)
                                                  for i, w in enumerate(idents))
                    self.pool.prestart(idents)  # as a pool would: all up front
                    for message in self.processes.unsent:
                        self._send(message)
                    self.processes.unsent = []
                waiting, self._waiting = self._waiting, []
                if waiting:
                    self._send_tasks(waiting)
            elif type(msg) is Requeued:  # in the pool call of a worker that died: again
                for uid in msg.uids:
                    if self._tasks.pop(uid, None) is not None:
                        self._emit(TaskRequeued(uid))
                    else:
                        receiver.note_stale()
            elif type(msg) is Exited:
                if self.processes is None:
                    receiver.drop(f"worker {msg.ident} exited, but this runtime runs none")
                elif not self.processes.exited(msg.ident, msg.exit_code):
                    receiver.note_stale()

    def _list_segments(self) -> None:
        """Write down the runtime's segments: if the agent dies, the client removes them
        (remove_listed_segments) after it ended the agent's process session."""
        assert self._proc is not None
        with open(self._segments_file + ".tmp", "w") as f:
            f.write("\n".join(segments_of(self._proc.pid, self._shm_before)))
        os.replace(self._segments_file + ".tmp", self._segments_file)

    def _finish(self, result: Result) -> None:
        uid, error, code = result.uid, result.error, result.exit_code
        placed = self._tasks.pop(uid, None)
        if placed is None:  # ended already (the runtime's result of a canceled task)
            self.receiver.note_stale()
            return
        state = STATES[result.outcome]
        stdout, stderr = result.stdout, result.stderr  # a function's prints
        if placed.spec.kind == "executable":
            cwd = placed.spec.sandbox or self.sandbox
            stdout, stderr = (read_tail(os.path.join(cwd, uid + suffix)) or ""
                              for suffix in (".out", ".err"))  # silent: "", as built-in
            if error is None and state is TaskState.FAILED:
                error = (f"killed by signal {-code}" if code is not None and code < 0
                         else f"exit code {code}")
        self._emit(TaskFinished(uid, state, result.exec_start, result.exec_stop, exit_code=code,
                                error=error, result=result.result, stdout=stdout,
                                stderr=stderr))

    def _on_exit(self) -> None:
        assert self._reactor is not None and self._pidfd is not None
        self._reactor.remove_reader(self._pidfd)
        os.close(self._pidfd)
        code = None
        if self._proc is not None:
            code = self._proc.wait()
            kill_group(self._proc.pid)  # the runtime's processes outlive its launcher
        log = os.path.join(self.log_dir, f"dragon-{self.name}.log")
        why = abnormal_termination(read_tail(log) or "")
        self._lost(f"the Dragon runtime exited (code {code}){': ' + why if why else ''}; "
                   f"see dragon-{self.name}.log")

    def _check_started(self) -> None:
        if not self._ready and self._dead is None:
            self._lost(f"the Dragon runtime did not start within {START_TIMEOUT:g} s; see "
                       f"dragon-{self.name}.log")
            if self._proc is not None:
                kill_group(self._proc.pid)

    def _lost(self, reason: str) -> None:
        """Say the partition is lost, once: the agent ends or moves all its tasks."""
        if self._dead is None:
            self._dead = reason
            self._tasks.clear()
            self._waiting = []
            self._emit(PartitionLost(self.name, reason))

    def _send(self, message: ToExecutor) -> None:
        if self._sock is not None and self._dead is None:
            try:
                self._sock.send(encode(message), zmq.NOBLOCK)
            except zmq.Again:  # no executor on the other end: it is gone
                self._lost("the Dragon executor stopped taking messages")

