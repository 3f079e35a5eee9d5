"""The built-in backend over real nodes: a node executor on each, started by one `srun`.

A pilot that holds real nodes (a Slurm allocation) runs its built-in partitions through
this backend. At `start` it binds a socket (the session's keys) and starts one executor
per node of the partition with ONE `srun --ntasks-per-node=1` over them (never one
`srun` per task); each connects back, says which node it is, and gets its setup. The
agent's scheduler stays the only one: a task placed on one node goes to that node's
executor (an executable, a function needing its own slot, or a plain function for the
node's persistent workers); a task whose ranks span nodes is started from here through
the launcher it names, or else the platform's (launchers.py: `srun`, one job step on
exactly its nodes, or `mpiexec`), as is a task on one node that names an MPI launcher.

An executor that dies or stays silent past the heartbeat timeout loses its node: its
tasks are reported lost (they run again elsewhere if their `retries` allow, else fail
with the reason) and nothing is placed there again (`NodeLost`); the other nodes go on.
When the `srun` ends, every executor is gone with it, and the partition is lost.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from ...files import private
from ...launchers import LAUNCHERS, srun_per_node
from ...messages import encode
from ...partitions import Partition
from ...proctree import kill_group
from ...reactor import Reactor, readable
from ...states import TaskState
from ...wire import Receiver
from ..base import (
    BackendEvent,
    BuildContext,
    DispatchedTask,
    NodeLost,
    PartitionLost,
    PlacedTask,
    TaskFinished,
    TaskLost,
    TaskRequeued,
)
from ..processes import LAUNCH_SETTLE, LAUNCHER_KILL_GRACE, ProcessRunner
from .protocol import (
    Beat,
    Cancel,
    Events,
    Feed,
    FromExecutor,
    Launch,
    NodeCall,
    NodeTask,
    Setup,
    Stop,
    Up,
    Warm,
    WireSlot,
)

EXECUTOR = "pilotfish.backends.nodes.executor"  # run on each node as `python -m`
START_TIMEOUT = 60.0  # seconds for every executor to say it is up
BEAT_INTERVAL = 1.0
_HERE = -1  # where a multi-node task runs: from this process, through srun


def listen_on(interface: str) -> str:
    """Where the agent listens for its node executors: the platform's network interface
    (Frontier's `hsn0`, `lo` where every node is this host), else the address this host's
    name resolves to (never every interface: executors connect from the cluster's
    network only)."""
    return interface or socket.gethostbyname(socket.gethostname())


@dataclass(slots=True)
class _Node:
    index: int  # within the partition
    host: str
    up: bool = False
    lost: str | None = None
    last_heard: float = 0.0
    waiting: list[Any] = field(default_factory=list)  # messages for it before it was up
    tasks: set[str] = field(default_factory=set)  # uids placed there, not ended
    functions: set[str] = field(default_factory=set)  # function keys it was sent


class NodesBackend:
    def __init__(self, context: BuildContext, partition: Partition) -> None:
        self.name = partition.name
        self.context = context
        self.partition = partition
        self.workers_per_node = context.workers_per_node
        hosts = context.hosts[partition.first:partition.first + partition.nodes]
        self.nodes = [_Node(i, host) for i, host in enumerate(hosts)]
        self._by_host = {n.host: n for n in self.nodes}
        self._where: dict[str, int] = {}  # uid -> its node (or _HERE), while it runs
        # Tasks whose ranks span nodes, or that name an MPI launcher: started from here,
        # each through its launcher (by default the platform's).
        self.runner = ProcessRunner(context.task_sandbox, context.node_layout(partition),
                                    launcher=LAUNCHERS[context.launcher], hosts=context.hosts,
                                    launchers=LAUNCHERS, kill_grace=LAUNCHER_KILL_GRACE,
                                    settle=LAUNCH_SETTLE)
        self.receiver: Receiver[FromExecutor] = Receiver(f"nodes {self.name} <- executors",
                                                         FromExecutor)
        self._sock: zmq.Socket[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._reactor: Reactor | None = None
        self._emit: Callable[[BackendEvent], None] = lambda e: None
        self._lost: str | None = None

    # ---- life -------------------------------------------------------------------------

    def start(self, reactor: Reactor, emit: Callable[[BackendEvent], None]) -> None:
        self._reactor, self._emit = reactor, emit
        self.runner.start(reactor, self._from_runner)
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, 0)
        self.context.keys.serve(sock)
        where = listen_on(self.context.interface)
        try:
            sock.bind_to_random_port(f"tcp://{where}")
        except zmq.ZMQError as exc:
            sock.close(0)
            raise RuntimeError(f"cannot listen on {where!r} for the node executors ({exc}): "
                               "set the platform profile's `interface` to a network interface "
                               "of this node") from None
        self._sock = sock
        address = sock.getsockopt_string(zmq.LAST_ENDPOINT)  # (its address, if an interface)
        reactor.add_reader(sock, self._on_message)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([p for p in self.context.python_path if p]
                                            + [env.get("PYTHONPATH", "")]).strip(os.pathsep)
        argv = srun_per_node([n.host for n in self.nodes],
                             [sys.executable, "-m", EXECUTOR, address, self.context.keys_file],
                             whole=True)
        log = os.path.join(self.context.sandbox, f"nodes-{self.name}.log")
        with open(log, "ab", opener=private) as out:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, env=env,
                                          process_group=0)
        self._pidfd = os.pidfd_open(self._proc.pid)
        reactor.add_reader(self._pidfd, self._on_srun_exit)
        reactor.call_later(START_TIMEOUT, self._check_started)
        reactor.call_later(BEAT_INTERVAL, self._beat)

    def stop(self, timeout: float) -> None:
        for node in self.nodes:
            if node.up and node.lost is None:
                self._send(node, Stop())
        self.runner.stop(timeout)
        if self._proc is not None:
            try:
                self._proc.wait(timeout + 2)  # the executors end their tasks, then srun ends
            except subprocess.TimeoutExpired:
                pass
            kill_group(self._proc.pid)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self._reactor is not None and self._pidfd is not None:
            self._reactor.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._sock is not None:
            self._sock.close(0)

    # ---- tasks ------------------------------------------------------------------------

    def launch(self, tasks: Sequence[PlacedTask]) -> None:
        per_node: dict[int, list[NodeTask]] = {}
        spanning = []
        for placed in tasks:
            nodes = set(placed.slot.nodes)
            named = placed.spec.launcher
            if len(nodes) > 1 or (named is not None and named != "local"):
                if (named or self.context.launcher) == "local":
                    self._emit(TaskFinished(
                        placed.spec.uid, TaskState.FAILED, None, time.time(),
                        error=f"launcher 'local' starts ranks on one host only; these span "
                              f"{len(nodes)} nodes (name one of "
                              f"{', '.join([n for n in LAUNCHERS if n != 'local'])})"))
                    continue
                spanning.append(placed)
                self._where[placed.spec.uid] = _HERE
                continue
            (index,) = nodes
            per_node.setdefault(index, []).append(NodeTask(placed.spec,
                                                           WireSlot.of(placed.slot)))
        for index, node_tasks in per_node.items():
            node = self._hand_over(index, [t.spec.uid for t in node_tasks])
            if node is not None:
                self._send(node, Launch(node_tasks, self._new_functions(node, node_tasks)))
        if spanning:
            self.runner.launch(spanning)

    def warm(self, workers: Sequence[tuple[int, int]]) -> None:
        """Start these workers (index, node) now, each on its node."""
        per_node: dict[int, list[int]] = {}
        for worker, where in workers:
            per_node.setdefault(where, []).append(worker)
        for where, indexes in per_node.items():
            node = self.nodes[where]
            if node.lost is None:
                self._send(node, Warm(indexes))

    def dispatch(self, tasks: Sequence[DispatchedTask]) -> None:
        per_node: dict[int, list[NodeCall]] = {}
        for t in tasks:
            per_node.setdefault(t.node, []).append(NodeCall(t.spec, t.worker, t.core))
        for index, calls in per_node.items():
            node = self._hand_over(index, [c.spec.uid for c in calls])
            if node is not None:
                self._send(node, Feed(calls, self._new_functions(node, calls)))

    def cancel(self, uids: Sequence[str]) -> None:
        per_node: dict[int, list[str]] = {}
        here = []
        for uid in uids:
            where = self._where.get(uid)
            if where == _HERE:
                here.append(uid)
            elif where is not None:
                per_node.setdefault(where, []).append(uid)
        if here:
            self.runner.cancel(here)
        for index, some in per_node.items():
            node = self.nodes[index]
            if node.lost is None:
                self._send(node, Cancel(some))

    def _new_functions(self, node: _Node, items: Sequence[NodeTask | NodeCall]
                       ) -> dict[str, bytes]:
        new = {}
        for item in items:
            key = item.spec.function_key
            if key is not None and key not in node.functions:
                new[key] = self.context.functions[key]
                node.functions.add(key)
        return new

    def _hand_over(self, index: int, uids: list[str]) -> _Node | None:
        """Node `index`, its tasks and their whereabouts recorded, to send them to; None
        if it was just lost (before the agent heard): the tasks are lost with it."""
        node = self.nodes[index]
        if node.lost is not None:
            for uid in uids:
                self._emit(TaskLost(uid, f"node {node.host} lost: {node.lost}"))
            return None
        node.tasks.update(uids)
        for uid in uids:
            self._where[uid] = index
        return node

    # ---- from the executors -----------------------------------------------------------

    def _on_message(self) -> None:
        assert self._sock is not None
        now = time.monotonic()
        while readable(self._sock):
            frames = self._sock.recv_multipart()
            node = self._by_host.get(frames[0].decode(errors="replace"))
            msg = self.receiver.decode(frames[-1]) if len(frames) == 2 else None
            if node is None or msg is None or node.lost is not None:
                if msg is not None:
                    self.receiver.note_stale()
                continue
            node.last_heard = now
            if type(msg) is Events:
                for event in msg.events:
                    if type(event) in (TaskFinished, TaskLost) or type(event) is TaskRequeued:
                        node.tasks.discard(event.uid)
                        self._where.pop(event.uid, None)
                    self._emit(event)
            elif type(msg) is Up and not node.up:
                node.up = True
                self._send(node, self._setup(node))
                for waiting in node.waiting:
                    self._send(node, waiting)
                node.waiting = []

    def _from_runner(self, event: BackendEvent) -> None:
        if type(event) is TaskFinished:
            self._where.pop(event.uid, None)
        self._emit(event)

    def _setup(self, node: _Node) -> Setup:
        c = self.context
        return Setup(node.index, self.partition.first, c.sandbox, c.task_sandbox,
                     list(c.core_ids), c.gpus_per_node, c.gpu_env, c.workers_per_node,
                     c.function_workers is not None, c.python_path, c.heartbeat_timeout)

    def _send(self, node: _Node, message: Any) -> None:
        if not node.up:
            node.waiting.append(message)
            return
        assert self._sock is not None
        try:
            self._sock.send_multipart([node.host.encode(), encode(message)])
        except zmq.ZMQError:  # gone: its silence will say so
            pass

    # ---- losses -----------------------------------------------------------------------

    def _beat(self) -> None:
        assert self._reactor is not None
        if self._lost is not None:
            return
        now = time.monotonic()
        for node in self.nodes:
            if node.up and node.lost is None:
                silent = now - node.last_heard
                if silent > self.context.heartbeat_timeout:
                    self._lose(node, f"its executor was silent for {silent:.1f} s")
                else:
                    self._send(node, Beat())
        self._reactor.call_later(BEAT_INTERVAL, self._beat)

    def _check_started(self) -> None:
        for node in self.nodes:
            if not node.up and node.lost is None:
                self._lose(node, f"its executor did not start within {START_TIMEOUT:g} s; "
                                 f"see nodes-{self.name}.log")

    def _on_srun_exit(self) -> None:
        assert self._reactor is not None and self._pidfd is not None and self._proc
        self._reactor.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        code = self._proc.wait()
        self._on_message()  # what the executors sent before the end counts
        for node in self.nodes:
            if node.lost is None:
                self._lose(node, f"the srun of its executors ended (code {code}); see "
                                 f"nodes-{self.name}.log")

    def _lose(self, node: _Node, reason: str) -> None:
        node.lost = reason
        for uid in sorted(node.tasks):
            self._where.pop(uid, None)
            self._emit(TaskLost(uid, f"node {node.host} lost: {reason}"))
        node.tasks.clear()
        node.waiting = []
        if all(n.lost is not None for n in self.nodes):
            self._lost = reason
            self._emit(PartitionLost(self.name, f"every node lost; the last: {node.host}: "
                                                 f"{reason}"))
        else:
            self._emit(NodeLost(self.name, node.index, f"{node.host}: {reason}"))
