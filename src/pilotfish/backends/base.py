"""The backend protocol: how the agent hands placed tasks to a runtime, and hears back.

A backend owns a partition's nodes and turns placed tasks into running processes or
function calls. Every call takes a batch. Outcomes come back as events passed to the
`emit` callback the agent gives at `start`; a failure to launch is an event too (a
`TaskFinished` with state FAILED and the reason), never an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ..messages import TaskSpec
from ..reactor import Reactor
from ..resources import Slot
from ..states import TaskState


@dataclass(frozen=True, slots=True)
class Capabilities:
    executables: bool = True
    functions: bool = True
    mpi: bool = False
    gpus: bool = True
    places_itself: bool = False  # True: the runtime places tasks (Flux); False: binds to slots


# Events: past-tense facts, with the time they were observed. (Named tuples, as are the
# hand-offs below: one or two are made per task, and they are the cheapest to make.)
class TaskStarted(NamedTuple):
    uid: str
    ts: float
    pid: int | None = None
    launch_ts: float | None = None


class TaskFinished(NamedTuple):
    uid: str
    state: TaskState  # DONE, FAILED or CANCELED
    exec_start: float | None
    exec_stop: float
    exit_code: int | None = None
    error: str | None = None
    result: bytes | None = None
    stdout: str | None = None
    stderr: str | None = None


class TaskRequeued(NamedTuple):
    """Placed on a worker that was lost before the task started: place it again."""

    uid: str


class BackendLost(NamedTuple):
    """The runtime of a partition died: the agent fails or moves all its unfinished tasks."""

    partition: str
    reason: str
    uid: str = ""  # of no task (events are looked up by uid first)


BackendEvent = TaskStarted | TaskFinished | TaskRequeued | BackendLost


class PlacedTask(NamedTuple):
    spec: TaskSpec
    slot: Slot


class DispatchedTask(NamedTuple):
    spec: TaskSpec
    worker: int
    node: int
    core: int


class Backend(Protocol):
    capabilities: Capabilities

    def start(self, reactor: Reactor, emit: Callable[[BackendEvent], None]) -> None: ...

    def launch(self, tasks: Sequence[PlacedTask]) -> None: ...

    def dispatch(self, tasks: Sequence[DispatchedTask]) -> None: ...

    def cancel(self, uids: Sequence[str]) -> None: ...

    def stop(self, timeout: float) -> None: ...
