"""The srun backend: every task one Slurm job step, on the nodes the pilot's scheduler chose.

What a pilot is usually compared with is a script that starts each task with its own
`srun`; this backend is that, inside the same pilot (same scheduler, journal and
metrics), for a like-for-like comparison with the built-in backend's node executors. Each
task, on one node or many, is started from the agent through the srun launcher
(launchers.py: one entry per rank in `--nodelist`, `--overlap`, its cores and GPUs; the
task's own `srun.pmix` or `srun.pmi2`, else the platform's launcher if it is an srun one,
else plain `srun`) and watched like any process (ProcessRunner: its own process group,
a pidfd, its timeout). A timeout or a cancel sends SIGTERM to `srun`, which cancels the
step: Slurm kills the ranks on their nodes (SIGKILL after the grace, if `srun` lingers).

It runs no functions. It needs `srun` on PATH (the registry's check) and a pilot holding
real nodes: `PilotDescription` refuses it on virtual ones (mode="local").
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence

from ..launchers import LAUNCHERS, SRUN_LAUNCHERS
from ..partitions import Partition
from ..reactor import Reactor
from ..states import TaskState
from .base import (
    Backend,
    BackendEvent,
    BuildContext,
    DispatchedTask,
    PlacedTask,
    TaskFinished,
)
from .processes import LAUNCH_SETTLE, LAUNCHER_KILL_GRACE, ProcessRunner


def unavailable() -> str | None:
    """None where `srun` can be run, else why not."""
    if shutil.which("srun") is None:
        return "no srun on PATH (it runs on the nodes of a Slurm cluster)"
    return None


def build(context: BuildContext, partition: Partition) -> Backend:
    return SrunBackend(context, partition)


class SrunBackend:
    workers_per_node = 0  # it runs no functions

    def __init__(self, context: BuildContext, partition: Partition) -> None:
        if not context.hosts:
            raise ValueError("the srun backend runs on real nodes (a pilot in a Slurm "
                             "allocation); this pilot's are virtual")
        default = context.launcher if context.launcher in SRUN_LAUNCHERS else "srun"
        self.runner = ProcessRunner(
            context.task_sandbox, context.node_layout(partition),
            slots=partition.nodes * context.cores_per_node, launcher=LAUNCHERS[default],
            hosts=context.hosts, launchers={name: LAUNCHERS[name] for name in SRUN_LAUNCHERS},
            kill_grace=LAUNCHER_KILL_GRACE, settle=LAUNCH_SETTLE)
        self._emit: Callable[[BackendEvent], None] = lambda e: None

    def start(self, reactor: Reactor, emit: Callable[[BackendEvent], None]) -> None:
        self._emit = emit
        self.runner.start(reactor, emit)

    def launch(self, tasks: Sequence[PlacedTask]) -> None:
        self.runner.launch(tasks)

    def dispatch(self, tasks: Sequence[DispatchedTask]) -> None:
        for t in tasks:  # (routing sends no functions here)
            self._emit(TaskFinished(t.spec.uid, TaskState.FAILED, None, time.time(),
                                    error="the srun backend runs no functions"))

    def cancel(self, uids: Sequence[str]) -> None:
        self.runner.cancel(uids)

    def stop(self, timeout: float) -> None:
        self.runner.stop(timeout)
