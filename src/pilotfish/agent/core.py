"""The agent's decisions, without I/O: `AgentCore.handle(*events) -> actions`.

The core holds the task table and every partition's scheduler. It routes each submitted
task to a partition, moves tasks through their states (one transition table,
states.py), lets an idle partition take queued work from a backlogged one (late
binding), fails or re-places the tasks of a lost partition, and decides when updates go
to the client. It touches no socket, process or file; the shell (`shell.py`) performs
its actions and feeds back what happens as events. The clock is injected: a simulated
pilot's virtual clock is just another clock.

Updates to the client are batched: a submitted batch is acknowledged at once (one
`SendAccepted`: the tasks are SUBMITTED). Final updates go when the shell has caught up
with its input (it is about to wait), or `FLUSH_INTERVAL` after the last ones went, or
once `FLUSH_BATCH` are held. A progress update (SCHEDULED, RUNNING) goes only for a task
that stayed in that state for `PROGRESS_INTERVAL`: a task that finishes sooner costs a
single update.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from ..backends.base import (
    DispatchedTask,
    NodeLost,
    PartitionLost,
    PlacedTask,
    TaskFinished,
    TaskLost,
    TaskRequeued,
    TaskStarted,
)
from ..backends.registry import Abilities
from ..gcpause import without_gc
from ..messages import Placement, TaskSpec, TaskUpdate
from ..partitions import Partition
from ..resources import Shape
from ..routing import Reject, RoutingPolicy, TaskTraits, steal_count
from ..scheduler import Action as Decision
from ..scheduler import Dequeued, Dispatch, Fail, Launch, Request, Scheduler
from ..states import TaskState, check_transition
from .events import (
    Action,
    CancelRequested,
    CancelTasks,
    CaughtUp,
    DispatchTasks,
    Event,
    LaunchTasks,
    ReleaseRequested,
    SendAccepted,
    SendReleased,
    SendUpdates,
    ServiceNotReady,
    ServiceReady,
    StopRequested,
    TasksSubmitted,
    Tick,
    WarmWorkers,
    WatchService,
)
from .waiting import Verdict, Waiting

PROGRESS_INTERVAL = 0.05  # seconds a task stays SCHEDULED or RUNNING before that is sent
FLUSH_INTERVAL, FLUSH_BATCH = 0.01, 10_000  # final updates held back: at most (s, count)
MAX_UPDATES_PER_MESSAGE = 10_000
BALANCE_INTERVAL = 0.01  # seconds between looks (a look may scan 2 x STEAL_MAX tasks)
LOOK_BACKOFF_MAX = 0.5  # seconds: a partition that found nothing it could take looks less

SUBMITTED, SCHEDULED, RUNNING = TaskState.SUBMITTED, TaskState.SCHEDULED, TaskState.RUNNING
READY = TaskState.READY
CANCELED, FAILED = TaskState.CANCELED, TaskState.FAILED


@dataclass(frozen=True, slots=True)
class PartitionSetup:
    """One partition as the core sees it: its nodes, its scheduler, what it can run."""

    layout: Partition
    scheduler: Scheduler
    abilities: Abilities


@dataclass(slots=True)
class _Partition:
    layout: Partition
    scheduler: Scheduler
    abilities: Abilities
    cores: int
    lost: str | None = None  # why its runtime died; then it takes no more tasks
    look_interval: float = BALANCE_INTERVAL  # late binding: between its looks for work
    next_look: float = 0.0  # on the pilot's clock
    warmed: set[int] = field(default_factory=set)  # function workers asked to start early

    @property
    def name(self) -> str:
        return self.layout.name


class _Task:
    __slots__ = ("address", "events", "outcome", "part", "pid", "placement", "request",
                 "retried", "routed", "spec", "state")

    def __init__(self, spec: TaskSpec, request: Request, part: _Partition) -> None:
        self.spec = spec
        self.request = request
        self.part = part
        self.state = SUBMITTED
        self.events: list[tuple[str, float]] = []  # since the last update sent
        self.outcome: TaskFinished | None = None
        self.pid: int | None = None
        self.placement: Placement | None = None  # where it was placed last
        self.retried = 0  # times placed again after it was lost (its partition, worker, ...)
        self.routed = True  # False: no partition could take it (it ran nowhere)
        self.address: str | None = None  # a READY service's


class _Lingering:
    """Tasks with progress not yet sent, and since when (monotonic), oldest first.

    A dict gives membership; a deque keeps the order (times only grow), pruned lazily,
    so that finding what is due never walks over tasks that left long ago.
    """

    __slots__ = ("order", "since")

    def __init__(self) -> None:
        self.since: dict[str, float] = {}
        self.order: deque[tuple[float, str]] = deque()

    def __bool__(self) -> bool:
        return bool(self.since)

    def add(self, uid: str, since: float) -> None:
        if uid not in self.since:
            self.since[uid] = since
            self.order.append((since, uid))

    def discard(self, uid: str) -> None:
        self.since.pop(uid, None)

    def oldest(self) -> float | None:
        order, since = self.order, self.since
        while order and since.get(order[0][1]) != order[0][0]:
            order.popleft()
        return order[0][0] if order else None

    def pop_due(self, cutoff: float) -> list[str]:
        """The tasks lingering since `cutoff` or before (all of them if cutoff is inf)."""
        order, since = self.order, self.since
        due = []
        while order:
            t, uid = order[0]
            if since.get(uid) != t:
                order.popleft()
                continue
            if t > cutoff:
                break
            order.popleft()
            del since[uid]
            due.append(uid)
        return due


def _request(spec: TaskSpec, seq: int, shape: Shape, part: _Partition) -> Request:
    """What the partition's scheduler places for a task."""
    tags = spec.tags
    if tags and ("colocate" in tags or "exclusive" in tags):  # other tags are labels
        return Request(spec.uid, seq, shape, spec.priority, False, tags.get("colocate"),
                       tags.get("exclusive"))
    pooled = (part.abilities.function_workers and spec.kind == "function" and shape.simple
              and shape.cores_per_rank == 1 and not shape.gpus_per_rank)
    return Request(spec.uid, seq, shape, spec.priority, pooled)


