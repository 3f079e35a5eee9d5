"""A node executor: `python -m pilotfish.backends.nodes.executor ADDRESS KEYS_FILE`.

One runs on every node of a built-in partition of a pilot on real nodes, all started by
one `srun --ntasks-per-node=1` (backend.py). It connects back to the agent with the
session's keys and runs the tasks the agent placed on its node, as the built-in backend
does on one host: executables as local processes bound to their slot, functions in its
own persistent workers. It sends their events back in batches, and a heartbeat; it ends
its tasks and exits when told to, or when the agent stays silent past the heartbeat
timeout (the agent is gone: nothing would hear of them).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

import zmq

from ...keys import Gatekeeper, Keys
from ...messages import encode
from ...reactor import Reactor, readable
from ...wire import Receiver
from ..base import BackendEvent, DispatchedTask, NodeLayout, PlacedTask
from ..builtin import BuiltinBackend, prestarted
from .protocol import (
    Beat,
    Cancel,
    Events,
    Feed,
    Launch,
    Setup,
    Stop,
    ToExecutor,
    Up,
    Warm,
)

BEAT_INTERVAL = 1.0
STOP_TIMEOUT = 1.0  # grace for its tasks and workers when stopping; then SIGKILL


class NodeExecutor:
    def __init__(self, address: str, keys: Keys) -> None:
        self.host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.gatekeeper = Gatekeeper(ctx, keys)  # its function workers' socket binds
        self.keys = keys
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, self.host.encode())
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        keys.connect(self.sock)
        self.sock.connect(address)
        self.receiver: Receiver[ToExecutor] = Receiver(f"node executor {self.host} <- agent",
                                                       ToExecutor)
        self.reactor = Reactor()
        self.functions: dict[str, bytes] = {}
        self.backend: BuiltinBackend | None = None
        self.setup: Setup | None = None
        self.outbox: list[BackendEvent] = []
        self.last_heard = time.monotonic()
        self.stop_reason: str | None = None

    def run(self, keys_file: str) -> str:
        self.reactor.add_reader(self.sock, self._on_message)
        self.reactor.add_before_wait(self._send_events)
        self._send(Up(self.host, os.getpid()))
        self.reactor.call_later(BEAT_INTERVAL, self._beat)
        self._keys_file = keys_file
        while self.stop_reason is None:
            self.reactor.run_once(BEAT_INTERVAL)
            self._send_events()
        if self.backend is not None:
            self.backend.stop(STOP_TIMEOUT)
        self._send_events()
        self.sock.close(linger=2000)
        self.gatekeeper.stop()
        return self.stop_reason

    def _send(self, message: Any) -> None:
        self.sock.send(encode(message))

    def _send_events(self) -> bool:
        if self.outbox:  # (the backend appends to this very list: it is emptied in place)
            self._send(Events(self.outbox[:]))  # type: ignore[arg-type]
            self.outbox.clear()
        return False

    def _beat(self) -> None:
        timeout = self.setup.heartbeat_timeout if self.setup else 30.0
        silent = time.monotonic() - self.last_heard
        if silent > timeout:
            self.stop_reason = f"agent silent for {silent:.1f} s"
            return
        self._send(Beat())
        self.reactor.call_later(BEAT_INTERVAL, self._beat)

    def _on_message(self) -> None:
        self.last_heard = time.monotonic()
        while readable(self.sock):
            msg = self.receiver.decode(self.sock.recv())
            if msg is None or type(msg) is Beat:
                continue
            if type(msg) is Setup:
                self._start(msg)
            elif self.backend is None or self.setup is None:
                self.receiver.drop(f"{type(msg).__name__} before Setup")
            elif type(msg) is Launch:
                self.functions.update(msg.functions)
                self.backend.launch([PlacedTask(t.spec, t.slot.slot()) for t in msg.tasks])
            elif type(msg) is Feed:
                self.functions.update(msg.functions)
                node = self.setup.node
                self.backend.dispatch([DispatchedTask(c.spec, c.worker, node, c.core)
                                       for c in msg.calls])
            elif type(msg) is Cancel:
                self.backend.cancel(msg.uids)
            elif type(msg) is Warm:
                self.backend.warm([(index, self.setup.node) for index in msg.workers])
            elif type(msg) is Stop:
                self.stop_reason = "told to stop"

    def _start(self, setup: Setup) -> None:
        if self.backend is not None:
            return
        self.setup = setup
        os.makedirs(setup.task_sandbox, exist_ok=True)
        os.chdir(setup.task_sandbox)  # tasks in the default sandbox spawn fastest
        workers = setup.workers_per_node
        self.backend = BuiltinBackend(
            setup.task_sandbox, NodeLayout(tuple(setup.core_ids), setup.gpus, setup.gpu_env,
                                           setup.first_node),
            self.functions, log_dir=setup.sandbox, python_path=setup.python_path,
            cores=len(setup.core_ids), prestart=prestarted(workers, setup.prestart),
            name=self.host, workers_per_node=workers, first_worker=setup.node * workers,
            keys_file=self._keys_file)
        self.backend.start(self.reactor, self.outbox.append)


def main(argv: list[str]) -> int:
    address, keys_file = argv
    executor = NodeExecutor(address, Keys.load(keys_file))
    reason = executor.run(keys_file)
    print(f"node executor on {executor.host} stopped: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
