"""Placement policy: which queued task runs where, next (pure: no I/O, no clock).

Two kinds of placement:

* A task with its own processes (an executable, or a function that needs more than one
  core or any GPU) gets an exact `Slot` on one node and is launched there.
* A plain function task (one rank, one core, no GPU) goes to a persistent function
  worker. A worker *leases* one core from its node while it has work and gives it back
  when its queue drains, so executables and functions share the cores exactly: a core is
  held by one task or one worker, never two, and a worker runs one function at a time.
  Workers are fed several tasks ahead (prefetch) so that the round trip to the agent is
  amortised; the depth adapts to the observed run time (about 10 ms of work ahead).

Policy: higher `priority` first, first come first served within a priority. A task that
does not fit now does not block smaller tasks behind it (greedy backfill); tasks of the
same shape and priority are never reordered. A task that can never fit on a node of the
pilot fails at once with the reason.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from .resources import NodeResources, Shape, Slot

# Prefetch: keep about this much work queued at each worker, within these bounds.
TARGET_QUEUED_SECONDS = 0.01
MIN_PREFETCH, MAX_PREFETCH = 2, 512


@dataclass(frozen=True, slots=True)
class Request:
    """A task as the scheduler sees it. `seq` orders tasks of equal priority."""

    uid: str
    seq: int
    shape: Shape = field(default_factory=Shape)
    priority: int = 0
    pooled: bool = False  # a plain function task, for a function worker


# Actions: what the agent must do. The scheduler never does it itself.
@dataclass(frozen=True, slots=True)
class Launch:
    uid: str
    slot: Slot


@dataclass(frozen=True, slots=True)
class Dispatch:
    uid: str
    worker: int
    node: int
    core: int


@dataclass(frozen=True, slots=True)
class Fail:
    uid: str
    reason: str


@dataclass(frozen=True, slots=True)
class Dequeued:
    """A queued task was canceled before it was placed."""

    uid: str


Action = Launch | Dispatch | Fail | Dequeued


@dataclass(slots=True)
class Worker:
    index: int
    node: int
    core: int | None = None  # the leased core, None while idle
    queued: int = 0  # tasks dispatched and not yet completed


@dataclass(slots=True)
class _Queue:
    """Queued requests of one priority, grouped by shape (FIFO within a group)."""

    groups: dict[tuple[bool, Shape], deque[Request]] = field(default_factory=dict)


class SchedulerError(RuntimeError):
    pass


class Scheduler:
    def __init__(
        self, nodes: int, cores_per_node: int, gpus_per_node: int = 0, workers_per_node: int = 1
    ) -> None:
        self.nodes = [NodeResources(i, cores_per_node, gpus_per_node) for i in range(nodes)]
        per_node = workers_per_node
        self.workers = [Worker(n * per_node + i, n) for n in range(nodes) for i in range(per_node)]
        self._queues: dict[int, _Queue] = {}
        self._priorities: list[int] = []  # ascending; scanned from the end
        self._queued: dict[str, Request] = {}
        self._slots: dict[str, Slot] = {}  # placed tasks with their own slot
        self._pooled: dict[str, Worker] = {}  # placed function tasks -> worker
        self._mean_runtime = 0.001  # seconds, an EWMA over completed pooled tasks

    # ---- inputs -----------------------------------------------------------------------

    def submit(self, requests: Iterable[Request]) -> list[Action]:
        """Queue tasks; those that can never fit fail at once. Then place what fits."""
        actions: list[Action] = []
        for req in requests:
            reason = self.nodes[0].can_ever_fit(req.shape) if self.nodes else "no nodes"
            if reason is not None:
                actions.append(Fail(req.uid, f"can never fit on this pilot: {reason}"))
                continue
            self._enqueue(req)
        actions.extend(self.schedule())
        return actions

    def completed(self, done: Iterable[tuple[str, float]]) -> list[Action]:
        """Tasks that ended (uid, seconds run): free their slots, place what now fits."""
        for uid, runtime in done:
            self._release(uid, runtime)
        return self.schedule()

    def cancel(self, uids: Iterable[str]) -> list[Action]:
        """Drop queued tasks (each gives a `Dequeued`); placed ones are the agent's to stop."""
        actions: list[Action] = []
        for uid in uids:
            if self._queued.pop(uid, None) is not None:  # its queue entry is dropped lazily
                actions.append(Dequeued(uid))
        return actions

    def requeue(self, requests: Iterable[Request]) -> list[Action]:
        """Put placed-but-unstarted tasks back in the queue (e.g. their worker was lost)."""
        for req in sorted(requests, key=lambda r: r.seq, reverse=True):
            self._release(req.uid, None)
            self._enqueue(req, front=True)
        return self.schedule()

    # ---- placement --------------------------------------------------------------------

    def schedule(self) -> list[Action]:
        actions: list[Action] = []
        for priority in reversed(self._priorities):
            groups = self._queues[priority].groups
            blocked: set[tuple[bool, Shape]] = set()
            while True:
                key = self._next_group(groups, blocked)
                if key is None:
                    break
                queue = groups[key]
                place = self._dispatch if key[0] else self._launch
                while queue:
                    if self._queued.get(queue[0].uid) is not queue[0]:
                        queue.popleft()  # canceled while queued
                        continue
                    action = place(queue[0])
                    if action is None:
                        blocked.add(key)
                        break
                    del self._queued[queue.popleft().uid]
                    actions.append(action)
                    if len(groups) > 1:
                        break  # re-pick the group with the oldest head
        return actions

    def _next_group(
        self, groups: dict[tuple[bool, Shape], deque[Request]], blocked: set[tuple[bool, Shape]]
    ) -> tuple[bool, Shape] | None:
        best, best_seq = None, None
        for key, queue in groups.items():
            if key in blocked:
                continue
            while queue and self._queued.get(queue[0].uid) is not queue[0]:
                queue.popleft()  # canceled while queued
            if queue and (best_seq is None or queue[0].seq < best_seq):
                best, best_seq = key, queue[0].seq
        return best

    def _launch(self, req: Request) -> Launch | None:
        for node in self.nodes:
            slot = node.allocate(req.shape)
            if slot is not None:
                self._slots[req.uid] = slot
                return Launch(req.uid, slot)
        return None

    def _dispatch(self, req: Request) -> Dispatch | None:
        depth = self.prefetch_depth
        best: Worker | None = None
        for w in self.workers:
            if w.core is not None and w.queued < depth and (best is None or w.queued < best.queued):
                best = w
        if best is None or best.queued > 0:
            leased = self._lease_worker()
            if leased is not None:
                best = leased
        if best is None:
            return None
        best.queued += 1
        self._pooled[req.uid] = best
        assert best.core is not None
        return Dispatch(req.uid, best.index, best.node, best.core)

    def _lease_worker(self) -> Worker | None:
        for w in self.workers:
            if w.core is None:
                core = self.nodes[w.node].take_core()
                if core is not None:
                    w.core = core
                    return w
        return None

    @property
    def prefetch_depth(self) -> int:
        depth = int(TARGET_QUEUED_SECONDS / max(self._mean_runtime, 1e-6))
        return max(MIN_PREFETCH, min(MAX_PREFETCH, depth))

    # ---- bookkeeping ------------------------------------------------------------------

    def _enqueue(self, req: Request, front: bool = False) -> None:
        queue = self._queues.get(req.priority)
        if queue is None:
            queue = self._queues[req.priority] = _Queue()
            bisect.insort(self._priorities, req.priority)
        group = queue.groups.setdefault((req.pooled, req.shape), deque())
        if front:
            group.appendleft(req)
        else:
            group.append(req)
        self._queued[req.uid] = req

    def _release(self, uid: str, runtime: float | None) -> None:
        slot = self._slots.pop(uid, None)
        if slot is not None:
            self.nodes[slot.node].release(slot)
            return
        worker = self._pooled.pop(uid, None)
        if worker is None:
            return  # never placed (failed or canceled in the queue), or already released
        if runtime is not None:
            self._mean_runtime += 0.2 * (runtime - self._mean_runtime)
        worker.queued -= 1
        if worker.queued == 0 and worker.core is not None:
            self.nodes[worker.node].give_core(worker.core)
            worker.core = None

    # ---- introspection ----------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def placed(self) -> int:
        return len(self._slots) + len(self._pooled)

    def validate(self) -> None:
        """Check the invariants: every core is free, in one slot, or leased by one worker."""
        for node in self.nodes:
            held: list[int] = list(node.free_cores)
            for slot in self._slots.values():
                if slot.node == node.index:
                    held.extend(slot.all_cores)
            held.extend(w.core for w in self.workers if w.node == node.index and w.core is not None)
            if sorted(held) != list(range(node.cores)):
                raise SchedulerError(f"node {node.index}: cores double-booked or lost: {held}")
            for g, free in enumerate(node.gpu_free):
                used = sum(share for s in self._slots.values() if s.node == node.index
                           for rank in s.gpus for gi, share in rank if gi == g)
                if free < 0 or free + used != 1:
                    raise SchedulerError(f"node {node.index} GPU {g}: free {free}, used {used}")
        for w in self.workers:
            if (w.core is None) != (w.queued == 0):
                raise SchedulerError(f"worker {w.index}: core {w.core} with {w.queued} queued")
        counted = {w.index: 0 for w in self.workers}
        for w in self._pooled.values():
            counted[w.index] += 1
        if any(counted[w.index] != w.queued for w in self.workers):
            raise SchedulerError("worker queue counts disagree with dispatched tasks")
