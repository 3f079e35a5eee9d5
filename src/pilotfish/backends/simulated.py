"""The simulated backend: runs nothing, on a clock that jumps ahead when nothing is due.

A placed task "runs" for its `duration` (else N for `sleep N`, else 0 s) on the pilot's
clock (clock.py): the wall clock plus an offset. It flows as real time does while the
agent works (so the agent's own cost shows in the simulated makespan), and when the
agent has nothing to do this backend makes it jump to the next task end. Everything
else (client, agent, scheduler, events, journal) is the real thing, so a simulation
measures the real agent.

While the client is still submitting, the clock is held (`Clock.hold`): a workload
handed over in many messages starts as one bag. (So submit a bag in one
`Session.submit` call: the channel sends its messages back to back.)

A simulated pilot runs every partition on this one backend (one virtual machine), each
partition modelling what its own backend can run.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ..clock import Clock
from ..messages import TaskSpec
from ..partitions import Partition
from ..reactor import Reactor
from ..states import TaskState
from .base import (
    BackendEvent,
    BuildContext,
    DispatchedTask,
    PlacedTask,
    TaskFinished,
    TaskStarted,
)

DONE, FAILED, CANCELED = TaskState.DONE, TaskState.FAILED, TaskState.CANCELED


def simulated_duration(spec: TaskSpec) -> float:
    """How long a task runs in simulation: `duration`, else N of `sleep N`, else 0."""
    if spec.duration is not None:
        return spec.duration
    if spec.executable and spec.executable.rsplit("/", 1)[-1] == "sleep" and spec.arguments:
        try:
            return max(0.0, float(spec.arguments[0]))
        except ValueError:
            return 0.0
    return 0.0


class LaunchModel(NamedTuple):
    """How a runtime that launches each task through a controller starts them: the
    controller admits at most `rate` launches a second, one after the other, and a
    launch takes `latency` seconds from its admission to the task's start. The task
    holds its cores from its placement (as a job step holds them while it launches).
    `shared`: one controller for the whole machine (Slurm's slurmctld), else one per
    partition (each Flux instance schedules its own jobs)."""

    latency: float
    rate: float
    shared: bool = True


# `srun`, one job step per task. Latency: one step of `true` on the local cluster, alone
# (40 ms, ../shared/slurm; benchmarks/README.md). Rate: the peak the work this project
# comes from measured on Frontier, 152 steps a second (slurmctld admits steps one at a
# time; a local driver reaches ~42 a second, bound by this machine's 2 CPUs instead).
SRUN = LaunchModel(latency=0.04, rate=152.0)
# A Flux instance, one job per task. Latency: submit to run of one job of `true` in a
# local instance (26 ms, /opt/flux 0.88). Rate: the paper's one-instance figure on
# Frontier, about 700 jobs a second; instances schedule apart (their brokers have nodes
# of their own), so k of them admit k times as many.
FLUX = LaunchModel(latency=0.026, rate=700.0, shared=False)
MODELS = {"srun": SRUN, "flux": FLUX}  # the others (built-in, Dragon) start tasks at once


def build(context: BuildContext, partition: Partition) -> SimulatedPartition:
    """The pilot's one virtual machine, shared by all its partitions; each partition's
    tasks start as its backend would start them (`MODELS`)."""
    backend = context.shared.get("simulated")
    if backend is None:
        backend = context.shared["simulated"] = SimulatedBackend(context.clock)
    assert isinstance(backend, SimulatedBackend)
    model = MODELS.get(partition.backend)
    if partition.launch is not None:  # (the user's: a cluster's own, measured)
        model = LaunchModel(*partition.launch, shared=model.shared if model else True)
    controller = partition.backend if model is None or model.shared else partition.name
    return SimulatedPartition(backend, model, controller)


class SimulatedPartition:
    """One partition's view of the shared simulated machine (its launch model)."""

    workers_per_node = 0  # every task gets a slot: there are no workers to feed

    def __init__(self, machine: SimulatedBackend, model: LaunchModel | None,
                 controller: str = "") -> None:
        self.machine, self.model, self.controller = machine, model, controller

    def start(self, reactor: Reactor, emit: Callable[[BackendEvent], None]) -> None:
        self.machine.start(reactor, emit)

    def launch(self, tasks: Sequence[PlacedTask]) -> None:
        self.machine.launch(tasks, self.model, self.controller)

    def dispatch(self, tasks: Sequence[DispatchedTask]) -> None:
        self.machine.dispatch(tasks)

    def cancel(self, uids: Sequence[str]) -> None:
        self.machine.cancel(uids)

    def stop(self, timeout: float) -> None:
        self.machine.stop(timeout)


class SimulatedBackend:
    workers_per_node = 0  # every task gets a slot: there are no workers to feed

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.now = self.clock.now
        # Tasks to start (launched through a model) and to end, as heaps of
        # (time, seq, uid); a task's entries are stale once it left `_running`.
        self._starts: list[tuple[float, int, str]] = []
        self._ends: list[tuple[float, int, str]] = []
        # uid -> (start, end, timed out); start in the future while it launches
        self._running: dict[str, tuple[float, float, bool]] = {}
        self._admit_next: dict[str, float] = {}  # controller -> when it is free again
        self._seq = 0
        self._started = False
        self._emit: Callable[[BackendEvent], None] = lambda e: None

    def start(self, reactor: Reactor, emit: Callable[[BackendEvent], None]) -> None:
        if self._started:  # (once, whichever partition asks first)
            return
        self._started = True
        self._emit = emit
        reactor.add_idle(self._on_idle)

    def launch(self, tasks: Sequence[PlacedTask], model: LaunchModel | None = None,
               controller: str = "") -> None:
        now = self.now()
        for placed in tasks:
            spec = placed.spec
            duration = simulated_duration(spec)
            timed_out = spec.timeout is not None and duration > spec.timeout
            if timed_out:
                duration = spec.timeout  # type: ignore[assignment]
            start = now
            if model is not None:  # through the controller, one admission at a time
                admitted = max(now, self._admit_next.get(controller, 0.0))
                self._admit_next[controller] = admitted + 1.0 / model.rate
                start = admitted + model.latency
            self._seq += 1
            self._running[spec.uid] = (start, start + duration, timed_out)
            if start > now:
                heapq.heappush(self._starts, (start, self._seq, spec.uid))
            else:
                self._begin(spec.uid)

    def _begin(self, uid: str) -> None:
        """A task starts (now, on the pilot's clock): it ends at once, or at its end."""
        start, end, _ = self._running[uid]
        if end <= start:
            del self._running[uid]
            self._emit(TaskFinished(uid, DONE, start, start, exit_code=0))
            return
        self._seq += 1
        heapq.heappush(self._ends, (end, self._seq, uid))
        self._emit(TaskStarted(uid, start))

    def dispatch(self, tasks: Sequence[DispatchedTask]) -> None:
        raise NotImplementedError("the simulated backend has no function workers")

    def cancel(self, uids: Sequence[str]) -> None:
        now = self.now()
        for uid in uids:
            run = self._running.pop(uid, None)  # its heap entries are skipped when due
            if run is not None:
                started = run[0] if run[0] <= now else None  # (one still launching: not)
                self._emit(TaskFinished(uid, CANCELED, started, now, error="canceled"))

    def stop(self, timeout: float) -> None:
        self._starts.clear()
        self._ends.clear()
        self._running.clear()

    def _stale(self, entry: tuple[float, int, str], at: int) -> bool:
        """An entry of a task no longer running (canceled), or of an earlier run of it;
        `at`: 0 for a start, 1 for an end."""
        run = self._running.get(entry[2])
        return run is None or run[at] != entry[0]

    def _on_idle(self) -> float | None:
        """Start and end the tasks that are due; if none is and the client is quiet, jump
        to the next start or end."""
        starts, ends = self._starts, self._ends
        while starts and self._stale(starts[0], 0):
            heapq.heappop(starts)  # canceled while it launched
        while ends and self._stale(ends[0], 1):
            heapq.heappop(ends)  # canceled: never jump to its end
        if not starts and not ends:
            return None
        due = min(heap[0][0] for heap in (starts, ends) if heap)
        now = self.now()
        if due > now:
            held = self.clock.held_for()
            if held:
                return min(held, due - now)
            self.clock.jump_to(due)
            now = due
        while starts and starts[0][0] <= now:  # (a start may add an end that is due)
            entry = heapq.heappop(starts)
            if not self._stale(entry, 0):
                self._begin(entry[2])
        emit, running = self._emit, self._running
        while ends and ends[0][0] <= now:
            entry = heapq.heappop(ends)
            if self._stale(entry, 1):
                continue
            start, end, timed_out = running.pop(entry[2])
            if timed_out:
                emit(TaskFinished(entry[2], FAILED, start, end, error=f"timed out after "
                                  f"{end - start:g} s (simulated)"))
            else:
                emit(TaskFinished(entry[2], DONE, start, end, exit_code=0))
        return 0.0
