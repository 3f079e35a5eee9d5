"""The backend protocol: how the agent hands placed tasks to a runtime, and hears back.

A backend owns a partition's nodes and turns placed tasks into running processes or
function calls. Every call takes a batch. Outcomes come back as events passed to the
`emit` callback the agent gives at `start`; a failure to launch is an event too (a
`TaskFinished` with state FAILED and the reason), never an exception. What a backend
can run, and how it is built, is declared once in `registry.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from ..clock import Clock
from ..keys import Keys
from ..messages import Placement, TaskSpec
from ..partitions import Partition
from ..reactor import Reactor
from ..resources import NodeLayout, Slot
from ..states import TaskState


# Events: past-tense facts, with the time they were observed. (Frozen structs: one or two
# are made per task, and they are the cheapest to make; two kinds never compare equal.
# Tagged: a node executor sends the task events as they are.)
class TaskStarted(msgspec.Struct, frozen=True, gc=False, tag=True, array_like=True):
    uid: str
    ts: float
    pid: int | None = None  # process group of a running executable (for clean-up)
    launch_ts: float | None = None
    placement: Placement | None = None  # where a runtime that places tasks itself put it


class TaskFinished(msgspec.Struct, frozen=True, gc=False, tag=True, array_like=True):
    uid: str
    state: TaskState  # DONE, FAILED or CANCELED
    exec_start: float | None
    exec_stop: float
    exit_code: int | None = None
    error: str | None = None
    result: bytes | None = None
    stdout: str | None = None
    stderr: str | None = None


class TaskRequeued(msgspec.Struct, frozen=True, gc=False, tag=True, array_like=True):
    """Placed on a worker that was lost before the task started: place it again."""

    uid: str


class TaskLost(msgspec.Struct, frozen=True, gc=False, tag=True, array_like=True):
    """A running task's process, worker or node died under it (not by its own doing): it
    runs again, from the start, if its `retries` allow, else it fails with `reason`."""

    uid: str
    reason: str


class NodeLost(msgspec.Struct, frozen=True, gc=False):
    """One node of a partition died (its executor, its host): nothing is placed there
    again. Its tasks are reported lost one by one (`TaskLost`)."""

    partition: str
    node: int  # within the partition
    reason: str


class PartitionLost(msgspec.Struct, frozen=True, gc=False):
    """The runtime of a partition died: the agent fails or moves all its unfinished tasks."""

    partition: str
    reason: str


BackendEvent = (TaskStarted | TaskFinished | TaskRequeued | TaskLost | NodeLost
                | PartitionLost)


# Hand-offs from the agent: a task with its exact slot, or a plain function task fed
# ahead to a persistent worker (which leases one core of its node).
class PlacedTask(msgspec.Struct, frozen=True, gc=False):
    spec: TaskSpec
    slot: Slot


class DispatchedTask(msgspec.Struct, frozen=True, gc=False):
    spec: TaskSpec
    worker: int
    node: int
    core: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildContext:
    """What every backend of a pilot is built from (`build(context, partition)`)."""

    sandbox: str  # the pilot's directory: logs, workers' files
    task_sandbox: str  # the tasks' default working directory
    cores_per_node: int
    gpus_per_node: int
    core_ids: tuple[int, ...]
    gpu_env: str | None
    workers_per_node: int  # function workers per node, by default
    function_workers: int | None  # as the user asked (None: not asked)
    python_path: list[str]  # for processes that import the user's functions
    functions: dict[str, bytes]  # pickled functions by key, filled as tasks arrive
    clock: Clock
    partitions: list[Partition]  # all of the pilot's
    keys: Keys  # the session's: every socket a backend binds or connects uses them
    keys_file: str  # where processes a backend starts read them (never pass them in argv)
    hosts: tuple[str, ...] = ()  # the pilot's nodes' host names (empty: virtual nodes)
    launcher: str = "srun"  # the platform's, for ranks spanning real nodes (launchers.py)
    interface: str = ""  # the platform's: where node executors connect ("": the host's name)
    heartbeat_timeout: float = 5.0  # seconds of silence before a peer is lost
    shared: dict[str, Any] = field(default_factory=dict)  # what partitions may share

    def node_layout(self, partition: Partition) -> NodeLayout:
        return NodeLayout(self.core_ids, self.gpus_per_node, self.gpu_env, partition.first)


class Backend(Protocol):
    workers_per_node: int  # persistent function workers per node the scheduler feeds

    def start(self, reactor: Reactor, emit: Callable[[BackendEvent], None]) -> None: ...

    def launch(self, tasks: Sequence[PlacedTask]) -> None: ...

    def dispatch(self, tasks: Sequence[DispatchedTask]) -> None: ...

    def cancel(self, uids: Sequence[str]) -> None: ...

    def stop(self, timeout: float) -> None: ...
