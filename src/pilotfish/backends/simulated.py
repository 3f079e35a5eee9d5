"""The simulated backend: runs nothing, on a clock that jumps ahead when nothing is due.

A placed task "runs" for its `duration` (else N for `sleep N`, else 0 s) on a virtual
clock. The clock is the wall clock plus an offset: it flows as real time does while the
agent works (so the agent's own cost shows in the simulated makespan), and when the
agent has nothing to do it jumps to the next task end. Everything else (client, agent,
scheduler, events, journal) is the real thing, so a simulation measures the real agent.

While the client is still submitting (a submit arrived in the last `HOLD` seconds) the
clock does not jump: a workload handed over in many messages starts as one bag, as it
would on a real machine, instead of trickling into a clock that raced ahead. (So submit
a bag in one `Session.submit` call: the channel sends its messages back to back.)
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence

from ..messages import TaskSpec
from ..reactor import Reactor
from ..states import TaskState
from .base import BackendEvent, Capabilities, DispatchedTask, PlacedTask, TaskFinished, TaskStarted

HOLD = 0.5  # seconds of client silence before the clock may jump
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


class SimulatedBackend:
    capabilities = Capabilities(executables=True, functions=True, mpi=True, gpus=True)
    function_workers = False  # every task gets a slot: there are no workers to feed

    def __init__(self) -> None:
        self.offset = 0.0  # virtual time = wall time + offset
        self.jumped = 0  # how many times the clock jumped
        self._ends: list[tuple[float, int, str]] = []  # (end, seq, uid), a heap
        self._running: dict[str, tuple[float, float, bool]] = {}  # uid -> start, end, timed out
        self._seq = 0
        self._hold_until = 0.0  # monotonic
        self._emit: Callable[[BackendEvent], None] = lambda e: None

    def now(self) -> float:
        return time.time() + self.offset

    def start(self, reactor: Reactor, emit: Callable[[BackendEvent], None]) -> None:
        self._emit = emit
        reactor.add_idle(self._on_idle)

    def hold(self) -> None:
        """The client is submitting: do not jump for a while."""
        self._hold_until = time.monotonic() + HOLD

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
            wait = time.monotonic() - self._hold_until
            if wait < 0:
                return min(-wait, ends[0][0] - now)
            self.offset += ends[0][0] - now
            self.jumped += 1
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
