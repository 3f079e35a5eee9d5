"""What the agent core is told (events) and what it decides (actions).

Events are facts: from the client (tasks submitted, a cancel asked for, a stop), from
the backends (`backends/base.py`: a task started, finished or must be placed again, a
partition lost), and from the shell (time passed, the input is drained). Actions are
instructions for the shell, which performs them; each carries the event that caused
it (`cause`), so every decision can be traced back. (Frozen structs, as the events:
two kinds never compare equal, even with equal fields.)
"""

from __future__ import annotations

import msgspec

from ..backends.base import (
    BackendEvent,
    DispatchedTask,
    NodeLost,
    PartitionLost,
    PlacedTask,
    TaskFinished,
    TaskLost,
    TaskRequeued,
    TaskStarted,
)
from ..messages import Service, TaskSpec, TaskUpdate

__all__ = [
    "Action",
    "CancelRequested",
    "CancelTasks",
    "CaughtUp",
    "DispatchTasks",
    "Event",
    "LaunchTasks",
    "NodeLost",
    "PartitionLost",
    "ReleaseRequested",
    "SendAccepted",
    "SendReleased",
    "SendUpdates",
    "ServiceNotReady",
    "ServiceReady",
    "StopRequested",
    "TaskFinished",
    "TaskLost",
    "TaskRequeued",
    "TaskStarted",
    "TasksSubmitted",
    "Tick",
    "WarmWorkers",
    "WatchService",
]


# ---- events -----------------------------------------------------------------------------

class TasksSubmitted(msgspec.Struct, frozen=True, gc=False):
    """The client sent these tasks (a resent task, already known, is ignored), having
    applied `seen` final updates of this agent."""

    tasks: list[TaskSpec]
    seen: int = 0
    groups: dict[str, list[str]] = {}  # (Submit.groups)


class CancelRequested(msgspec.Struct, frozen=True, gc=False):
    uids: list[str]


class ReleaseRequested(msgspec.Struct, frozen=True, gc=False):
    """The client would move these tasks to another pilot: those still queued leave."""

    uids: list[str]


class ServiceReady(msgspec.Struct, frozen=True, gc=False):
    """A service's readiness check passed (agent/services.py)."""

    uid: str
    ts: float
    address: str  # host:port (a port check), else its host


class ServiceNotReady(msgspec.Struct, frozen=True, gc=False):
    """A service's check did not pass in its time: it fails, and is stopped."""

    uid: str
    reason: str


class StopRequested(msgspec.Struct, frozen=True, gc=False):
    """The pilot stops: nothing more is placed, and every unfinished task ends with
    "pilot stopped: <reason>", CANCELED if `canceled` (the user asked) else FAILED."""

    reason: str
    canceled: bool = False


class Tick(msgspec.Struct, frozen=True, gc=False):
    """Time passed: held-back progress updates may be due, partitions may balance."""


class CaughtUp(msgspec.Struct, frozen=True, gc=False):
    """The shell has handled all its input and is about to wait: what is held back goes."""


Event = (TasksSubmitted | CancelRequested | ReleaseRequested | StopRequested | Tick | CaughtUp
         | ServiceReady | ServiceNotReady | BackendEvent)


# ---- actions ----------------------------------------------------------------------------

class LaunchTasks(msgspec.Struct, frozen=True, gc=False):
    """Start these tasks on their slots, on this partition's backend."""

    partition: str
    tasks: list[PlacedTask]
    cause: Event


class DispatchTasks(msgspec.Struct, frozen=True, gc=False):
    """Feed these plain function tasks to this partition's persistent workers."""

    partition: str
    tasks: list[DispatchedTask]
    cause: Event


class CancelTasks(msgspec.Struct, frozen=True, gc=False):
    """Stop these placed (maybe running) tasks on this partition's backend."""

    partition: str
    uids: list[str]
    cause: Event


class WarmWorkers(msgspec.Struct, frozen=True, gc=False):
    """Start these function workers (index, node) now: tasks waiting for their inputs
    will be fed to them, and a worker started while they wait is one they need not."""

    partition: str
    workers: list[tuple[int, int]]
    cause: Event


class SendAccepted(msgspec.Struct, frozen=True, gc=False):
    """Tell the client the agent took these tasks in at `ts`: they are SUBMITTED."""

    uids: list[str]
    ts: float
    cause: Event


class WatchService(msgspec.Struct, frozen=True, gc=False):
    """A service started on pilot node `node`: check it until it is READY."""

    uid: str
    service: Service
    node: int
    cause: Event


class SendReleased(msgspec.Struct, frozen=True, gc=False):
    """Tell the client these tasks left the agent at `ts` (a `ReleaseRequested`'s answer)."""

    uids: list[str]
    ts: float
    cause: Event


class SendUpdates(msgspec.Struct, frozen=True, gc=False):
    """Tell the client these tasks' new states (`finals` of them are final)."""

    updates: list[TaskUpdate]
    finals: int
    cause: Event


Action = (LaunchTasks | DispatchTasks | CancelTasks | SendAccepted | SendReleased
          | SendUpdates | WatchService | WarmWorkers)
