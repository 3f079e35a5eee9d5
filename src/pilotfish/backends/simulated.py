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


def build(context: BuildContext, partition: Partition) -> SimulatedBackend:
    """The pilot's one virtual machine, shared by all its partitions."""
    backend = context.shared.get("simulated")
    if backend is None:
        backend = context.shared["simulated"] = SimulatedBackend(context.clock)
    assert isinstance(backend, SimulatedBackend)
    return backend


class SimulatedBackend:
    workers_per_node = 0  # every task gets a slot: there are no workers to feed

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.now = self.clock.now
        self._ends: list[tuple[float, int, str]] = []  # (end, seq, uid), a heap
        self._running: dict[str, tuple[float, float, bool]] = {}  # uid -> start, end, timed out
        self._seq = 0
        self._emit: Callable[[BackendEvent], None] = lambda e: None

    def start(self, reactor: Reactor, emit: Callable[[BackendEvent], None]) -> None:
        self._emit = emit
        reactor.add_idle(self._on_idle)

    def launch(self, tasks: Sequence[PlacedTask]) -> None:
        now = self.now()
        emit = self._emit
        for placed in tasks:
            spec = placed.spec
            duration = simulated_duration(spec)
            timed_out = spec.timeout is not None and duration > spec.timeout
            if timed_out:
                duration = spec.timeout  # type: ignore[assignment]
            if duration <= 0:
                emit(TaskFinished(spec.uid, DONE, now, now, exit_code=0))
                continue
            end = now + duration
            self._seq += 1
            heapq.heappush(self._ends, (end, self._seq, spec.uid))
            self._running[spec.uid] = (now, end, timed_out)
            emit(TaskStarted(spec.uid, now))

    def dispatch(self, tasks: Sequence[DispatchedTask]) -> None:
        raise NotImplementedError("the simulated backend has no function workers")

    def cancel(self, uids: Sequence[str]) -> None:
        now = self.now()
        for uid in uids:
            run = self._running.pop(uid, None)  # its heap entry is skipped when due
            if run is not None:
                self._emit(TaskFinished(uid, CANCELED, run[0], now, error="canceled"))

    def stop(self, timeout: float) -> None:
        self._ends.clear()
        self._running.clear()

    def _stale(self, entry: tuple[float, int, str]) -> bool:
        """An end of a task no longer running (canceled), or of an earlier run of it."""
        run = self._running.get(entry[2])
        return run is None or run[1] != entry[0]

    def _on_idle(self) -> float | None:
        """End the tasks that are due; if none is and the client is quiet, jump to the next."""
        ends, running = self._ends, self._running
        while ends and self._stale(ends[0]):
            heapq.heappop(ends)  # canceled: never jump to its end
        if not ends:
            return None
        now = self.now()
        if ends[0][0] > now:
            held = self.clock.held_for()
            if held:
                return min(held, ends[0][0] - now)
            self.clock.jump_to(ends[0][0])
            now = ends[0][0]
        emit = self._emit
        while ends and ends[0][0] <= now:
            if self._stale(ends[0]):
                heapq.heappop(ends)
                continue
            end, _, uid = heapq.heappop(ends)
            run = running.pop(uid)
            start, _, timed_out = run
            if timed_out:
                emit(TaskFinished(uid, FAILED, start, end, error=f"timed out after "
                                  f"{end - start:g} s (simulated)"))
            else:
                emit(TaskFinished(uid, DONE, start, end, exit_code=0))
        return 0.0
