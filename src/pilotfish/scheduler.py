"""Placement policy: which queued task runs where, next (pure: no I/O; time is an input).

Two kinds of placement:

* A task with its own processes (an executable, or a function that needs more than one
  core, a GPU, memory or a placement tag) gets an exact `Slot` (per rank: node, cores,
  GPU shares, memory) from the `Allocator` and is launched there.
* A plain function task (one rank, one core, nothing else) goes to a persistent function
  worker. A worker *leases* one core of its node while it has work and gives it back
  when its queue drains, so executables and functions share the cores exactly. Workers
  are fed several tasks ahead (prefetch); the depth adapts to the observed run time.

Policy:

* Higher `priority` first; first come, first served within a priority. Tasks of the same
  shape, priority and tags are never reordered.
* Backfill: a task that does not fit now does not block the tasks behind it; they are
  placed wherever they fit.
* No starvation: a task that has been passed over (something queued behind it was placed
  while it did not fit) for `reserve_after` seconds gets a reservation: the nodes it will
  use (those with the most free room) are drained, nothing else is placed on them, and it
  starts there as soon as their tasks end. One reservation at a time, oldest first, so
  the delay of a big task is bounded by the run time of the tasks already on its nodes.
* A task that can never fit on the pilot fails at once, naming the resource, how much it
  asked for and how much exists.
* Feed-ahead, for a runtime that places tasks itself (Flux): `spare_nodes` more nodes to
  place on, so that it holds up to that much more than fits and starts the next task the
  moment a core frees, without a round trip through the agent. What it holds can no
  longer move to an idle partition: the spare room bounds that.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from .allocator import Allocator
from .invariants import SchedulerError as SchedulerError  # re-exported
from .invariants import check_scheduler
from .resources import Shape, Slot

# Prefetch: keep about this much work queued at each worker, within these bounds.
TARGET_QUEUED_SECONDS = 0.01
MIN_PREFETCH, MAX_PREFETCH = 2, 512
# Tasks this long (seconds) are not fed ahead: the round trip to start the next one is
# lost time of a few ms, while a task queued behind one still running could have started
# at once on a core that frees first (at the end of a run: a whole task's time).
LONG_TASK = 0.5
RESERVE_AFTER = 30.0  # seconds a passed-over task waits before nodes are drained for it
_ONE_CORE = Shape()
_NO_BOUND = 1 << 62


class Request(NamedTuple):
    """A task as the scheduler sees it. `seq` orders tasks of equal priority."""

    uid: str
    seq: int
    shape: Shape = _ONE_CORE
    priority: int = 0
    pooled: bool = False  # a plain function task, for a function worker
    colocate: str | None = None
    exclusive: str | None = None


# Actions: what the agent must do. The scheduler never does it itself. (Frozen structs:
# one is made per task per decision, and they are the cheapest to make; two kinds never
# compare equal, even with equal fields.)
class Launch(msgspec.Struct, frozen=True, gc=False):
    uid: str
    slot: Slot


class Dispatch(msgspec.Struct, frozen=True, gc=False):
    uid: str
    worker: int
    node: int
    core: int


class Fail(msgspec.Struct, frozen=True, gc=False):
    uid: str
    reason: str


class Dequeued(msgspec.Struct, frozen=True, gc=False):
    """A queued task was canceled before it was placed."""

    uid: str


Action = Launch | Dispatch | Fail | Dequeued
GroupKey = tuple[bool, Shape, str | None, str | None]


@dataclass(slots=True)
class Worker:
    index: int
    node: int
    core: int | None = None  # the leased core, None while idle
    queued: int = 0  # tasks dispatched and not yet completed


class _Group:
    """Queued requests of one priority, shape and tags, first come first served."""

    __slots__ = ("queue", "retry")

    def __init__(self) -> None:
        self.queue: deque[Request] = deque()
        self.retry: int | None = None  # stuck: the buckets that must gain room first


@dataclass(slots=True)
class _Reservation:
    request: Request
    nodes: list[int]


class Scheduler:
    def __init__(self, nodes: int, cores_per_node: int, gpus_per_node: int = 0,
                 workers_per_node: int = 1, mem_per_node: int = 0,
                 reserve_after: float = RESERVE_AFTER, spare_nodes: int = 0) -> None:
        self.alloc = Allocator(nodes, cores_per_node, gpus_per_node, mem_per_node,
                               spare_nodes)
        self.reserve_after = reserve_after
        per_node = workers_per_node
        self.workers = [Worker(n * per_node + i, n) for n in range(nodes) for i in range(per_node)]
        # node -> its workers without a lease, each list popped from its end: node 0's
        # w0 is leased first (the workers a host starts with are its first ones)
        self._idle: dict[int, list[Worker]] = {}
        for w in self.workers:
            self._idle.setdefault(w.node, []).insert(0, w)
        self._leased: dict[int, Worker] = {}
        self._queues: dict[int, dict[GroupKey, _Group]] = {}
        self._priorities: list[int] = []  # ascending; scanned from the end
        self._queued: dict[str, Request] = {}
        self._slots: dict[str, tuple[Slot, Request]] = {}  # placed tasks with their own slot
        self._pooled: dict[str, Worker] = {}  # placed function tasks -> worker
        self._passed_over: dict[str, float] = {}  # uid -> when first passed over
        self._reservation: _Reservation | None = None
        self._mean_runtime = 0.001  # seconds, an EWMA over completed pooled tasks

    # ---- inputs -----------------------------------------------------------------------

    def submit(self, requests: Iterable[Request], now: float = 0.0) -> list[Action]:
        """Queue tasks; those that can never fit fail at once. Then place what fits."""
        actions: list[Action] = []
        never_fits = self.alloc.never_fits
        checked: dict[tuple[Shape, str | None], str | None] = {}
        for req in requests:
            key = (req.shape, req.colocate)
            if key not in checked:
                checked[key] = never_fits(req.shape, req.colocate)
            reason = checked[key]
            if reason is not None:
                actions.append(Fail(req.uid, f"can never fit on this pilot: {reason}"))
                continue
            self._enqueue(req)
        actions.extend(self.schedule(now))
        return actions

    def completed(self, done: Iterable[tuple[str, float]], now: float = 0.0) -> list[Action]:
        """Tasks that ended (uid, seconds run): free their slots, place what now fits."""
        for uid, runtime in done:
            self._release(uid, runtime)
        return self.schedule(now)

    def cancel(self, uids: Iterable[str], now: float = 0.0) -> list[Action]:
        """Drop queued tasks (each gives a `Dequeued`); placed ones are the agent's to stop."""
        actions: list[Action] = []
        for uid in uids:
            if self._queued.pop(uid, None) is not None:  # its queue entry is dropped lazily
                self._passed_over.pop(uid, None)
                actions.append(Dequeued(uid))
        if self._reservation and self._reservation.request.uid not in self._queued:
            actions.extend(self.schedule(now))  # its drained nodes are free for others
        return actions

    def take_queued(self, n: int, movable: Callable[[Request], bool],
                    look_at: int) -> list[Request]:
        """Remove up to `n` of the newest queued tasks that `movable` accepts, looking at
        no more than `look_at` of them: they go to another partition that is idle."""
        taken: list[Request] = []
        reserved = self._reservation.request.uid if self._reservation else None
        for uid in reversed(self._queued):
            if len(taken) == n or look_at == 0:
                break
            look_at -= 1
            req = self._queued[uid]
            if uid != reserved and movable(req):  # a reserved task keeps its nodes
                taken.append(req)
        for req in taken:
            del self._queued[req.uid]  # its queue entry is dropped lazily
            self._passed_over.pop(req.uid, None)
        return taken

    def lose_node(self, index: int, now: float = 0.0) -> list[Action]:
        """A node died: nothing is placed on it again, a reservation holding it is dropped,
        and queued tasks that can no longer ever fit fail. (Its tasks are the agent's to
        end: they come back through `completed` or `requeue`.)"""
        self.alloc.lose(index)
        res = self._reservation
        if res is not None and index in res.nodes:
            self.alloc.undrain(res.nodes)
            self._reservation = None
        actions: list[Action] = []
        for uid, req in list(self._queued.items()):
            reason = self.alloc.never_fits(req.shape, req.colocate)
            if reason is not None:
                del self._queued[uid]  # its queue entry is dropped lazily
                self._passed_over.pop(uid, None)
                actions.append(Fail(uid, f"can never fit any more (node {index} lost): "
                                          f"{reason}"))
        actions.extend(self.schedule(now))
        return actions

    def requeue(self, requests: Iterable[Request], now: float = 0.0) -> list[Action]:
        """Put placed-but-unstarted tasks back in the queue (e.g. their worker was lost)."""
        for req in sorted(requests, key=lambda r: r.seq, reverse=True):
            self._release(req.uid, None)
            self._enqueue(req, front=True)
        return self.schedule(now)

    # ---- placement --------------------------------------------------------------------

    def schedule(self, now: float = 0.0) -> list[Action]:
        actions: list[Action] = []
        if self._reservation is not None:
            self._serve_reservation(actions)
        # A group that did not fit last time stays stuck unless a node gained room in a
        # bucket it could use: most passes then try only what can have changed.
        gained, self.alloc.gained = self.alloc.gained, 0
        queued = self._queued
        place = self._place
        append = actions.append
        blocked: list[Request] = []  # heads that did not fit, in the order they were tried
        passed = 0  # blocked[:passed] saw a later task placed: they were passed over
        for priority in reversed(self._priorities):
            heads: list[tuple[int, int, _Group]] = []
            for i, group in enumerate(self._queues[priority].values()):
                queue = group.queue
                while queue and queued.get(queue[0].uid) is not queue[0]:
                    queue.popleft()  # canceled or placed while queued
                if not queue:
                    group.retry = None  # not looked at while empty: forget it
                elif group.retry is not None and not gained & group.retry:
                    blocked.append(queue[0])  # still stuck
                else:
                    heads.append((queue[0].seq, i, group))
            if len(heads) > 1:
                heapq.heapify(heads)
            while heads:
                _, i, group = heads[0]
                # Place from this group while its head is the oldest of all heads.
                bound = min(heads[1][0], heads[2][0]) if len(heads) > 2 else (
                    heads[1][0] if len(heads) > 1 else _NO_BOUND)
                queue = group.queue
                group.retry = None
                stuck = False
                while queue:
                    req = queue[0]
                    if queued.get(req.uid) is not req:
                        queue.popleft()  # canceled or placed while queued
                        continue
                    if req.seq > bound:
                        break
                    action = place(req)
                    if action is None:
                        blocked.append(req)
                        if not req.pooled:
                            group.retry = self.alloc.retry_mask(req.shape, req.colocate,
                                                                req.exclusive)
                        stuck = True
                        break
                    queue.popleft()
                    del queued[req.uid]
                    append(action)
                    passed = len(blocked)
                if stuck or not queue:
                    heapq.heappop(heads)
                else:
                    heapq.heapreplace(heads, (queue[0].seq, i, group))
        if passed:
            self._note_passed_over(blocked[:passed], now)
        return actions

    def _place(self, req: Request) -> Action | None:
        if req.pooled:
            return self._dispatch(req)
        slot = self.alloc.place(req.shape, req.colocate, req.exclusive)
        if slot is None:
            if req.colocate is not None:  # its group may be too small for it
                reason = self.alloc.never_fits(req.shape, req.colocate)
                if reason is not None:
                    return Fail(req.uid, f"can never fit: {reason}")
            return None
        self._slots[req.uid] = (slot, req)
        if self._passed_over:
            self._passed_over.pop(req.uid, None)
        return Launch(req.uid, slot)

    def _note_passed_over(self, requests: list[Request], now: float) -> None:
        passed_over = self._passed_over
        for req in requests:
            since = passed_over.setdefault(req.uid, now)
            if (self._reservation is None and not req.pooled
                    and now - since >= self.reserve_after):
                nodes = self.alloc.drain(req.shape, req.colocate, req.exclusive)
                if nodes:
                    self._reservation = _Reservation(req, nodes)

    def _serve_reservation(self, actions: list[Action]) -> None:
        res = self._reservation
        assert res is not None
        req = res.request
        group = self.alloc.groups.get(req.colocate) if req.colocate is not None else None
        if group is not None and not set(res.nodes) <= set(group):
            # Its colocate group was bound to other nodes while these drained: they are
            # of no use to it; it will get a reservation on its group's nodes instead.
            self.alloc.undrain(res.nodes)
            self._reservation = None
            return
        if self._queued.get(req.uid) is req:
            if not self.alloc.drained_gained:
                return  # nothing left its nodes since it last did not fit
            self.alloc.drained_gained = False
            slot = self.alloc.place_drained(res.nodes, req.shape, req.colocate, req.exclusive)
            if slot is None:
                return
            del self._queued[req.uid]  # its queue entry is dropped lazily
            self._passed_over.pop(req.uid, None)
            self._slots[req.uid] = (slot, req)
            actions.append(Launch(req.uid, slot))
        self.alloc.undrain(res.nodes)
        self._reservation = None

    def _dispatch(self, req: Request) -> Dispatch | None:
        depth = self.prefetch_depth
        best: Worker | None = None
        drained = self.alloc.drained  # a worker there gets no more: its core must drain
        for w in self._leased.values():
            if w.queued < depth and (best is None or w.queued < best.queued) and (
                    w.node not in drained):
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

    def workers_to_warm(self, n: int) -> list[tuple[int, int]]:
        """The (index, node) of the first `n` idle workers in the order they would be
        leased: those that function tasks waiting for their inputs will be fed to."""
        out: list[tuple[int, int]] = []
        for node, idle in self._idle.items():
            for w in reversed(idle):
                if len(out) == n:
                    return out
                out.append((w.index, node))
        return out

    def _lease_worker(self) -> Worker | None:
        for node, idle in self._idle.items():
            core = self.alloc.lease_core(node)
            if core is not None:
                w = idle.pop()
                if not idle:
                    del self._idle[node]
                w.core = core
                self._leased[w.index] = w
                return w
        return None

    @property
    def prefetch_depth(self) -> int:
        if self._mean_runtime >= LONG_TASK:
            return 1
        depth = int(TARGET_QUEUED_SECONDS / max(self._mean_runtime, 1e-6))
        return max(MIN_PREFETCH, min(MAX_PREFETCH, depth))

    # ---- bookkeeping ------------------------------------------------------------------

    def _enqueue(self, req: Request, front: bool = False) -> None:
        groups = self._queues.get(req.priority)
        if groups is None:
            groups = self._queues[req.priority] = {}
            bisect.insort(self._priorities, req.priority)
        key = (req.pooled, req.shape, req.colocate, req.exclusive)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group()
        queue = group.queue
        if front:
            queue.appendleft(req)
        else:
            queue.append(req)
        self._queued[req.uid] = req

    def _release(self, uid: str, runtime: float | None) -> None:
        placed = self._slots.pop(uid, None)
        if placed is not None:
            slot = placed[0]
            if len(slot.nodes) == 1:
                self.alloc.release_single(slot)
            else:
                self.alloc.release(slot)
            return
        worker = self._pooled.pop(uid, None)
        if worker is None:
            return  # never placed (failed or canceled in the queue), or already released
        if runtime is not None:
            self._mean_runtime += 0.2 * (runtime - self._mean_runtime)
        worker.queued -= 1
        if worker.queued == 0 and worker.core is not None:
            self.alloc.return_core(worker.node, worker.core)
            worker.core = None
            del self._leased[worker.index]
            self._idle.setdefault(worker.node, []).append(worker)

    # ---- introspection ----------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def placed(self) -> int:
        return len(self._slots) + len(self._pooled)

    @property
    def reserved(self) -> tuple[str, list[int]] | None:
        """The task holding a reservation and its drained nodes, if any."""
        res = self._reservation
        return (res.request.uid, list(res.nodes)) if res else None

    def validate(self) -> None:
        """Check every invariant; raise SchedulerError naming the first one broken."""
        check_scheduler(self)
