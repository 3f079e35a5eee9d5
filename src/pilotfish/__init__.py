"""pilotfish: a pilot-job runtime for hybrid AI-HPC workflows.

    import pilotfish as pf
    with pf.Session() as session:
        session.start_pilot(pf.PilotDescription(nodes=2, cores_per_node=32))
        task = session.submit(pf.TaskDescription(executable="/bin/echo", arguments=["hi"]))
        session.wait(timeout=60)
"""

from .description import InvalidDescription, PilotDescription, TaskDescription
from .journal import JournalError
from .partitions import PartitionSpec
from .routing import RoutingPolicy, TaskTraits
from .session import Pilot, PilotExecutor, Session, __version__
from .states import InvalidTransition, TaskState
from .task import RemoteError, Task, TaskFailed

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
    "Session",
    "Task",
    "TaskDescription",
    "TaskFailed",
    "TaskState",
    "TaskTraits",
    "__version__",
]
