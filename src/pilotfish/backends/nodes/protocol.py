"""What the agent and its node executors say to each other (msgpack via msgspec).

A node executor runs the tasks the agent placed on its node: it says it is `Up`, gets
its `Setup`, then `Launch`es (executables, and functions with slots of their own) and
`Feed`s (plain functions for its persistent workers), `Cancel`s and a `Stop`; it sends
back the tasks' events (`Events`: the backend events of base.py, as they are). Both
sides send a `Beat` every second and take a silence past the heartbeat timeout for a
loss.
"""

from __future__ import annotations

from fractions import Fraction

import msgspec

from ...messages import TaskSpec
from ...resources import Slot
from ..base import TaskFinished, TaskLost, TaskRequeued, TaskStarted


class WireSlot(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A `Slot` as it crosses the wire (GPU shares as numerator and denominator)."""

    nodes: list[int]
    cores: list[list[int]]
    gpus: list[list[tuple[int, int, int]]]  # per rank: (GPU, share numerator, denominator)
    mem: int

    @classmethod
    def of(cls, slot: Slot) -> WireSlot:
        return cls(list(slot.nodes), [list(c) for c in slot.cores],
                   [[(g, s.numerator, s.denominator) for g, s in rank] for rank in slot.gpus],
                   slot.mem)

    def slot(self) -> Slot:
        return Slot(tuple(self.nodes), tuple(tuple(c) for c in self.cores),
                    tuple(tuple((g, Fraction(n, d)) for g, n, d in rank) for rank in self.gpus),
                    self.mem)


class NodeTask(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A task with a slot on this node: an executable, or a function needing its own."""

    spec: TaskSpec
    slot: WireSlot


class NodeCall(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A plain function for this node's persistent worker `worker` (on core `core`)."""

    spec: TaskSpec
    worker: int
    core: int


# ---- agent -> executor --------------------------------------------------------------------

class Setup(msgspec.Struct, array_like=True, tag=True):
    """What an executor runs its node with (it got the rest in its arguments)."""

    node: int  # its index within the partition
    first_node: int  # the partition's first node, within the pilot
    sandbox: str  # the pilot's directory: logs, workers' files
    task_sandbox: str
    core_ids: list[int]
    gpus: int
    gpu_env: str | None
    workers_per_node: int
    prestart: bool  # the user asked for its function workers: all start now
    python_path: list[str]
    heartbeat_timeout: float


class Launch(msgspec.Struct, array_like=True, tag=True):
    tasks: list[NodeTask]
    functions: dict[str, bytes] = {}  # pickled functions not sent to this node before


class Feed(msgspec.Struct, array_like=True, tag=True):
    calls: list[NodeCall]
    functions: dict[str, bytes] = {}


class Cancel(msgspec.Struct, array_like=True, tag=True):
    uids: list[str]


class Warm(msgspec.Struct, array_like=True, tag=True):
    """Start these function workers now (the scheduler's indexes): calls waiting for
    their inputs will come to them."""

    workers: list[int]


class Stop(msgspec.Struct, array_like=True, tag=True):
    """End every task (killed), stop the workers, send what is left, exit."""


class Beat(msgspec.Struct, array_like=True, tag=True):
    """Alive (both ways)."""


# ---- executor -> agent --------------------------------------------------------------------

class Up(msgspec.Struct, array_like=True, tag=True):
    host: str  # SLURMD_NODENAME where Slurm started it, else its host name
    pid: int


class Events(msgspec.Struct, array_like=True, tag=True):
    events: list[TaskStarted | TaskFinished | TaskRequeued | TaskLost]


ToExecutor = Setup | Launch | Feed | Cancel | Warm | Stop | Beat
FromExecutor = Up | Events | Beat
