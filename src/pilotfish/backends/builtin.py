"""The built-in backend: executables as local processes, functions in persistent workers.

The embedded default: it needs no batch system or runtime, and binds every task exactly
to the slot the agent's scheduler chose.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from ..launchers import task_environment
from ..partitions import Partition
from ..reactor import Reactor
from .base import Backend, BackendEvent, BuildContext, DispatchedTask, NodeLayout, PlacedTask
from .functions.pool import FunctionPool
from .processes import ProcessRunner


def build(context: BuildContext, partition: Partition) -> Backend:
    """On real nodes (a pilot holding hosts), a node executor on each (nodes/backend.py)."""
    if context.hosts:
        from .nodes.backend import NodesBackend

        return NodesBackend(context, partition)
    workers = context.workers_per_node
    return BuiltinBackend(context.task_sandbox, context.node_layout(partition),
                          context.functions, log_dir=context.sandbox,
                          python_path=context.python_path,
                          cores=partition.nodes * context.cores_per_node,
                          prestart=prestarted(partition.nodes * workers,
                                              context.function_workers is not None),
                          name=partition.name, workers_per_node=workers,
                          keys_file=context.keys_file)


def prestarted(workers: int, asked: bool) -> int:
    """How many of one host's function workers start with the pilot: all that the user
    asked for; by default as many as the host has CPUs (the first the scheduler feeds:
    a first burst of functions finds them warm), the rest at their first task, so a
    pilot of many virtual cores does not spend seconds of CPU on workers it may not use."""
    return workers if asked else min(workers, os.cpu_count() or 1)


class BuiltinBackend:
    def __init__(self, sandbox: str, layout: NodeLayout, functions: dict[str, bytes],
                 log_dir: str, python_path: list[str] | None = None, cores: int = 0,
                 prestart: int = 0, name: str = "builtin", workers_per_node: int = 1,
                 first_worker: int = 0, *, keys_file: str) -> None:
        self.processes = ProcessRunner(sandbox, layout, slots=cores)
        self.pool = FunctionPool(log_dir, functions, python_path or [], keys_file, name=name,
                                 tasks_dir=sandbox)
        self.layout = layout
        self.prestart = prestart  # function workers to start now, not at their first task
        self.first_worker = first_worker  # the scheduler's index of this host's first one
        self.workers_per_node = workers_per_node

    def start(self, reactor: Reactor, emit: Callable[[BackendEvent], None]) -> None:
        self.processes.start(reactor, emit)
        self.pool.start(reactor, emit)
        first = self.first_worker
        self.pool.prestart([f"w{i}" for i in range(first, first + self.prestart)])

    def warm(self, workers: Sequence[tuple[int, int]]) -> None:
        """Start these workers (index, node) now: tasks waiting for inputs will need them."""
        self.pool.prestart([f"w{index}" for index, _ in workers])

    def launch(self, tasks: Sequence[PlacedTask]) -> None:
        executables = [t for t in tasks if t.spec.kind == "executable"]
        if executables:
            self.processes.launch(executables)
        for t in tasks:
            if t.spec.kind == "function":  # needs its own cores/GPUs: a one-off worker
                env = task_environment({}, t.spec, t.slot, 0, self.layout)
                self.pool.dispatch([(t.spec, f"task-{t.spec.uid}")], env=env)

    def dispatch(self, tasks: Sequence[DispatchedTask]) -> None:
        self.pool.dispatch([(t.spec, f"w{t.worker}") for t in tasks])

    def cancel(self, uids: Sequence[str]) -> None:
        self.pool.cancel(self.processes.cancel(uids))

    def stop(self, timeout: float) -> None:
        self.processes.stop(timeout)
        self.pool.stop(timeout)
