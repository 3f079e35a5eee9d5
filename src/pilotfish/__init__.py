"""pilotfish: a pilot-job runtime for hybrid AI-HPC workflows.

    import pilotfish as pf
    with pf.Session() as session:
        session.start_pilot(pf.PilotDescription(nodes=2, cores_per_node=32))
        task = session.submit(pf.TaskDescription(executable="/bin/echo", arguments=["hi"]))
        session.wait(timeout=60)

The public names load on first use (PEP 562): the processes that import one of
pilotfish's modules (function workers, node executors, the agent) do not pay for the
client's (a function worker starts in a third of the time).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .description import InvalidDescription, PilotDescription, TaskDescription
    from .journal import JournalError
    from .messages import Service
    from .partitions import PartitionSpec
    from .pilot import Pilot
    from .routing import RoutingPolicy, TaskTraits
    from .session import PilotExecutor, Session, __version__
    from .states import InvalidTransition, TaskState
    from .task import RemoteError, Task, TaskFailed

_WHERE = {
    "InvalidDescription": "description", "PilotDescription": "description",
    "TaskDescription": "description", "JournalError": "journal",
    "PartitionSpec": "partitions", "RoutingPolicy": "routing", "TaskTraits": "routing",
    "Pilot": "pilot", "PilotExecutor": "session", "Session": "session",
    "__version__": "session", "InvalidTransition": "states", "TaskState": "states",
    "RemoteError": "task", "Task": "task", "TaskFailed": "task", "Service": "messages",
}

__all__ = [
    "InvalidDescription",
    "InvalidTransition",
    "JournalError",
    "PartitionSpec",
    "Pilot",
    "PilotDescription",
    "PilotExecutor",
    "RemoteError",
    "RoutingPolicy",
    "Service",
    "Session",
    "Task",
    "TaskDescription",
    "TaskFailed",
    "TaskState",
    "TaskTraits",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pilotfish' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