def service_variable(spec: TaskSpec) -> str:
    """Where tasks that name a service find it: PILOTFISH_SERVICE_<its name, else uid>."""
    return "PILOTFISH_SERVICE_" + re.sub(r"[^A-Z0-9]", "_", (spec.name or spec.uid).upper())


def _pinned(spec: TaskSpec) -> str | None:
    return spec.partition or (spec.tags.get("partition") if spec.tags else None)


def _move(task: _Task, state: TaskState) -> None:
    """Change a task's state through the one transition table; a bad move is a bug."""
    check_transition(task.spec.uid, task.state, state)
    task.state = state


def _progress_after_retry(uid: str, task: _Task) -> list[TaskUpdate]:
    """The progress update of a task that was requeued: first its move back to SUBMITTED
    with the events up to `requeued`, then its new state with the rest. The client may
    have seen it RUNNING, from where only SUBMITTED (or an end) may follow: it would drop
    a SCHEDULED update as stale, and the `requeued` event with it."""
    events = task.events
    last = max((i for i, (name, _) in enumerate(events) if name == "requeued"), default=-1)
    if last < 0:
        return [TaskUpdate(uid, task.state.value, events, pid=task.pid, address=task.address)]
    return [TaskUpdate(uid, SUBMITTED.value, events[:last + 1]),
            TaskUpdate(uid, task.state.value, events[last + 1:], pid=task.pid,
                       address=task.address)]


@dataclass(slots=True)
class _Round:
    """What one `handle` call gathers before it acts on it, per partition."""

    actions: list[Action] = field(default_factory=list)
    completed: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    requeued: dict[str, list[Request]] = field(default_factory=dict)
    cause: dict[str, Event] = field(default_factory=dict)  # the last event of each
    caught_up: bool = False
    stop: StopRequested | None = None


class AgentCore:
    """The agent's task table and decisions. `clock()` is the pilot's time (the wall
    clock, or a simulation's): it stamps events and paces late binding, a decision about
    the pilot's work. `monotonic()` paces the updates to the client, whose cost is real
    time whatever the pilot's clock says."""

    def __init__(self, partitions: Sequence[PartitionSetup], router: RoutingPolicy,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.partitions = {
            p.layout.name: _Partition(p.layout, p.scheduler, p.abilities,
                                      max(1, p.layout.nodes * p.scheduler.alloc.cores))
            for p in partitions}
        self.router = router
        self.clock = clock
        self.monotonic = monotonic
        self.tasks: dict[str, _Task] = {}
        self.decisions = 0  # scheduling decisions taken
        self.stopped: str | None = None  # why, once stopped
        self._stop_state = FAILED
        self._layouts = [p.layout for p in partitions]  # of partitions not lost
        # With one partition that runs anything, tasks need no routing.
        only = next(iter(self.partitions.values()))
        self._only = only if len(partitions) == 1 and only.abilities.runs_anything else None
        self._final: dict[str, None] = {}  # uids with a final update to send
        self._progress = _Lingering()  # uid -> when its unsent progress began (monotonic)
        self._flushed = monotonic()
        self._balanced = 0.0
        self._seq = 0
        self._shapes: dict[tuple[int, int, float, int, int], Shape] = {}
        self._waiting = Waiting()  # tasks waiting for others (`after`), ended outcomes
        self._groups: dict[str, list[str]] = {}  # input groups sent, no task named yet
        self._unblocked: list[Verdict] = []  # waited, and now go (or end): this round

    # ---- the one entry point ----------------------------------------------------------

    @without_gc
    def handle(self, *events: Event) -> list[Action]:
        """Take in events, in order; return what the shell must do, in order.

        A backend's outcomes are gathered first, and their freed room given out once
        per partition at the end: a burst of task ends costs one scheduling pass.
        """
        rnd = _Round()
        tasks = self.tasks
        for event in events:
            if type(event) is TaskFinished:
                task = tasks.get(event.uid)
                if task is None or task.state.final:
                    continue  # canceled meanwhile
                if (task.spec.service is not None and event.state is not CANCELED
                        and task.retried < task.spec.retries and self.stopped is None):
                    self._waiting.down(event.uid)  # a service that died: restarted
                    why = event.error or f"exit code {event.exit_code}"
                    self._lost(task, TaskLost(event.uid, f"service ended ({why})"), rnd)
                else:
                    self._completed(task, event, rnd)
            elif type(event) is TaskStarted:
                task = tasks.get(event.uid)
                if task is not None and not task.state.final:
                    self._started(task, event, rnd)
            elif type(event) is ServiceReady:
                task = tasks.get(event.uid)
                if task is not None and task.state is RUNNING:
                    self._up(task, event)
            elif type(event) is ServiceNotReady:
                task = tasks.get(event.uid)
                if task is not None and task.state is RUNNING:
                    rnd.actions.append(CancelTasks(task.part.name, [event.uid], event))
                    self._completed(task, TaskFinished(event.uid, FAILED, None, self.clock(),
                                                       error=event.reason), rnd)
            elif type(event) is TasksSubmitted:
                self._submit(event, rnd)
            elif type(event) is TaskRequeued:
                task = tasks.get(event.uid)
                if task is not None and not task.state.final:
                    _move(task, SUBMITTED)
                    rnd.requeued.setdefault(task.part.name, []).append(task.request)
                    rnd.cause[task.part.name] = event
            elif type(event) is TaskLost:
                task = tasks.get(event.uid)
                if task is not None and not task.state.final:
                    self._lost(task, event, rnd)
            elif type(event) is CancelRequested:
                self._cancel(event, rnd)
            elif type(event) is ReleaseRequested:
                self._release(event, rnd)
            elif type(event) is PartitionLost:
                self._lose(event, rnd)
            elif type(event) is NodeLost:
                part = self.partitions.get(event.partition)
                if part is not None and part.lost is None:
                    decisions = part.scheduler.lose_node(event.node, self.clock())
                    self._apply(part, decisions, event, rnd)
            elif type(event) is StopRequested:
                if self.stopped is None:  # from now on nothing is launched
                    self.stopped = event.reason
                    self._stop_state = CANCELED if event.canceled else FAILED
                rnd.stop = event
            elif type(event) is CaughtUp:
                rnd.caught_up = True
            elif type(event) is not Tick:
                raise TypeError(f"the agent core takes no {type(event).__name__}")
        if self.stopped is not None:
            self._stop(rnd)
            return rnd.actions
        self._unblock(events[-1] if events else Tick(), rnd)
        self._schedule(rnd)
        if len(self.partitions) > 1 and self.clock() - self._balanced >= BALANCE_INTERVAL:
            self._balance(events[-1] if events else Tick(), rnd)
        self._flush_due(events[-1] if events else Tick(), rnd)
        return rnd.actions

    def next_due(self) -> float | None:
        """When (monotonic) the core next wants a `Tick`: held-back updates fall due."""
        due = None
        oldest = self._progress.oldest()
        if oldest is not None:
            due = oldest + PROGRESS_INTERVAL
        if self._final:
            due = min(due or math.inf, self._flushed + FLUSH_INTERVAL)
        return due

    def snapshot(self) -> list[TaskUpdate]:
        """Every unfinished task's state, with its events not sent yet: for a new client.
        (Ended tasks whose updates are still held go out with the next flush.)"""
        updates = []
        for uid, task in self.tasks.items():
            if uid not in self._final:
                updates.append(TaskUpdate(uid, task.state.value, task.events, pid=task.pid))
                task.events = []
        return updates

    @property
    def unfinished(self) -> int:
        return len(self.tasks) - len(self._final)

    # ---- from the client --------------------------------------------------------------

    def client_seen(self, finals: int) -> None:
        """A heartbeat: the client has applied this many of our final updates, and
        resolves names of those tasks itself from now on."""
        self._waiting.heartbeat(finals)

    def _submit(self, event: TasksSubmitted, rnd: _Round) -> None:
        self._waiting.seen(event.seen)  # (before its tasks name any)
        groups = self._groups  # each added as a task first names it (then its inputs
        groups.update(event.groups)  # are in: they come before it, maybe in this message)
        accepted: list[str] = []
        per_partition: dict[str, list[Request]] = {}
        rejected: list[tuple[_Task, str]] = []
        waiting_calls: dict[str, int] = {}  # partition -> its function tasks that wait
        shapes, tasks, seq = self._shapes, self.tasks, self._seq
        load: dict[str, float] = {}  # unfinished tasks per core, kept up to date as we route
        for spec in event.tasks:
            if spec.uid in tasks:
                continue  # a resent submit: already known
            key = (spec.ranks, spec.cores_per_rank, spec.gpus_per_rank,
                   spec.ranks_per_node or 0, spec.mem_per_rank)
            shape = shapes.get(key)
            if shape is None:
                shape = shapes[key] = Shape(*key)
            seq += 1
            part, reason = self._only, None
            if part is None or spec.partition is not None or (
                    spec.tags and "partition" in spec.tags):
                routed = self._route(spec, shape, load)
                if isinstance(routed, str):
                    part, reason = self._first, routed
                else:
                    part = routed
            request = _request(spec, seq, shape, part)
            task = tasks[spec.uid] = _Task(spec, request, part)
            accepted.append(spec.uid)
            if reason is not None:
                task.routed = False
                rejected.append((task, reason))
            elif spec.after:
                if groups:
                    for name in spec.after:
                        if name in groups:
                            self._waiting.add_group(name, groups.pop(name), tasks)
                verdict = self._waiting.add(spec.uid, spec.after, tasks, [
                    name for name, blob in spec.inputs.items() if blob is None])
                if verdict is not None:  # (else it waits, in no scheduler)
                    self._unblocked.append(verdict)
                elif request.pooled:
                    waiting_calls[part.name] = waiting_calls.get(part.name, 0) + 1
            else:
                per_partition.setdefault(part.name, []).append(request)
        self._seq = seq
        now = self.clock()
        rnd.actions.append(SendAccepted(accepted, now, event))
        for task, reason in rejected:
            self._finish(task, TaskFinished(task.spec.uid, FAILED, None, now,
                                            error=f"no partition for it: {reason}"))
        for name, requests in per_partition.items():
            part = self.partitions[name]
            self._apply(part, part.scheduler.submit(requests, now), event, rnd)
        for name, calls in waiting_calls.items():  # (after the launches: spawning them
            # takes the executors' time, which what can start now should have first)
            part = self.partitions[name]
            cold = [w for w in part.scheduler.workers_to_warm(calls + len(part.warmed))
                    if w[0] not in part.warmed]
            if cold:
                part.warmed.update(index for index, _ in cold)
                rnd.actions.append(WarmWorkers(name, cold, event))

    @property
    def _first(self) -> _Partition:
        return next(iter(self.partitions.values()))

    def _route(self, spec: TaskSpec, shape: Shape, load: dict[str, float]) -> _Partition | str:
        """The partition for a task, or why none can run it; counts it in `load`."""
        pinned = _pinned(spec)
        lost = {p.name: p.lost for p in self.partitions.values() if p.lost is not None}
        if pinned in lost:
            return f"partition {pinned!r} lost: {lost[pinned]}"
        if not self._layouts:
            return "every partition was lost: " + "; ".join(
                f"{name!r}: {reason}" for name, reason in lost.items())
        traits = TaskTraits(spec.kind, spec.ranks, spec.gpus_per_rank, pinned, spec.launcher)
        if not load:
            for p in self.partitions.values():
                load[p.name] = (p.scheduler.queued + p.scheduler.placed) / p.cores

        def too_small(p: Partition) -> str | None:
            return self.partitions[p.name].scheduler.alloc.never_fits(shape)

        choice = self.router.route(traits, self._layouts, load, too_small)
        if isinstance(choice, Reject):
            return choice.reason
        part = self.partitions[choice]
        load[choice] += 1 / part.cores
        return part

    def _cancel(self, event: CancelRequested, rnd: _Round) -> None:
        per_partition: dict[str, list[str]] = {}
        for uid in event.uids:
            task = self.tasks.get(uid)
            if task is None or task.state.final:
                continue
            if uid in self._waiting.blocked:  # in no scheduler: it ends here
                self._finish(task, TaskFinished(uid, CANCELED, None, self.clock(),
                                                error="canceled"))
            else:
                per_partition.setdefault(task.part.name, []).append(uid)
        for name, live in per_partition.items():
            part = self.partitions[name]
            decisions = part.scheduler.cancel(live, self.clock())
            self._apply(part, decisions, event, rnd)
            dequeued = {d.uid for d in decisions if type(d) is Dequeued}
            placed = [u for u in live if u not in dequeued]
            if placed:
                rnd.actions.append(CancelTasks(name, placed, event))

    def _release(self, event: ReleaseRequested, rnd: _Round) -> None:
        """Give back the tasks still queued (never placed here) to go to another pilot;
        the client hears which (all others stay)."""
        per_partition: dict[str, list[str]] = {}
        for uid in event.uids:
            task = self.tasks.get(uid)
            if task is not None and task.state is SUBMITTED:
                per_partition.setdefault(task.part.name, []).append(uid)
        released: list[str] = []
        for name, uids in per_partition.items():
            part = self.partitions[name]
            decisions = part.scheduler.cancel(uids, self.clock())
            for d in decisions:
                if type(d) is Dequeued:
                    released.append(d.uid)
                    del self.tasks[d.uid]
                    self._progress.discard(d.uid)
            self._apply(part, [d for d in decisions if type(d) is not Dequeued], event, rnd)
        rnd.actions.append(SendReleased(released, self.clock(), event))

    # ---- from the backends ------------------------------------------------------------

    def _started(self, task: _Task, event: TaskStarted, rnd: _Round) -> None:
        _move(task, RUNNING)
        task.pid = event.pid
        if event.placement is not None:  # the runtime placed it itself
            task.placement = event.placement
        if event.launch_ts is not None:
            task.events.append(("launch", event.launch_ts))
        task.events.append(("RUNNING", event.ts))
        self._progress.add(event.uid, self.monotonic())
        service = task.spec.service
        if service is not None:
            node = task.placement[0][0] if task.placement else task.part.layout.first
            rnd.actions.append(WatchService(event.uid, service, node, event))

    def _up(self, task: _Task, event: ServiceReady) -> None:
        """A service passed its check: READY (the client hears at once), and the tasks
        waiting for it go, told where it is."""
        _move(task, READY)
        task.address = event.address
        task.events.append(("READY", event.ts))
        self._progress.add(event.uid, self.monotonic() - PROGRESS_INTERVAL)  # due now
        self._unblocked += self._waiting.up(event.uid, event.address)

    def _completed(self, task: _Task, event: TaskFinished, rnd: _Round) -> None:
        name = task.part.name
        done = rnd.completed.get(name)
        if done is None:
            done = rnd.completed[name] = []
        start = event.exec_start
        done.append((event.uid, event.exec_stop - start if start else 0.0))
        rnd.cause[name] = event
        self._finish(task, event)

    def _lost(self, task: _Task, event: TaskLost, rnd: _Round) -> None:
        """A task died with what ran it: its slot is free again; it runs again on its
        partition, from the start, if its retries allow, else it fails with the reason."""
        name = task.part.name
        rnd.cause[name] = event
        now = self.clock()
        if task.retried >= task.spec.retries:
            self._completed(task, TaskFinished(task.spec.uid, FAILED, None, now,
                                               error=event.reason), rnd)
            return
        self._progress.discard(task.spec.uid)
        _move(task, SUBMITTED)
        task.retried += 1
        task.events.append(("requeued", now))
        request = task.request
        if task.part.scheduler.alloc.never_fits(request.shape, request.colocate) is None:
            rnd.requeued.setdefault(name, []).append(request)
            return
        # Its partition lost nodes it needs: it runs elsewhere, or fails.
        rnd.completed.setdefault(name, []).append((task.spec.uid, 0.0))  # (frees its slot)
        routed = self._route(task.spec, request.shape, {})
        if isinstance(routed, str):
            self._finish(task, TaskFinished(task.spec.uid, FAILED, None, now,
                                            error=f"{event.reason}; cannot run again: "
                                                  f"{routed}"))
        else:
            self._move_to(routed, [task], event, rnd)

    def _lose(self, event: PartitionLost, rnd: _Round) -> None:
        """A partition's runtime died: move its unfinished tasks that may retry, fail the
        rest. The partition takes no new tasks; the others keep running."""
        part = self.partitions.get(event.partition)
        if part is None or part.lost is not None:
            return
        part.lost = event.reason
        self._layouts = [p for p in self._layouts if p.name != part.name]
        self._only = None
        now = self.clock()
        why = f"partition {part.name!r} lost: {event.reason}"
        load: dict[str, float] = {}
        per_partition: dict[str, list[_Task]] = {}
        for task in [t for t in self.tasks.values() if t.part is part and not t.state.final]:
            spec = task.spec
            routed = (self._route(spec, task.request.shape, load)
                      if task.retried < spec.retries else why)
            if isinstance(routed, str):
                error = why if routed == why else f"{why}; cannot run elsewhere: {routed}"
                self._finish(task, TaskFinished(spec.uid, FAILED, None, now, error=error))
                continue
            self._progress.discard(spec.uid)
            if task.state is not SUBMITTED:  # placed again from the start, on other nodes
                _move(task, SUBMITTED)
            task.retried += 1
            task.events.append(("requeued", now))
            per_partition.setdefault(routed.name, []).append(task)
        for name, moved in per_partition.items():
            self._move_to(self.partitions[name], moved, event, rnd)

    # ---- decisions and outcomes -------------------------------------------------------

    def _schedule(self, rnd: _Round) -> None:
        """Give out the room that ended tasks freed, and place requeued tasks again."""
        now = self.clock()
        for name in rnd.completed.keys() | rnd.requeued.keys():
            part = self.partitions[name]
            decisions = part.scheduler.completed(rnd.completed.get(name, ()), now)
            if name in rnd.requeued:
                decisions.extend(part.scheduler.requeue(rnd.requeued[name], now))
            self._apply(part, decisions, rnd.cause[name], rnd)

    def _apply(self, part: _Partition, decisions: Sequence[Decision], cause: Event,
               rnd: _Round) -> None:
        """The scheduler's decisions for a partition, as actions for the shell."""
        now = self.clock()
        self.decisions += len(decisions)
        since = self.monotonic()
        progress = self._progress
        launches: list[PlacedTask] = []
        dispatches: list[DispatchedTask] = []
        tasks = self.tasks
        first, places_itself = part.layout.first, part.abilities.places_itself
        for decision in decisions:
            task = tasks[decision.uid]
            if type(decision) is Dispatch:
                _move(task, SCHEDULED)
                task.events.append(("SCHEDULED", now))
                progress.add(decision.uid, since)
                task.placement = [(first + decision.node, [decision.core], [])]
                dispatches.append(DispatchedTask(task.spec, decision.worker, decision.node,
                                                 decision.core))
            elif type(decision) is Launch:
                _move(task, SCHEDULED)
                task.events.append(("SCHEDULED", now))
                progress.add(decision.uid, since)
                task.placement = None if places_itself else decision.slot.placement(first)
                launches.append(PlacedTask(task.spec, decision.slot))
            elif type(decision) is Fail:
                self._finish(task, TaskFinished(decision.uid, FAILED, None, now,
                                                error=decision.reason))
            elif type(decision) is Dequeued:
                self._finish(task, TaskFinished(decision.uid, CANCELED, None, now,
                                                error="canceled"))
        if self.stopped is not None:
            return  # placed, but never started: the stop ends them
        if dispatches:
            rnd.actions.append(DispatchTasks(part.name, dispatches, cause))
        if launches:
            rnd.actions.append(LaunchTasks(part.name, launches, cause))

    def _balance(self, cause: Event, rnd: _Round) -> None:
        """Late binding: each partition may take queued tasks it can run from the most
        backlogged other one (`routing.steal_count` says how many). Pinned tasks stay."""
        now = self._balanced = self.clock()
        live = [p for p in self.partitions.values() if p.lost is None]
        if len(live) < 2:
            return
        for thief in live:
            if now < thief.next_look:
                continue
            victim = max((p for p in live if p is not thief), key=lambda p: p.scheduler.queued)
            n = steal_count(thief.scheduler.queued, thief.scheduler.alloc.has_free_core(),
                            thief.cores, victim.scheduler.queued, victim.cores)
            if n:
                slots_only = thief.scheduler.queued > 0

                def movable(request: Request, source: _Partition = victim,
                            to: _Partition = thief, slots_only: bool = slots_only) -> bool:
                    return self._movable(request, source, to, slots_only)

                taken = victim.scheduler.take_queued(n, movable, 2 * n)
                if taken:
                    self._move_to(thief, [self.tasks[r.uid] for r in taken], cause, rnd)
                # Nothing it could take (say, a backlog of executables an idle Dragon
                # partition does not take): look less often, not 2 x n tasks every 10 ms.
                thief.look_interval = (BALANCE_INTERVAL if taken else
                                       min(2 * thief.look_interval, LOOK_BACKOFF_MAX))
                thief.next_look = now + thief.look_interval

    def _movable(self, request: Request, source: _Partition, to: _Partition,
                 slots_only: bool) -> bool:
        spec = self.tasks[request.uid].spec
        if slots_only and spec.kind == "function" and to.abilities.function_workers and (
                _request(spec, 0, request.shape, to).pooled):
            return False  # it would wait for the same few workers
        if _pinned(spec) is not None:
            return False
        traits = TaskTraits(spec.kind, spec.ranks, spec.gpus_per_rank, None, spec.launcher)
        return to.abilities.why_not(spec.kind, spec.ranks, spec.gpus_per_rank,
                                    spec.launcher) is None and (
            self.router.may_move(traits, source.layout, to.layout)) and (
            to.scheduler.alloc.never_fits(request.shape) is None)

    def _move_to(self, part: _Partition, tasks: list[_Task], cause: Event,
                 rnd: _Round) -> None:
        """Queue tasks (queued or placed elsewhere before) on `part`, from the start."""
        requests = []
        blocked = self._waiting.blocked
        for task in tasks:
            task.part = part
            task.request = _request(task.spec, task.request.seq, task.request.shape, part)
            if task.spec.uid not in blocked:  # (one waiting for others stays so, there)
                requests.append(task.request)
        self._apply(part, part.scheduler.submit(requests, self.clock()), cause, rnd)

    def _unblock(self, cause: Event, rnd: _Round) -> None:
        """Tasks whose inputs ended: placed (their arguments' results filled in), or
        ended because an input failed (which may end tasks waiting for them, in turn)."""
        now = self.clock()
        per_partition: dict[str, list[Request]] = {}
        while self._unblocked:
            verdicts, self._unblocked = self._unblocked, []
            for v in verdicts:
                task = self.tasks.get(v.uid)
                if task is None or task.state.final:
                    continue
                if not v.ready:
                    self._finish(task, TaskFinished(v.uid, v.state, None, now, error=v.why))
                    continue
                spec = task.spec
                up = self._waiting.ready
                services = {service_variable(self.tasks[name].spec): up[name]
                            for name in spec.after if name in up and name in self.tasks}
                if services:
                    task.spec = spec = msgspec.structs.replace(
                        spec, environment={**spec.environment, **services})
                if any(blob is None for blob in spec.inputs.values()):
                    kept = self._waiting.results(v.uid)
                    task.spec = msgspec.structs.replace(spec, inputs={
                        name: blob if blob is not None else kept[name]
                        for name, blob in spec.inputs.items()})
                per_partition.setdefault(task.part.name, []).append(task.request)
        for name, requests in per_partition.items():
            part = self.partitions[name]
            self._apply(part, part.scheduler.submit(requests, now), cause, rnd)

    def _finish(self, task: _Task, outcome: TaskFinished) -> None:
        if outcome.exec_start is not None:
            if task.state is not RUNNING and task.state is not READY:
                task.events.append(("RUNNING", outcome.exec_start))
            task.events.append(("exec_stop", outcome.exec_stop))
        _move(task, outcome.state)
        task.outcome = outcome
        self._final[outcome.uid] = None
        self._unblocked += self._waiting.end(outcome.uid, outcome.state, outcome.error,
                                             outcome.result, outcome.exit_code)

    def _stop(self, rnd: _Round) -> None:
        """End every unfinished task with the stop's reason, and send everything."""
        now = self.clock()
        for uid, task in self.tasks.items():
            if not task.state.final:
                self._finish(task, TaskFinished(uid, self._stop_state, None, now,
                                                error=f"pilot stopped: {self.stopped}"))
        self._flush(rnd.stop or Tick(), rnd, everything=True)

    # ---- updates to the client --------------------------------------------------------

    def _flush_due(self, cause: Event, rnd: _Round) -> None:
        now = self.monotonic()
        finals_due = bool(self._final) and (rnd.caught_up or len(self._final) >= FLUSH_BATCH
                                            or now - self._flushed >= FLUSH_INTERVAL)
        oldest = self._progress.oldest()
        if finals_due or (oldest is not None and now - oldest >= PROGRESS_INTERVAL):
            self._flush(cause, rnd)

    def _flush(self, cause: Event, rnd: _Round, everything: bool = False) -> None:
        """Send the final updates, and the progress held back for long enough (or all)."""
        self._flushed = self.monotonic()
        updates: list[TaskUpdate] = []
        tasks = self.tasks
        finals = len(self._final)
        for uid in self._final:
            task = tasks.pop(uid)
            o = task.outcome
            assert o is not None
            updates.append(TaskUpdate(uid, task.state.value, task.events, o.exit_code,
                                      o.error, o.result, o.stdout, o.stderr, task.pid,
                                      task.part.name if task.routed else None,
                                      task.placement if o.exec_start is not None else None))
            self._progress.discard(uid)
        self._waiting.sent(self._final)  # (in the order the client gets them)
        self._final.clear()
        cutoff = math.inf if everything else self._flushed - PROGRESS_INTERVAL
        for uid in self._progress.pop_due(cutoff):
            task = tasks[uid]
            if task.retried:
                updates.extend(_progress_after_retry(uid, task))
            else:
                updates.append(TaskUpdate(uid, task.state.value, task.events, pid=task.pid,
                                          address=task.address))
            task.events = []
        for i in range(0, len(updates), MAX_UPDATES_PER_MESSAGE):
            chunk = updates[i:i + MAX_UPDATES_PER_MESSAGE]
            rnd.actions.append(SendUpdates(chunk, max(0, min(finals - i, len(chunk))), cause))
